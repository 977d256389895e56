"""The policy controller, end to end: precedence, validation, status and events."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gomemlimit_operator.core.engine import ANNOTATION_POLICY
from tests.cluster.controlplane import ControlPlane, KubectlError
from tests.e2e.operator_harness import (
    OperatorProcess,
    apply,
    cluster_policies,
    condition,
    crds,
    get,
    operator_process,
    operator_service,
    policy_yaml,
    wait_ready,
    wait_until,
)
from tests.unit.unit_helpers import INVALID_POLICY_SPECS  # one list for the models and the CRD

CRDS = Path(__file__).resolve().parents[2] / "crds"

__all__ = ["cluster_policies", "crds", "operator_process", "operator_service"]


@contextlib.contextmanager
def laxer_gogc(cluster: ControlPlane) -> Iterator[None]:
    """The GoMemPolicy CRD without its gogc length and range rules, for the duration."""
    crd = yaml.safe_load((CRDS / "gomemlimit.io_gomempolicies.yaml").read_text())
    gogc = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["gogc"]
    gogc.pop("maxLength")
    gogc.pop("x-kubernetes-validations")
    apply(cluster, crd)
    try:
        yield
    finally:
        cluster.kubectl("apply", "-f", str(CRDS / "gomemlimit.io_gomempolicies.yaml"))


def only(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def create_pod(
    cluster: ControlPlane, namespace: str, name: str, labels: dict[str, str]
) -> dict[str, Any]:
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.invalid/app:1",
                    "resources": {"limits": {"memory": "1000Mi"}},
                }
            ]
        },
    }
    apply(cluster, manifest, namespace=namespace)
    return dict(get(cluster, "pod", name, "-n", namespace))


def injected(pod_obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """(GOMEMLIMIT of the app container, the policy annotation)."""
    values = [
        e.get("value")
        for e in pod_obj["spec"]["containers"][0].get("env") or ()
        if e["name"] == "GOMEMLIMIT"
    ]
    return (
        values[0] if values else None,
        (pod_obj["metadata"].get("annotations") or {}).get(ANNOTATION_POLICY),
    )


def namespaced(
    cluster: ControlPlane, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    cluster.kubectl("apply", "-f", "-", input=policy_yaml("GoMemPolicy", name, spec, namespace))
    return wait_ready(cluster, "GoMemPolicy", name, namespace)


def test_namespaced_policy_beats_cluster_policies_and_priority_decides(
    cluster: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> None:
    # Ratios tell the winner apart: 1000Mi x ratio.
    cluster_policies("cluster-low", {"ratio": 0.5, **only(namespace)})
    cluster_policies("cluster-high", {"ratio": 0.6, "priority": 10, **only(namespace)})
    cluster_policies("cluster-high-b", {"ratio": 0.65, "priority": 10, **only(namespace)})
    # Equal priority: the lexically smallest name wins (cluster-high).
    assert injected(create_pod(cluster, namespace, "p1", {"app": "x"})) == (
        "600MiB",
        "ClusterGoMemPolicy/cluster-high",
    )

    namespaced(cluster, namespace, "team-low", {"ratio": 0.7, "priority": -5})
    # Any namespaced policy that selects the pod beats every cluster policy, whatever priority.
    assert injected(create_pod(cluster, namespace, "p2", {"app": "x"})) == (
        "700MiB",
        f"GoMemPolicy/{namespace}/team-low",
    )

    namespaced(
        cluster,
        namespace,
        "team-db",
        {"ratio": 0.8, "selector": {"matchLabels": {"tier": "db"}}, "priority": 1},
    )
    assert injected(create_pod(cluster, namespace, "p3", {"app": "x", "tier": "db"})) == (
        "800MiB",
        f"GoMemPolicy/{namespace}/team-db",
    )
    # The selector decides first: without tier=db, team-low still governs.
    assert (
        injected(create_pod(cluster, namespace, "p4", {"app": "x"}))[1]
        == f"GoMemPolicy/{namespace}/team-low"
    )

    # Deleting the namespaced policies hands the pods back to the cluster policies.
    cluster.kubectl("delete", "gomempolicies", "--all", "-n", namespace)
    wait_until(
        lambda: (
            injected(create_pod(cluster, namespace, f"p5-{time.monotonic_ns()}", {"app": "x"}))[1]
            == "ClusterGoMemPolicy/cluster-high"
        ),
        "the cluster policy to govern again",
        timeout=30,
    )


def test_namespace_labels_select_cluster_policies(
    cluster: ControlPlane,
    new_namespace: Callable[[], str],
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> None:
    blue, other = new_namespace(), new_namespace()
    team = f"blue-{secrets.token_hex(4)}"  # unique: cluster policies see every namespace
    cluster_policies("blue-team", {"namespaceSelector": {"matchLabels": {"e2e-team": team}}})
    # Labelled after the policy exists: the operator learns labels from namespace events.
    cluster.kubectl("label", "namespace", blue, f"e2e-team={team}")
    wait_until(
        lambda: (
            injected(create_pod(cluster, blue, f"p-{time.monotonic_ns()}", {"app": "x"}))[0]
            == "900MiB"
        ),
        "a pod in the labelled namespace to be mutated",
        timeout=30,
    )
    assert injected(create_pod(cluster, other, "q", {"app": "x"})) == (None, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"ratio": 1.5}, "spec.ratio"),
        (
            {"minHeadroom": "1Gi", "maxHeadroom": "64Mi"},
            "minHeadroom must not be greater than maxHeadroom",
        ),
        ({"maxHeadroom": 0}, "maxHeadroom must be greater than 0"),
        ({"mode": "dry"}, 'spec.mode: Unsupported value: "dry"'),
        ({"gogc": "2147483648"}, 'gogc must be "off" or an integer from 0 to 2147483647'),
        ({"minHeadroom": "10000000E"}, "minHeadroom must be at most 1e24 bytes"),
        (
            {"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "values must be non-empty for In and NotIn",
        ),
    ],
)
def test_the_crd_schema_rejects_invalid_policies_with_our_messages(
    cluster: ControlPlane, namespace: str, crds: None, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(KubectlError) as error:
        cluster.kubectl(
            "apply", "-f", "-", input=policy_yaml("GoMemPolicy", "bad", spec, namespace)
        )
    assert message in str(error.value)


def test_the_api_server_rejects_every_policy_the_models_reject(
    cluster: ControlPlane, namespace: str, crds: None
) -> None:
    """The same list as the unit test of the models (unit_helpers.INVALID_POLICY_SPECS), so
    the CRD schema and the pydantic models cannot drift apart again."""
    accepted = []
    for index, (spec, field) in enumerate(INVALID_POLICY_SPECS):
        name = f"bad-{index}"
        result = cluster.kubectl(
            "create",
            "-f",
            "-",
            check=False,
            input=policy_yaml("GoMemPolicy", name, spec, namespace),
        )
        if result.returncode == 0:
            accepted.append((spec, field))
        else:
            assert field.removeprefix("spec.").split(".")[0].split("[")[0] in result.stderr, (
                spec,
                result.stderr,
            )
    assert accepted == []
    assert cluster.kubectl("get", "gomempolicies", "-n", namespace, "-o", "name").stdout == ""


def test_invalid_policy_gets_ready_false_naming_the_field_and_an_event(
    cluster: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> None:
    # The CRD now rejects everything the models reject, so an invalid policy can only be one
    # stored before: here under a CRD without the gogc rules, as after an upgrade from a laxer
    # release. The real CRD is back before the operator sees the object.
    cluster_policies("fallback", {"ratio": 0.5, **only(namespace)})
    with laxer_gogc(cluster):
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=policy_yaml(
                "GoMemPolicy", "typo", {"gogc": "99999999999", "ratio": 0.8}, namespace
            ),
        )
    obj = wait_ready(cluster, "GoMemPolicy", "typo", namespace, status="False")
    ready = condition(obj, "Ready")
    assert ready is not None
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"].startswith("spec.gogc:")
    compliant = condition(obj, "Compliant")
    assert compliant is not None
    assert compliant["status"] == "Unknown"

    def warning() -> dict[str, Any] | None:
        events = get(
            cluster, "events", "-n", namespace, "--field-selector", "involvedObject.name=typo"
        )["items"]
        return next((e for e in events if e["reason"] == "InvalidSpec"), None)

    event = wait_until(warning, "a Warning event on the invalid policy", timeout=30)
    assert event["type"] == "Warning"
    assert "spec.gogc" in event["message"]
    assert event["involvedObject"]["kind"] == "GoMemPolicy"

    # An invalid policy governs nothing: the cluster policy applies.
    assert injected(create_pod(cluster, namespace, "p1", {"app": "x"})) == (
        "500MiB",
        "ClusterGoMemPolicy/fallback",
    )

    # Fixed: Ready again for the new generation, and in effect.
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=policy_yaml("GoMemPolicy", "typo", {"gogc": "150", "ratio": 0.8}, namespace),
    )
    fixed = wait_ready(cluster, "GoMemPolicy", "typo", namespace)
    assert fixed["metadata"]["generation"] == 2
    pod_obj = create_pod(cluster, namespace, "p2", {"app": "x"})
    env = {e["name"]: e["value"] for e in pod_obj["spec"]["containers"][0]["env"]}
    assert env == {"GOMEMLIMIT": "800MiB", "GOGC": "150"}


def test_status_settles_and_is_written_through_the_subresource(
    cluster: ControlPlane, namespace: str, operator_process: OperatorProcess
) -> None:
    # Selects no pod, so nothing the pod watcher counts can legitimately change the status.
    obj = namespaced(cluster, namespace, "quiet", {"selector": {"matchLabels": {"none": "x"}}})
    assert obj["status"]["observedGeneration"] == 1
    ready = condition(obj, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "Valid")
    version = obj["metadata"]["resourceVersion"]
    # Several status intervals (the harness runs with --status-interval 1): no rewrite loop.
    time.sleep(4)
    again = get(cluster, "gomempolicies", "quiet", "-n", namespace)
    assert again["metadata"]["resourceVersion"] == version
    # kopf wrote nothing onto the object: no finalizers, no last-handled annotations.
    assert "finalizers" not in again["metadata"]
    assert not any(key.startswith("kopf.") for key in again["metadata"].get("annotations") or {})
    # A spec change: observedGeneration follows; a user cannot set status through the spec.
    cluster.kubectl(
        "patch",
        "gomempolicies",
        "quiet",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"ratio": 0.7}, "status": {"observedGeneration": 99}}),
    )
    changed = wait_ready(cluster, "GoMemPolicy", "quiet", namespace)
    assert changed["status"]["observedGeneration"] == 2
    ready_after = condition(changed, "Ready")
    assert ready_after is not None
    assert ready_after["lastTransitionTime"] == ready["lastTransitionTime"]  # still True


def test_operator_restart_reloads_policies_before_ready(
    cluster: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> None:
    cluster_policies("survivor", {"ratio": 0.6, **only(namespace)})
    assert operator_process.stop() == 0
    operator_process.start()  # returns once /readyz is ok: the policy index is loaded
    status, text = operator_process.readyz()
    assert status == 200
    assert "[+]policy-index ok" in text
    assert injected(create_pod(cluster, namespace, "p1", {"app": "x"})) == (
        "600MiB",
        "ClusterGoMemPolicy/survivor",
    )
