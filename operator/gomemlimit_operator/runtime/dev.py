"""``gomemlimit operator --dev`` tooling: nothing here runs in an installed operator.

:class:`DevWebhookRegistration` creates or replaces the URL-based configuration (built by
``install.webhook_configuration``) that ``--dev`` points at itself, and deletes it on exit.
:class:`DevProbe` proves the API server really calls this process before it reports ready.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["PROBE_ANNOTATION", "DevProbe", "DevWebhookRegistration"]

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
