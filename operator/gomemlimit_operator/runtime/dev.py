"""``gomemlimit operator --dev`` tooling: nothing here runs in an installed operator.

The composition root (``app``) uses this module only when ``--dev`` is given:

* :func:`dev_certificates`: a self-signed CA and serving certificate in a temporary directory;
* :class:`ProbeAnsweringWebhook`: the pod webhook, wrapped to answer :class:`DevProbe`'s
  dry-run pod (the production :class:`~.webhook.PodWebhook` knows nothing of it);
* :class:`DevMode`: once the webhook serves, registers the URL-based configuration (built by
  ``install.webhook_configuration``) through :class:`DevWebhookRegistration`, waits until the
  probe proves the API server really calls this process, and deletes the configuration on
  exit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
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
    "ProbeAnsweringWebhook",
    "dev_certificates",
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


def dev_certificates(config: OperatorConfig, cert_dir: Path) -> tuple[Path, Path, bytes]:
    """(certificate file, key file, CA bundle): self-signed, for the in-cluster service names
    and the addresses the webhook is bound to and reached at."""
    hosts = [
        *certs.default_hosts(config.namespace),
        reachable_host(config.bind_host),
        config.bind_host,
    ]
    bundle = certs.generate(hosts)
    files = certs.write_files(bundle, cert_dir)
    return files.cert_file, files.key_file, bundle.ca_pem


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
