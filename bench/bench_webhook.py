"""The admission webhook under load: pod creates/s, latency and failures with and without it.

``python -m bench.bench_webhook [--pods N] [--concurrency C] [--rounds R]`` (also run by
``python -m bench``, where ``--pods`` is shared with the other benchmarks).

It starts a local control plane (``tests/cluster``), applies the CRDs and a
ClusterGoMemPolicy that governs the ``app`` container of every pod in the benchmark's
namespaces, then creates N pods with C concurrent clients in each phase:

* ``A`` (no webhook): the operator is not running and no webhook configuration exists.
* ``B`` (webhook): the real operator process runs with ``--dev`` (its own
  MutatingWebhookConfiguration, ``failurePolicy: Ignore``, 2 s timeout) and injects
  ``GOMEMLIMIT=460MiB`` into every pod. Every create response and a LIST afterwards are
  checked: a pod without the value is a fail-open, and counted as a failure.
* ``O`` (operator running, webhook not called): the same operator, but the pods carry
  ``gomemlimit.io/skip: "true"``, so the webhook's CEL ``matchConditions`` exclude them and
  the API server does not call it. B vs O is the webhook call itself; O vs A is the operator
  watching pods and the CEL conditions, competing for the same 2 cores.
* ``a``, ``b``: A and B with a single client (no queueing anywhere): the latency the webhook
  adds to one pod create on an idle machine.

Rounds repeat the phases (A, a, B, b, O by default, after an unreported warm-up), so that
warm-up and drift do not land on one phase; the operator is started for B and stopped
before A in every round.

The pods carry a scheduling gate: they are stored, never scheduled, and never touched by
kwok, so the benchmark measures admission and storage, not the scheduler. (A ``nodeName``
of a missing node would skip the scheduler too, but the pod GC controller deletes such pods
after 40 s, in the middle of later phases.) Each phase uses a fresh namespace; its pods are
deleted afterwards, and the next phase waits until the machine is quiet again.

The clients are threads with raw HTTPS keep-alive connections (``http.client``, the admin
client certificate): pod bodies are serialised before and responses parsed after the timed
window, so the client costs a fraction of the CPU that the kubernetes client's model
(de)serialisation would, on a machine where the client shares 2 cores with the cluster.

Also measured: per-process CPU seconds during each phase (/proc; until the operator has seen
every new pod, so that its watch work is counted even when it lags), the API server's
``apiserver_admission_webhook_*`` and ``apiserver_request_duration_seconds`` series, the
operator's ``gomemlimit_admission_duration_seconds`` (time in our handler), and an in-process
micro-benchmark of ``webhook.admit()``, the handler and kopf's JSON-Patch diff. With
``--sample-operator DIR``, py-spy (``pip install py-spy``; not a project dependency) samples
the operator in each of its phases and the share of its CPU per code path is printed.

Anchor: Kyverno 1.18.1's load test (kind + KWOK, 32 vCPU, k6, 500 virtual users): one
JSONPatch mutating policy gave 1,817 pod creates/s against 1,932 with no webhook (-6%), 0.0%
failures, p99 466 ms against 443 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import http.client
import json
import logging
import math
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO / "crds"

POLICY_NAME = "bench-webhook"
BENCH_LABEL = "gomemlimit.io/bench"
GATE = "gomemlimit.io/bench-admission-only"
IMAGE = "registry.invalid/bench-app:1"  # never pulled: the pods are never scheduled
APP_LIMIT = "512Mi"
EXPECTED = "460MiB"  # 90% of 512Mi = 460.8 MiB, rounded down to a whole MiB
WEBHOOK_NAME = "pods.gomemlimit.io"
ANCHOR = {"no webhook": 1932.0, "webhook": 1817.0, "p99 no webhook": 0.443, "p99 webhook": 0.466}
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
PHASES = {
    "A": "no webhook",
    "B": "webhook",
    "O": "operator, webhook not called",
    "a": "no webhook, 1 client",
    "b": "webhook, 1 client",
}
WITH_OPERATOR = frozenset("BOb")
MUTATED = frozenset("Bb")


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------


def policy_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "gomemlimit.io/v1alpha1",
        "kind": "ClusterGoMemPolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "namespaceSelector": {"matchLabels": {BENCH_LABEL: "true"}},
            "containers": ["app"],
        },
    }


def make_pod(name: str, *, opted_out: bool = False) -> dict[str, Any]:
    """Two containers: a Go app with a 512Mi limit (governed) and a sidecar (not governed)."""
    metadata: dict[str, Any] = {"name": name, "labels": {"app": "bench", "tier": "backend"}}
    if opted_out:
        metadata["annotations"] = {"gomemlimit.io/skip": "true"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "schedulingGates": [{"name": GATE}],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "app",
                    "image": IMAGE,
                    "ports": [{"containerPort": 8080}],
                    "env": [{"name": "LOG_LEVEL", "value": "info"}],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": APP_LIMIT},
                        "limits": {"memory": APP_LIMIT},
                    },
                },
                {
                    "name": "sidecar",
                    "image": "registry.invalid/bench-proxy:1",
                    "resources": {"limits": {"cpu": "200m", "memory": "128Mi"}},
                },
            ],
        },
    }


def gomemlimit_of(pod: dict[str, Any], container: str = "app") -> str | None:
    for item in pod.get("spec", {}).get("containers", []):
        if item.get("name") == container:
            for entry in item.get("env") or []:
                if entry.get("name") == "GOMEMLIMIT":
                    return str(entry.get("value"))
    return None


# ---------------------------------------------------------------------------------------------
# Raw HTTPS client with the admin client certificate
# ---------------------------------------------------------------------------------------------


class Api:
    def __init__(self, server: str, ca: Path, cert: Path, key: Path) -> None:
        host, _, port = server.removeprefix("https://").partition(":")
        self.host, self.port = host, int(port)
        self.context = ssl.create_default_context(cafile=str(ca))
        self.context.load_cert_chain(str(cert), str(key))

    def connect(self, timeout: float = 30.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=timeout
        )

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 60.0
    ) -> tuple[int, bytes]:
        connection = self.connect(timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.request(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    def metrics(self) -> str:
        status, data = self.request("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics: HTTP {status}")
        return data.decode()


# ---------------------------------------------------------------------------------------------
# Prometheus text: the few series we need, as deltas
# ---------------------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str, prefixes: tuple[str, ...]) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    wanted = "\n".join(
        line for line in text.splitlines() if line and line[0] != "#" and line.startswith(prefixes)
    )
    samples: Samples = {}
    for family in text_string_to_metric_families(wanted + "\n"):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(after: Samples, before: Samples) -> Samples:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def total(samples: Samples, metric: str, /, **where: str) -> float:
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == metric and where.items() <= dict(labels).items()
    )


@dataclass
class Histogram:
    count: float
    sum: float
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), sorted

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket, as histogram_quantile() does."""
        if not self.count or not self.buckets:
            return None
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if bound == float("inf"):
                    return lower_bound
                width = cumulative - lower_count
                share = (rank - lower_count) / width if width else 1.0
                return lower_bound + (bound - lower_bound) * share
            lower_bound, lower_count = bound, cumulative
        return lower_bound


def histogram(samples: Samples, base: str, /, **where: str) -> Histogram:
    buckets: dict[float, float] = {}
    for (sample, labels), value in samples.items():
        label_map = dict(labels)
        if sample == f"{base}_bucket" and where.items() <= label_map.items():
            bound = float(label_map["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return Histogram(
        total(samples, f"{base}_count", **where),
        total(samples, f"{base}_sum", **where),
        sorted(buckets.items()),
    )


APISERVER_SERIES = (
    "apiserver_admission_webhook_admission_duration_seconds",
    "apiserver_admission_webhook_fail_open_count",
    "apiserver_admission_webhook_request_total",
    "apiserver_admission_webhook_rejection_count",
    "apiserver_request_duration_seconds",
    "apiserver_flowcontrol_rejected_requests_total",
)
OPERATOR_SERIES = (
    "gomemlimit_admission_duration_seconds",
    "gomemlimit_admission_requests_total",
    "gomemlimit_watch_events_total",
)


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc
# ---------------------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    everything = sum(values[:8])
    return (everything - idle) / TICK, everything / TICK


class CpuMeter:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start: dict[str, float] = {}
        self.machine_start = (0.0, 0.0)

    def snapshot(self) -> dict[str, float]:
        return {name: process_cpu(pid) for name, pid in self.pids.items()}

    def begin(self) -> None:
        self.start = self.snapshot()
        self.machine_start = machine_cpu()

    def end(self) -> tuple[dict[str, float], float]:
        """(CPU seconds per process, CPU seconds of the whole machine) since begin()."""
        now = self.snapshot()
        busy, _ = machine_cpu()
        used = {name: now[name] - self.start.get(name, 0.0) for name in now}
        return used, busy - self.machine_start[0]


def settle(quiet_cores: float = 0.35, window: float = 1.0, limit: float = 30.0) -> float:
    """Wait until the machine uses less than ``quiet_cores`` cores over ``window`` seconds
    (the cluster's background work; also other people's builds). Returns the last load."""
    deadline = time.monotonic() + limit
    load = 0.0
    while time.monotonic() < deadline:
        busy0, total0 = machine_cpu()
        time.sleep(window)
        busy1, total1 = machine_cpu()
        cores = os.cpu_count() or 1
        load = (busy1 - busy0) / max(total1 - total0, 1e-9) * cores
        if load < quiet_cores:
            break
    return load


# ---------------------------------------------------------------------------------------------
# The load: N pod creates by C threads, each with one keep-alive connection
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    latency: float
    status: int
    body: bytes
    error: str | None = None


def create_pods(
    api: Api,
    namespace: str,
    bodies: list[bytes],
    concurrency: int,
    on_start: Callable[[], None] = lambda: None,
) -> tuple[list[Outcome], float]:
    """POST every body; returns the outcomes and the wall time from first send to last reply.

    Every client connects (TLS handshake) first; then ``on_start`` is called and the clock
    starts, so connection set-up is in neither the wall time nor the CPU measured from there.
    """
    path = f"/api/v1/namespaces/{namespace}/pods"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    outcomes: list[Outcome | None] = [None] * len(bodies)
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()
    connected = threading.Barrier(concurrency + 1)
    go = threading.Event()

    def worker() -> None:
        connection = api.connect()
        with contextlib.suppress(OSError):
            connection.connect()  # TLS handshake before the timed window
        connected.wait()
        go.wait()
        try:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                sent = time.perf_counter()
                try:
                    connection.request("POST", path, body=bodies[index], headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    outcomes[index] = Outcome(
                        time.perf_counter() - sent, 0, b"", f"{type(exc).__name__}: {exc}"
                    )
                    connection.close()
                    connection = api.connect()
                    continue
                outcomes[index] = Outcome(time.perf_counter() - sent, response.status, data)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    connected.wait()
    on_start()
    began = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None], wall


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


@dataclass
class PhaseResult:
    phase: str
    round: int
    pods: int
    concurrency: int
    wall: float
    latencies: list[float]
    failures: Counter[str]
    fail_opens: int
    cpu: dict[str, float]  # CPU seconds by process, until the operator saw every pod
    window_cpu: dict[str, float]  # the same, from the first request to the last response
    drain: float  # seconds after the last response until the operator saw every pod
    machine_cpu: float  # CPU seconds of the whole machine, as ``cpu``
    window_machine_cpu: float  # as ``window_cpu``
    load_before: float
    apiserver: Samples = field(default_factory=dict)
    operator: Samples = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.pods / self.wall

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


# ---------------------------------------------------------------------------------------------
# The cluster and the operator
# ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, cluster: Any, work: Path, sample_dir: Path | None) -> None:
        self.cluster = cluster
        self.work = work
        self.sample_dir = sample_dir
        self.samples: dict[str, Path] = {}  # phase and round -> py-spy output
        pki = cluster.state_dir / "pki"
        self.api = Api(cluster.server, cluster.ca_cert_path, pki / "admin.crt", pki / "admin.key")
        self.operator: Any = None
        self.operator_starts = 0
        self.startup_seconds: list[float] = []

    # -- setup ----------------------------------------------------------------------------------

    def install(self) -> None:
        self.cluster.kubectl("apply", "-f", str(CRDS))
        self.cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS)
        )
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(policy_manifest()))

    def new_namespace(self, label: str) -> str:
        name = f"bench-{label.lower()}-{secrets.token_hex(3)}"
        self.api.json(
            "POST",
            "/api/v1/namespaces",
            {"metadata": {"name": name, "labels": {BENCH_LABEL: "true"}}},
        )
        deadline = time.monotonic() + 60
        while (
            self.api.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] != 200
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no default ServiceAccount in {name}")
            time.sleep(0.1)
        return name

    def delete_pods(self, namespace: str) -> None:
        self.api.json("DELETE", f"/api/v1/namespaces/{namespace}/pods")
        self.api.request("DELETE", f"/api/v1/namespaces/{namespace}")

    def list_pods(self, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = self.api.json(
                "GET", f"/api/v1/namespaces/{namespace}/pods?limit=500&continue={token}"
            )
            items += page["items"]
            token = page["metadata"].get("continue") or ""
            if not token:
                return items

    def pids(self) -> dict[str, int]:
        found = {"bench client": os.getpid()}
        for name in COMPONENTS:
            with contextlib.suppress(OSError, ValueError):
                found[name] = int((self.cluster.pid_dir / f"{name}.pid").read_text().split()[0])
        if self.operator is not None and self.operator.running:
            found["operator"] = self.operator.process.pid
        return found

    # -- the operator ---------------------------------------------------------------------------

    def start_operator(self) -> None:
        from tests.e2e.operator_harness import OperatorProcess

        self.operator_starts += 1
        log = self.work / f"operator-{self.operator_starts}.log"
        # The production default status interval (the harness uses 1 s for tests).
        operator = OperatorProcess(
            self.cluster.kubeconfig, log, extra_args=["--status-interval", "5"]
        )
        self.operator = operator
        began = time.monotonic()
        operator.start(timeout=120)
        self.startup_seconds.append(time.monotonic() - began)

    def stop_operator(self) -> None:
        if self.operator is None:
            return
        operator, self.operator = self.operator, None
        status = operator.stop()
        if status not in (0, None):
            print(f"  operator exited with status {status}; log: {operator.log_path}")

    def operator_metrics(self) -> Samples:
        if self.operator is None:
            return {}
        return parse_metrics(self.operator.metrics(), OPERATOR_SERIES)

    def drain_watch(self, before: Samples, pods: int, limit: float = 60.0) -> float:
        """Seconds until the operator has handled an ADDED event for ``pods`` more pods
        (0 without an operator)."""
        if self.operator is None:
            return 0.0
        began = time.monotonic()
        while time.monotonic() - began < limit:
            seen = delta(self.operator_metrics(), before)
            if total(seen, "gomemlimit_watch_events_total", type="added") >= pods:
                break
            time.sleep(0.05)
        else:
            print(f"  (the operator did not see {pods} new pods within {limit:.0f}s)")
        return time.monotonic() - began

    def webhook_configurations(self) -> list[str]:
        found = self.api.json(
            "GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
        )
        return [item["metadata"]["name"] for item in found["items"]]

    # -- one phase ------------------------------------------------------------------------------

    def run_phase(self, phase: str, round_: int, pods: int, concurrency: int) -> PhaseResult:
        namespace = self.new_namespace(f"{phase}{round_}")
        opted_out = phase == "O"  # the webhook's CEL matchConditions exclude these pods
        bodies = [
            json.dumps(make_pod(f"pod-{i:05d}", opted_out=opted_out)).encode() for i in range(pods)
        ]
        load_before = settle()
        meter = CpuMeter(self.pids())
        api_before = parse_metrics(self.api.metrics(), APISERVER_SERIES)
        operator_before = self.operator_metrics()
        sampler = None
        if self.sample_dir is not None and self.operator is not None:
            output = self.sample_dir / f"operator-{phase}{round_}.txt"
            sampler = Sampler(self.operator.process.pid, output)
            self.samples[f"{phase}{round_}"] = output
        try:
            outcomes, wall = create_pods(self.api, namespace, bodies, concurrency, meter.begin)
            window_cpu, window_machine = meter.end()
            # The operator may still be handling the pods' watch events: CPU counts until it
            # has seen them all, so that work that spills past the last response is not lost.
            created = sum(1 for o in outcomes if o.status == 201)
            drain = self.drain_watch(operator_before, created)
            cpu, machine = meter.end() if drain else (window_cpu, window_machine)
        finally:
            if sampler is not None:
                sampler.stop()
        api_after = parse_metrics(self.api.metrics(), APISERVER_SERIES)
        operator_after = self.operator_metrics()

        failures: Counter[str] = Counter()
        values: dict[str, str | None] = {}
        for outcome in outcomes:
            if outcome.error is not None:
                failures[outcome.error.split(":")[0]] += 1
            elif outcome.status != 201:
                failures[f"HTTP {outcome.status}"] += 1
            else:
                pod = json.loads(outcome.body)
                values[pod["metadata"]["name"]] = gomemlimit_of(pod)
        # The response is the stored object; a LIST confirms it once more.
        stored = {pod["metadata"]["name"]: gomemlimit_of(pod) for pod in self.list_pods(namespace)}
        fail_opens = 0
        for name, value in values.items():
            if phase in MUTATED:
                if value != EXPECTED or stored.get(name) != EXPECTED:
                    fail_opens += 1
            elif value is not None or stored.get(name) is not None:
                failures["unexpected GOMEMLIMIT"] += 1
        if fail_opens:
            failures["fail-open (no GOMEMLIMIT)"] += fail_opens
        missing = len(values) - len(set(values) & set(stored))
        if missing:
            failures["created but not listed"] += missing
        self.delete_pods(namespace)
        return PhaseResult(
            phase=phase,
            round=round_,
            pods=pods,
            concurrency=concurrency,
            wall=wall,
            latencies=[o.latency for o in outcomes],
            failures=failures,
            fail_opens=fail_opens,
            cpu=cpu,
            window_cpu=window_cpu,
            drain=drain,
            machine_cpu=machine,
            window_machine_cpu=window_machine,
            load_before=load_before,
            apiserver=delta(api_after, api_before),
            operator=delta(operator_after, operator_before),
        )


class Sampler:
    """py-spy attached to the operator for one phase (``--sample-operator``).

    A sampling profiler: it barely slows the process down, unlike cProfile, which inflates
    call-heavy code such as ``copy.deepcopy`` several times over. Only non-idle samples are
    kept, so shares are shares of the operator's CPU time.
    """

    def __init__(self, pid: int, output: Path, rate: int = 250) -> None:
        executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(executable).exists():
            raise RuntimeError("--sample-operator needs py-spy: pip install py-spy")
        self.output = output
        command = [executable, "record", "--pid", str(pid), "--rate", str(rate)]
        command += ["--format", "raw", "--nonblocking", "--output", str(output)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(1.0)  # attaching takes a moment
        if self.process.poll() is not None:
            error = self.process.stderr.read().decode() if self.process.stderr else ""
            raise RuntimeError(f"py-spy could not attach to pid {pid}: {error}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


# (label, frames that must all be on the stack: (function, part of the file name))
SAMPLE_MARKERS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("webhook requests (aiohttp, kopf, TLS)", (("_handle_request", "aiohttp/web_protocol"),)),
    ("  kopf serve_admission_request", (("serve_admission_request", "kopf/"),)),
    ("    our handler: PodWebhook.__call__", (("__call__", "gomemlimit_operator/webhook"),)),
    ("      of which admit()", (("admit", "gomemlimit_operator/webhook"),)),
    ("    kopf Patch.as_json_patch", (("as_json_patch", "kopf/"),)),
    ("      of which jsonpatch from_diff", (("from_diff", "jsonpatch"),)),
    ("      of which our patch function", (("apply", "gomemlimit_operator/webhook"),)),
    ("pod and policy watch events (kopf)", (("process_resource_event", "kopf/"),)),
    ("  kopf essence of the body", (("_detect_causes", "kopf/"),)),
    ("  our pod watcher (PodWatcher.handle)", (("handle", "gomemlimit_operator/watcher"),)),
    ("watch streams: read and parse (kopf)", (("continuous_watch", "kopf/"),)),
    ("TLS (asyncio sslproto) anywhere", (("", "asyncio/sslproto"),)),
    ("copy.deepcopy anywhere", (("deepcopy", "copy.py"),)),
    ("logging anywhere", (("", "logging/__init__"),)),
    ("operator threads (status, leader, probes)", (("", "threading.py"),)),
)


def _frame_matches(frame: str, function: str, file_part: str) -> bool:
    """py-spy frames look like ``PodWebhook.__call__ (gomemlimit_operator/webhook.py:184)``."""
    name, _, location = frame.partition(" (")
    named = not function or name == function or name.endswith(f".{function}")
    return named and file_part in location


def summarize_samples(path: Path) -> tuple[int, list[tuple[str, float]]]:
    """(samples, [(label, share of samples whose stack has the marker's frames)])."""
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    samples = sum(count for _, count in stacks)
    shares = []
    for label, required in SAMPLE_MARKERS:
        hits = sum(
            count
            for frames, count in stacks
            if all(any(_frame_matches(f, fn, part) for f in frames) for fn, part in required)
        )
        shares.append((label, hits / samples if samples else 0.0))
    return samples, shares


def report_samples(samples: dict[str, Path]) -> None:
    """Pooled by phase letter: where the operator's CPU time went."""
    by_phase: dict[str, list[Path]] = {}
    for key, path in samples.items():
        if path.exists():
            by_phase.setdefault(key[0], []).append(path)
    for phase, paths in by_phase.items():
        pooled: dict[str, float] = dict.fromkeys((label for label, _ in SAMPLE_MARKERS), 0.0)
        total_samples = 0
        for path in paths:
            count, shares = summarize_samples(path)
            total_samples += count
            for label, share in shares:
                pooled[label] += share * count
        print(
            f"\n--- operator CPU by code path, phase {phase} ({PHASES[phase]}): py-spy, "
            f"{total_samples:,} samples over {len(paths)} round(s); nested rows are included "
            f"in the row above them"
        )
        for label, _ in SAMPLE_MARKERS:
            share = pooled[label] / total_samples if total_samples else 0.0
            print(f"  {label:<44} {100 * share:5.1f}%")


# ---------------------------------------------------------------------------------------------
# In-process micro-benchmark: the decision, the handler, kopf's patch
# ---------------------------------------------------------------------------------------------


def admitted_pod(namespace: str) -> dict[str, Any]:
    """The pod as the API server sends it to the webhook: defaults filled in."""
    pod = make_pod("pod-00001")
    pod["metadata"].update(
        namespace=namespace,
        uid="7d0c4c1e-4a31-4e8a-9a3e-6b1f0e2d9c11",
        creationTimestamp=None,
    )
    spec = pod["spec"]
    spec.update(
        dnsPolicy="ClusterFirst",
        enableServiceLinks=True,
        preemptionPolicy="PreemptLowerPriority",
        priority=0,
        restartPolicy="Always",
        schedulerName="default-scheduler",
        securityContext={},
        serviceAccount="default",
        serviceAccountName="default",
        tolerations=[
            {
                "effect": "NoExecute",
                "key": f"node.kubernetes.io/{taint}",
                "operator": "Exists",
                "tolerationSeconds": 300,
            }
            for taint in ("not-ready", "unreachable")
        ],
        volumes=[
            {
                "name": "kube-api-access-abcde",
                "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {}}]},
            }
        ],
    )
    for container in spec["containers"]:
        container.update(
            imagePullPolicy="IfNotPresent",
            terminationMessagePath="/dev/termination-log",
            terminationMessagePolicy="File",
            volumeMounts=[
                {
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "name": "kube-api-access-abcde",
                    "readOnly": True,
                }
            ],
        )
        container["resources"].setdefault("requests", dict(container["resources"]["limits"]))
    pod["status"] = {}
    return pod


def best_per_call(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Best of ``repeats`` runs of ``calls`` calls, in seconds per call."""
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - began) / calls)
    return best


def micro_benchmark(calls: int) -> list[tuple[str, str]]:
    import kopf
    from prometheus_client import CollectorRegistry

    from gomemlimit_operator.core.api import parse_policy
    from gomemlimit_operator.core.policy_view import PolicyView
    from gomemlimit_operator.runtime.admission_metrics import AdmissionMetrics
    from gomemlimit_operator.runtime.webhook import PodWebhook, admit

    namespace = "bench-micro"
    registry = PolicyView()
    registry.set_policy(parse_policy(policy_manifest()))
    registry.set_namespace(namespace, {BENCH_LABEL: "true"})
    for i in range(20):  # a few other namespaces and policies, as a cluster would have
        registry.set_namespace(f"team-{i}", {"team": str(i)})
        other = policy_manifest()
        other["metadata"]["name"] = f"team-{i}"
        other["spec"]["namespaceSelector"] = {"matchLabels": {"team": str(i)}}
        registry.set_policy(parse_policy(other))
    pod = admitted_pod(namespace)
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "f0e1d2c3-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "gomemlimit-admin", "groups": ["system:masters"]},
            "object": pod,
            "dryRun": False,
        },
    }
    review_bytes = json.dumps(review).encode()

    decision = admit(pod, registry=registry)
    assert decision.result == "mutated", decision
    assert decision.spec is not None
    assert gomemlimit_of({"spec": decision.spec}) == EXPECTED

    # The operator logs one INFO line per injected pod: keep that cost, into /dev/null.
    webhook_logger = logging.getLogger("gomemlimit_operator.runtime.webhook")
    sink = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (closed below)
    sink.setFormatter(
        logging.Formatter("[%(asctime)s] %(name)-20.20s [%(levelname)-8.8s] %(message)s")
    )
    saved = (webhook_logger.level, webhook_logger.propagate)
    webhook_logger.setLevel(logging.INFO)
    webhook_logger.propagate = False
    webhook_logger.addHandler(sink)
    webhook = PodWebhook(
        registry, exempt=lambda ns: False, metrics=AdmissionMetrics(CollectorRegistry())
    )
    loops: list[asyncio.AbstractEventLoop] = []

    def handle(with_patch: bool) -> Callable[[], object]:
        loop = asyncio.new_event_loop()
        loops.append(loop)

        def call() -> object:
            if not with_patch:
                patch = kopf.Patch()
                loop.run_until_complete(webhook(body=pod, patch=patch, dryrun=False, warnings=[]))
                return None
            body = kopf.Body(cast(kopf.RawBody, copy.deepcopy(pod)))  # as kopf wraps a request
            patch = kopf.Patch(body=body)
            loop.run_until_complete(webhook(body=body, patch=patch, dryrun=False, warnings=[]))
            return patch.as_json_patch()

        return call

    def review_round_trip() -> object:
        request = json.loads(review_bytes)
        ops = [{"op": "add", "path": "/spec/containers/0/env/-", "value": {"name": "GOMEMLIMIT"}}]
        return json.dumps({"response": {"uid": request["request"]["uid"], "patch": ops}})

    try:
        patch_ops = handle(True)()
        assert isinstance(patch_ops, list)
        assert patch_ops
        rows = [
            ("admit(): decision only", best_per_call(lambda: admit(pod, registry=registry), calls)),
            ("PodWebhook handler (admit + copies + log)", best_per_call(handle(False), calls)),
            ("handler + kopf Body/Patch + JSON-Patch diff", best_per_call(handle(True), calls)),
            ("AdmissionReview JSON decode + encode", best_per_call(review_round_trip, calls)),
        ]
    finally:
        for loop in loops:
            loop.close()
        webhook_logger.removeHandler(sink)
        sink.close()
        webhook_logger.setLevel(saved[0])
        webhook_logger.propagate = saved[1]
    result = [(label, f"{seconds * 1e6:,.0f} us/call") for label, seconds in rows]
    result.append(("  JSON-Patch ops for one pod", f"{len(patch_ops)}"))
    result.append(("  AdmissionReview request size", f"{len(review_bytes):,} B"))
    return result


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def latency_text(latencies: Sequence[float]) -> str:
    return (
        f"p50 {ms(percentile(latencies, 0.50))} p95 {ms(percentile(latencies, 0.95))} "
        f"p99 {ms(percentile(latencies, 0.99))} max {ms(max(latencies))} ms"
    )


def phase_line(result: PhaseResult) -> str:
    failures = ", ".join(f"{k}: {v}" for k, v in sorted(result.failures.items())) or "none"
    cores = result.window_machine_cpu / result.wall
    return (
        f"  {result.phase}{result.round} {PHASES[result.phase]:<30} {result.rate:7.1f} creates/s  "
        f"{latency_text(result.latencies)}  failures {result.failed}/{result.pods} ({failures})"
        f"  machine {cores:.2f} cores busy (before: {result.load_before:.2f})"
        + (f"  operator saw all pods +{result.drain:.2f}s" if result.drain else "")
    )


@dataclass
class Pooled:
    rate: float  # pods / summed wall time
    latencies: list[float]
    failed: int
    pods: int
    cpu_ms: dict[str, float]  # CPU milliseconds per pod, by process, plus "machine"


def pool(results: list[PhaseResult], phase: str) -> Pooled | None:
    chosen = [r for r in results if r.phase == phase]
    if not chosen:
        return None
    pods = sum(r.pods for r in chosen)
    cpu_ms = {
        name: 1000 * sum(r.cpu.get(name, 0.0) for r in chosen) / pods
        for name in sorted({n for r in chosen for n in r.cpu})
    }
    cpu_ms["ours"] = sum(cpu_ms.values())
    cpu_ms["machine"] = 1000 * sum(r.machine_cpu for r in chosen) / pods
    return Pooled(
        rate=pods / sum(r.wall for r in chosen),
        latencies=[x for r in chosen for x in r.latencies],
        failed=sum(r.failed for r in chosen),
        pods=pods,
        cpu_ms=cpu_ms,
    )


def summary(results: list[PhaseResult]) -> None:
    pooled = {phase: p for phase in PHASES if (p := pool(results, phase)) is not None}
    print("\n--- summary (rounds pooled; creates/s = pods / summed wall time)")
    for phase, p in pooled.items():
        print(
            f"  {phase} {PHASES[phase]:<30} {p.rate:7.1f} creates/s  {latency_text(p.latencies)}  "
            f"failures {p.failed}/{p.pods} ({100 * p.failed / p.pods:.2f}%)  "
            f"CPU {p.cpu_ms['ours']:.1f} ms/pod"
        )
    a, b, o = pooled.get("A"), pooled.get("B"), pooled.get("O")
    if a is not None and b is not None:
        anchor = ANCHOR["webhook"] / ANCHOR["no webhook"] - 1
        print(
            f"  webhook cost under load (B vs A): {100 * (b.rate / a.rate - 1):+.1f}% creates/s, "
            f"p99 {ms(percentile(a.latencies, 0.99))} -> {ms(percentile(b.latencies, 0.99))} ms, "
            f"CPU {a.cpu_ms['ours']:.1f} -> {b.cpu_ms['ours']:.1f} ms/pod"
        )
        print(
            f"  Kyverno 1.18.1 anchor (32 vCPU): {100 * anchor:+.1f}% creates/s, p99 "
            f"{ANCHOR['p99 no webhook'] * 1000:.0f} -> {ANCHOR['p99 webhook'] * 1000:.0f} ms, "
            "0.0% failures"
        )
        if o is not None:
            print(
                f"  split: operator running, webhook not called (O vs A) "
                f"{100 * (o.rate / a.rate - 1):+.1f}%; the webhook call (B vs O) "
                f"{100 * (b.rate / o.rate - 1):+.1f}%"
            )
    sa, sb = pooled.get("a"), pooled.get("b")
    if sa is not None and sb is not None:
        print(
            "  one client, no load: p50 "
            f"{ms(percentile(sa.latencies, 0.5))} -> {ms(percentile(sb.latencies, 0.5))} ms, "
            f"p99 {ms(percentile(sa.latencies, 0.99))} -> {ms(percentile(sb.latencies, 0.99))} ms"
        )

    # With one client the phases are short and mostly idle: background work dominates.
    loaded = {phase: p for phase, p in pooled.items() if phase.isupper()}
    print(
        "\n--- CPU milliseconds per pod created, by process (loaded phases, rounds pooled; "
        "until the operator had seen every pod)"
    )
    labels = {"ours": "all of the above", "machine": "whole machine (+ others)"}
    names = sorted({name for p in loaded.values() for name in p.cpu_ms if name not in labels})
    print("  " + f"{'process':<26}" + "".join(f"{phase:>9}" for phase in loaded))
    for name in [*names, *labels]:
        cells = "".join(f"{p.cpu_ms.get(name, 0.0):>9.2f}" for p in loaded.values())
        print("  " + f"{labels.get(name, name):<26}" + cells)

    print("\n--- server-side metrics (deltas over each phase; p99~ from histogram buckets)")
    for r in results:
        post = histogram(
            r.apiserver,
            "apiserver_request_duration_seconds",
            verb="POST",
            resource="pods",
            subresource="",
        )
        calls = total(r.apiserver, "apiserver_admission_webhook_request_total", name=WEBHOOK_NAME)
        line = (
            f"  {r.phase}{r.round}: pod POST inside the API server: mean {ms(post.mean)} "
            f"p99~{ms(post.quantile(0.99))} ms; webhook calls {calls:.0f}"
        )
        if r.phase in WITH_OPERATOR:
            answered = total(r.operator, "gomemlimit_admission_requests_total")
            line += f"; operator answered {answered:.0f}"
        print(line)
        if r.phase not in MUTATED:
            continue
        round_trip = histogram(
            r.apiserver, "apiserver_admission_webhook_admission_duration_seconds", name=WEBHOOK_NAME
        )
        handler = histogram(r.operator, "gomemlimit_admission_duration_seconds")
        fail_open = total(
            r.apiserver, "apiserver_admission_webhook_fail_open_count", name=WEBHOOK_NAME
        )
        mutated = total(r.operator, "gomemlimit_admission_requests_total", result="mutated")
        print(
            f"      webhook round trip (API server): mean {ms(round_trip.mean)} "
            f"p99~{ms(round_trip.quantile(0.99))} ms; our handler: mean {ms(handler.mean)} "
            f"p99~{ms(handler.quantile(0.99))} ms"
        )
        print(
            f"      fail-open (API server) {fail_open:.0f}; mutated (operator) {mutated:.0f}; "
            f"pods stored without GOMEMLIMIT={EXPECTED}: {r.fail_opens}"
        )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def control_plane(work: Path) -> Iterator[Any]:
    from tests.cluster.controlplane import ControlPlane, ensure_built

    ensure_built()
    cluster = ControlPlane(work / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def run(args: argparse.Namespace) -> None:
    print(f"--- micro-benchmark: one 2-container pod, {args.calls:,} calls, best of 5")
    for label, value in micro_benchmark(args.calls):
        print(f"  {label:<46} {value}")
    if args.micro_only:
        return

    work = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    sample_dir = Path(args.sample_operator).resolve() if args.sample_operator else None
    if sample_dir is not None:
        sample_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"\n--- load: {args.pods:,} pods per phase with {args.concurrency} concurrent clients "
        f"({args.serial_pods:,} with 1 client in phases a, b), {args.rounds} rounds of "
        f"{args.phases} (work dir {work})"
    )
    results: list[PhaseResult] = []
    with control_plane(work) as cluster:
        bench = Bench(cluster, work, sample_dir)
        try:
            bench.install()
            print(f"  control plane up in {cluster.startup_seconds:.1f}s at {cluster.server}")
            warm = bench.run_phase("A", 0, max(args.pods // 2, 50), args.concurrency)
            print(f"  (warm-up, not counted: {warm.rate:.1f} creates/s)")
            for round_ in range(1, args.rounds + 1):
                for phase in args.phases:
                    if phase not in WITH_OPERATOR:
                        bench.stop_operator()
                        leftover = bench.webhook_configurations()
                        if leftover:
                            raise RuntimeError(f"webhook configurations left: {leftover}")
                    elif bench.operator is None:
                        bench.start_operator()
                        print(
                            f"  operator ready in {bench.startup_seconds[-1]:.1f}s "
                            f"(webhook configurations: {bench.webhook_configurations()})"
                        )
                    serial = phase.islower()
                    result = bench.run_phase(
                        phase,
                        round_,
                        args.serial_pods if serial else args.pods,
                        1 if serial else args.concurrency,
                    )
                    results.append(result)
                    print(phase_line(result), flush=True)
        except BaseException:
            print(f"  failed; operator logs kept in {work}", file=sys.stderr)
            raise
        finally:
            bench.stop_operator()
    shutil.rmtree(work, ignore_errors=True)
    summary(results)
    report_samples(bench.samples)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_webhook")
    parser.add_argument("--pods", type=int, default=600, help="pods per loaded phase")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument(
        "--serial-pods", type=int, default=100, help="pods per one-client phase (a, b)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the phases")
    parser.add_argument(
        "--phases",
        default="AaBbO",
        help="phases of a round, in order: A no webhook, B webhook, O operator running but "
        "webhook not called (pods opted out); a, b: A and B with one client",
    )
    parser.add_argument("--calls", type=int, default=1000, help="micro-benchmark calls")
    parser.add_argument("--micro-only", action="store_true", help="only the micro-benchmark")
    parser.add_argument(
        "--sample-operator",
        metavar="DIR",
        help="attach py-spy (pip install py-spy) to the operator in every phase it runs in, "
        "keep DIR/operator-<phase><round>.txt and print where its CPU time went",
    )
    args, _ = parser.parse_known_args(argv)
    if not args.phases or set(args.phases) - set(PHASES):
        parser.error(f"--phases: use letters from {''.join(PHASES)}")
    run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
