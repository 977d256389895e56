"""``--manage-certificates``: the operator keeps its own CA and serving certificate.

Like Gatekeeper's cert-controller and Kyverno's renewer, every replica runs
:class:`CertificateManager`, which at start (before the webhook serves) and then every
:attr:`CertificatePolicy.check_interval`:

1. reads the MutatingWebhookConfiguration, then the Secret (in that order: see
   :meth:`CertificateManager._patch_ca_bundles`);
2. decides with :func:`plan` whether the Secret's CA and serving certificate can be used as
   they are. A new CA is made when there is none (the install creates the Secret empty), it
   is invalid, or it is due; a new serving certificate when there is none, it is invalid, for
   other names, signed by no CA of the bundle, or due. The CA is reused while it is valid, so
   the caBundle stays the same across serving-certificate renewals;
3. writes a changed Secret back with its ``resourceVersion`` (optimistic concurrency): when
   two replicas rotate at once, one wins; the other gets 409 Conflict, re-reads and uses the
   winner's certificate;
4. writes ``tls.crt``/``tls.key``/``ca.crt`` into the certificate directory when they differ,
   each atomically (a temporary file, then a rename), and both in one synchronous step on the
   event loop: the webhook server checks the files from the same loop, so it never sees a new
   certificate with an old key. It reloads them within its file check interval, no restart;
5. patches each webhook entry's ``clientConfig.caBundle`` (a JSON patch of that field only)
   when it differs from the CA bundle.

**The rotation rule.** A certificate is due when less than ``min(validity / 3, 90 days)`` of
it remains, where ``validity`` is the configured lifetime (``--certificate-validity-hours``,
or ``--certificate-validity-seconds`` for tests; ``--ca-validity-days`` for the CA). With the
defaults, the serving certificate (one year) is renewed 90 days before it expires, and the CA
(ten years) 90 days before it does. A changed validity applies from the next renewal.

**CA renewal without failed admissions.** A new CA is put first in ``ca.crt``, and the older
CAs that are still valid stay after it, so the caBundle trusts both during the overlap. The
serving certificate signed by the old CA stays in use until the new CA is in every entry's
caBundle; the next pass, a few seconds later, reissues it from the new CA. (Only a Secret with
no usable serving certificate gets one from an unpublished CA: there is nothing to keep.) An
old CA leaves the bundle when it expires.

The API calls are synchronous (``kubernetes`` client) and run in threads; :class:`CertificateApi`
is what they need, and tests give an in-memory one. The RBAC this needs: Secrets get, update
(and patch, unused) by ``resourceNames: [<secret>]``; mutatingwebhookconfigurations get and
patch by ``resourceNames: [<configuration>]``. Never create, list or watch.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client import CollectorRegistry, Counter, Gauge

from gomemlimit_operator.runtime import certs
from gomemlimit_operator.runtime.apierrors import describe

__all__ = [
    "CA_KEY",
    "CA_PEM",
    "KEYS",
    "READY_CERTIFICATES",
    "TLS_CERT",
    "TLS_KEY",
    "CertificateApi",
    "CertificateManager",
    "CertificateMetrics",
    "CertificatePolicy",
    "Conflict",
    "KubernetesCertificateApi",
    "Plan",
    "plan",
    "renew_before",
]

logger = logging.getLogger(__name__)

READY_CERTIFICATES: Final = "certificates"
"""The readiness check: the files are written and every caBundle holds the CA."""

CA_PEM: Final = "ca.crt"
CA_KEY: Final = "ca.key"
TLS_CERT: Final = "tls.crt"
TLS_KEY: Final = "tls.key"
KEYS: Final = (CA_PEM, CA_KEY, TLS_CERT, TLS_KEY)

MAX_RENEW_BEFORE: Final = datetime.timedelta(days=90)
MAX_CHECK_INTERVAL: Final = 300.0
"""Seconds between two checks at most (5 minutes); shorter for short validities."""
PUBLISH_DELAY: Final = 5.0
"""Seconds between a caBundle change and the pass that starts serving from the new CA."""
MAX_CAS: Final = 3
"""The bundle keeps the current CA and at most two older ones that are still valid."""
_CONFLICT_RETRIES: Final = 5
_SHA256: Final = hashes.SHA256()


def renew_before(validity: datetime.timedelta) -> datetime.timedelta:
    """How long before it expires a certificate of this lifetime is renewed."""
    return min(validity / 3, MAX_RENEW_BEFORE)


@dataclass(frozen=True)
class CertificatePolicy:
    """What the certificates must be: their names and lifetimes."""

    hosts: tuple[str, ...]
    serving_validity: datetime.timedelta
    ca_validity: datetime.timedelta

    @property
    def check_interval(self) -> float:
        """Seconds between two checks: 5 minutes, or a tenth of a short validity."""
        return max(0.5, min(MAX_CHECK_INTERVAL, self.serving_validity.total_seconds() / 10))

    @property
    def file_check_interval(self) -> float:
        """How often the webhook server should look for changed files: 10 s at most."""
        return max(0.25, min(10.0, self.serving_validity.total_seconds() / 20))

    @classmethod
    def for_service(
        cls,
        service: str,
        namespace: str,
        *,
        extra_hosts: Sequence[str] = (),
        serving_validity: datetime.timedelta,
        ca_validity: datetime.timedelta,
    ) -> CertificatePolicy:
        hosts = tuple(dict.fromkeys([*certs.service_dns_names(service, namespace), *extra_hosts]))
        return cls(hosts, serving_validity, ca_validity)


class Conflict(Exception):
    """Someone else changed the object since it was read (HTTP 409, or a failed test op)."""


class CertificateApi(Protocol):
    """The two objects, as JSON-like dicts (``data`` values in base64, as the API has them)."""

    def get_secret(self) -> dict[str, Any]: ...

    def replace_secret(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with ``metadata.resourceVersion``; :class:`Conflict` when it is stale."""
        ...

    def get_webhook_configuration(self) -> dict[str, Any]: ...

    def patch_webhook_configuration(self, operations: Sequence[Mapping[str, Any]]) -> None:
        """A JSON patch; :class:`Conflict` when a ``test`` operation fails."""
        ...


# ---------------------------------------------------------------------------------------------
# The decision: a pure function of the Secret's data, the published CAs and the time
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the Secret must hold. ``data`` is None when it can stay as it is."""

    ca_certs: tuple[x509.Certificate, ...]
    """The bundle: the current CA (which signs) first, then older ones still valid."""
    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes
    data: dict[str, bytes] | None
    rotated: tuple[str, ...] = ()
    """``"ca"`` and/or ``"serving"``: what this plan made new."""
    reasons: tuple[str, ...] = ()
    waiting: bool = False
    """The serving certificate waits for the new CA to reach the caBundle: check again soon."""

    @property
    def ca_bundle(self) -> bytes:
        return certs.certificate_pem(*self.ca_certs)


def _remaining(cert: x509.Certificate, now: datetime.datetime) -> datetime.timedelta:
    return cert.not_valid_after_utc - now


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issuer(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> x509.Certificate | None:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:
            continue
        return ca
    return None


def _current_ca(
    data: Mapping[str, bytes], policy: CertificatePolicy, now: datetime.datetime
) -> tuple[list[x509.Certificate], certs.PrivateKey | None, str | None]:
    """(the CA certificates in the Secret, the current CA's key or None, why it is unusable)."""
    try:
        cas = [ca for ca in certs.load_certificates(data.get(CA_PEM, b"")) if _is_ca(ca)]
    except ValueError:
        cas = []
    if not cas:
        return [], None, "no CA"
    try:
        key = certs.load_private_key(data.get(CA_KEY, b""))
    except (ValueError, TypeError):
        return cas, None, "no usable CA key"
    if not certs.key_matches(cas[0], key):
        return cas, None, "the CA key does not match the CA"
    if cas[0].not_valid_before_utc > now:
        return cas, None, "the CA is not valid yet"
    if _remaining(cas[0], now) <= renew_before(policy.ca_validity):
        return cas, key, f"the CA expires {cas[0].not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"
    return cas, key, None


def _serving_problem(
    data: Mapping[str, bytes],
    cas: Sequence[x509.Certificate],
    policy: CertificatePolicy,
    now: datetime.datetime,
) -> tuple[x509.Certificate | None, str | None, bool]:
    """(the serving certificate, why it must be replaced, whether it still works meanwhile)."""
    try:
        cert = certs.load_certificates(data.get(TLS_CERT, b""))[0]
        key = certs.load_private_key(data.get(TLS_KEY, b""))
    except (ValueError, TypeError, IndexError):
        return None, "no serving certificate", False
    if not certs.key_matches(cert, key):
        return cert, "the serving key does not match its certificate", False
    if certs.san_strings(cert) != certs.normalized_hosts(policy.hosts):
        return cert, "the serving certificate is for other names", False
    if _issuer(cert, cas) is None:
        return cert, "no CA of the bundle signed the serving certificate", False
    if cert.not_valid_before_utc > now or cert.not_valid_after_utc <= now:
        return cert, "the serving certificate is not valid now", False
    if _remaining(cert, now) <= renew_before(policy.serving_validity):
        return cert, f"it expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z", True
    return cert, None, True


def plan(
    data: Mapping[str, bytes],
    policy: CertificatePolicy,
    *,
    published: Callable[[x509.Certificate], bool],
    now: datetime.datetime | None = None,
) -> Plan:
    """What the Secret must hold, given its ``data`` (decoded bytes) and the time.

    ``published(ca)``: whether every webhook entry's caBundle already trusts ``ca``.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    cas, ca_key, ca_problem = _current_ca(data, policy, now)
    rotated: list[str] = []
    reasons: list[str] = []
    if ca_problem is not None or ca_key is None:
        new_ca, ca_key = certs.new_ca(valid_for=policy.ca_validity, now=now)
        older = [ca for ca in cas if _remaining(ca, now) > datetime.timedelta(0)]
        cas = [new_ca, *older][:MAX_CAS]
        rotated.append("ca")
        reasons.append(f"new CA: {ca_problem or 'no usable CA key'}")
    else:
        kept = [cas[0], *(ca for ca in cas[1:] if _remaining(ca, now) > datetime.timedelta(0))]
        cas = kept[:MAX_CAS]
    signer = cas[0]

    cert, problem, still_works = _serving_problem(data, cas, policy, now)
    waiting = False
    reissue = False
    if problem is not None and not still_works:
        reissue = True  # nothing to keep: even an unpublished CA is better than nothing
    elif cert is not None and _issuer(cert, [signer]) is None:
        # Signed by an older CA of the bundle: move to the current one once it is trusted.
        if published(signer):
            reissue = True
            problem = problem or "the CA was renewed"
        else:
            waiting = True
    elif problem is not None:
        reissue = True  # due, and the current CA signs it: the caBundle already trusts it

    if reissue:
        assert problem is not None
        new_cert, new_key = certs.issue_serving(
            signer, ca_key, policy.hosts, valid_for=policy.serving_validity, now=now
        )
        cert_pem, key_pem = certs.certificate_pem(new_cert), certs.private_key_pem(new_key)
        cert = new_cert
        rotated.append("serving")
        reasons.append(f"new serving certificate: {problem}")
    else:
        assert cert is not None
        cert_pem, key_pem = data[TLS_CERT], data[TLS_KEY]

    new_data = {
        CA_PEM: certs.certificate_pem(*cas),
        CA_KEY: certs.private_key_pem(ca_key),
        TLS_CERT: cert_pem,
        TLS_KEY: key_pem,
    }
    unchanged = all(data.get(name) == value for name, value in new_data.items())
    return Plan(
        ca_certs=tuple(cas),
        cert=cert,
        cert_pem=cert_pem,
        key_pem=key_pem,
        data=None if unchanged and not rotated else new_data,
        rotated=tuple(rotated),
        reasons=tuple(reasons),
        waiting=waiting,
    )


# ---------------------------------------------------------------------------------------------
# The caBundle of the webhook configuration
# ---------------------------------------------------------------------------------------------


def _entry_bundle(entry: Mapping[str, Any]) -> bytes:
    client_config = entry.get("clientConfig") or {}
    encoded = client_config.get("caBundle") or ""
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        return b""


def _trusted(bundle: bytes) -> set[bytes]:
    try:
        return {ca.fingerprint(_SHA256) for ca in certs.load_certificates(bundle)}
    except ValueError:
        return set()


def published_in(configuration: Mapping[str, Any]) -> Callable[[x509.Certificate], bool]:
    """Whether every entry of the configuration trusts a CA."""
    bundles = [_trusted(_entry_bundle(entry)) for entry in configuration.get("webhooks") or ()]

    def check(ca: x509.Certificate) -> bool:
        fingerprint = ca.fingerprint(_SHA256)
        return all(fingerprint in trusted for trusted in bundles)

    return check


def ca_bundle_patch(configuration: Mapping[str, Any], bundle: bytes) -> list[dict[str, Any]]:
    """The JSON patch that sets every entry's caBundle to ``bundle``: for each entry that
    differs, a ``test`` of its name and of the caBundle read, then an ``add`` of the new one.
    Empty when every entry already has it."""
    encoded = base64.b64encode(bundle).decode("ascii")
    operations: list[dict[str, Any]] = []
    for index, entry in enumerate(configuration.get("webhooks") or ()):
        if _entry_bundle(entry) == bundle:
            continue
        path = f"/webhooks/{index}"
        operations.append({"op": "test", "path": f"{path}/name", "value": entry.get("name")})
        current = (entry.get("clientConfig") or {}).get("caBundle")
        if current is not None:
            operations.append(
                {"op": "test", "path": f"{path}/clientConfig/caBundle", "value": current}
            )
        operations.append({"op": "add", "path": f"{path}/clientConfig/caBundle", "value": encoded})
    return operations


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


class CertificateMetrics:
    """``gomemlimit_certificate_expiry_timestamp_seconds{certificate="serving|ca"}``: when the
    certificate this replica serves, and the CA that signs new ones, expire;
    ``gomemlimit_certificate_rotations_total{certificate}``: rotations this replica wrote."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.expiry = Gauge(
            "gomemlimit_certificate_expiry_timestamp_seconds",
            "When the certificate expires (Unix time): serving is the one this replica "
            "serves, ca the CA that signs new ones (--manage-certificates).",
            ["certificate"],
            registry=registry,
        )
        self.rotations = Counter(
            "gomemlimit_certificate_rotations",
            "Certificates this replica made and wrote to the Secret (--manage-certificates).",
            ["certificate"],
            registry=registry,
        )
        for certificate in ("serving", "ca"):
            self.rotations.labels(certificate=certificate)


# ---------------------------------------------------------------------------------------------
# The manager
# ---------------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    plan: Plan
    wrote_secret: bool = False
    wrote_files: bool = False
    patched: bool = False
    conflicts: int = 0


def _decode(secret: Mapping[str, Any]) -> dict[str, bytes]:
    data = secret.get("data") or {}
    decoded: dict[str, bytes] = {}
    for name in KEYS:
        value = data.get(name)
        if isinstance(value, str):
            try:
                decoded[name] = base64.b64decode(value, validate=True)
            except ValueError:
                continue
    return decoded


def _expiry(cert: x509.Certificate) -> str:
    return f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"


class CertificateManager:
    """Keeps the Secret, the certificate files and the caBundle in step (see the module)."""

    def __init__(
        self,
        api: CertificateApi,
        policy: CertificatePolicy,
        cert_dir: Path,
        *,
        metrics: CertificateMetrics | None = None,
        on_ready: Callable[[bool], None] = lambda ready: None,
        description: str = "the certificate Secret",
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.api = api
        self.policy = policy
        self.cert_dir = cert_dir
        self.metrics = metrics
        self.on_ready = on_ready
        self.description = description
        self.clock = clock
        self.cert_file = cert_dir / TLS_CERT
        self.key_file = cert_dir / TLS_KEY
        self.ca_file = cert_dir / CA_PEM
        self.serving: x509.Certificate | None = None
        """The certificate in the files, once written."""

    # -- one pass --------------------------------------------------------------------------

    def _sync_secret(self) -> tuple[_Outcome, dict[str, Any]]:
        """Read both objects, plan, and write the Secret if needed, retrying on conflicts.
        Synchronous: run it in a thread. Returns the outcome and the configuration read."""
        conflicts = 0
        while True:
            configuration = self.api.get_webhook_configuration()
            secret = self.api.get_secret()
            result = plan(
                _decode(secret),
                self.policy,
                published=published_in(configuration),
                now=self.clock(),
            )
            if result.data is None:
                return _Outcome(result, conflicts=conflicts), configuration
            body = dict(secret)
            metadata = dict(body.get("metadata") or {})
            metadata.pop("managedFields", None)
            body["metadata"] = metadata
            body["data"] = {
                name: base64.b64encode(value).decode("ascii") for name, value in result.data.items()
            }
            body.pop("stringData", None)
            try:
                self.api.replace_secret(body)
            except Conflict:
                conflicts += 1
                if conflicts >= _CONFLICT_RETRIES:
                    raise
                logger.info(
                    "%s changed since it was read (another replica?); reading it again.",
                    self.description,
                )
                continue
            return _Outcome(result, wrote_secret=True, conflicts=conflicts), configuration

    def _write_files(self, result: Plan) -> bool:
        """The files, when they differ; on the event loop, in one step (see the module)."""
        wanted = (
            (self.ca_file, result.ca_bundle, 0o644),
            (self.key_file, result.key_pem, 0o600),
            (self.cert_file, result.cert_pem, 0o644),
        )

        def current(path: Path) -> bytes | None:
            try:
                return path.read_bytes()
            except OSError:
                return None

        if all(current(path) == data for path, data, _mode in wanted):
            return False
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        for path, data, mode in wanted:  # the key before the certificate
            certs.write_atomically(path, data, mode)
        return True

    def _patch_ca_bundles(self, configuration: Mapping[str, Any], bundle: bytes) -> bool:
        """Patch the entries whose caBundle differs. The configuration was read before the
        Secret, and every changed caBundle is tested against what was read: a replica that
        read an older Secret cannot put back an older bundle over a newer one."""
        operations = ca_bundle_patch(configuration, bundle)
        if not operations:
            return False
        self.api.patch_webhook_configuration(operations)
        return True

    async def reconcile(self) -> _Outcome:
        """One pass: the Secret, the files, the caBundle. Raises on API errors."""
        for _attempt in range(_CONFLICT_RETRIES):
            outcome, configuration = await asyncio.to_thread(self._sync_secret)
            result = outcome.plan
            if outcome.wrote_secret:
                for certificate in result.rotated:
                    if self.metrics is not None:
                        self.metrics.rotations.labels(certificate=certificate).inc()
                for certificate, reason in zip(result.rotated, result.reasons, strict=True):
                    cert = result.ca_certs[0] if certificate == "ca" else result.cert
                    logger.info(
                        "Rotated the %s certificate in %s (%s); it expires %s.",
                        "CA" if certificate == "ca" else "serving",
                        self.description,
                        reason,
                        _expiry(cert),
                    )
            outcome.wrote_files = self._write_files(result)
            if outcome.wrote_files:
                logger.info(
                    "Serving the certificate from %s; it expires %s.",
                    self.description,
                    _expiry(result.cert),
                )
            self.serving = result.cert
            if self.metrics is not None:
                self.metrics.expiry.labels(certificate="serving").set(
                    result.cert.not_valid_after_utc.timestamp()
                )
                self.metrics.expiry.labels(certificate="ca").set(
                    result.ca_certs[0].not_valid_after_utc.timestamp()
                )
            try:
                outcome.patched = await asyncio.to_thread(
                    self._patch_ca_bundles, configuration, result.ca_bundle
                )
            except Conflict:
                logger.info("The webhook configuration changed while it was patched; again.")
                continue
            if outcome.patched:
                logger.info(
                    "Set the caBundle of the webhook configuration to %d CA(s); the newest "
                    "expires %s.",
                    len(result.ca_certs),
                    _expiry(result.ca_certs[0]),
                )
            self.on_ready(True)
            return outcome
        raise Conflict("the webhook configuration kept changing")

    # -- the loops ---------------------------------------------------------------------------

    async def start(self) -> None:
        """The first pass, retried until it succeeds: the files exist when this returns."""
        attempt = 0
        while True:
            try:
                outcome = await self.reconcile()
            except Exception as exc:
                attempt += 1
                logger.warning(
                    "Cannot set up the webhook certificate (attempt %d): %s",
                    attempt,
                    _problem(exc),
                )
                await asyncio.sleep(min(10.0, 0.5 * 2 ** min(attempt, 5)))
                continue
            if outcome.plan.waiting:
                await asyncio.sleep(min(PUBLISH_DELAY, self.policy.check_interval))
                continue
            return

    async def run(self) -> None:
        """Check again every :attr:`CertificatePolicy.check_interval`, forever."""
        delay = self.policy.check_interval
        failures = 0
        while True:
            await asyncio.sleep(delay)
            try:
                outcome = await self.reconcile()
            except Exception as exc:
                failures += 1
                logger.warning("Cannot check the webhook certificate: %s", _problem(exc))
                self._expired_check()
                delay = min(self.policy.check_interval, 1.0 * 2 ** min(failures, 6))
                continue
            failures = 0
            delay = self.policy.check_interval
            if outcome.plan.waiting or outcome.patched:
                delay = min(delay, PUBLISH_DELAY)

    def _expired_check(self) -> None:
        """Not ready while the certificate in the files has expired."""
        if self.serving is not None and self.serving.not_valid_after_utc <= self.clock():
            self.on_ready(False)


def _problem(exc: BaseException) -> str:
    if isinstance(exc, Conflict):
        return str(exc) or "conflict"
    return describe(exc)


# ---------------------------------------------------------------------------------------------
# The Kubernetes API
# ---------------------------------------------------------------------------------------------


class KubernetesCertificateApi:
    """:class:`CertificateApi` with the ``kubernetes`` client: one Secret, one
    MutatingWebhookConfiguration, by name. Synchronous. Bodies are the API's JSON as is
    (``_preload_content=False``), so ``data`` and ``caBundle`` stay base64 text."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        secret_name: str,
        webhook_configuration_name: str,
        *,
        timeout: float = 10.0,
    ) -> None:
        import kubernetes

        self._core = kubernetes.client.CoreV1Api(api_client)
        self._admission = kubernetes.client.AdmissionregistrationV1Api(api_client)
        self.namespace = namespace
        self.secret_name = secret_name
        self.webhook_configuration_name = webhook_configuration_name
        self.timeout = timeout

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        body = json.loads(response.data)
        if not isinstance(body, dict):
            raise ValueError("the API server answered something other than an object")
        return body

    def get_secret(self) -> dict[str, Any]:
        return self._json(
            self._core.read_namespaced_secret(
                self.secret_name,
                self.namespace,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        )

    def replace_secret(self, body: Mapping[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._core.replace_namespaced_secret(
                self.secret_name,
                self.namespace,
                dict(body),  # type: ignore[arg-type]  # serialized as it is
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"Secret {self.namespace}/{self.secret_name}") from None
            raise
        return self._json(response)

    def get_webhook_configuration(self) -> dict[str, Any]:
        return self._json(
            self._admission.read_mutating_webhook_configuration(
                self.webhook_configuration_name,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        )

    def patch_webhook_configuration(self, operations: Sequence[Mapping[str, Any]]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._admission.patch_mutating_webhook_configuration(
                self.webhook_configuration_name,
                [dict(operation) for operation in operations],
                _content_type="application/json-patch+json",
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            if exc.status in (409, 422):  # 422: a test operation failed
                raise Conflict(
                    f"MutatingWebhookConfiguration {self.webhook_configuration_name}"
                ) from None
            raise
