#!/usr/bin/env python3
"""`make demo`: a local cluster, the operator, an example workload, and what got injected.

1. starts the local control plane in .cluster/ (built from Go modules on first use; an
   already running `make cluster-up` cluster is reused and left running);
2. applies the CRDs and examples/policy.yaml (a ClusterGoMemPolicy);
3. starts `gomemlimit operator --dev` (it registers its own webhook configuration);
4. applies examples/app.yaml (a Go container and a sidecar) in the namespace `demo`;
5. prints each pod's containers: memory limit, GOMEMLIMIT and who set it;
6. the proof, on the real node (kubelet + containerd + runc) when the machine allows it: the
   same Go program (tests/goworkload) at a 512Mi limit governed, opted out and with the
   downward API's 100%; then an in-place resize of a governed pod;
7. tears everything down, unless KEEP=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.cluster.controlplane import ControlPlane, ensure_built
from tests.cluster.goworkload import build_goworkload_image
from tests.cluster.proof import (
    LIMIT,
    MemorySampler,
    container_env,
    pod_log_lines,
    proof_pods,
    terminated,
    workload_pod,
)
from tests.cluster.realnode import RealNode

REPO = Path(__file__).resolve().parents[1]
STATE_DIR = REPO / ".cluster"
NAMESPACE = "demo"
PROOF_NAMESPACE = "demo-proof"
MiB = 1 << 20
POLICY = REPO / "examples" / "policy.yaml"
APP = REPO / "examples" / "app.yaml"
INJECTED = "gomemlimit.io/injected"
POLICY_ANNOTATION = "gomemlimit.io/policy"
T = TypeVar("T")


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 90.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception:
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {what}")


def operator_command(kubeconfig: Path, ports: dict[str, int]) -> list[str]:
    cli = shutil.which("gomemlimit", path=str(Path(sys.executable).parent))
    base = [cli, "operator"] if cli else [sys.executable, "-m", "gomemlimit_operator.runtime.app"]
    return [
        *base,
        "--dev",
        "--kubeconfig",
        str(kubeconfig),
        "--webhook-port",
        str(ports["webhook"]),
        "--metrics-port",
        str(ports["metrics"]),
        "--health-port",
        str(ports["health"]),
        "--status-interval",
        "1",
    ]


def ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
        return bool(response.status == 200)


def who_set(container: dict[str, Any], annotations: dict[str, str]) -> tuple[str, str]:
    """(GOMEMLIMIT as Go will read it, who set it)."""
    entries = [e for e in container.get("env") or () if e.get("name") == "GOMEMLIMIT"]
    if not entries:
        return "-", "none"
    entry = entries[-1]  # Kubernetes uses the last one
    if "valueFrom" in entry:
        return f"<{next(iter(entry['valueFrom']))}>", "set by user"
    value = str(entry.get("value", ""))
    try:
        record = json.loads(annotations.get(INJECTED, "{}"))
    except ValueError:
        record = {}
    if (
        isinstance(record, dict)
        and (record.get(container["name"]) or {}).get("GOMEMLIMIT") == value
    ):
        return value, f"injected by {annotations.get(POLICY_ANNOTATION, 'the operator')}"
    return value, "set by user"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def kubectl_json(cluster: ControlPlane, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def noncompliant_state(metrics_port: int, pod: str) -> str | None:
    """The state the operator exports for a pod in gomemlimit_noncompliant_container_info."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("gomemlimit_noncompliant_container_info{") and (
            f'namespace="{PROOF_NAMESPACE}"' in line and f'pod="{pod}"' in line
        ):
            return line.split('state="', 1)[1].split('"', 1)[0]
    return None


def expected_value(pod: dict[str, Any], policy: str) -> str:
    """The engine's expected GOMEMLIMIT for the pod as it is now (`gomemlimit audit`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "gomemlimit_operator.cli.main", "audit", "-f", "-", "-o", "json"],
        input=f"{json.dumps(pod)}\n---\n{policy}",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    rows = json.loads(proc.stdout or "[]")
    return str(rows[0].get("expected") or "-") if rows else "?"


def run_proof(cluster: ControlPlane, metrics_port: int) -> None:
    """The same Go program at 512Mi, three ways, on the real node; then an in-place resize."""
    node = cluster.real_node
    print()
    if node is None:
        say(f"The proof needs the real node, and there is none: {cluster.real_node_status()}")
        say("(the real node needs root plus containerd and runc: see tests/cluster/README.md)")
        return
    say(f"The proof, on the real node {node.name}: one Go program, limit {LIMIT}, three pods")
    image = build_goworkload_image(STATE_DIR / "demo-build")
    node.import_image(image.path)
    namespace = json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PROOF_NAMESPACE}}
    )
    cluster.kubectl("apply", "-f", "-", input=namespace)
    wait_for(
        lambda: (
            cluster.kubectl(
                "get", "serviceaccount", "default", "-n", PROOF_NAMESPACE, check=False
            ).returncode
            == 0
        ),
        "the proof namespace's default ServiceAccount",
    )
    policy = json.dumps(
        {
            "apiVersion": "gomemlimit.io/v1alpha1",
            "kind": "GoMemPolicy",
            "metadata": {"name": "go", "namespace": PROOF_NAMESPACE},
            "spec": {"selector": {"matchLabels": {"runtime": "go"}}},
        }
    )
    cluster.kubectl("apply", "-f", "-", input=policy)

    def policy_ready() -> bool:
        obj = kubectl_json(cluster, "gomempolicy", "go", "-n", PROOF_NAMESPACE)
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(policy_ready, "GoMemPolicy go Ready", timeout=30)
    specs = proof_pods(image)
    docs = "\n---\n".join(json.dumps(p) for p in specs.values())
    cluster.kubectl("create", "-n", PROOF_NAMESPACE, "-f", "-", input=docs)
    created = {n: kubectl_json(cluster, "pod", n, "-n", PROOF_NAMESPACE) for n in specs}
    uids = {n: p["metadata"]["uid"] for n, p in created.items()}
    say("Running them (about 30 s): 308 MiB live heap, 24 MiB off-heap, 400 MiB/s of garbage")

    def finished() -> dict[str, dict[str, Any]] | None:
        now = {n: kubectl_json(cluster, "pod", n, "-n", PROOF_NAMESPACE) for n in specs}
        done = all(
            terminated(p) and p["status"].get("phase") in ("Succeeded", "Failed")
            for p in now.values()
        )
        return now if done else None

    with MemorySampler(node, uids) as sampler:
        final = wait_for(finished, "the three proof pods to finish", timeout=150)
    rows = [["POD", "MEMORY LIMIT", "GOMEMLIMIT", "OUTCOME", "PEAK MEMORY"]]
    for name, pod in final.items():
        env = container_env(created[name])
        value = "-" if not env else env[-1].get("value") or "<resourceFieldRef: 100%>"
        term = terminated(pod) or {}
        restarts = pod["status"]["containerStatuses"][0].get("restartCount", 0)
        outcome = f"{term.get('reason')} (exit {term.get('exitCode')}, {restarts} restarts)"
        peak = f"{sampler.pods[name].peak / MiB:.0f} MiB"
        rows.append([name, LIMIT, str(value), outcome, peak])
    print()
    print(table(rows))
    print()
    run_resize(cluster, node, image, policy, metrics_port)


def run_resize(
    cluster: ControlPlane, node: RealNode, image: Any, policy: str, metrics_port: int
) -> None:
    say("In-place resize of a governed pod: 256Mi -> 320Mi through the resize subresource")
    pod = workload_pod("resized", image, limit="256Mi", args=["-live-mib=32", "-report=500ms"])
    cluster.kubectl("create", "-n", PROOF_NAMESPACE, "-f", "-", input=json.dumps(pod))

    def running() -> dict[str, Any] | None:
        p = kubectl_json(cluster, "pod", "resized", "-n", PROOF_NAMESPACE)
        statuses = (p.get("status") or {}).get("containerStatuses") or []
        return p if statuses and "running" in (statuses[0].get("state") or {}) else None

    live = wait_for(running, "the resized pod Running", timeout=60)
    patch = {
        "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "320Mi"}}}]}
    }
    result = cluster.kubectl(
        "patch", "pod", "resized", "-n", PROOF_NAMESPACE, "--subresource", "resize",
        "-p", json.dumps(patch), check=False,
    )  # fmt: skip
    if result.returncode != 0:
        say(f"The API server refused the resize: {result.stderr.strip()}")
        return

    def applied() -> dict[str, Any] | None:
        p = kubectl_json(cluster, "pod", "resized", "-n", PROOF_NAMESPACE)
        cs = p["status"]["containerStatuses"][0]
        limit = ((cs.get("resources") or {}).get("limits") or {}).get("memory")
        return p if limit == "320Mi" else None

    after = wait_for(applied, "the kubelet to apply the resize", timeout=60)
    cs = after["status"]["containerStatuses"][0]
    cgroup = node.container_cgroup(after["metadata"]["uid"], cs["containerID"])
    cgroup_limit = (
        int((cgroup / "memory.limit_in_bytes").read_text()) // MiB if cgroup else "unknown"
    )
    sees = wait_for(
        lambda: next(
            (
                r
                for r in reversed(pod_log_lines(node, PROOF_NAMESPACE, after))
                if r.get("cgroup_limit_bytes") == 320 * MiB
            ),
            None,
        ),
        "the program to see the new limit",
        timeout=20,
    )
    state = wait_for(
        lambda: noncompliant_state(metrics_port, "resized"), "the operator's report", timeout=20
    )
    env = container_env(after)
    same = cs["containerID"] == live["status"]["containerStatuses"][0]["containerID"]
    print(
        f"    cgroup memory limit: {cgroup_limit} MiB, restarts {cs.get('restartCount')}, "
        f"same container: {same}\n"
        f"    env still GOMEMLIMIT={env[-1]['value'] if env else '-'}; the Go runtime's limit is "
        f"{sees['memory_limit_bytes'] // MiB} MiB\n"
        f"    the operator reports it {state}; expected now: {expected_value(after, policy)}"
    )
    print()


def main() -> int:
    keep = os.environ.get("KEEP", "") not in ("", "0", "false", "no")
    for path in (POLICY, APP):
        if not path.exists():
            print(f"demo: {path.relative_to(REPO)} is missing", file=sys.stderr)
            return 1

    say("Checking the local control plane build (the first build takes several minutes)")
    ensure_built(quiet=False)
    cluster = ControlPlane(STATE_DIR, detach=True, real_node="auto")
    started_cluster = not cluster.is_running()
    if started_cluster:
        say(f"Starting the local control plane in {STATE_DIR.relative_to(REPO)}/")
        cluster.start()
    else:
        say(f"Reusing the control plane running in {STATE_DIR.relative_to(REPO)}/")

    operator: subprocess.Popen[bytes] | None = None
    log_path = STATE_DIR / "demo-operator.log"
    ok = False
    try:
        say("Applying the CRDs and examples/policy.yaml")
        cluster.kubectl("apply", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
        cluster.kubectl("apply", "-f", str(POLICY))

        ports = {"webhook": free_port(), "metrics": free_port(), "health": free_port()}
        command = operator_command(cluster.kubeconfig, ports)
        shown = [Path(command[0]).name, *command[1:]]
        say(f"Starting the operator: {' '.join(shown)}")
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=keep,  # with KEEP=1 it outlives this script
                cwd=REPO,
            )
        wait_for(
            lambda: (
                operator is not None and (operator.poll() is not None or ready(ports["health"]))
            ),
            "the operator's /readyz",
        )
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited:\n{log_path.read_text()[-3000:]}")

        say(f"Applying examples/app.yaml in namespace {NAMESPACE}")
        namespace = json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
        cluster.kubectl("apply", "-f", "-", input=namespace)
        wait_for(
            lambda: (
                cluster.kubectl(
                    "get", "serviceaccount", "default", "-n", NAMESPACE, check=False
                ).returncode
                == 0
            ),
            "the namespace's default ServiceAccount",
        )
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(APP))
        deployment = json.loads(
            cluster.kubectl("get", "-n", NAMESPACE, "-f", str(APP), "-o", "json").stdout
        )
        items = deployment.get("items", [deployment])
        replicas = sum(int(item.get("spec", {}).get("replicas", 1)) for item in items)

        def pods() -> list[dict[str, Any]] | None:
            found = json.loads(
                cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout
            )["items"]
            return found if len(found) >= replicas else None

        rows = [["POD", "CONTAINER", "MEMORY LIMIT", "GOMEMLIMIT", "SET BY"]]
        for pod in sorted(wait_for(pods, f"{replicas} pods"), key=lambda p: p["metadata"]["name"]):
            annotations = pod["metadata"].get("annotations") or {}
            for container in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
                limit = ((container.get("resources") or {}).get("limits") or {}).get("memory", "-")
                value, setter = who_set(container, annotations)
                rows.append([pod["metadata"]["name"], container["name"], str(limit), value, setter])
        print()
        print(table(rows))
        print()

        # The status counts come from the pod watcher; give it a moment, then show the policy.
        def counted() -> bool:
            policies = json.loads(cluster.kubectl("get", "-f", str(POLICY), "-o", "json").stdout)
            return all(
                (p.get("status") or {}).get("matchedPods", 0) >= 1
                for p in policies.get("items", [policies])
            )

        with contextlib.suppress(RuntimeError):
            wait_for(counted, "the policy status", timeout=8)
        print(cluster.kubectl("get", "-f", str(POLICY)).stdout)
        run_proof(cluster, ports["metrics"])
        ok = True
    finally:
        if keep and ok and operator is not None:
            pid_file = STATE_DIR / "demo-operator.pid"
            pid_file.write_text(f"{operator.pid}\n")
            print(f"KEEP=1: the cluster and the operator (pid {operator.pid}) keep running.")
            print(f"  export KUBECONFIG={cluster.kubeconfig}")
            print(f"  kubectl get clustergomempolicies; kubectl get pods -n {NAMESPACE}")
            print(f"  curl -s http://127.0.0.1:{ports['metrics']}/metrics | grep gomemlimit_")
            print(f"  operator log: {log_path}")
            print(f"To stop: kill $(cat {pid_file}); make cluster-down")
        else:
            if operator is not None and operator.poll() is None:
                say("Stopping the operator")
                operator.send_signal(signal.SIGTERM)
                try:
                    operator.wait(30)
                except subprocess.TimeoutExpired:
                    operator.kill()
                    operator.wait()
            if not ok and log_path.exists():
                print(
                    f"operator log ({log_path}):\n{log_path.read_text()[-3000:]}", file=sys.stderr
                )
            if started_cluster:
                say("Stopping the local control plane")
                cluster.stop()
            else:  # someone else's cluster: remove only what the demo added
                cluster.kubectl("delete", "-f", str(POLICY), "--ignore-not-found", check=False)
                cluster.kubectl(
                    "delete",
                    "namespace",
                    NAMESPACE,
                    PROOF_NAMESPACE,
                    "--ignore-not-found",
                    "--wait=false",
                    check=False,
                )
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a readable line, not a traceback, for the newcomer
        print(f"demo: failed: {exc}", file=sys.stderr)
        sys.exit(1)
