"""``gomemlimit operator --dev`` tooling: nothing here runs in an installed operator.

The composition root (``app``) uses this module only when ``--dev`` is given:

* :func:`dev_certificates`: a self-signed CA and serving certificate, kept in anonymous
  in-memory files (:class:`MemoryFile`), so that no private key stays on disk after a crash;
* :func:`kubeconfig_files_in_memory`: the same for the files the Kubernetes client writes for
  a kubeconfig's ``*-data`` fields (a client key among them), for the out-of-cluster runs
  ``--kubeconfig`` is for (an in-cluster operator loads no kubeconfig);
* :class:`ProbeAnsweringWebhook`: the pod webhook, wrapped to answer :class:`DevProbe`'s
  dry-run pod (the production :class:`~.webhook.PodWebhook` knows nothing of it);
* :class:`DevMode`: once the webhook serves, registers the URL-based configuration (built by
  ``install.webhook_configuration``) through :class:`DevWebhookRegistration`, waits until the
  probe proves the API server really calls this process, and deletes the configuration on
  exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gomemlimit_operator.core.api import WEBHOOK_PATH
from gomemlimit_operator.install.webhook_configuration import (
    build_webhook_configuration,
    url_client_config,
)
from gomemlimit_operator.runtime import certs
from gomemlimit_operator.runtime.config import OperatorConfig
from gomemlimit_operator.runtime.webhook import Admission, PodWebhook, reachable_host

__all__ = [
    "PROBE_ANNOTATION",
    "READY_DEV",
    "DevMode",
    "DevProbe",
    "DevWebhookRegistration",
    "MemoryFile",
    "ProbeAnsweringWebhook",
    "dev_certificates",
    "kubeconfig_files_in_memory",
]

READY_DEV: Final = "dev-webhook-configuration"
"""The readiness check that passes once the API server has called the webhook."""

logger = logging.getLogger(__name__)


class DevWebhookRegistration:
    """Creates (or replaces) one MutatingWebhookConfiguration, and deletes it again.

    ``api`` is a ``kubernetes.client.AdmissionregistrationV1Api``. Calls are synchronous:
    run them in a thread from async code.
    """

    def __init__(self, api: Any, body: Mapping[str, Any]) -> None:
        self._api = api
        self._body = dict(body)
        self.name: str = str(body["metadata"]["name"])
        self.registered = False

    def register(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._api.create_mutating_webhook_configuration(body=self._body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = self._api.read_mutating_webhook_configuration(self.name)
            body = dict(self._body)
            body["metadata"] = {
                **body["metadata"],
                "resourceVersion": current.metadata.resource_version,
            }
            self._api.replace_mutating_webhook_configuration(self.name, body=body)
            logger.info("Replaced the existing MutatingWebhookConfiguration %s.", self.name)
        else:
            logger.info("Created MutatingWebhookConfiguration %s.", self.name)
        self.registered = True

    def remove(self) -> None:
        """Delete the configuration; a missing one is fine. Safe to call twice."""
        from kubernetes.client.exceptions import ApiException

        if not self.registered:
            return
        try:
            self._api.delete_mutating_webhook_configuration(self.name, _request_timeout=10)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.registered = False
        logger.info("Deleted MutatingWebhookConfiguration %s.", self.name)


PROBE_ANNOTATION: Final = "gomemlimit.io/dev-probe"


class DevProbe:
    """Proves that the API server really calls this process's webhook.

    After registering the configuration, ``--dev`` creates a dry-run pod (nothing is stored)
    carrying a random nonce; the webhook handler recognises it, calls :meth:`seen`, and answers
    without a patch. Only then is the operator ready: the API server's webhook informer may
    need a moment to pick up a new configuration.
    """

    def __init__(self, nonce: str | None = None) -> None:
        import secrets

        self.nonce = nonce or secrets.token_hex(8)
        self._seen = False

    def matches(self, annotations: Mapping[str, Any], dryrun: bool) -> bool:
        return dryrun and annotations.get(PROBE_ANNOTATION) == self.nonce

    def seen(self) -> None:
        self._seen = True

    @property
    def confirmed(self) -> bool:
        return self._seen

    def pod(self, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "gomemlimit-dev-probe-",
                "namespace": namespace,
                "annotations": {PROBE_ANNOTATION: self.nonce},
            },
            "spec": {"containers": [{"name": "probe", "image": "registry.k8s.io/pause:3.10"}]},
        }

    def send(self, core_api: Any, namespace: str) -> None:
        """One dry-run create (synchronous; run it in a thread)."""
        core_api.create_namespaced_pod(
            namespace, self.pod(namespace), dry_run="All", _request_timeout=10
        )


@dataclass(frozen=True)
class MemoryFile:
    """A file with no name in any directory: ``path`` is ``/proc/self/fd/<fd>``.

    Opening ``path`` opens the file afresh (its own offset), so it can be read any number of
    times, by ``ssl.SSLContext.load_cert_chain`` and by the webhook server's periodic
    re-reads, for as long as this process keeps ``fd`` open. When the process ends, however
    it ends (SIGKILL included), the kernel closes ``fd`` and frees the file: nothing is left
    behind to clean up.

    Made with :func:`os.memfd_create` (Linux; the bytes live in memory only, sealed against
    writes), or where that is missing, as an unlinked temporary file (the name is gone the
    moment it is made). :meth:`create` raises OSError where neither can be read back through
    ``/proc/self/fd`` (no procfs).
    """

    fd: int
    in_memory: bool
    """True for a memfd; False for the unlinked-temporary-file fallback."""

    @property
    def path(self) -> Path:
        return Path(f"/proc/self/fd/{self.fd}")

    @classmethod
    def create(cls, name: str, data: bytes) -> MemoryFile:
        """A new file holding ``data``, read back once through :attr:`path` to prove it."""
        memory_file = cls(*_anonymous_descriptor(name))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(memory_file.fd, view) :]
            if memory_file.in_memory:
                import fcntl

                seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                fcntl.fcntl(memory_file.fd, fcntl.F_ADD_SEALS, seals | fcntl.F_SEAL_WRITE)
            if memory_file.path.read_bytes() != data:
                raise OSError(f"{memory_file.path} does not read back what was written")
        except BaseException:
            memory_file.close()
            raise
        return memory_file

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _anonymous_descriptor(name: str) -> tuple[int, bool]:
    """(descriptor, in memory): a memfd, else an unlinked temporary file (mode 0600).

    Both are close-on-exec: no child process inherits them."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            return int(memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)), True
        except OSError as exc:  # ENOSYS before Linux 3.17, EPERM under some seccomp profiles
            logger.debug("memfd_create failed (%s); using an unlinked temporary file.", exc)
    descriptor, temporary = tempfile.mkstemp(prefix=".gomemlimit-dev-")
    os.unlink(temporary)  # before a single byte is written
    return descriptor, False


def dev_certificates(config: OperatorConfig, cert_dir: Path) -> tuple[Path, Path, bytes]:
    """(certificate file, key file, CA bundle): self-signed, for the in-cluster service names
    and the addresses the webhook is bound to and reached at.

    The certificate and its key are :class:`MemoryFile` objects (``/proc/self/fd/<n>``),
    open until the process ends: after a crash no private key is left on disk. The CA bundle
    is only returned (the dev configuration's ``caBundle``), never written. Only where
    ``/proc/self/fd`` cannot be read back (no procfs) are the files written to ``cert_dir``,
    as before, with a warning: they stay there until a clean exit removes the directory.
    """
    hosts = [
        *certs.default_hosts(config.namespace),
        reachable_host(config.bind_host),
        config.bind_host,
    ]
    bundle = certs.generate(hosts)
    try:
        key = MemoryFile.create("gomemlimit-dev-tls.key", bundle.key_pem)
    except OSError as exc:
        logger.warning(
            "Cannot keep the dev certificate in memory (%s); writing it to %s, which only a "
            "clean exit removes.",
            exc,
            cert_dir,
        )
        files = certs.write_files(bundle, cert_dir)
        return files.cert_file, files.key_file, bundle.ca_pem
    try:
        cert = MemoryFile.create("gomemlimit-dev-tls.crt", bundle.cert_pem)
    except BaseException:
        key.close()
        raise
    logger.info(
        "Dev certificate and key kept %s, in no directory.",
        "in memory (memfd)" if key.in_memory else "in unlinked temporary files",
    )
    return cert.path, key.path, bundle.ca_pem


_KUBECONFIG_FILES: Final = ("ssl_ca_cert", "cert_file", "key_file")
"""The ``kubernetes.client.Configuration`` attributes that name files."""
_MOVED: dict[str, MemoryFile] = {}
"""Files of the Kubernetes client already moved into memory, by the path it wrote them to:
it caches them by content, so loading the same kubeconfig again names the same path."""


@contextlib.contextmanager
def kubeconfig_files_in_memory(configuration: Any) -> Iterator[str]:
    """Around ``kubernetes.config.load_kube_config(..., temp_file_path=<the yielded path>)``:
    afterwards, what the client wrote there for ``certificate-authority-data``,
    ``client-certificate-data`` and ``client-key-data`` is in :class:`MemoryFile` objects
    that ``configuration`` names instead, and the directory is gone.

    Without this the client key stays in ``$TMPDIR`` after a SIGKILL: the client removes
    those files only in an ``atexit`` handler. Files the kubeconfig names by path are left
    alone. Where no :class:`MemoryFile` can be made, the files stay where the client wrote
    them (a private directory), as before, with a warning.
    """
    scratch = tempfile.mkdtemp(prefix="gomemlimit-kubeconfig-")  # mode 0700
    keep = False
    try:
        yield scratch
        for attribute in _KUBECONFIG_FILES:
            path = getattr(configuration, attribute, None)
            if not isinstance(path, str):
                continue
            moved = _MOVED.get(path)
            if moved is None:
                if Path(path).parent != Path(scratch):
                    continue
                try:
                    moved = MemoryFile.create(f"kubeconfig-{attribute}", Path(path).read_bytes())
                except OSError as exc:
                    logger.warning(
                        "Cannot keep the kubeconfig's credentials in memory (%s); they stay "
                        "in %s until the process exits.",
                        exc,
                        scratch,
                    )
                    keep = True
                    return
                _MOVED[path] = moved
            setattr(configuration, attribute, str(moved.path))
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


class ProbeAnsweringWebhook(PodWebhook):
    """The pod webhook that also answers :class:`DevProbe`'s dry-run pod: that request is
    allowed without a patch, and not counted; every other request is the production path."""

    def __init__(self, *args: Any, probe: DevProbe, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe = probe

    async def decide(self, pod: Mapping[str, Any], dryrun: bool) -> Admission | None:
        metadata = pod.get("metadata")
        annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
        if isinstance(annotations, Mapping) and self.probe.matches(annotations, dryrun):
            self.probe.seen()
            return None
        return await super().decide(pod, dryrun)


def _probe_namespace(config: OperatorConfig) -> str | None:
    for namespace in ["default", *config.watch_namespaces]:
        if not config.exempt(namespace):
            return namespace
    return None


class DevMode:
    """Points the API server at this process, proves it calls, and cleans up on exit.

    ``api_client`` is the operator's ``kubernetes.client.ApiClient``; ``ca_bundle`` the CA of
    :func:`dev_certificates`; ``probe`` the one :class:`ProbeAnsweringWebhook` answers.
    """

    def __init__(
        self, config: OperatorConfig, api_client: Any, ca_bundle: bytes, probe: DevProbe
    ) -> None:
        import kubernetes

        self.config = config
        self.probe = probe
        self.url = f"https://{reachable_host(config.bind_host)}:{config.webhook_port}{WEBHOOK_PATH}"
        body = build_webhook_configuration(
            name=config.dev_webhook_name,
            client_config=url_client_config(self.url, ca_bundle),
            exempt_namespaces=config.exempt_namespaces,
            only_namespaces=config.watch_namespaces,
            timeout_seconds=config.webhook_timeout_seconds,
            labels={"app.kubernetes.io/managed-by": "gomemlimit-operator-dev"},
        )
        self.registration = DevWebhookRegistration(
            kubernetes.client.AdmissionregistrationV1Api(api_client), body
        )
        self._core = kubernetes.client.CoreV1Api(api_client)

    async def run(self, serving: asyncio.Event, on_ready: Callable[[], None]) -> None:
        """Once ``serving`` is set: register (retrying), then probe until the API server calls
        the webhook, then ``on_ready()``."""
        await serving.wait()
        registration = self.registration
        attempt = 0
        while not registration.registered:
            try:
                await asyncio.to_thread(registration.register)
            except Exception as exc:
                attempt += 1
                logger.warning("Could not register the dev webhook configuration: %s", exc)
                await asyncio.sleep(min(5.0, 0.5 * attempt))
        logger.info("Dev webhook configuration %s points at %s.", registration.name, self.url)

        probe_namespace = _probe_namespace(self.config)
        if probe_namespace is None:
            logger.warning(
                "No namespace to probe the webhook from; not waiting for the API server."
            )
            on_ready()
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        warned = 0.0
        while not self.probe.confirmed:
            try:
                await asyncio.to_thread(self.probe.send, self._core, probe_namespace)
            except Exception as exc:
                logger.debug("Dev webhook probe failed: %s", exc)
            if self.probe.confirmed:
                break
            waited = loop.time() - started
            if waited - warned > 10:
                warned = waited
                logger.warning("The API server has not called the webhook yet (%.0fs).", waited)
            await asyncio.sleep(0.2 if waited < 10 else 2.0)
        logger.info("The API server calls the webhook; ready.")
        on_ready()

    async def remove(self) -> None:
        """Delete the configuration if it was registered; errors are logged, not raised."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self.registration.remove), timeout=15)
        except Exception as exc:
            logger.error("Could not delete %s: %s", self.registration.name, exc)
