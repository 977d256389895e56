"""The MutatingWebhookConfiguration of the pod webhook, built from the API's constants.

Pure: the dev mode registers what :func:`build_webhook_configuration` returns, and the
install material (chart, manifests) is rendered from or checked against it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any, Final

from gomemlimit_operator.core.engine import ANNOTATION_MIRROR, ANNOTATION_SKIP

__all__ = [
    "MATCH_CONDITIONS",
    "WEBHOOK_NAME",
    "build_webhook_configuration",
    "service_client_config",
    "url_client_config",
]

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
    expressions: list[dict[str, Any]] = []
    if exempt:  # NotIn with no values is invalid: the API server refuses it
        expressions.append(
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": exempt}
        )
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
