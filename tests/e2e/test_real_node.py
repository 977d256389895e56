"""The proof, on the real node: a Go pod with our GOMEMLIMIT survives the limit that OOM-kills
the same pod without it, and an in-place resize leaves the value stale.

Everything is real: the operator (``--dev``) injects through its webhook, the kubelet starts
the containers with containerd and runc under cgroup memory limits, the kernel's OOM killer
decides, and the outcome is read from the kubelet's pod status. Peak memory comes from each
pod's memory cgroup (``memory.max_usage_in_bytes``), sampled over time for the README chart.
The pods and their sizing are in tests/cluster/proof.py (shared with ``make demo``).

Set ``GOMEMLIMIT_PROOF_OUT=<file.json>`` to keep the recorded samples (``make proof-chart``
draws docs/proof-memory.png from them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.controlplane import SERVICE_CIDR, ControlPlane
from tests.cluster.images import BuiltImage
from tests.cluster.proof import (
    CHURN_MIB_PER_SEC,
    DURATION,
    LIMIT_BYTES,
    LIVE_MIB,
    OFFHEAP_MIB,
    START_DELAY,
    MemorySampler,
    MiB,
    container_env,
    pod_log_lines,
    proof_pods,
    terminated,
    workload_pod,
)
from tests.cluster.realnode import RealNode
from tests.e2e.operator_harness import (
    OperatorProcess,
    crds,
    get,
    operator_process,
    operator_service,
    policy_yaml,
    wait_ready,
    wait_until,
)

__all__ = ["crds", "operator_process", "operator_service"]

PROOF_OUT_ENV = "GOMEMLIMIT_PROOF_OUT"
REPO = Path(__file__).resolve().parents[2]


def noncompliant(operator: OperatorProcess, namespace: str) -> dict[str, str]:
    return {
        dict(labels)["pod"]: dict(labels)["state"]
        for labels in operator.samples(
            "gomemlimit_noncompliant_container_info", namespace=namespace
        )
    }


def audit(pod: dict[str, Any], policy: str) -> dict[str, Any]:
    """The engine's view of a live pod, through the CLI: state and expected value."""
    docs = "\n---\n".join([json.dumps(pod), policy])
    proc = subprocess.run(
        [sys.executable, "-m", "gomemlimit_operator.cli.main", "audit", "-f", "-", "-o", "json"],
        input=docs,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert proc.stdout, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 1, rows
    return dict(rows[0])


@pytest.fixture
def go_policy(cluster: ControlPlane, namespace: str) -> str:
    text = policy_yaml(
        "GoMemPolicy", "go", {"selector": {"matchLabels": {"runtime": "go"}}}, namespace
    )
    cluster.kubectl("apply", "-f", "-", input=text)
    wait_ready(cluster, "GoMemPolicy", "go", namespace)
    return text


def test_service_cidr_stays_on_loopback(cluster: ControlPlane) -> None:
    import ipaddress

    assert ipaddress.ip_network(SERVICE_CIDR).subnet_of(ipaddress.ip_network("127.0.0.0/8"))
    service = get(cluster, "service", "kubernetes", "-n", "default")
    assert ipaddress.ip_address(service["spec"]["clusterIP"]) in ipaddress.ip_network("127.0.0.0/8")


def test_real_node_is_tainted_and_labelled(cluster: ControlPlane, real_node: RealNode) -> None:
    node = get(cluster, "node", real_node.name)
    assert node["metadata"]["labels"]["gomemlimit.io/node"] == "real"
    assert {"key": "gomemlimit.io/real-node", "value": "true", "effect": "NoSchedule"} in node[
        "spec"
    ]["taints"]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_proof_governed_survives_the_others_are_oomkilled(
    cluster: ControlPlane,
    namespace: str,
    real_node: RealNode,
    goworkload_image: BuiltImage,
    operator_process: OperatorProcess,
    go_policy: str,
) -> None:
    t_start = time.monotonic()
    specs = proof_pods(goworkload_image)
    cluster.kubectl(
        "create",
        "-n",
        namespace,
        "-f",
        "-",
        input="\n---\n".join(json.dumps(p) for p in specs.values()),
    )
    created = {name: get(cluster, "pod", name, "-n", namespace) for name in specs}
    # The webhook's work, as stored.
    assert container_env(created["governed"]) == [{"name": "GOMEMLIMIT", "value": "460MiB"}]
    assert container_env(created["opted-out"]) == []
    [entry] = container_env(created["downward-api"])  # as written; the API adds divisor "0"
    assert entry["valueFrom"]["resourceFieldRef"]["resource"] == "limits.memory"
    for pod in created.values():
        assert pod["spec"]["nodeSelector"] == {"gomemlimit.io/node": "real"}

    # While they run (the workload idles for START_DELAY first), the watcher reports them.
    wait_until(
        lambda: noncompliant(operator_process, namespace) == {"downward-api": "exceeds_limit"},
        "downward-api reported exceeds_limit (and nothing else noncompliant)",
        timeout=20,
    )
    status = wait_until(
        lambda: (
            s
            if (s := get(cluster, "gomempolicy", "go", "-n", namespace).get("status") or {})
            .get("containers", {})
            .get("exceedsLimit")
            == 1
            else None
        ),
        "policy status: 1 exceeding",
        timeout=20,
    )
    assert status["containers"].get("optedOut") == 1, status
    assert status["containers"].get("compliant") == 1, status

    uids = {name: pod["metadata"]["uid"] for name, pod in created.items()}
    with MemorySampler(real_node, uids) as sampler:

        def finished() -> dict[str, dict[str, Any]] | None:
            now = {name: get(cluster, "pod", name, "-n", namespace) for name in specs}
            if all(
                terminated(p) and p["status"].get("phase") in ("Succeeded", "Failed")
                for p in now.values()
            ):
                return now
            return None

        final = wait_until(finished, "all three pods to finish", timeout=120, interval=0.5)
        time.sleep(0.3)

    outcome: dict[str, dict[str, Any]] = {}
    for name, pod in final.items():
        term = terminated(pod) or {}
        cs = pod["status"]["containerStatuses"][0]
        outcome[name] = {
            "phase": pod["status"]["phase"],
            "reason": term.get("reason"),
            "exitCode": term.get("exitCode"),
            "restarts": cs.get("restartCount"),
            "peak_bytes": sampler.pods[name].peak,
        }
    summary = json.dumps(outcome, indent=1)
    print(summary)
    assert outcome["governed"]["phase"] == "Succeeded", summary
    assert outcome["governed"]["reason"] == "Completed", summary
    assert outcome["governed"]["exitCode"] == 0, summary
    for name in ("opted-out", "downward-api"):
        assert outcome[name]["phase"] == "Failed", summary
        assert outcome[name]["reason"] == "OOMKilled", summary
        assert outcome[name]["exitCode"] == 137, summary
    assert all(o["restarts"] == 0 for o in outcome.values()), summary

    # Peaks from the pods' cgroups: the governed pod really used its memory and stayed under
    # the limit; the others reached it.
    governed_peak = outcome["governed"]["peak_bytes"]
    assert 400 * MiB < governed_peak < LIMIT_BYTES, summary
    for name in ("opted-out", "downward-api"):
        assert outcome[name]["peak_bytes"] >= LIMIT_BYTES - 8 * MiB, summary

    # The program's own reports: Go used the injected limit and collected garbage many times.
    reports = pod_log_lines(real_node, namespace, final["governed"])
    assert reports, "no reports in the governed pod's log"
    assert reports[0]["gomemlimit_env"] == "460MiB"
    assert reports[-1]["event"] == "done"
    assert reports[-1]["memory_limit_bytes"] == 460 * MiB
    assert reports[-1]["cgroup_limit_bytes"] == LIMIT_BYTES
    assert reports[-1]["num_gc"] >= 10, reports[-1]
    downward_reports = pod_log_lines(real_node, namespace, final["downward-api"])
    assert downward_reports
    assert downward_reports[0]["gomemlimit_env"] == str(LIMIT_BYTES)
    assert not any(r["event"] == "done" for r in downward_reports)

    record = {
        "limit_bytes": LIMIT_BYTES,
        "live_mib": LIVE_MIB,
        "offheap_mib": OFFHEAP_MIB,
        "churn_mib_per_sec": CHURN_MIB_PER_SEC,
        "duration": DURATION,
        "start_delay": START_DELAY,
        "gomemlimit": {"governed": "460MiB", "opted-out": "-", "downward-api": "536870912"},
        "outcome": outcome,
        "samples": {name: sampler.pods[name].samples for name in specs},
        "governed_num_gc": reports[-1]["num_gc"],
        "test_seconds": round(time.monotonic() - t_start, 1),
    }
    out = os.environ.get(PROOF_OUT_ENV)
    if out:
        Path(out).write_text(json.dumps(record, indent=1) + "\n")


def test_in_place_resize_leaves_gomemlimit_stale(
    cluster: ControlPlane,
    namespace: str,
    real_node: RealNode,
    goworkload_image: BuiltImage,
    operator_process: OperatorProcess,
    go_policy: str,
) -> None:
    args = ["-live-mib=32", "-churn-mib-per-sec=16", "-report=500ms"]
    pod = workload_pod("resized", goworkload_image, limit="256Mi", args=args)
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))
    live = get(cluster, "pod", "resized", "-n", namespace)
    assert container_env(live) == [{"name": "GOMEMLIMIT", "value": "230MiB"}]

    def running() -> dict[str, Any] | None:
        p = get(cluster, "pod", "resized", "-n", namespace)
        statuses = p.get("status", {}).get("containerStatuses") or []
        return p if statuses and "running" in (statuses[0].get("state") or {}) else None

    live = wait_until(running, "the pod Running on the real node", timeout=60)
    uid = live["metadata"]["uid"]
    cid = live["status"]["containerStatuses"][0]["containerID"]
    cgroup = wait_until(
        lambda: real_node.container_cgroup(uid, cid), "the container's cgroup", timeout=10
    )
    assert int((cgroup / "memory.limit_in_bytes").read_text()) == 256 * MiB
    wait_until(
        lambda: noncompliant(operator_process, namespace) == {},
        "the pod compliant before the resize",
        timeout=20,
    )

    patch = {
        "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "320Mi"}}}]}
    }
    result = cluster.kubectl(
        "patch", "pod", "resized", "-n", namespace, "--subresource", "resize",
        "--type", "strategic", "-p", json.dumps(patch), check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"the resize was refused: {result.stderr.strip()}"

    def resized() -> dict[str, Any] | None:
        p = get(cluster, "pod", "resized", "-n", namespace)
        cs = p["status"]["containerStatuses"][0]
        conditions = {c["type"]: c for c in p["status"].get("conditions", [])}
        pending = conditions.get("PodResizePending")
        if pending is not None:
            raise AssertionError(
                f"resize pending: {pending.get('reason')}: {pending.get('message')}"
            )
        done = (cs.get("resources") or {}).get("limits", {}).get("memory") == "320Mi"
        return p if done and "PodResizeInProgress" not in conditions else None

    after = wait_until(resized, "the kubelet to apply the resize", timeout=60)
    # The kubelet really changed the cgroup, the container was not restarted ...
    assert int((cgroup / "memory.limit_in_bytes").read_text()) == 320 * MiB
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert after["status"]["containerStatuses"][0]["containerID"] == cid
    # ... and the environment did not change: the program still runs with 230MiB and now
    # sees the bigger cgroup limit.
    assert container_env(after) == [{"name": "GOMEMLIMIT", "value": "230MiB"}]

    def program_sees_new_limit() -> dict[str, Any] | None:
        reports = pod_log_lines(real_node, namespace, after)
        last = reports[-1] if reports else {}
        return last if last.get("cgroup_limit_bytes") == 320 * MiB else None

    last = wait_until(program_sees_new_limit, "the program to report the new cgroup limit")
    assert last["memory_limit_bytes"] == 230 * MiB

    # The watcher reports it stale; the engine's expected value for 320Mi is 288MiB.
    wait_until(
        lambda: noncompliant(operator_process, namespace) == {"resized": "stale"},
        "the resized pod reported stale",
        timeout=20,
    )
    row = audit(after, go_policy)
    assert row["state"] == "stale", row
    assert row["expected"] == "288MiB", row
    print(f"resize: 256Mi -> 320Mi; cgroup {320 * MiB}; GOMEMLIMIT 230MiB; audit {row}")


def test_cluster_down_leaves_nothing(
    tmp_path_factory: pytest.TempPathFactory, real_node: RealNode, goworkload_image: BuiltImage
) -> None:
    """A second cluster with its own real node: run a pod with a projected volume (a mount),
    stop the cluster, and look for anything left behind."""
    state = tmp_path_factory.mktemp("down")
    shim_sockets_before = set(Path("/run/containerd/s").glob("*"))
    var_lib_containerd = Path("/var/lib/containerd").exists()
    cp = ControlPlane(state, nodes=0, real_node=True)
    try:
        cp.start()
        node = cp.real_node
        assert node is not None
        node.import_image(goworkload_image.path)
        pod = workload_pod("leftover", goworkload_image, limit="64Mi", args=["-live-mib=4"])
        pod["spec"]["automountServiceAccountToken"] = True  # a projected tmpfs mount
        cp.kubectl("create", "-f", "-", input=json.dumps(pod))
        wait_until(
            lambda: (
                "running"
                in (get(cp, "pod", "leftover")["status"].get("containerStatuses") or [{}])[0].get(
                    "state", {}
                )
            ),
            "the pod Running",
            timeout=60,
        )
        assert node.mounts(), "the pod has a projected volume: expected a mount"
        assert node.shims(), "expected a containerd shim"
    finally:
        cp.stop()
    check = RealNode(state)
    assert check.leftovers() == []
    assert not state.exists()
    ours = [
        pid for pid in os.listdir("/proc") if pid.isdigit() and str(state) in _cmdline(int(pid))
    ]
    assert ours == [], [_cmdline(int(p)) for p in ours]
    assert set(Path("/run/containerd/s").glob("*")) <= shim_sockets_before
    assert Path("/var/lib/containerd").exists() == var_lib_containerd


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
