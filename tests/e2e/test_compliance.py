"""The compliance watcher, end to end: policy status counts and /metrics from real pods.

Every policy here governs only the test's own namespace (a GoMemPolicy, or a
ClusterGoMemPolicy whose namespaceSelector only the test's namespace can match), and every
metric is read for that namespace only, so tests cannot see each other's pods.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from tests.cluster.controlplane import ControlPlane
from tests.e2e.operator_harness import (
    OperatorProcess,
    apply,
    cluster_policies,
    condition,
    crds,
    get,
    operator_process,
    operator_service,
    pods,
    policy_yaml,
    wait_ready,
    wait_until,
)

__all__ = ["cluster_policies", "crds", "operator_process", "operator_service"]

IMAGE = "registry.invalid/app:1"  # kwok runs no containers
DEADLINE = 30.0  # generous: the status interval is 1 s, the full pass every 60 s

Labels = tuple[tuple[str, str], ...]


def pod(
    name: str,
    *,
    limit: str = "1Gi",
    gomemlimit: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "image": IMAGE,
        "resources": {"limits": {"memory": limit}},
    }
    if gomemlimit is not None:
        container["env"] = [{"name": "GOMEMLIMIT", "value": gomemlimit}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {"containers": [container]},
    }


def namespaced_policy(
    cluster: ControlPlane, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    cluster.kubectl("apply", "-f", "-", input=policy_yaml("GoMemPolicy", name, spec, namespace))
    return wait_ready(cluster, "GoMemPolicy", name, namespace)


def status_of(cluster: ControlPlane, *args: str) -> dict[str, Any]:
    return dict(get(cluster, *args).get("status") or {})


def wait_status(
    cluster: ControlPlane, args: tuple[str, ...], want: dict[str, Any], what: str
) -> dict[str, Any]:
    """Wait until the policy's status has every field of ``want`` (``containers`` may be a
    subset: absent states must be 0)."""

    def check() -> dict[str, Any] | None:
        status = status_of(cluster, *args)
        for key, value in want.items():
            if key == "containers":
                containers = status.get("containers") or {}
                expected = {state: value.get(state, 0) for state in containers}
                if containers != expected or set(value) - set(containers):
                    return None
            elif status.get(key) != value:
                return None
        return status

    return wait_until(check, what, timeout=DEADLINE)


def containers_series(operator: OperatorProcess, namespace: str) -> dict[tuple[str, str], float]:
    """``gomemlimit_containers`` of one namespace: (policy, state) -> count."""
    return {
        (dict(labels)["policy"], dict(labels)["state"]): value
        for labels, value in operator.samples("gomemlimit_containers", namespace=namespace).items()
    }


def info_series(operator: OperatorProcess, namespace: str) -> dict[tuple[str, str], str]:
    """``gomemlimit_noncompliant_container_info`` of one namespace: (pod, container) -> state."""
    found: dict[tuple[str, str], str] = {}
    for labels, value in operator.samples(
        "gomemlimit_noncompliant_container_info", namespace=namespace
    ).items():
        assert value == 1
        fields = dict(labels)
        found[(fields["pod"], fields["container"])] = fields["state"]
    return found


def wait_metrics(
    operator: OperatorProcess,
    namespace: str,
    containers: dict[tuple[str, str], float],
    info: dict[tuple[str, str], str],
    what: str,
) -> None:
    wait_until(
        lambda: (
            containers_series(operator, namespace) == containers
            and info_series(operator, namespace) == info
        ),
        what,
        timeout=DEADLINE,
    )


def running(cluster: ControlPlane, namespace: str, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` pods run (kwok is done with them), and return them."""

    def check() -> list[dict[str, Any]] | None:
        found = pods(cluster, namespace)
        ready = [
            p
            for p in found
            if (p.get("status") or {}).get("phase") == "Running"
            and (condition(p, "Ready") or {}).get("status") == "True"
        ]
        return found if len(found) == count and len(ready) == count else None

    return wait_until(check, f"{count} running pods in {namespace}", timeout=DEADLINE)


# ---------------------------------------------------------------------------------------------


def test_pods_created_while_the_operator_was_stopped_are_missing(
    cluster: ControlPlane, namespace: str, operator_process: OperatorProcess
) -> None:
    ref = f"GoMemPolicy/{namespace}/all"
    namespaced_policy(cluster, namespace, "all", {})
    assert operator_process.stop() == 0  # the dev webhook configuration goes with it
    apply(cluster, pod("early-1"), pod("early-2"), namespace=namespace)
    created = pods(cluster, namespace)
    assert all("env" not in p["spec"]["containers"][0] for p in created)  # not mutated

    operator_process.start()
    status = wait_status(
        cluster,
        ("gomempolicies", "all", "-n", namespace),
        {"matchedPods": 2, "governedContainers": 2, "containers": {"missing": 2}},
        "the policy status to count 2 missing containers",
    )
    assert status["noncompliantContainers"] == 2
    compliant = condition({"status": status}, "Compliant")
    assert compliant is not None
    assert (compliant["status"], compliant["reason"]) == ("False", "NoncompliantContainers")
    wait_metrics(
        operator_process,
        namespace,
        {(ref, "missing"): 2},
        {("early-1", "app"): "missing", ("early-2", "app"): "missing"},
        "gomemlimit_containers and the info series to show 2 missing containers",
    )
    assert operator_process.metric("gomemlimit_watcher_synced") == 1
    assert operator_process.metric("gomemlimit_leader") == 1


def test_invalid_and_exceeding_values_are_counted_until_their_pods_are_deleted(
    cluster: ControlPlane, namespace: str, operator_process: OperatorProcess
) -> None:
    ref = f"GoMemPolicy/{namespace}/all"
    namespaced_policy(cluster, namespace, "all", {})
    apply(
        cluster,
        pod("crash", gomemlimit="512Mi"),  # Go refuses to start: "malformed GOMEMLIMIT"
        pod("above", gomemlimit="2GiB"),  # above the 1Gi limit
        pod("equal", gomemlimit="1GiB"),  # at the limit is no better
        pod("fine"),  # the webhook injects 921MiB
        namespace=namespace,
    )
    args = ("gomempolicies", "all", "-n", namespace)
    status = wait_status(
        cluster,
        args,
        {
            "matchedPods": 4,
            "governedContainers": 4,
            "noncompliantContainers": 3,
            "containers": {"invalid": 1, "exceedsLimit": 2, "compliant": 1},
        },
        "status counts: 1 invalid, 2 exceeding, 1 compliant",
    )
    compliant = condition({"status": status}, "Compliant")
    assert compliant is not None
    assert "invalid 1" in compliant["message"]
    wait_metrics(
        operator_process,
        namespace,
        {(ref, "invalid"): 1, (ref, "exceeds_limit"): 2, (ref, "compliant"): 1},
        {
            ("crash", "app"): "invalid",
            ("above", "app"): "exceeds_limit",
            ("equal", "app"): "exceeds_limit",
        },
        "the series of 1 invalid, 2 exceeding and 1 compliant container",
    )

    cluster.kubectl("delete", "pod", "crash", "above", "-n", namespace, "--wait=false")
    wait_metrics(
        operator_process,
        namespace,
        {(ref, "exceeds_limit"): 1, (ref, "compliant"): 1},
        {("equal", "app"): "exceeds_limit"},
        "the deleted pods' series to go",
    )
    wait_status(
        cluster,
        args,
        {"matchedPods": 2, "containers": {"exceedsLimit": 1, "compliant": 1}},
        "status counts without the deleted pods",
    )
    cluster.kubectl("delete", "pod", "--all", "-n", namespace, "--wait=false")
    wait_metrics(operator_process, namespace, {}, {}, "every series of the namespace to go")
    wait_status(
        cluster,
        args,
        {"matchedPods": 0, "governedContainers": 0, "containers": {}},
        "status counts of an empty namespace",
    )


def test_policy_changes_reevaluate_pods_without_pod_events(
    cluster: ControlPlane, namespace: str, operator_process: OperatorProcess
) -> None:
    web_ref, batch_ref = f"GoMemPolicy/{namespace}/web", f"GoMemPolicy/{namespace}/batch"
    namespaced_policy(cluster, namespace, "web", {"selector": {"matchLabels": {"app": "web"}}})
    apply(
        cluster,
        pod("web-1", labels={"app": "web"}),
        pod("web-2", labels={"app": "web"}),
        pod("batch", labels={"app": "batch"}),  # no policy: not mutated
        namespace=namespace,
    )
    before = {p["metadata"]["name"]: p for p in running(cluster, namespace, 3)}
    assert before["web-1"]["spec"]["containers"][0]["env"] == [
        {"name": "GOMEMLIMIT", "value": "921MiB"}
    ]
    assert "env" not in before["batch"]["spec"]["containers"][0]
    web = ("gomempolicies", "web", "-n", namespace)
    wait_status(cluster, web, {"containers": {"compliant": 2}}, "2 compliant web containers")
    wait_metrics(
        operator_process,
        namespace,
        {(web_ref, "compliant"): 2, ("", "unmanaged"): 1},
        {},
        "2 compliant and 1 unmanaged container",
    )

    # A new ratio: the injected values are stale now. No pod changes.
    cluster.kubectl("patch", *web, "--type=merge", "-p", json.dumps({"spec": {"ratio": 0.8}}))
    wait_status(
        cluster,
        web,
        {"observedGeneration": 2, "containers": {"stale": 2}, "noncompliantContainers": 2},
        "2 stale containers after the ratio changed",
    )
    # A new policy for the unmanaged pod: its container is missing a value.
    namespaced_policy(cluster, namespace, "batch", {"selector": {"matchLabels": {"app": "batch"}}})
    wait_status(
        cluster,
        ("gomempolicies", "batch", "-n", namespace),
        {"matchedPods": 1, "containers": {"missing": 1}},
        "the new policy to count 1 missing container",
    )
    wait_metrics(
        operator_process,
        namespace,
        {(web_ref, "stale"): 2, (batch_ref, "missing"): 1},
        {("web-1", "app"): "stale", ("web-2", "app"): "stale", ("batch", "app"): "missing"},
        "2 stale and 1 missing container",
    )
    after = {p["metadata"]["name"]: p for p in pods(cluster, namespace)}
    assert {name: p["metadata"]["resourceVersion"] for name, p in after.items()} == {
        name: p["metadata"]["resourceVersion"] for name, p in before.items()
    }, "a pod changed: the re-evaluation must not need pod events"


def test_namespace_labels_move_pods_under_and_out_of_a_cluster_policy(
    cluster: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> None:
    team = f"team-{secrets.token_hex(4)}"  # unique: cluster policies see every namespace
    name = f"e2e-{team}"
    ref = f"ClusterGoMemPolicy/{name}"
    cluster_policies(name, {"namespaceSelector": {"matchLabels": {"e2e-team": team}}})
    apply(cluster, pod("app"), namespace=namespace)
    wait_metrics(operator_process, namespace, {("", "unmanaged"): 1}, {}, "1 unmanaged container")
    args = ("clustergomempolicies", name)
    wait_status(cluster, args, {"matchedPods": 0}, "the policy to match no pod")

    # Well within the 60 s full pass: the namespace listener re-evaluates the namespace.
    cluster.kubectl("label", "namespace", namespace, f"e2e-team={team}")
    wait_metrics(
        operator_process,
        namespace,
        {(ref, "missing"): 1},
        {("app", "app"): "missing"},
        "the pod to move under the cluster policy",
    )
    wait_status(
        cluster, args, {"matchedPods": 1, "containers": {"missing": 1}}, "the policy to match it"
    )

    cluster.kubectl("label", "namespace", namespace, "e2e-team-")
    wait_metrics(
        operator_process, namespace, {("", "unmanaged"): 1}, {}, "the pod to leave the policy"
    )
    wait_status(cluster, args, {"matchedPods": 0, "containers": {}}, "the policy to match none")
