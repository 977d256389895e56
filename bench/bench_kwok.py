"""The pod watcher against a real API server: 20,000 pods on kwok nodes, one operator process.

On the run's local control plane (``tests/cluster``: etcd, kube-apiserver, controller
manager, scheduler, kwok):

1. fake Nodes for kwok (110 pods each, as a kubelet allows by default), Ready;
2. a few namespaces and a ClusterGoMemPolicy that governs their ``app`` containers;
3. N pods of realistic shape (an ``app`` container with a memory limit and ``GOMEMLIMIT``, a
   sidecar, labels, a probe), 5% of them with ``GOMEMLIMIT=512Mi``, which Go rejects. They
   are created as fast as the API server takes them: pre-serialised bodies, 16 keep-alive
   HTTPS connections with the admin certificate, no webhook configured. Each pod names its
   node (``spec.nodeName``, round robin): the scheduler binds at 50 requests/s (its default
   client QPS), which would take minutes for 20,000 pods; kwok then marks them Running;
4. the real operator process with ``--components watcher``: from its launch to the initial
   sync (``gomemlimit_watcher_synced`` 1, set once its start-up barrier confirmed that the
   watch delivered every pod, with every bench pod counted in ``gomemlimit_containers``);
   its RSS then (``/proc/PID/status``), and again after its ``gc.freeze()`` (10 s after the
   sync); ``/metrics`` (best of 3, bytes, series, noncompliant info series) and the longest
   event-loop stall it measured (``gomemlimit_event_loop_longest_stall_seconds``).

Nothing is deleted afterwards: the pods, namespaces and nodes go with the run's control
plane. ``python -m bench.bench_kwok [--quick] [--pods N] [--keep]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import math
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.bench_records import containers
from bench.shared import BenchRun

PODS: Final = 20_000
QUICK_PODS: Final = 300
NAMESPACES: Final = 4
PODS_PER_NODE: Final = 110  # the capacity of tests/cluster's fake_node
"""The kubelet's default ``maxPods``; each fake node allows that many."""
CONNECTIONS: Final = 16
NONCOMPLIANT_SHARE: Final = 20
"""One pod in 20 (5%) has GOMEMLIMIT=512Mi."""
LABEL: Final = "gomemlimit-bench-kwok"
POLICY: Final = "bench-kwok"
NODE_PREFIX: Final = "kwok-bench-"
FREEZE_LOG: Final = "out of the garbage collector's sight"
PARTIAL_METADATA: Final = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


# ---------------------------------------------------------------------------------------------
# The API server, over raw HTTPS
# ---------------------------------------------------------------------------------------------


class Api:
    """Requests with the control plane's admin client certificate (``system:masters``)."""

    def __init__(self, cluster: Any) -> None:
        host, _, port = str(cluster.server).removeprefix("https://").partition(":")
        self.host, self.port = host, int(port)
        pki = Path(cluster.state_dir) / "pki"
        self.context = ssl.create_default_context(cafile=str(cluster.ca_cert_path))
        self.context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def connect(self, timeout: float = 60.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=timeout
        )

    def request(
        self, method: str, path: str, body: Any = None, accept: str = "application/json"
    ) -> tuple[int, Any]:
        connection = self.connect()
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Accept": accept, "Content-Type": "application/json"}
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def create(self, path: str, body: Any) -> None:
        status, answer = self.request("POST", path, body)
        if status not in (200, 201, 409):
            raise RuntimeError(f"POST {path}: HTTP {status}: {str(answer)[:300]}")


@dataclass
class Created:
    seconds: float = 0.0
    failures: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)


def create_all(api: Api, requests: list[tuple[str, bytes]], connections: int) -> Created:
    """POST every (path, body) over ``connections`` keep-alive connections; retries a
    request that fails with 429, 5xx or a dropped connection (up to 5 times)."""
    created = Created()
    lock = threading.Lock()
    work = iter(requests)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}

    def worker() -> None:
        connection = api.connect()
        try:
            while True:
                with lock:
                    item = next(work, None)
                if item is None:
                    return
                path, body = item
                for attempt in range(6):
                    try:
                        connection.request("POST", path, body=body, headers=headers)
                        response = connection.getresponse()
                        data = response.read()
                    except (OSError, http.client.HTTPException) as exc:
                        connection.close()
                        connection = api.connect()
                        status, data = 0, str(exc).encode()
                    else:
                        status = response.status
                    if status in (200, 201, 409):
                        break
                    if attempt < 5 and (status == 0 or status == 429 or status >= 500):
                        with lock:
                            created.retries += 1
                        time.sleep(0.2 * (attempt + 1))
                        continue
                    with lock:
                        created.failures += 1
                        if len(created.errors) < 5:
                            created.errors.append(f"HTTP {status}: {data[:200]!r}")
                    break
        finally:
            connection.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created.seconds = time.perf_counter() - began
    return created


def count_pods(api: Api, namespace: str, field_selector: str = "") -> int:
    """Pods in ``namespace`` (matching ``field_selector``), by paged metadata-only LISTs."""
    count, token = 0, ""
    while True:
        query = f"limit=5000&continue={token}"
        if field_selector:
            query += f"&fieldSelector={field_selector}"
        status, page = api.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods?{query}", accept=PARTIAL_METADATA
        )
        if status != 200:
            raise RuntimeError(f"listing pods in {namespace}: HTTP {status}: {str(page)[:300]}")
        count += len(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return count


def exists(api: Api, path: str) -> bool:
    return api.request("GET", path)[0] == 200


def wait_for(check: Callable[[], bool], what: str, timeout: float, interval: float = 0.5) -> float:
    """Seconds until ``check()``; raises after ``timeout``."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - began


# ---------------------------------------------------------------------------------------------
# What is created
# ---------------------------------------------------------------------------------------------


def node(name: str, kubelet_version: str) -> dict[str, Any]:
    """A fake Node that kwok manages, as tests/cluster's own nodes (110 pods), marked ours."""
    from tests.cluster.controlplane import fake_node

    return fake_node(name, kubelet_version, {LABEL: "true"})


def policy() -> dict[str, Any]:
    return {
        "apiVersion": "gomemlimit.io/v1alpha1",
        "kind": "ClusterGoMemPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "ratio": 0.9,
            "containers": ["app"],
            "priority": 1000,  # above any other benchmark's policy in a shared cluster
            "namespaceSelector": {"matchLabels": {LABEL: "true"}},
        },
    }


def pod(index: int, node_name: str) -> dict[str, Any]:
    """A Deployment-like pod: 50 replicas per workload, an app and a sidecar."""
    workload = index // 50
    limit_mi = 256 * (1 + workload % 4)
    bad = index % NONCOMPLIANT_SHARE == 0
    value = "512Mi" if bad else f"{limit_mi * 9 // 10}MiB"
    template_hash = f"{workload * 7919 % 10**10:010d}"[:10]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"service-{workload}-{template_hash}-{index % 50:05d}",
            "labels": {
                "app.kubernetes.io/name": f"service-{workload}",
                "app.kubernetes.io/part-of": f"team-{workload % 40}",
                "pod-template-hash": template_hash,
            },
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-29T09:00:00Z"},
        },
        "spec": {
            "nodeName": node_name,
            "containers": containers(workload, limit_mi, value),
        },
    }


# ---------------------------------------------------------------------------------------------
# The operator's /metrics and /proc
# ---------------------------------------------------------------------------------------------


def fetch_metrics(port: int) -> tuple[float, bytes]:
    """(seconds, body) of one GET /metrics."""
    began = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"GET /metrics: HTTP {response.status}")
    return time.perf_counter() - began, body


def samples(body: bytes) -> list[tuple[str, str, float]]:
    """(name, label text, value) of every sample line."""
    found: list[tuple[str, str, float]] = []
    for raw in body.decode().splitlines():
        if not raw or raw.startswith("#"):
            continue
        head, _, value = raw.rpartition(" ")
        name, _, labels = head.partition("{")
        found.append((name, labels.rstrip("}"), float(value)))
    return found


def value(body: bytes, name: str) -> float | None:
    return next((v for n, _, v in samples(body) if n == name), None)


def bench_containers(body: bytes) -> float:
    """Containers of the bench namespaces in ``gomemlimit_containers``."""
    return sum(
        v
        for n, labels, v in samples(body)
        if n == "gomemlimit_containers" and f'namespace="{LABEL}-' in labels
    )


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(rest.split()[0]) * 1024
    return found


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def prepare(run: BenchRun, api: Api, pods: int) -> dict[str, Any]:
    """Nodes, namespaces, the policy and the pods, Running on kwok nodes."""
    cluster = run.cluster()
    nodes = max(1, math.ceil(pods / PODS_PER_NODE))
    version = cluster.binaries.versions["K8S_VERSION"]
    node_names = [f"{NODE_PREFIX}{index}" for index in range(nodes)]
    began = time.monotonic()
    made = create_all(
        api,
        [("/api/v1/nodes", json.dumps(node(name, version)).encode()) for name in node_names],
        min(CONNECTIONS, nodes),
    )
    if made.failures:
        raise RuntimeError(f"creating nodes: {made.errors}")

    def nodes_ready() -> bool:
        status, page = api.request("GET", f"/api/v1/nodes?labelSelector={LABEL}%3Dtrue&limit=5000")
        if status != 200:
            return False
        ready = 0
        for item in page.get("items") or []:
            conditions = {
                c.get("type"): c.get("status")
                for c in (item.get("status") or {}).get("conditions") or []
            }
            taints = (item.get("spec") or {}).get("taints") or []
            ready += conditions.get("Ready") == "True" and not taints
        return ready >= nodes

    wait_for(nodes_ready, f"{nodes} kwok nodes Ready and untainted", timeout=120)
    node_seconds = time.monotonic() - began

    namespaces = [f"{LABEL}-{index}" for index in range(NAMESPACES if pods >= 1000 else 2)]
    for name in namespaces:
        api.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": {LABEL: "true"}}})
    for name in namespaces:
        path = f"/api/v1/namespaces/{name}/serviceaccounts/default"
        wait_for(
            functools.partial(exists, api, path),
            f"the default ServiceAccount of {name}",
            timeout=60,
            interval=0.1,
        )
    api.create("/apis/gomemlimit.io/v1alpha1/clustergomempolicies", policy())

    requests = [
        (
            f"/api/v1/namespaces/{namespaces[index % len(namespaces)]}/pods",
            json.dumps(pod(index, node_names[index % nodes])).encode(),
        )
        for index in range(pods)
    ]
    created = create_all(api, requests, CONNECTIONS)
    if created.failures:
        raise RuntimeError(f"{created.failures} pod creates failed: {created.errors}")
    print(
        f"  {nodes} kwok nodes Ready in {node_seconds:.1f} s; {pods:,} pods created in "
        f"{created.seconds:.1f} s ({pods / created.seconds:,.0f}/s, {created.retries} retries)",
        flush=True,
    )

    began = time.monotonic()

    def all_running() -> bool:
        return all(count_pods(api, ns, "status.phase!=Running") == 0 for ns in namespaces)

    wait_for(all_running, f"{pods:,} pods Running", timeout=max(120, pods / 20), interval=1.0)
    running_seconds = time.monotonic() - began
    listed = sum(count_pods(api, ns) for ns in namespaces)
    if listed != pods:
        raise RuntimeError(f"{listed} pods in the bench namespaces, expected {pods}")
    print(f"  every pod Running on its kwok node {running_seconds:.1f} s later", flush=True)
    return {
        "nodes": nodes,
        "namespaces": namespaces,
        "node_seconds": node_seconds,
        "create_seconds": created.seconds,
        "creates_per_second": pods / created.seconds,
        "create_retries": created.retries,
        "running_seconds": running_seconds,
    }


def measure_operator(run: BenchRun, pods: int, lease_namespace: str) -> dict[str, Any]:
    from tests.e2e.operator_harness import OperatorProcess

    cluster = run.cluster()
    operator = OperatorProcess(
        Path(cluster.kubeconfig),
        run.directory("kwok") / "operator.log",
        mode=["--components", "watcher"],
        lease_namespace=lease_namespace,
    )
    launched = time.monotonic()
    operator.launch()
    try:
        assert operator.process is not None
        pid = operator.process.pid
        last: dict[str, Any] = {}

        def synced() -> bool:
            if not operator.running:
                raise RuntimeError(f"the operator exited:\n{operator.log_tail()}")
            try:
                _, body = fetch_metrics(operator.metrics_port)
            except (OSError, RuntimeError, http.client.HTTPException):
                return False
            last["synced"] = value(body, "gomemlimit_watcher_synced")
            last["watched"] = value(body, "gomemlimit_watched_pods")
            last["containers"] = bench_containers(body)
            last["cpu"] = value(body, "process_cpu_seconds_total")
            last["stall"] = value(body, "gomemlimit_event_loop_longest_stall_seconds")
            return bool(last["synced"] == 1 and last["containers"] >= 2 * pods)

        try:
            wait_for(
                synced, "the operator's initial sync", timeout=max(120, pods / 50), interval=0.1
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; last seen {last}") from None
        sync_seconds = time.monotonic() - launched
        memory = proc_status(pid)
        print(
            f"  operator (--components watcher) synced {sync_seconds:.1f} s after launch "
            f"({last['cpu'] or 0:.1f} s of its CPU): {last['watched']:,.0f} pods watched, RSS "
            f"{memory['VmRSS'] / 2**20:,.0f} MiB, longest event-loop stall so far "
            f"{(last['stall'] or 0) * 1000:.0f} ms",
            flush=True,
        )
        frozen: dict[str, Any] = {}
        if not run.quick:  # the freeze comes 10 s after the sync
            with contextlib.suppress(RuntimeError):
                wait_for(lambda: FREEZE_LOG in operator.log_text(), "gc.freeze", 30, 0.5)
                time.sleep(1.0)
                after = proc_status(pid)
                frozen = {
                    "rss_bytes_after_freeze": after["VmRSS"],
                    "freeze_log": next(
                        line.strip()
                        for line in operator.log_text().splitlines()
                        if FREEZE_LOG in line
                    ),
                }
        timings: list[float] = []
        body = b""
        for _ in range(3):
            seconds, body = fetch_metrics(operator.metrics_port)
            timings.append(seconds)
        lines = samples(body)
        stall = value(body, "gomemlimit_event_loop_longest_stall_seconds")
        return {
            "rss_bytes": memory["VmRSS"],
            "rss_peak_bytes": memory["VmHWM"],
            **frozen,
            "initial_sync_seconds": sync_seconds,
            "cpu_seconds_at_sync": last["cpu"],
            "longest_stall_ms_at_sync": None if last["stall"] is None else last["stall"] * 1000,
            "watched_pods": last["watched"],
            "scrape_ms": min(timings) * 1000,
            "scrape_bytes": len(body),
            "series": len(lines),
            "noncompliant_info_series": sum(
                1 for n, _, _ in lines if n == "gomemlimit_noncompliant_container_info"
            ),
            "longest_stall_ms": None if stall is None else stall * 1000,
            "watch_events": {
                labels.removeprefix('type="').removesuffix('"'): v
                for n, labels, v in lines
                if n == "gomemlimit_watch_events_total" and v
            },
        }
    finally:
        status = operator.stop()
        if status not in (0, None):
            print(f"  operator exited with status {status}; log: {operator.log_path}")


def collect(run: BenchRun, pods: int | None = None) -> dict[str, Any]:
    count = pods or (QUICK_PODS if run.quick else PODS)
    began = time.monotonic()
    cluster = run.cluster()
    print(f"  control plane ready ({time.monotonic() - began:.1f} s)", flush=True)
    began = time.monotonic()
    api = Api(cluster)
    prepared = prepare(run, api, count)
    measured = measure_operator(run, count, prepared["namespaces"][0])
    expected = count // NONCOMPLIANT_SHARE + (count % NONCOMPLIANT_SHARE > 0)
    print(
        f"  /metrics: {measured['scrape_ms']:.0f} ms, {measured['scrape_bytes'] / 1024:,.0f} KiB, "
        f"{measured['series']:,} series, {measured['noncompliant_info_series']:,} noncompliant "
        f"info series (expected {expected:,}); longest event-loop stall since launch "
        f"{measured['longest_stall_ms'] or 0:.0f} ms",
        flush=True,
    )
    if "rss_bytes_after_freeze" in measured:
        print(
            f"  after gc.freeze: RSS {measured['rss_bytes_after_freeze'] / 2**20:,.0f} MiB; "
            f"{measured['freeze_log']}",
            flush=True,
        )
    result = {
        "pods": count,
        **{k: v for k, v in prepared.items() if k != "namespaces"},
        "namespaces": len(prepared["namespaces"]),
        **measured,
        "expected_noncompliant": expected,
        "seconds_beyond_cluster_start": time.monotonic() - began,
    }
    print(f"  ({result['seconds_beyond_cluster_start']:.1f} s beyond the cluster start)")
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_kwok")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PODS} pods")
    parser.add_argument("--pods", type=int, help=f"this many pods (default {PODS:,})")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args, _ = parser.parse_known_args(argv)
    began = time.monotonic()
    with BenchRun(quick=args.quick, keep=args.keep) as run:
        if args.keep:
            print(f"  work directory (kept): {run.work}")
        result = collect(run, args.pods)
    print(json.dumps(result, indent=2))
    print(f"  ({time.monotonic() - began:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
