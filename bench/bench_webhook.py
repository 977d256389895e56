"""Pod creates through the API server: no webhook, ours, and two floor webhooks, side by side.

``python -m bench.bench_webhook [--quick] [--pods N] [--concurrency C] [--rounds R]
[--phases LETTERS]`` (also run by ``python -m bench``).

On the run's local control plane (``tests/cluster``) with the CRDs and a ClusterGoMemPolicy
that governs the ``app`` container of every pod in the benchmark's namespaces, each phase
creates N pods with C concurrent clients in a namespace of its own:

* ``A``: no webhook is called.
* ``B``: ours, the real operator as one process (``--components all``, the default install):
  it answers admission and watches the pods it admitted.
* ``G``: the Go floor (``bench/floor/server``: net/http, encoding/json, a static patch).
* ``P``: the aiohttp floor (``bench/floor_aiohttp.py``: aiohttp, orjson, a static patch).
* ``S``: ours split: one ``--components webhook`` process, and a ``--components watcher``
  process that watches the pods.
* ``W``: ours split with two ``--components webhook`` processes sharing one port
  (``SO_REUSEPORT``; the kernel spreads the API server's connections over them), and the
  same watcher.
* ``F`` (after the rounds): W under a burst of 500 concurrent creates: does any pod fail
  open?
* optional: ``O`` (B's operator running, but the pods opt out, so the webhook's CEL
  ``matchConditions`` skip the call), ``a``/``b`` (A and B with one client: the latency
  the webhook adds to one create on an idle machine).

Every server runs through the whole run, on its own port, with its own
MutatingWebhookConfiguration (the install's builder: ``failurePolicy: Ignore``, 2 s
timeout, the CEL conditions) by URL, limited to its phases' namespaces; each operator process
watches only those namespaces. So phases differ only in which server the API server calls,
and rounds alternate them (A B G P S W by default, after an unreported warm-up) so that
drift does not land on one phase. Every server answers the same JSON patch, the one our
engine computes (``GOMEMLIMIT=460MiB``); before the rounds each server must mutate a
dry-run create. Every create response and a LIST afterwards are checked: a pod without the
value is a fail-open, and counted as a failure.

The pods carry a scheduling gate: they are stored, never scheduled, and never touched by
kwok, so the benchmark measures admission and storage, not the scheduler. Each phase's pods
are deleted afterwards, and the next phase waits until the machine is quiet again.

The clients are threads with raw HTTPS keep-alive connections (``http.client``, the admin
client certificate): pod bodies are serialised before and responses parsed after the timed
window, so the client costs a fraction of the CPU that the kubernetes client's model
(de)serialisation would, on a machine where the client shares 2 cores with the cluster.

Also measured: per-process CPU seconds during each phase (/proc; until the process that
watches the pods has seen every new pod, so that watch work that lags is counted), the API
server's ``apiserver_admission_webhook_*`` and ``apiserver_request_duration_seconds``
series, our ``gomemlimit_admission_duration_seconds`` (time in our handler), and an
in-process micro-benchmark of the decision, the lean handler and the AdmissionReview's JSON.
With ``--sample-operator DIR``, py-spy (``pip install py-spy``; not a project dependency)
samples B's operator in each B phase and the share of its CPU per code path is printed.

Anchor: Kyverno 1.18.1's load test (kind + KWOK, 32 vCPU, k6, 500 virtual users): one
JSONPatch mutating policy gave 1,817 pod creates/s against 1,932 with no webhook (-6%), 0.0%
failures, p99 466 ms against 443 ms.

Nothing here asserts a speed: timings depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.shared import TICK, BenchRun, ServingCertificate, process_cpu, serving_certificate

POLICY_NAME = "bench-webhook"
BENCH_LABEL = "gomemlimit.io/bench"
GATE = "gomemlimit.io/bench-admission-only"
IMAGE = "registry.invalid/bench-app:1"  # never pulled: the pods are never scheduled
APP_LIMIT = "512Mi"
EXPECTED = "460MiB"  # 90% of 512Mi = 460.8 MiB, rounded down to a whole MiB
WEBHOOK_NAME = "pods.gomemlimit.io"
ANCHOR = {"no webhook": 1932.0, "webhook": 1817.0, "p99 no webhook": 0.443, "p99 webhook": 0.466}
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


@dataclass(frozen=True)
class Phase:
    letter: str
    description: str
    server: str | None
    """The server the API server calls (a key of :data:`SERVERS`); None: no webhook."""
    slug: str
    """Its namespaces' names: ``bench-<run>-<slug><round>``."""
    serial: bool = False
    """One client instead of ``--concurrency``."""
    opted_out: bool = False
    """The pods carry ``gomemlimit.io/skip``: the CEL conditions skip the call."""

    @property
    def mutated(self) -> bool:
        return self.server is not None and not self.opted_out


SERVERS: dict[str, str] = {
    "ours": "ours, one process (all components)",
    "go": "Go floor",
    "aiohttp": "aiohttp floor",
    "split1": "ours split: 1 webhook process + watcher",
    "split2": "ours split: 2 webhook processes + watcher",
}
PHASES: dict[str, Phase] = {
    phase.letter: phase
    for phase in (
        Phase("A", "no webhook", None, "none"),
        Phase("B", SERVERS["ours"], "ours", "ours"),
        Phase("G", SERVERS["go"], "go", "go"),
        Phase("P", SERVERS["aiohttp"], "aiohttp", "aiohttp"),
        Phase("S", SERVERS["split1"], "split1", "split1-"),
        Phase("W", SERVERS["split2"], "split2", "split2-"),
        Phase("F", "W, burst of concurrent creates", "split2", "burst"),
        Phase("E", "Go floor, burst of concurrent creates", "go", "burst-go"),
        Phase("O", "ours running, webhook not called", "ours", "skip", opted_out=True),
        Phase("a", "no webhook, 1 client", None, "none-serial", serial=True),
        Phase("b", "ours, one process, 1 client", "ours", "ours-serial", serial=True),
    )
}
ROUND_PHASES = "ABGPSW"
BURST = "F"
BURSTS = "EF"
"""After the rounds: the burst through the Go floor (does any webhook fail open here?), then
through ours (W)."""

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


def cpu_or_zero(pid: int) -> float:
    """:func:`bench.shared.process_cpu`, 0 if the process is gone."""
    try:
        return process_cpu(pid)
    except OSError:
        return 0.0


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
        return {name: cpu_or_zero(pid) for name, pid in self.pids.items()}

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
# The servers: ours in its three shapes and the two floors, each with its own configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class Served:
    """One server key's processes: those that answer its admission requests, and the one
    that watches its pods (ours only)."""

    url: str
    answering: list[Any] = field(default_factory=list)
    """The OperatorProcesses that answer (empty for a floor)."""
    watcher: Any = None
    """The OperatorProcess that watches the pods of its namespaces, or None."""


class Servers:
    """Every server the phases need, started once and running for the whole run."""

    def __init__(
        self,
        cluster: Any,
        work: Path,
        certificate: ServingCertificate,
        namespaces: dict[str, list[str]],
        lease_namespace: str,
    ) -> None:
        self.cluster = cluster
        self.work = work
        self.certificate = certificate
        self.namespaces = namespaces  # server key -> the namespaces of its phases
        self.lease_namespace = lease_namespace
        self.served: dict[str, Served] = {}
        self.processes: dict[str, Any] = {}  # name -> OperatorProcess or FloorServer
        self.configurations: list[str] = []
        self._stack = contextlib.ExitStack()

    def _operator(self, name: str, mode: list[str], watch: list[str], lease: bool) -> Any:
        from tests.e2e.operator_harness import OperatorProcess

        # The production default status interval (the harness uses 1 s for tests).
        extra = ["--status-interval", "5", "--watch-namespace", ",".join(watch)]
        if lease:  # a Lease of its own: B and the split watcher are separate installs
            extra += ["--leader-election-namespace", f"{self.lease_namespace}-{name}"]
            self.cluster.kubectl("create", "namespace", f"{self.lease_namespace}-{name}")
        process = OperatorProcess(
            Path(self.cluster.kubeconfig), self.work / f"{name}.log", mode=mode, extra_args=extra
        )
        self.processes[name] = process
        self._stack.callback(self._stop_operator, process)
        return process

    @staticmethod
    def _stop_operator(process: Any) -> None:
        status = process.stop()
        if status not in (0, None):
            print(f"  {process.log_path.stem} exited with status {status}; log: {process.log_path}")

    def start(self) -> None:
        from tests.e2e.operator_harness import free_ports

        from bench.floors import FloorServer, expected_patch
        from gomemlimit_operator.core.api import WEBHOOK_PATH

        ports = iter(free_ports(24))
        tls = ["--tls-cert-file", str(self.certificate.cert_file)]
        tls += ["--tls-key-file", str(self.certificate.key_file)]
        wanted = set(self.namespaces)

        def url(port: int) -> str:
            return f"https://127.0.0.1:{port}{WEBHOOK_PATH}"

        operators: list[Any] = []
        if "ours" in wanted:
            operator = self._operator("operator", tls, self.namespaces["ours"], lease=True)
            operator.launch((next(ports), next(ports), next(ports)))
            self.served["ours"] = Served(url(operator.webhook_port), [operator], operator)
            operators.append(operator)
        split = [ns for key in ("split1", "split2") for ns in self.namespaces.get(key, [])]
        watcher = None
        if split:
            watcher = self._operator("watcher", ["--components", "watcher"], split, lease=True)
            watcher.launch((next(ports), next(ports), next(ports)))  # its webhook port: unused
            operators.append(watcher)
        for key, workers in (("split1", 1), ("split2", 2)):
            if key not in wanted:
                continue
            shared = next(ports)
            served = Served(url(shared), watcher=watcher)
            for index in range(1, workers + 1):
                name = f"webhook-{key}" + (f"-{index}" if workers > 1 else "")
                mode = ["--components", "webhook", *tls]
                process = self._operator(name, mode, self.namespaces[key], lease=False)
                process.launch((shared, next(ports), next(ports)))
                served.answering.append(process)
                operators.append(process)
            self.served[key] = served
        patch = expected_patch(admitted_pod("bench-patch"))
        for key, kind in (("go", "go"), ("aiohttp", "aiohttp")):
            if key in wanted:
                port = next(ports)
                floor = FloorServer(
                    "go" if kind == "go" else "aiohttp",
                    cert=self.certificate.cert_file,
                    key=self.certificate.key_file,
                    patch=patch,
                    port=port,
                )
                self._stack.enter_context(floor)
                self.processes[f"{kind}-floor"] = floor
                self.served[key] = Served(url(port))
        for operator in operators:
            operator.wait_ready(timeout=120)
        self.configure()

    def configure(self) -> None:
        from gomemlimit_operator.install.webhook_configuration import (
            build_webhook_configuration,
            url_client_config,
        )

        for key, served in self.served.items():
            name = f"bench-{key}"
            configuration = build_webhook_configuration(
                name=name,
                client_config=url_client_config(served.url, self.certificate.ca_pem),
                exempt_namespaces=(),
                only_namespaces=self.namespaces[key],
            )
            self.cluster.kubectl("apply", "-f", "-", input=json.dumps(configuration))
            self.configurations.append(name)
            self._stack.callback(
                self.cluster.kubectl,
                "delete",
                "mutatingwebhookconfiguration",
                name,
                "--ignore-not-found",
            )

    def pids(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for name, process in self.processes.items():
            if getattr(process, "running", False):
                found[name] = process.process.pid
        return found

    def stop(self) -> None:
        self._stack.close()


# ---------------------------------------------------------------------------------------------
# The phases
# ---------------------------------------------------------------------------------------------


def merged(samples: Sequence[Samples]) -> Samples:
    """Samples of several processes, added up."""
    out: Samples = {}
    for one in samples:
        for key, value in one.items():
            out[key] = out.get(key, 0.0) + value
    return out


class Bench:
    def __init__(self, cluster: Any, work: Path, servers: Servers, sample_dir: Path | None) -> None:
        self.cluster = cluster
        self.work = work
        self.servers = servers
        self.sample_dir = sample_dir
        self.samples: dict[str, Path] = {}  # phase and round -> py-spy output
        pki = cluster.state_dir / "pki"
        self.api = Api(cluster.server, cluster.ca_cert_path, pki / "admin.crt", pki / "admin.key")

    # -- setup ----------------------------------------------------------------------------------

    def create_namespace(self, name: str) -> None:
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

    def delete_pods(self, namespace: str) -> None:
        self.api.json("DELETE", f"/api/v1/namespaces/{namespace}/pods")

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

    def dry_run_value(self, namespace: str) -> str | None:
        """GOMEMLIMIT of a dry-run create in ``namespace`` (None if it failed or has none)."""
        status, data = self.api.request(
            "POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", make_pod("probe")
        )
        return gomemlimit_of(json.loads(data)) if status == 201 else None

    def wait_mutating(self, namespace: str, timeout: float = 60.0) -> float:
        """Until a dry-run create in ``namespace`` gets the value; returns the seconds."""
        began = time.monotonic()
        while (value := self.dry_run_value(namespace)) != EXPECTED:
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"{namespace}: a dry-run create gets GOMEMLIMIT={value!r}")
            time.sleep(0.2)
        return time.monotonic() - began

    def pids(self) -> dict[str, int]:
        found = {"bench client": os.getpid()}
        for name in COMPONENTS:
            with contextlib.suppress(OSError, ValueError):
                found[name] = int((self.cluster.pid_dir / f"{name}.pid").read_text().split()[0])
        return found | self.servers.pids()

    # -- the operator's metrics -----------------------------------------------------------------

    @staticmethod
    def metrics_of(processes: Sequence[Any]) -> Samples:
        return merged([parse_metrics(p.metrics(), OPERATOR_SERIES) for p in processes if p])

    def drain_watch(self, watcher: Any, before: Samples, pods: int, limit: float = 60.0) -> float:
        """Seconds until ``watcher`` has handled an ADDED event for ``pods`` more pods."""
        began = time.monotonic()
        while time.monotonic() - began < limit:
            seen = delta(self.metrics_of([watcher]), before)
            if total(seen, "gomemlimit_watch_events_total", type="added") >= pods:
                break
            time.sleep(0.05)
        else:
            print(f"  (the watcher did not see {pods} new pods within {limit:.0f}s)")
        return time.monotonic() - began

    # -- one phase ------------------------------------------------------------------------------

    def run_phase(
        self, phase: Phase, round_: int, namespace: str, pods: int, concurrency: int
    ) -> PhaseResult:
        served = self.servers.served.get(phase.server) if phase.server else None
        answering = served.answering if served else []
        watcher = served.watcher if served else None
        bodies = [
            json.dumps(make_pod(f"pod-{i:05d}", opted_out=phase.opted_out)).encode()
            for i in range(pods)
        ]
        load_before = settle()
        meter = CpuMeter(self.pids())
        api_before = parse_metrics(self.api.metrics(), APISERVER_SERIES)
        operator_before = self.metrics_of([*answering, watcher])
        watch_before = self.metrics_of([watcher]) if watcher else {}
        sampler = None
        if self.sample_dir is not None and phase.server == "ours" and answering:
            output = self.sample_dir / f"operator-{phase.letter}{round_}.txt"
            sampler = Sampler(answering[0].process.pid, output)
            self.samples[f"{phase.letter}{round_}"] = output
        try:
            outcomes, wall = create_pods(self.api, namespace, bodies, concurrency, meter.begin)
            window_cpu, window_machine = meter.end()
            # The watcher may still be handling the pods' events: CPU counts until it has
            # seen them all, so that work that spills past the last response is not lost.
            created = sum(1 for o in outcomes if o.status == 201)
            drain = self.drain_watch(watcher, watch_before, created) if watcher else 0.0
            cpu, machine = meter.end() if drain else (window_cpu, window_machine)
        finally:
            if sampler is not None:
                sampler.stop()
        api_after = parse_metrics(self.api.metrics(), APISERVER_SERIES)
        operator_after = self.metrics_of([*answering, watcher])

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
            if phase.mutated:
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
            phase=phase.letter,
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
    ("webhook requests (aiohttp, TLS)", (("_handle_request", "aiohttp/web_protocol"),)),
    ("  our server's handler (WebhookServer._handle)", (("_handle", "runtime/webhook_server"),)),
    ("    PodWebhook.review", (("review", "runtime/webhook"),)),
    ("      of which admit()", (("admit", "runtime/webhook"),)),
    ("      of which logging", (("review", "runtime/webhook"), ("", "logging/__init__"))),
    (
        "    of which our metrics",
        (("_handle", "runtime/webhook_server"), ("", "prometheus_client")),
    ),
    ("pod and policy watch events (kopf)", (("process_resource_event", "kopf/"),)),
    ("  our pod watcher (PodWatcher.handle)", (("handle", "runtime/watcher"),)),
    ("watch streams: read and parse (kopf)", (("continuous_watch", "kopf/"),)),
    ("TLS (asyncio sslproto) anywhere", (("", "asyncio/sslproto"),)),
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
    loop = asyncio.new_event_loop()

    def lean() -> bytes:
        """What the lean route does per request: decode, decide, build the patch, encode."""
        answer = loop.run_until_complete(webhook.review(orjson.loads(review_bytes)))
        return orjson.dumps(answer)

    def review_round_trip() -> object:
        request = orjson.loads(review_bytes)
        ops = [{"op": "add", "path": "/spec/containers/0/env/-", "value": {"name": "GOMEMLIMIT"}}]
        return orjson.dumps({"response": {"uid": request["request"]["uid"], "patch": ops}})

    try:
        answer = orjson.loads(lean())
        patch_ops = orjson.loads(base64.b64decode(answer["response"]["patch"]))
        assert patch_ops == [dict(op) for op in decision.operations], patch_ops
        rows = [
            (
                "admit(): decision and patch",
                best_per_call(lambda: admit(pod, registry=registry), calls),
            ),
            ("lean route: JSON in, decide, log, JSON out", best_per_call(lean, calls)),
            ("AdmissionReview JSON decode + encode alone", best_per_call(review_round_trip, calls)),
        ]
    finally:
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
        f"  {result.phase}{result.round} {PHASES[result.phase].description:<42} "
        f"{result.rate:7.1f} creates/s  {latency_text(result.latencies)}  "
        f"failures {result.failed}/{result.pods} ({failures})  machine {cores:.2f} cores busy "
        f"(before: {result.load_before:.2f})"
        + (f"  watcher saw all pods +{result.drain:.2f}s" if result.drain else "")
    )


@dataclass
class Pooled:
    rate: float  # pods / summed wall time
    latencies: list[float]
    failed: int
    fail_opens: int
    pods: int
    concurrency: int
    cpu_ms: dict[str, float]  # CPU milliseconds per pod, by process, plus "machine"
    round_trip: Histogram  # the API server's view of the webhook call
    handler: Histogram  # our handler (ours only)


def pool(results: list[PhaseResult], phase: str) -> Pooled | None:
    chosen = [r for r in results if r.phase == phase]
    if not chosen:
        return None
    pods = sum(r.pods for r in chosen)
    cpu_ms = {
        name: 1000 * sum(r.cpu.get(name, 0.0) for r in chosen) / pods
        for name in sorted({n for r in chosen for n in r.cpu})
    }
    cpu_ms["all processes"] = sum(cpu_ms.values())
    cpu_ms["machine"] = 1000 * sum(r.machine_cpu for r in chosen) / pods
    apiserver = merged([r.apiserver for r in chosen])
    operator = merged([r.operator for r in chosen])
    return Pooled(
        rate=pods / sum(r.wall for r in chosen),
        latencies=[x for r in chosen for x in r.latencies],
        failed=sum(r.failed for r in chosen),
        fail_opens=sum(r.fail_opens for r in chosen),
        pods=pods,
        concurrency=chosen[0].concurrency,
        cpu_ms=cpu_ms,
        round_trip=histogram(
            apiserver, "apiserver_admission_webhook_admission_duration_seconds", name=WEBHOOK_NAME
        ),
        handler=histogram(operator, "gomemlimit_admission_duration_seconds"),
    )


OURS_PROCESSES = {
    "ours": ("operator",),
    "split1": ("webhook-split1", "watcher"),
    "split2": ("webhook-split2-1", "webhook-split2-2", "watcher"),
}


def ours_cpu(p: Pooled, server: str, *, webhook_only: bool = False) -> float | None:
    """CPU ms per pod of our processes serving ``server`` (without the watcher: webhook_only)."""
    names = [n for n in OURS_PROCESSES.get(server, ()) if not (webhook_only and n == "watcher")]
    return sum(p.cpu_ms.get(n, 0.0) for n in names) if names else None


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def phase_json(phase: str, p: Pooled) -> dict[str, Any]:
    def quantile(h: Histogram, q: float) -> float | None:
        value = h.quantile(q)
        return None if value is None else round(value * 1000, 3)

    return {
        "description": PHASES[phase].description,
        "pods": p.pods,
        "concurrency": p.concurrency,
        "creates_per_second": round(p.rate, 1),
        "p50_ms": rounded(1000 * percentile(p.latencies, 0.50), 2),
        "p95_ms": rounded(1000 * percentile(p.latencies, 0.95), 2),
        "p99_ms": rounded(1000 * percentile(p.latencies, 0.99), 2),
        "max_ms": rounded(1000 * max(p.latencies), 2),
        "failures": p.failed,
        "fail_opens": p.fail_opens,
        "cpu_ms_per_pod": {name: round(value, 3) for name, value in p.cpu_ms.items()},
        "webhook_round_trip_ms": {
            "mean": None if p.round_trip.mean is None else round(p.round_trip.mean * 1000, 3),
            "p99": quantile(p.round_trip, 0.99),
        },
        "handler_ms": {
            "mean": None if p.handler.mean is None else round(p.handler.mean * 1000, 3),
            "p99": quantile(p.handler, 0.99),
        },
    }


def report(results: list[PhaseResult], micro: list[tuple[str, str]]) -> dict[str, Any]:
    """Print the summary; return the results for ``bench/results``."""
    pooled = {phase: p for phase in PHASES if (p := pool(results, phase)) is not None}
    print("\n--- summary (rounds pooled; creates/s = pods / summed wall time)")
    for phase, p in pooled.items():
        print(
            f"  {phase} {PHASES[phase].description:<42} {p.rate:7.1f} creates/s  "
            f"{latency_text(p.latencies)}  failures {p.failed}/{p.pods} "
            f"({100 * p.failed / p.pods:.2f}%)  CPU {p.cpu_ms['all processes']:.2f} ms/pod"
        )
    a = pooled.get("A")
    ratios = {
        f"{phase}/A": round(p.rate / a.rate, 4)
        for phase, p in pooled.items()
        if a is not None and phase.isupper() and phase != "A" and phase not in BURSTS
    }
    if ratios:
        print("  throughput against A: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        anchor = ANCHOR["webhook"] / ANCHOR["no webhook"]
        print(f"  (Kyverno 1.18.1 anchor, 32 vCPU: {anchor:.2f}, 0.0% failures)")

    loaded = {phase: p for phase, p in pooled.items() if not PHASES[phase].serial}
    print(
        "\n--- CPU milliseconds per pod created, by process (rounds pooled; until the watcher "
        "had seen every pod)"
    )
    labels = {"all processes": "all of the above", "machine": "whole machine (+ others)"}
    names = sorted({name for p in loaded.values() for name in p.cpu_ms if name not in labels})
    print("  " + f"{'process':<26}" + "".join(f"{phase:>9}" for phase in loaded))
    for name in [*names, *labels]:
        cells = "".join(f"{p.cpu_ms.get(name, 0.0):>9.2f}" for p in loaded.values())
        print("  " + f"{labels.get(name, name):<26}" + cells)

    print("\n--- server-side metrics (pooled deltas; p99~ from histogram buckets)")
    for phase, p in pooled.items():
        if not PHASES[phase].mutated:
            continue
        line = (
            f"  {phase}: webhook round trip (API server) mean {ms(p.round_trip.mean)} "
            f"p99~{ms(p.round_trip.quantile(0.99))} ms"
        )
        if p.handler.count:
            line += f"; our handler mean {ms(p.handler.mean)} p99~{ms(p.handler.quantile(0.99))} ms"
        print(line + f"; fail-opens {p.fail_opens}")

    out: dict[str, Any] = {
        "phases": {phase: phase_json(phase, p) for phase, p in pooled.items()},
        "ratios": ratios,
        "anchor": ANCHOR,
        "micro": dict(micro),
    }
    b, w = pooled.get("B"), pooled.get("W")
    out["operator_cpu_ms_per_admitted_pod"] = rounded(ours_cpu(b, "ours")) if b else None
    out["webhook_cpu_ms_per_admitted_pod"] = (
        rounded(ours_cpu(w, "split2", webhook_only=True)) if w else None
    )
    out["split_cpu_ms_per_admitted_pod"] = rounded(ours_cpu(w, "split2")) if w else None
    f, e = pooled.get(BURST), pooled.get("E")
    out["fail_open_500"] = (
        {
            "pods": f.pods,
            "concurrency": f.concurrency,
            "workers": 2,
            "fail_opens": f.fail_opens,
            "failures": f.failed,
            "go_floor_fail_opens": e.fail_opens if e else None,
            "go_floor_failures": e.failed if e else None,
        }
        if f
        else None
    )
    print(
        f"\n  our CPU per admitted pod: one process {out['operator_cpu_ms_per_admitted_pod']} ms "
        f"(webhook and pod watch); split: webhook processes "
        f"{out['webhook_cpu_ms_per_admitted_pod']} ms, with the watcher "
        f"{out['split_cpu_ms_per_admitted_pod']} ms"
    )
    if f is not None:
        print(
            f"  burst: {f.pods} creates by {f.concurrency} clients through 2 webhook processes: "
            f"{f.fail_opens} fail-opens, {f.failed} failures"
            + (
                f"; through the Go floor: {e.fail_opens} fail-opens, {e.failed} failures"
                if e
                else ""
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    pods: int
    concurrency: int
    rounds: int
    phases: str
    serial_pods: int
    burst_pods: int
    burst_concurrency: int
    calls: int

    @classmethod
    def of(cls, quick: bool, **overrides: Any) -> Plan:
        if quick:
            plan = cls(60, 16, 1, ROUND_PHASES, 20, 150, 150, 200)
        else:
            plan = cls(600, 32, 2, ROUND_PHASES, 100, 1000, 500, 1000)
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**plan.__dict__, **given})


def collect(
    run: BenchRun, plan: Plan | None = None, sample_dir: Path | None = None
) -> dict[str, Any]:
    plan = plan or Plan.of(run.quick)
    print(f"--- micro-benchmark: one 2-container pod, {plan.calls:,} calls, best of 5")
    micro = micro_benchmark(plan.calls)
    for label, value in micro:
        print(f"  {label:<46} {value}")

    work = run.directory("webhook")
    token = secrets.token_hex(2)
    schedule = [
        (PHASES[letter], round_) for round_ in range(1, plan.rounds + 1) for letter in plan.phases
    ]
    if plan.burst_pods:
        schedule += [(PHASES[letter], 1) for letter in BURSTS]
    names = {
        (phase.letter, round_): f"bench-{token}-{phase.slug}{round_}" for phase, round_ in schedule
    }
    warm_up = f"bench-{token}-warm-up"
    namespaces: dict[str, list[str]] = {}
    for (letter, _), name in names.items():
        server = PHASES[letter].server
        if server is not None:
            namespaces.setdefault(server, []).append(name)
    print(
        f"\n--- load: {plan.pods:,} pods per phase with {plan.concurrency} concurrent clients, "
        f"{plan.rounds} round(s) of {plan.phases}"
        + (
            f", then {plan.burst_pods:,} pods by {plan.burst_concurrency} clients (E, F)"
            if plan.burst_pods
            else ""
        )
        + f" (work dir {work})"
    )
    began = time.monotonic()
    cluster = run.cluster()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(policy_manifest()))
    certificate = serving_certificate(work / "tls")
    servers = Servers(cluster, work, certificate, namespaces, f"bench-{token}-lease")
    bench = Bench(cluster, work, servers, sample_dir)
    results: list[PhaseResult] = []
    try:
        for name in [warm_up, *names.values()]:
            bench.create_namespace(name)
        servers.start()
        for (letter, _), name in names.items():
            if PHASES[letter].mutated:
                bench.wait_mutating(name)
        print(
            f"  control plane and {len(servers.processes)} server processes ready in "
            f"{time.monotonic() - began:.1f}s; every server mutates a dry-run create"
        )
        warm = bench.run_phase(PHASES["A"], 0, warm_up, max(plan.pods // 2, 50), plan.concurrency)
        print(f"  (warm-up, not counted: {warm.rate:.1f} creates/s)")
        for phase, round_ in schedule:
            if phase.letter in BURSTS:
                pods, concurrency = plan.burst_pods, plan.burst_concurrency
            elif phase.serial:
                pods, concurrency = plan.serial_pods, 1
            else:
                pods, concurrency = plan.pods, plan.concurrency
            result = bench.run_phase(phase, round_, names[phase.letter, round_], pods, concurrency)
            results.append(result)
            print(phase_line(result), flush=True)
    except BaseException:
        print(f"  failed; logs kept in {work}", file=sys.stderr)
        run.keep = True
        raise
    finally:
        servers.stop()
    out = report(results, micro)
    report_samples(bench.samples)
    out["plan"] = plan.__dict__
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_webhook")
    parser.add_argument("--quick", action="store_true", help="a reduced run (CI)")
    parser.add_argument("--pods", type=int, help="pods per loaded phase (600; quick 60)")
    parser.add_argument("--concurrency", type=int, help="concurrent clients (32; quick 16)")
    parser.add_argument("--serial-pods", type=int, help="pods per one-client phase (a, b)")
    parser.add_argument("--rounds", type=int, help="rounds of the phases (2; quick 1)")
    parser.add_argument(
        "--phases",
        help=f"phases of a round, in order (default {ROUND_PHASES}): "
        + "; ".join(
            f"{p.letter} {p.description}" for p in PHASES.values() if p.letter not in BURSTS
        ),
    )
    parser.add_argument("--burst-pods", type=int, help="pods of the burst (F; 0: none)")
    parser.add_argument("--burst-concurrency", type=int, help="clients of the burst (500)")
    parser.add_argument("--calls", type=int, help="micro-benchmark calls")
    parser.add_argument("--micro-only", action="store_true", help="only the micro-benchmark")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--sample-operator",
        metavar="DIR",
        help="attach py-spy (pip install py-spy) to B's operator in every B phase, keep "
        "DIR/operator-B<round>.txt and print where its CPU time went",
    )
    args, _ = parser.parse_known_args(argv)
    if args.phases is not None and (
        not args.phases or set(args.phases) - set(PHASES) or set(BURSTS) & set(args.phases)
    ):
        parser.error(f"--phases: use letters from {''.join(set(PHASES) - set(BURSTS))}")
    plan = Plan.of(
        args.quick,
        pods=args.pods,
        concurrency=args.concurrency,
        rounds=args.rounds,
        phases=args.phases,
        serial_pods=args.serial_pods,
        burst_pods=args.burst_pods,
        burst_concurrency=args.burst_concurrency,
        calls=args.calls,
    )
    if args.micro_only:
        for label, value in micro_benchmark(plan.calls):
            print(f"  {label:<46} {value}")
        return
    sample_dir = Path(args.sample_operator).resolve() if args.sample_operator else None
    if sample_dir is not None:
        sample_dir.mkdir(parents=True, exist_ok=True)
    with BenchRun(quick=args.quick, keep=args.keep) as run:
        result = collect(run, plan, sample_dir)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
