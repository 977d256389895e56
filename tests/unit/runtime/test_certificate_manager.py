"""--manage-certificates: the Secret, the files and the caBundle, against an in-memory API.

The fake holds one Secret (with a resourceVersion that a stale replace conflicts with) and
one MutatingWebhookConfiguration (a JSON patch with ``test`` operations), like the API server.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client import CollectorRegistry

from gomemlimit_operator.runtime import certs
from gomemlimit_operator.runtime.certificate_manager import (
    CA_KEY,
    CA_PEM,
    TLS_CERT,
    TLS_KEY,
    CertificateManager,
    CertificateMetrics,
    CertificatePolicy,
    Conflict,
    ca_bundle_patch,
    plan,
    renew_before,
)

DAY = datetime.timedelta(days=1)
START = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)


class FakeApi:
    """One Secret and one webhook configuration, as the API server keeps them."""

    def __init__(self, entries: Sequence[str] = ("pods.gomemlimit.io",)) -> None:
        self.secret: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "certs",
                "namespace": "ops",
                "resourceVersion": "1",
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
            },
            "type": "Opaque",
        }
        self.configuration: dict[str, Any] = {
            "metadata": {"name": "hook", "resourceVersion": "1"},
            "webhooks": [{"name": name, "clientConfig": {"url": "https://x"}} for name in entries],
        }
        self.lock = threading.Lock()
        self.secret_writes = 0
        self.conflicts = 0
        self.patches: list[list[dict[str, Any]]] = []
        self.after_get_secret: Callable[[], None] = lambda: None

    def get_secret(self) -> dict[str, Any]:
        with self.lock:
            secret = copy.deepcopy(self.secret)
        self.after_get_secret()
        return secret

    def replace_secret(self, body: Mapping[str, Any]) -> dict[str, Any]:
        with self.lock:
            if body["metadata"]["resourceVersion"] != self.secret["metadata"]["resourceVersion"]:
                self.conflicts += 1
                raise Conflict("stale")
            assert body["metadata"]["labels"] == self.secret["metadata"]["labels"]
            assert "managedFields" not in body["metadata"]
            self.secret = copy.deepcopy(dict(body))
            self.secret["metadata"]["resourceVersion"] = str(
                int(body["metadata"]["resourceVersion"]) + 1
            )
            self.secret_writes += 1
            return copy.deepcopy(self.secret)

    def get_webhook_configuration(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.configuration)

    def patch_webhook_configuration(self, operations: Sequence[Mapping[str, Any]]) -> None:
        with self.lock:
            target = copy.deepcopy(self.configuration)
            for operation in operations:
                *parents, last = operation["path"].strip("/").split("/")
                node: Any = target
                for part in parents:
                    node = node[int(part)] if isinstance(node, list) else node[part]
                if operation["op"] == "test":
                    if node.get(last) != operation["value"]:
                        raise Conflict("test failed")
                else:
                    assert operation["op"] == "add"
                    assert last == "caBundle"
                    node[last] = operation["value"]
            self.configuration = target
            self.patches.append([dict(operation) for operation in operations])

    # -- what the tests look at --

    def data(self) -> dict[str, bytes]:
        return {k: base64.b64decode(v) for k, v in (self.secret.get("data") or {}).items()}

    def bundles(self) -> list[bytes]:
        return [
            base64.b64decode(entry["clientConfig"].get("caBundle", ""))
            for entry in self.configuration["webhooks"]
        ]


class Clock:
    def __init__(self, now: datetime.datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


POLICY = CertificatePolicy.for_service(
    "gomemlimit-operator",
    "ops",
    extra_hosts=("127.0.0.1",),
    serving_validity=365 * DAY,
    ca_validity=3650 * DAY,
)


def manager(
    api: FakeApi,
    tmp_path: Path,
    clock: Clock,
    *,
    name: str = "a",
    policy: CertificatePolicy = POLICY,
    registry: CollectorRegistry | None = None,
) -> CertificateManager:
    readiness: list[bool] = []
    made = CertificateManager(
        api,
        policy,
        tmp_path / name,
        metrics=CertificateMetrics(registry or CollectorRegistry()),
        on_ready=readiness.append,
        clock=clock,
    )
    made.readiness = readiness  # type: ignore[attr-defined]
    return made


def reconcile(made: CertificateManager) -> Any:
    return asyncio.run(made.reconcile())


def cas(pem: bytes) -> list[x509.Certificate]:
    return certs.load_certificates(pem)


def serving(pem: bytes) -> x509.Certificate:
    return certs.load_certificates(pem)[0]


# ---------------------------------------------------------------------------------------------


def test_renewal_rule() -> None:
    assert renew_before(365 * DAY) == 90 * DAY  # like Gatekeeper
    assert renew_before(3650 * DAY) == 90 * DAY
    assert renew_before(datetime.timedelta(seconds=30)) == datetime.timedelta(seconds=10)
    assert renew_before(30 * DAY) == 10 * DAY
    assert POLICY.check_interval == 300
    short = CertificatePolicy(("x",), datetime.timedelta(seconds=30), DAY)
    assert short.check_interval == 3.0
    assert short.file_check_interval == 1.5


def test_empty_secret_gets_a_ca_and_certificate(tmp_path: Path) -> None:
    api, clock = FakeApi(), Clock()
    registry = CollectorRegistry()
    made = manager(api, tmp_path, clock, registry=registry)
    outcome = reconcile(made)

    assert outcome.wrote_secret
    assert outcome.wrote_files
    assert outcome.patched
    assert set(outcome.plan.rotated) == {"ca", "serving"}
    data = api.data()
    assert set(data) == {CA_PEM, CA_KEY, TLS_CERT, TLS_KEY}
    assert api.secret["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "Helm"}
    ca, cert = cas(data[CA_PEM])[0], serving(data[TLS_CERT])
    cert.verify_directly_issued_by(ca)
    assert certs.san_strings(cert) == {
        "gomemlimit-operator",
        "gomemlimit-operator.ops",
        "gomemlimit-operator.ops.svc",
        "gomemlimit-operator.ops.svc.cluster.local",
        "127.0.0.1",
    }
    assert cert.not_valid_after_utc == START + 365 * DAY
    assert ca.not_valid_after_utc == START + 3650 * DAY
    # the files are the Secret's; the caBundle is the CA
    assert (tmp_path / "a" / "tls.crt").read_bytes() == data[TLS_CERT]
    assert (tmp_path / "a" / "tls.key").read_bytes() == data[TLS_KEY]
    assert ((tmp_path / "a" / "tls.key").stat().st_mode & 0o777) == 0o600
    assert api.bundles() == [data[CA_PEM]]
    assert made.readiness == [True]  # type: ignore[attr-defined]
    expiry = registry.get_sample_value(
        "gomemlimit_certificate_expiry_timestamp_seconds", {"certificate": "serving"}
    )
    assert expiry == (START + 365 * DAY).timestamp()
    assert registry.get_sample_value(
        "gomemlimit_certificate_expiry_timestamp_seconds", {"certificate": "ca"}
    ) == ((START + 3650 * DAY).timestamp())
    for certificate in ("ca", "serving"):
        assert (
            registry.get_sample_value(
                "gomemlimit_certificate_rotations_total", {"certificate": certificate}
            )
            == 1
        )


def test_valid_secret_is_reused_without_writes(tmp_path: Path) -> None:
    api, clock = FakeApi(), Clock()
    reconcile(manager(api, tmp_path, clock))
    before = api.data()
    clock.now += 100 * DAY
    other = manager(api, tmp_path, clock, name="b")  # another replica, or a restart
    outcome = reconcile(other)
    assert not outcome.wrote_secret
    assert not outcome.patched
    assert outcome.wrote_files
    assert api.secret_writes == 1
    assert len(api.patches) == 1
    assert api.data() == before
    assert (tmp_path / "b" / "tls.crt").read_bytes() == before[TLS_CERT]
    # and again: nothing at all changes
    assert not reconcile(other).wrote_files


def test_near_expiry_rotates_the_serving_certificate_and_keeps_the_ca(tmp_path: Path) -> None:
    api, clock = FakeApi(), Clock()
    made = manager(api, tmp_path, clock)
    reconcile(made)
    first = api.data()
    clock.now += 274 * DAY  # 91 days left: not yet
    assert not reconcile(made).wrote_secret
    clock.now += 2 * DAY  # 89 days left
    outcome = reconcile(made)
    assert outcome.plan.rotated == ("serving",)
    assert outcome.wrote_secret
    assert outcome.wrote_files
    assert not outcome.patched
    second = api.data()
    assert second[CA_PEM] == first[CA_PEM]
    assert second[CA_KEY] == first[CA_KEY]
    assert second[TLS_CERT] != first[TLS_CERT]
    assert second[TLS_KEY] != first[TLS_KEY]
    assert serving(second[TLS_CERT]).not_valid_after_utc == clock.now + 365 * DAY
    assert api.bundles() == [first[CA_PEM]]  # the caBundle stayed: patched only once
    assert len(api.patches) == 1
    assert (tmp_path / "a" / "tls.crt").read_bytes() == second[TLS_CERT]


def test_ca_renewal_keeps_both_cas_until_the_new_one_is_published(tmp_path: Path) -> None:
    policy = CertificatePolicy(("svc",), 30 * DAY, 90 * DAY)  # CA renewed 30 days before
    api, clock = FakeApi(entries=("one", "two")), Clock()
    made = manager(api, tmp_path, clock, policy=policy)
    reconcile(made)
    old_ca = cas(api.data()[CA_PEM])[0]
    # Serving certificates come and go under the same CA.
    clock.now += 55 * DAY
    assert reconcile(made).plan.rotated == ("serving",)
    # 29 days left on the CA: a new one, first in the bundle; the old one stays after it.
    clock.now += 6 * DAY
    outcome = reconcile(made)
    assert outcome.plan.rotated == ("ca",)
    assert outcome.plan.waiting
    assert outcome.patched
    bundle = cas(api.data()[CA_PEM])
    assert [ca.fingerprint(hashes.SHA256()) for ca in bundle[1:]] == [
        old_ca.fingerprint(hashes.SHA256())
    ]
    assert api.bundles() == [api.data()[CA_PEM]] * 2
    # Still served from the old CA: the API server may not trust the new one yet.
    serving(api.data()[TLS_CERT]).verify_directly_issued_by(old_ca)
    # The next pass, with the new CA published, moves the serving certificate to it.
    outcome = reconcile(made)
    assert outcome.plan.rotated == ("serving",)
    assert not outcome.plan.waiting
    serving(api.data()[TLS_CERT]).verify_directly_issued_by(bundle[0])
    assert not outcome.patched
    # When the old CA expires it leaves the bundle.
    clock.now += 30 * DAY
    reconcile(made)
    assert len(cas(api.data()[CA_PEM])) == 1
    assert api.bundles() == [api.data()[CA_PEM]] * 2


def test_two_replicas_starting_at_once_agree_on_one_certificate(tmp_path: Path) -> None:
    api, clock = FakeApi(), Clock()
    barrier = threading.Barrier(2, timeout=10)
    reads = {"count": 0}

    def both_read_the_empty_secret() -> None:
        with api.lock:
            reads["count"] += 1
            first_two = reads["count"] <= 2
        if first_two:
            barrier.wait()

    api.after_get_secret = both_read_the_empty_secret
    a, b = manager(api, tmp_path, clock, name="a"), manager(api, tmp_path, clock, name="b")

    async def both() -> list[Any]:
        return list(await asyncio.gather(a.reconcile(), b.reconcile()))

    outcomes = asyncio.run(both())
    assert api.secret_writes == 1
    assert api.conflicts == 1
    assert sorted(o.wrote_secret for o in outcomes) == [False, True]
    assert sorted(o.conflicts for o in outcomes) == [0, 1]
    data = api.data()
    for name in ("a", "b"):
        assert (tmp_path / name / "tls.crt").read_bytes() == data[TLS_CERT]
        assert (tmp_path / name / "tls.key").read_bytes() == data[TLS_KEY]
    assert api.bundles() == [data[CA_PEM]]


def test_replicas_pick_up_a_rotation_by_another(tmp_path: Path) -> None:
    api, clock = FakeApi(), Clock()
    a, b = manager(api, tmp_path, clock, name="a"), manager(api, tmp_path, clock, name="b")
    reconcile(a)
    reconcile(b)
    clock.now += 300 * DAY
    assert reconcile(a).plan.rotated == ("serving",)
    outcome = reconcile(b)
    assert not outcome.wrote_secret
    assert outcome.wrote_files
    assert (tmp_path / "b" / "tls.crt").read_bytes() == api.data()[TLS_CERT]


def test_ca_bundle_is_patched_only_when_different(tmp_path: Path) -> None:
    api, clock = FakeApi(entries=("one", "two")), Clock()
    made = manager(api, tmp_path, clock)
    reconcile(made)
    assert len(api.patches) == 1
    reconcile(made)
    assert len(api.patches) == 1
    # Someone resets one entry's caBundle (a helm upgrade rendering it empty): only it is fixed.
    api.configuration["webhooks"][1]["clientConfig"].pop("caBundle")
    outcome = reconcile(made)
    assert outcome.patched
    assert not outcome.wrote_secret
    ops = api.patches[-1]
    assert [op["path"] for op in ops] == ["/webhooks/1/name", "/webhooks/1/clientConfig/caBundle"]
    assert [op["op"] for op in ops] == ["test", "add"]
    assert api.bundles() == [api.data()[CA_PEM]] * 2
    # Every change touches only caBundle, after testing the entry's name and old value.
    for patch in api.patches:
        assert all(op["path"].startswith("/webhooks/") for op in patch)
        assert {op["path"].rsplit("/", 1)[1] for op in patch if op["op"] == "add"} == {"caBundle"}


def test_a_stale_replica_cannot_put_back_an_older_bundle() -> None:
    configuration = {"webhooks": [{"name": "w", "clientConfig": {"caBundle": "T0xE"}}]}
    ops = ca_bundle_patch(configuration, b"NEW")
    assert ops[1] == {"op": "test", "path": "/webhooks/0/clientConfig/caBundle", "value": "T0xE"}
    api = FakeApi(entries=("w",))
    api.configuration["webhooks"][0]["clientConfig"]["caBundle"] = "TkVXRVI="  # moved on
    with pytest.raises(Conflict):
        api.patch_webhook_configuration(ops)
    assert ca_bundle_patch({"webhooks": [{"clientConfig": {"caBundle": "TkVX"}}]}, b"NEW") == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data.pop(TLS_KEY),
        lambda data: data.update({TLS_CERT: b"garbage"}),
        lambda data: data.update({TLS_KEY: certs.private_key_pem(certs.new_ca(valid_for=DAY)[1])}),
    ],
    ids=["no key", "garbage certificate", "foreign key"],
)
def test_invalid_serving_certificate_is_replaced_under_the_same_ca(
    damage: Callable[[dict[str, bytes]], object],
) -> None:
    clock = Clock()
    good = plan({}, POLICY, published=lambda ca: False, now=clock.now)
    assert good.data is not None
    data = dict(good.data)
    damage(data)
    again = plan(data, POLICY, published=lambda ca: True, now=clock.now)
    assert again.rotated == ("serving",)
    assert again.data is not None
    assert again.data[CA_PEM] == good.data[CA_PEM]


def test_other_names_get_a_new_certificate() -> None:
    first = plan({}, POLICY, published=lambda ca: True, now=START)
    assert first.data is not None
    other = CertificatePolicy(("other.ops.svc",), POLICY.serving_validity, POLICY.ca_validity)
    again = plan(first.data, other, published=lambda ca: True, now=START)
    assert again.rotated == ("serving",)
    assert certs.san_strings(again.cert) == {"other.ops.svc"}


def test_broken_ca_is_replaced() -> None:
    first = plan({}, POLICY, published=lambda ca: True, now=START)
    assert first.data is not None
    data = {**first.data, CA_KEY: b"nope"}
    again = plan(data, POLICY, published=lambda ca: False, now=START)
    assert again.rotated == ("ca",)  # the old serving certificate still works meanwhile
    assert again.waiting


def test_files_are_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file is renamed into place, whole; the key before the certificate, in one step."""
    import os

    api, clock = FakeApi(), Clock()
    made = manager(api, tmp_path, clock)
    reconcile(made)
    directory = tmp_path / "a"
    inode = (directory / "tls.crt").stat().st_ino
    renames: list[tuple[str, str, bytes]] = []
    real_replace = os.replace

    def spy(source: Any, target: Any) -> None:
        renames.append((Path(source).name, Path(target).name, Path(source).read_bytes()))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    clock.now += 300 * DAY
    reconcile(made)
    data = api.data()
    assert [(s, t) for s, t, _ in renames] == [
        (".ca.crt.tmp", "ca.crt"),
        (".tls.key.tmp", "tls.key"),
        (".tls.crt.tmp", "tls.crt"),
    ]
    assert renames[1][2] == data[TLS_KEY]
    assert renames[2][2] == data[TLS_CERT]
    assert (directory / "tls.crt").stat().st_ino != inode  # a new file, not rewritten in place
    assert sorted(p.name for p in directory.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]


def test_start_retries_until_the_secret_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, clock = FakeApi(), Clock()
    failures = {"left": 2}
    real_get = api.get_secret

    def flaky() -> dict[str, Any]:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("HTTP 404 Not Found")
        return real_get()

    api.get_secret = flaky  # type: ignore[method-assign]
    made = manager(api, tmp_path, clock)

    real_sleep = asyncio.sleep

    async def no_wait(_: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", no_wait)
    asyncio.run(made.start())
    assert (tmp_path / "a" / "tls.crt").exists()
    assert made.readiness == [True]  # type: ignore[attr-defined]
