"""The MutatingWebhookConfiguration of the pod webhook, and its ``--dev`` registration.

:func:`build_webhook_configuration` is pure: the install (Helm chart) can use or check it.
:class:`DevWebhookRegistration` creates or replaces the URL-based configuration that
``gomemlimit operator --dev`` points at itself, and deletes it on exit.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .engine import ANNOTATION_MIRROR, ANNOTATION_SKIP

__all__ = [
    "MATCH_CONDITIONS",
    "WEBHOOK_NAME",
    "DevWebhookRegistration",
    "build_webhook_configuration",
    "service_client_config",
    "url_client_config",
]

logger = logging.getLogger(__name__)

WEBHOOK_NAME: Final = "pods.gomemlimit.io"
"""The name of the one webhook entry (must be a fully qualified name)."""

MATCH_CONDITIONS: Final[tuple[dict[str, str], ...]] = (
    {
        "name": "not-opted-out",
        "expression": (
            "!has(object.metadata.annotations) || "
            f"!('{ANNOTATION_SKIP}' in object.metadata.annotations) || "
            f"object.metadata.annotations['{ANNOTATION_SKIP}'].lowerAscii() != 'true'"
        ),
    },
    {
        "name": "not-a-mirror-pod",
        "expression": (
            "!has(object.metadata.annotations) || "
            f"!('{ANNOTATION_MIRROR}' in object.metadata.annotations)"
        ),
    },
)
"""CEL conditions: the API server does not even call us for opted-out and mirror pods.
The handler checks both again, so a configuration without them is still correct."""


def url_client_config(url: str, ca_bundle: bytes) -> dict[str, str]:
    """clientConfig for a webhook reached by URL (local clusters: https://127.0.0.1:PORT/ID)."""
    return {"url": url, "caBundle": base64.b64encode(ca_bundle).decode("ascii")}


def service_client_config(
    service: str, namespace: str, port: int, path: str, ca_bundle: bytes | None = None
) -> dict[str, Any]:
    """clientConfig for a webhook behind a Service (in-cluster installs)."""
    config: dict[str, Any] = {
        "service": {"name": service, "namespace": namespace, "port": port, "path": path}
    }
    if ca_bundle is not None:
        config["caBundle"] = base64.b64encode(ca_bundle).decode("ascii")
    return config


def build_webhook_configuration(
    *,
    name: str,
    client_config: Mapping[str, Any],
    exempt_namespaces: Iterable[str],
    only_namespaces: Iterable[str] = (),
    timeout_seconds: int = 2,
    failure_policy: str = "Ignore",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The admissionregistration.k8s.io/v1 MutatingWebhookConfiguration for pod CREATE.

    reinvocationPolicy IfNeeded (a later webhook may change limits), sideEffects None (we
    have none, so dry-run requests reach us), exempt namespaces excluded by their
    ``kubernetes.io/metadata.name`` label (and, with ``only_namespaces``, every namespace not
    listed), opted-out and mirror pods excluded by CEL.
    """
    if not 1 <= timeout_seconds <= 30:
        raise ValueError("timeoutSeconds must be from 1 to 30")
    if failure_policy not in ("Ignore", "Fail"):
        raise ValueError("failurePolicy must be Ignore or Fail")
    exempt = sorted(set(exempt_namespaces))
    expressions: list[dict[str, Any]] = [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": exempt}
    ]
    only = sorted(set(only_namespaces) - set(exempt))
    if set(only_namespaces):
        if not only:
            raise ValueError("every watched namespace is exempt: nothing would be mutated")
        expressions.append({"key": "kubernetes.io/metadata.name", "operator": "In", "values": only})
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "clientConfig": dict(client_config),
                "failurePolicy": failure_policy,
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "IfNeeded",
                "sideEffects": "None",
                "timeoutSeconds": timeout_seconds,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchExpressions": expressions},
                "matchConditions": [dict(condition) for condition in MATCH_CONDITIONS],
            }
        ],
    }


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
