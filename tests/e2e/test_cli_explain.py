"""``gomemlimit explain pod/NAME -n NS`` against a real API server: the pod, the policies of
both scopes, the namespace's labels, a LimitRange default and the pod's owners are read
through the kubeconfig, and the answer agrees with ``audit`` on the same pod."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.e2e.operator_harness import apply, crds, get, policy_yaml, wait_until

__all__ = ["crds"]

REPO = Path(__file__).resolve().parents[2]


def gomemlimit(
    cluster: ControlPlane, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gomemlimit_operator.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


def pod(
    name: str, labels: dict[str, str], limit: str | None, gomemlimit: str | None
) -> dict[str, Any]:
    app: dict[str, Any] = {"name": "app", "image": "registry.invalid/app:1"}
    if limit is not None:
        app["resources"] = {"limits": {"memory": limit}}
    if gomemlimit is not None:  # an explicit value: a webhook, if one runs, respects it
        app["env"] = [{"name": "GOMEMLIMIT", "value": gomemlimit}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [app]},
    }


@pytest.fixture
def scene(cluster: ControlPlane, crds: None, namespace: str) -> Iterator[dict[str, str]]:
    """A GoMemPolicy and a ClusterGoMemPolicy (for this namespace only) and four pods."""
    cluster_policy = f"e2e-explain-{secrets.token_hex(3)}"
    apply(
        cluster,
        policy_yaml(
            "GoMemPolicy", "team", {"selector": {"matchLabels": {"runtime": "go"}}}, namespace
        ),
        policy_yaml(
            "ClusterGoMemPolicy",
            cluster_policy,
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "priority": 100,
                "minHeadroom": "64Mi",
            },
        ),
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "defaults", "namespace": namespace},
            "spec": {"limits": [{"type": "Container", "default": {"memory": "256Mi"}}]},
        },
    )
    apply(
        cluster,
        pod("bad", {"runtime": "go"}, "512Mi", "512Mi"),
        pod("defaulted", {"runtime": "go"}, None, "230MiB"),
        pod("plain", {}, "512Mi", "448MiB"),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "web", "runtime": "go"},
                        # no webhook in this session: if one ran, it would inject
                    },
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "registry.invalid/app:1",
                                "resources": {"limits": {"memory": "1Gi"}},
                            }
                        ]
                    },
                },
            },
        },
        namespace=namespace,
    )
    web = wait_until(
        lambda: next(
            (
                p["metadata"]["name"]
                for p in get(cluster, "pods", "-n", namespace, "-l", "app=web")["items"]
            ),
            None,
        ),
        "the Deployment's pod",
        timeout=60,
    )
    try:
        yield {"namespace": namespace, "cluster_policy": cluster_policy, "web": web}
    finally:
        cluster.kubectl("delete", "clustergomempolicy", cluster_policy, "--ignore-not-found")


def explain_json(cluster: ControlPlane, name: str, namespace: str) -> dict[str, Any]:
    result = gomemlimit(cluster, "explain", f"pod/{name}", "-n", namespace, "-o", "json")
    assert result.returncode == 0, result.stderr
    [explained] = json.loads(result.stdout)
    return dict(explained)


def audit_row(cluster: ControlPlane, name: str, namespace: str) -> dict[str, Any]:
    """``audit -f`` of the pod as the API server has it: the same engine, offline."""
    obj = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout
    policies = cluster.kubectl(
        "get", "gomempolicies,clustergomempolicies", "-A", "-o", "json"
    ).stdout
    theirs = json.loads(policies)["items"]
    namespaces = cluster.kubectl("get", "namespace", namespace, "-o", "json").stdout
    mine = [
        p
        for p in theirs
        if p["kind"] == "GoMemPolicy" or p["metadata"]["name"].startswith("e2e-explain-")
    ]
    documents = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [json.loads(obj), json.loads(namespaces), *mine],
        }
    )
    result = gomemlimit(cluster, "audit", "-f", "-", "-o", "json", stdin=documents)
    assert result.returncode in (0, 1), result.stderr
    rows = [row for row in json.loads(result.stdout) if row["name"] == name]
    [row] = rows
    return dict(row)


def test_explain_live_pods(cluster: ControlPlane, scene: dict[str, str]) -> None:
    namespace, cluster_policy, web = scene["namespace"], scene["cluster_policy"], scene["web"]

    # Invalid, in a bare pod; the namespaced policy beats the cluster one's priority 100.
    text = gomemlimit(cluster, "explain", "pod/bad", "-n", namespace)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert f"Pod/bad in namespace {namespace}" in out
    assert f"Policy: GoMemPolicy/{namespace}/team governs the pod" in out
    assert f"loses: ClusterGoMemPolicy/{cluster_policy} (cluster, priority 100)" in out
    assert "namespaced beats cluster" in out
    assert "limit:    536870912 bytes (512 MiB), from the container" in out
    assert "expected: 460MiB" in out
    assert "current:  '512Mi', a literal env value at spec.containers[0].env[0]" in out
    assert "state:    invalid: Go rejects GOMEMLIMIT='512Mi'" in out
    assert (
        f"$ kubectl get pod bad -n {namespace} -o yaml | kubectl set env --local -f - -c app "
        "GOMEMLIMIT=460MiB -o yaml | kubectl replace --force -f -"
    ) in out

    # Missing, in a Deployment's pod: pod -> ReplicaSet -> Deployment.
    explained = explain_json(cluster, web, namespace)
    assert explained["workload"] == "Deployment/web"
    [app] = explained["containers"]
    assert (app["expected"], app["state"]) == ("921MiB", "missing")
    assert app["next"]["command"] == f"kubectl rollout restart deployment/web -n {namespace}"
    row = audit_row(cluster, web, namespace)
    assert (row["expected"], row["state"]) == (app["expected"], app["state"])

    # The LimitRange's default limit, set at creation: compliant, and said where it came from.
    explained = explain_json(cluster, "defaulted", namespace)
    [app] = explained["containers"]
    assert app["limit"] == {
        "bytes": 256 << 20,
        "source": "limitRange",
        "field": "spec.containers[0].resources.limits.memory",
    }
    assert (app["expected"], app["state"], app["next"]["command"]) == ("230MiB", "compliant", None)
    row = audit_row(cluster, "defaulted", namespace)
    assert (row["expected"], row["state"]) == (app["expected"], app["state"])

    # Without the label, only the cluster policy selects it; its minHeadroom raises the headroom.
    explained = explain_json(cluster, "plain", namespace)
    assert explained["policy"]["governing"] == f"ClusterGoMemPolicy/{cluster_policy}"
    assert explained["policy"]["passedOver"] == [
        {
            "policy": f"GoMemPolicy/{namespace}/team",
            "reason": "its selector does not match the pod's labels",
        }
    ]
    [app] = explained["containers"]
    assert app["headroom"]["clamps"][0] == {
        "clamp": "minHeadroom",
        "bytes": 64 << 20,
        "applied": True,
        "to": 64 << 20,
    }
    assert (app["expected"], app["state"]) == ("448MiB", "compliant")
    row = audit_row(cluster, "plain", namespace)
    assert (row["expected"], row["state"]) == (app["expected"], app["state"])


def test_explain_errors_exit_2_without_a_traceback(cluster: ControlPlane, namespace: str) -> None:
    missing = gomemlimit(cluster, "explain", "pod/nope", "-n", namespace)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"gomemlimit: error: explain: pod/nope in namespace {namespace} not found"
    )
    bad_context = gomemlimit(cluster, "explain", "pod/nope", "--context", "no-such-context")
    assert bad_context.returncode == 2
    assert "no context named 'no-such-context'" in bad_context.stderr
    assert "Traceback" not in missing.stderr + bad_context.stderr
