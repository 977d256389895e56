"""Faults on the real install: the chart's two replicas on the real node, under load.

A thread creates a pod in a governed namespace every 0.1 s through the API server (so every
create goes through the webhook, as a Deployment's would) while the test breaks something:

1. certificate rotation: a serving certificate valid for 20 s, so that it rotates twice;
2. one of two replicas SIGKILLed;
3. both replicas SIGKILLed (failurePolicy Ignore): the pods created meanwhile get no value and
   are reported ``missing`` once the operator is back;
4. failurePolicy Fail with the operator down: its own namespace and kube-system still admit
   pods, the documented emergency patch works, and after a crash it recovers by itself;
5. the API server restarted: the watcher resyncs and its figures converge to the truth, with
   nothing counted twice.

Every create must succeed (except in 4, where refusals are the point), and no pod may ever
get a value other than the right one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.controlplane import ControlPlane, KubectlError
from tests.cluster.realnode import RealNode
from tests.e2e.install_harness import (
    Release,
    gomemlimit,
    governed_namespace,
    install_release,
    only_this_webhook,
    pod_manifest,
    print_operator_logs,
)
from tests.e2e.operator_harness import get, wait_until

__all__ = ["only_this_webhook"]  # a fixture this module uses

RELEASE = "gmlf"
NAMESPACE = "gomemlimit-faults"
CLUSTER_IP = "127.96.201.18"
VALUE = "460MiB"  # 0.9 of the pods' 512Mi
CERTIFICATE_SECONDS = 20

EMERGENCY_PATCH = '[{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]'
"""README "Failure modes": what an operator on call applies when the webhook fails closed."""


@pytest.fixture(scope="module")
def release(
    cluster: ControlPlane, real_node: RealNode, only_this_webhook: None
) -> Iterator[Release]:
    with install_release(
        cluster,
        real_node,
        name=RELEASE,
        namespace=NAMESPACE,
        cluster_ip=CLUSTER_IP,
        replicas=2,
        extra_values=[
            f'--set-json=extraArgs=["--certificate-validity-seconds={CERTIFICATE_SECONDS}"]'
        ],
    ) as faults:
        faults.install()
        assert len(faults.ready_operator_pods()) == 2
        yield faults


@pytest.fixture(scope="module")
def governed(release: Release) -> Iterator[str]:
    name = governed_namespace(release.cluster, "faults-load")
    yield name
    release.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --- load ------------------------------------------------------------------------------------


@dataclass
class Created:
    name: str
    at: float
    value: str | None = None
    error: str | None = None


@dataclass
class Load:
    """Pods created one after another, every ``interval`` seconds, in a thread."""

    api: client.CoreV1Api
    namespace: str
    prefix: str
    interval: float = 0.1
    created: list[Created] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)

    def _run(self) -> None:
        serialize = self.api.api_client.sanitize_for_serialization
        n = 0
        while not self._stop.is_set():
            n += 1
            attempt = Created(f"{self.prefix}-{n}", time.monotonic())
            try:
                pod = self.api.create_namespaced_pod(
                    self.namespace, pod_manifest(attempt.name), _request_timeout=30
                )
                attempt.value = gomemlimit(serialize(pod))
            except client.ApiException as exc:
                attempt.error = f"{exc.status}: {exc.body}"
            except Exception as exc:  # a client-side failure is a failure too
                attempt.error = repr(exc)
            self.created.append(attempt)
            self._stop.wait(self.interval)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.error}" for c in self.created if c.error is not None]

    @property
    def unmutated(self) -> list[str]:
        return [c.name for c in self.created if c.error is None and c.value is None]

    def wrong(self) -> list[str]:
        return [f"{c.name}: {c.value}" for c in self.created if c.value not in (None, VALUE)]

    def report(self, what: str) -> str:
        line = (
            f"{what}: {len(self.created)} creates, {len(self.failures)} failed, "
            f"{len(self.unmutated)} without a value, {len(self.wrong())} with a wrong one"
        )
        print(line)
        return line


def load(k8s_api: client.ApiClient, namespace: str, prefix: str) -> Load:
    return Load(client.CoreV1Api(k8s_api), namespace, prefix)


# --- the operator's processes and figures ----------------------------------------------------


def kill(release: Release, pod: dict[str, Any]) -> int:
    """SIGKILL the operator container's processes, found through its cgroup on the node; the
    container's restart count before the kill."""
    [status] = pod["status"]["containerStatuses"]
    cgroup = release.node.container_cgroup(pod["metadata"]["uid"], status["containerID"])
    assert cgroup is not None, f"no cgroup for {pod['metadata']['name']}"
    pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return int(status["restartCount"])


def restarted(release: Release, name: str, count: int) -> bool:
    pod = get(release.cluster, "pod", name, "-n", release.namespace)
    [status] = pod["status"]["containerStatuses"]
    return bool(status["restartCount"] > count and status.get("ready"))


def leader(release: Release) -> dict[str, Any]:
    lease = get(release.cluster, "lease", "gomemlimit-operator", "-n", release.namespace)
    holder = str(lease["spec"]["holderIdentity"])
    [pod] = [p for p in release.operator_pods() if holder.startswith(p["metadata"]["name"])]
    return pod


def leader_metrics(release: Release, attempts: int = 40) -> dict[tuple[str, frozenset[Any]], float]:
    """The leader's samples. Both replicas share the metrics port (SO_REUSEPORT), so each new
    connection lands on either: ask until the leader answers."""
    for _ in range(attempts):
        with urllib.request.urlopen(release.metrics_url(), timeout=5) as response:
            text = response.read().decode()
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        if samples.get(("gomemlimit_leader", frozenset())) == 1:
            return samples
        time.sleep(0.05)
    raise AssertionError("no answer from the leader on the metrics port")


def containers(
    samples: dict[tuple[str, frozenset[Any]], float], namespace: str
) -> dict[str, float]:
    """``gomemlimit_containers`` of one namespace, by state."""
    found: dict[str, float] = {}
    for (name, labels), value in samples.items():
        tags = dict(labels)
        if name == "gomemlimit_containers" and tags.get("namespace") == namespace and value:
            found[tags["state"]] = found.get(tags["state"], 0) + value
    return found


def noncompliant(samples: dict[tuple[str, frozenset[Any]], float], namespace: str) -> set[str]:
    """Pods of the namespace with a ``missing`` noncompliant info series."""
    return {
        dict(labels)["pod"]
        for (name, labels), _ in samples.items()
        if name == "gomemlimit_noncompliant_container_info"
        and dict(labels).get("namespace") == namespace
        and dict(labels).get("state") == "missing"
    }


def served_certificate(release: Release) -> int:
    """The serial number of the certificate a new connection to the webhook gets."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    with (
        socket.create_connection((release.cluster_ip, release.ports["webhook"]), timeout=5) as s,
        context.wrap_socket(s) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


# --- the faults ------------------------------------------------------------------------------


def test_certificate_rotation_under_load_fails_no_admission(
    release: Release, governed: str, k8s_api: client.ApiClient
) -> None:
    """Serving certificates valid for 20 s are renewed a third of that before they expire:
    under load, new connections get each new certificate and no admission fails."""
    seen = [served_certificate(release)]
    with load(k8s_api, governed, "rotation") as running:
        deadline = time.monotonic() + 3 * CERTIFICATE_SECONDS
        while time.monotonic() < deadline and len(set(seen)) < 3:
            time.sleep(1)
            seen.append(served_certificate(release))
    running.report("certificate rotation under load")
    print(f"served certificates: {len(set(seen))} distinct in {len(seen)} connections")
    assert len(set(seen)) >= 3, "the serving certificate did not rotate twice"
    assert running.failures == []
    assert running.unmutated == []
    assert running.wrong() == []
    assert len(running.created) > 50


def test_losing_one_of_two_replicas_under_load_loses_no_admission(
    release: Release, governed: str, k8s_api: client.ApiClient
) -> None:
    """A replica that is deleted (a node drain, an eviction, a rollout: SIGTERM) drains and
    loses no admission. One that is SIGKILLed loses the reviews it was answering at that
    instant (the API server does not retry a POST whose connection broke): they fail open,
    are never refused, and the survivor's watcher reports them ``missing``."""
    victim = leader(release)  # also the one reporting: a follower must take the lease over
    with load(k8s_api, governed, "deleted") as running:
        time.sleep(3)
        release.cluster.kubectl(
            "delete", "pod", victim["metadata"]["name"], "-n", release.namespace, "--wait=false"
        )
        wait_until(
            lambda: (
                len(release.ready_operator_pods()) == 2
                and victim["metadata"]["uid"]
                not in {p["metadata"]["uid"] for p in release.operator_pods()}
            ),
            "the deleted replica replaced",
            timeout=120,
        )
        time.sleep(3)
    running.report("one of two replicas deleted under load")
    if running.failures or running.unmutated:
        print_operator_logs(release)
    assert running.failures == []
    assert running.unmutated == []
    assert running.wrong() == []

    victim = wait_until(lambda: leader(release), "a leader among the replicas", timeout=60)
    name = victim["metadata"]["name"]
    with load(k8s_api, governed, "killed") as killed:
        time.sleep(3)
        count = kill(release, victim)
        wait_until(lambda: restarted(release, name, count), f"{name} restarted", timeout=90)
        time.sleep(3)
    killed.report("one of two replicas SIGKILLed under load")
    assert killed.failures == []
    assert killed.wrong() == []
    unmutated = set(killed.unmutated)
    assert len(unmutated) <= 2, "more reviews lost than were in flight at the kill"

    def reported() -> bool:
        return unmutated <= noncompliant(leader_metrics(release), governed)

    wait_until(reported, "the lost ones reported missing", timeout=60)


def test_killing_every_replica_fails_open_and_the_pods_are_reported_missing(
    release: Release, governed: str, k8s_api: client.ApiClient
) -> None:
    """failurePolicy Ignore: while no replica runs, pods are created without a value; once
    the operator is back, its watcher reports each of them ``missing``."""
    victims = release.ready_operator_pods()
    assert len(victims) == 2
    with load(k8s_api, governed, "down") as running:
        time.sleep(2)
        counts = {p["metadata"]["name"]: kill(release, p) for p in victims}
        for name, count in counts.items():
            wait_until(lambda n=name, c=count: restarted(release, n, c), f"{name} back", 90)
        time.sleep(2)
    running.report("every replica killed under load")
    assert running.failures == []  # failing open: every create succeeds
    assert running.wrong() == []
    unmutated = set(running.unmutated)
    assert unmutated, "no pod was created while the operator was down"
    assert len(unmutated) < len(running.created)

    def reported() -> set[str] | None:
        missing = noncompliant(leader_metrics(release), governed)
        return missing if unmutated <= missing else None

    missing = wait_until(reported, "the unmutated pods reported missing", timeout=90)
    # Pods that got their value are not reported.
    assert missing & {c.name for c in running.created if c.value == VALUE} == set()


def elapsed(since: float) -> str:
    return f"{time.monotonic() - since:.1f}s"


def _fail_open_lines(cluster: ControlPlane, last: int = 5) -> list[str]:
    """The API server's own words for the reviews it failed open (its log)."""
    log = cluster.log_dir / "kube-apiserver.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line[:400] for line in lines if "ailing open" in line][-last:]


def _create(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl(
        "create", "-n", namespace, "-o", "json", "-f", "-", input=json.dumps(pod_manifest(name))
    )
    return dict(json.loads(out.stdout))


def test_failing_closed_spares_its_own_namespace_and_kube_system_and_recovers(
    release: Release, governed: str
) -> None:
    cluster = release.cluster
    deployment = ("deployment", release.fullname, "-n", release.namespace)
    release.install("--set=webhook.failurePolicy=Fail", command="upgrade")
    try:
        # A crash under Fail: refused while down, admitted again once the kubelet restarted
        # it, with nobody doing anything.
        victims = release.ready_operator_pods()
        counts = {p["metadata"]["name"]: kill(release, p) for p in victims}
        refused = 0
        started = time.monotonic()

        def admitted() -> dict[str, Any] | None:
            nonlocal refused
            try:
                return _create(cluster, governed, f"recover-{refused}-{time.monotonic_ns()}")
            except KubectlError as exc:
                if "failed calling webhook" not in str(exc.stderr):
                    raise  # wait_until reports it if it lasts
                refused += 1
                return None

        pod = wait_until(admitted, "a pod admitted after the crash", timeout=120, interval=0.2)
        took = time.monotonic() - started
        print(f"fail closed: {refused} refused, then admitted again after {took:.1f}s")
        assert gomemlimit(pod) == VALUE
        for name, count in counts.items():
            wait_until(lambda n=name, c=count: restarted(release, n, c), f"{name} back", 90)

        # Down for good (scaled to zero): only the exempt namespaces admit pods.
        cluster.kubectl("scale", *deployment, "--replicas=0")
        wait_until(lambda: not release.operator_pods(), "no operator pod", timeout=90)
        with pytest.raises(KubectlError) as refusal:
            _create(cluster, governed, "refused")
        assert "failed calling webhook" in str(refusal.value.stderr)
        assert gomemlimit(_create(cluster, release.namespace, "own")) is None
        assert gomemlimit(_create(cluster, "kube-system", "faults-kube-system")) is None

        # The emergency procedure: fail open until the operator is back.
        cluster.kubectl(
            "patch", "mutatingwebhookconfiguration", release.fullname, "--type=json",
            "-p", EMERGENCY_PATCH,
        )  # fmt: skip
        assert gomemlimit(_create(cluster, governed, "emergency")) is None
    finally:
        cluster.kubectl("delete", "pod", "faults-kube-system", "-n", "kube-system", check=False)
        cluster.kubectl("delete", "pod", "own", "-n", release.namespace, check=False)
        release.install(command="upgrade")  # back to the release's values: Ignore, 2 replicas
    assert len(release.ready_operator_pods()) == 2
    assert gomemlimit(_create(cluster, governed, "after")) == VALUE


def test_an_api_server_restart_resyncs_the_watcher_without_counting_twice(
    release: Release, k8s_api: client.ApiClient
) -> None:
    cluster = release.cluster
    namespace = governed_namespace(cluster, "faults-restart")
    core = client.CoreV1Api(k8s_api)
    try:
        for n in range(9):
            assert gomemlimit(_create(cluster, namespace, f"before-{n}")) == VALUE

        def converged(states: dict[str, int]) -> dict[tuple[str, frozenset[Any]], float] | None:
            samples = leader_metrics(release)
            listed = core.list_pod_for_all_namespaces(
                field_selector="status.phase!=Succeeded,status.phase!=Failed"
            ).items
            watched = samples.get(("gomemlimit_watched_pods", frozenset()))
            if containers(samples, namespace) == states and watched == len(listed):
                return samples
            return None

        before = wait_until(lambda: converged({"compliant": 9}), "the figures before", 60)
        down = cluster.restart_apiserver()
        print(f"kube-apiserver was unavailable for {down:.1f}s")
        # Right after its start the API server may fail open for a moment: its informers
        # (the webhook's Service among them) are still syncing. Such pods are then reported.
        values: list[str | None] = []

        def mutated_again() -> bool:
            values.append(gomemlimit(_create(cluster, namespace, f"after-{len(values)}")))
            return values[-1] == VALUE

        started = time.monotonic()
        wait_until(mutated_again, "a pod mutated after the restart", timeout=90, interval=0.5)
        print(f"after the restart: {values}, the first value after {elapsed(started)}")
        for line in _fail_open_lines(cluster):
            print(line)
        values += [gomemlimit(_create(cluster, namespace, f"after-{len(values)}"))]
        assert values[-1] == VALUE
        assert set(values) <= {VALUE, None}
        unmutated = values.count(None)
        expected = {"compliant": 9 + len(values) - unmutated, "missing": unmutated}
        after = wait_until(
            lambda: converged({k: v for k, v in expected.items() if v}),
            "the figures after the restart",
            120,
        )
        synced = ("gomemlimit_watcher_synced", frozenset())
        assert before[synced] == after[synced] == 1
        missing = noncompliant(after, namespace)
        assert missing == {f"after-{n}" for n, value in enumerate(values) if value is None}
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
