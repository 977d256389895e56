#!/usr/bin/env python3
"""`make demo`: a local cluster, the operator, an example workload, and what got injected.

1. starts the local control plane in .cluster/ (built from Go modules on first use; an
   already running `make cluster-up` cluster is reused and left running);
2. applies the CRDs and examples/policy.yaml (a ClusterGoMemPolicy);
3. starts `gomemlimit operator --dev` (it registers its own webhook configuration);
4. applies examples/app.yaml (a Go container and a sidecar) in the namespace `demo`;
5. prints each pod's containers: memory limit, GOMEMLIMIT and who set it;
6. tears everything down, unless KEEP=1.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from controlplane import ControlPlane, ensure_built  # noqa: E402 (imported by path)

STATE_DIR = REPO / ".cluster"
NAMESPACE = "demo"
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
    base = [cli, "operator"] if cli else [sys.executable, "-m", "gomemlimit_operator.operator_main"]
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


def main() -> int:
    keep = os.environ.get("KEEP", "") not in ("", "0", "false", "no")
    for path in (POLICY, APP):
        if not path.exists():
            print(f"demo: {path.relative_to(REPO)} is missing", file=sys.stderr)
            return 1

    say("Checking the local control plane build (the first build takes several minutes)")
    ensure_built(quiet=False)
    cluster = ControlPlane(STATE_DIR, detach=True)
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
