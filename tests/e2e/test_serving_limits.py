"""The webhook's own server through the real API server: the limits that kopf's server got
wrong (issue 13, "Request handling").

* A pod between 1 and 3 MiB (kopf's server answered 413 above 1 MiB, so the API server failed
  open and the pod went without a value) is mutated.
* A configuration that also sends UPDATE: ``kubectl label pod`` still works, the pod is not
  patched, and the review is counted as ``ignored``. With ``failurePolicy: Fail``, so that any
  error answer of ours would show as a refused update.
* A configuration with a wrong path: the API server gets 404 and the request is counted
  (kopf allowed it silently).

The limits on connections (timeouts, the cap) and bodies are tested against the same server
in tests/unit/runtime/test_webhook_server.py; they need no API server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gomemlimit_operator.install.webhook_configuration import (
    build_webhook_configuration,
    url_client_config,
)
from tests.cluster.controlplane import ControlPlane, KubectlError
from tests.e2e.operator_harness import (
    OperatorProcess,
    apply,
    cluster_policies,
    crds,
    get,
    operator_process,
    operator_service,
    wait_until,
)

__all__ = ["cluster_policies", "crds", "operator_process", "operator_service"]

IMAGE = "registry.invalid/app:1"


def pod(name: str, env: list[dict[str, str]] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "image": IMAGE,
        "resources": {"limits": {"memory": "512Mi"}},
    }
    if env:
        container["env"] = env
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [container]},
    }


def gomemlimit(obj: dict[str, Any]) -> list[str]:
    env = obj["spec"]["containers"][0].get("env") or []
    return [e.get("value", "<valueFrom>") for e in env if e["name"] == "GOMEMLIMIT"]


def counted(operator: OperatorProcess, name: str, **labels: str) -> float:
    return operator.metric(name, **labels)


@pytest.fixture
def governed(
    namespace: str,
    cluster_policies: Callable[..., dict[str, Any]],
    operator_process: OperatorProcess,
) -> str:
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    cluster_policies("serving", {"namespaceSelector": selector})
    return namespace


@pytest.fixture
def extra_configuration(
    cluster: ControlPlane, namespace: str, operator_process: OperatorProcess
) -> Iterator[Callable[..., None]]:
    """Add a second MutatingWebhookConfiguration for this namespace that calls the session
    operator (its --dev CA, its port), with other operations or another path."""
    names: list[str] = []
    dev = get(cluster, "mutatingwebhookconfiguration", operator_process.webhook_name)
    ca = base64.b64decode(dev["webhooks"][0]["clientConfig"]["caBundle"])

    def make(suffix: str, *, operations: list[str], path: str) -> None:
        name = f"e2e-{suffix}-{namespace}"[:63]
        url = f"https://127.0.0.1:{operator_process.webhook_port}{path}"
        configuration = build_webhook_configuration(
            name=name,
            client_config=url_client_config(url, ca),
            exempt_namespaces=(),
            only_namespaces=(namespace,),
            failure_policy="Fail",
        )
        (hook,) = configuration["webhooks"]
        hook["name"] = f"{suffix}.e2e.gomemlimit.io"
        hook["rules"][0]["operations"] = operations
        apply(cluster, configuration)
        names.append(name)

    yield make
    for name in names:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")


def test_a_pod_between_1_and_3_mib_gets_its_value(
    cluster: ControlPlane, governed: str, operator_process: OperatorProcess
) -> None:
    mutated = counted(operator_process, "gomemlimit_admission_requests_total", result="mutated")
    manifest = pod("big", env=[{"name": "PAYLOAD", "value": "x" * (2 * 1024 * 1024)}])
    result = cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-n", governed, "-f", "-",
        input=json.dumps(manifest),
    )  # fmt: skip
    preview = json.loads(result.stdout)
    assert gomemlimit(preview) == ["460MiB"]
    assert len(json.dumps(preview)) > 2 * 1024 * 1024
    assert (
        counted(operator_process, "gomemlimit_admission_requests_total", result="mutated")
        == mutated + 1
    )
    assert (
        counted(
            operator_process, "gomemlimit_admission_rejected_requests_total", reason="too_large"
        )
        == 0
    )


def test_an_update_sent_to_the_webhook_is_allowed_unchanged_and_counted(
    cluster: ControlPlane,
    governed: str,
    operator_process: OperatorProcess,
    extra_configuration: Callable[..., None],
) -> None:
    apply(cluster, pod("labelled"), namespace=governed)
    created = get(cluster, "pod", "labelled", "-n", governed)
    assert gomemlimit(created) == ["460MiB"]
    extra_configuration("update", operations=["UPDATE"], path="/gomemlimit-pod-mutate")
    ignored = counted(operator_process, "gomemlimit_admission_requests_total", result="ignored")

    def labelled() -> bool:
        cluster.kubectl("label", "pod", "labelled", "-n", governed, "--overwrite", "team=a")
        return (
            counted(operator_process, "gomemlimit_admission_requests_total", result="ignored")
            > ignored
        )

    # The API server's webhook informer picks the new configuration up after a moment.
    wait_until(labelled, "an UPDATE review reaching the webhook", timeout=30, interval=0.5)
    cluster.kubectl("annotate", "pod", "labelled", "-n", governed, "note=x")
    after = get(cluster, "pod", "labelled", "-n", governed)
    assert after["metadata"]["labels"]["team"] == "a"
    assert after["metadata"]["annotations"]["note"] == "x"
    assert after["spec"] == created["spec"]  # nothing patched on UPDATE
    assert (
        counted(operator_process, "gomemlimit_admission_requests_total", result="ignored")
        >= ignored + 2
    )


def test_a_wrong_path_is_refused_with_404_and_counted(
    cluster: ControlPlane,
    governed: str,
    operator_process: OperatorProcess,
    extra_configuration: Callable[..., None],
) -> None:
    before = counted(
        operator_process, "gomemlimit_admission_rejected_requests_total", reason="unknown_path"
    )
    extra_configuration("wrong-path", operations=["CREATE"], path="/mutate")

    def refused() -> str | None:
        try:
            cluster.kubectl(
                "create", "--dry-run=server", "-o", "json", "-n", governed, "-f", "-",
                input=json.dumps(pod("wrong-path")),
            )  # fmt: skip
        except KubectlError as exc:
            return str(exc)
        return None

    message = wait_until(refused, "the API server calling the wrong path", timeout=30)
    assert "wrong-path.e2e.gomemlimit.io" in message  # failurePolicy Fail: the call failed
    after = counted(
        operator_process, "gomemlimit_admission_rejected_requests_total", reason="unknown_path"
    )
    assert after > before
