"""Webhook service time without the API server: our webhook next to a Go and an aiohttp floor.

``python -m bench.bench_service [--quick] [--keep]`` (also run by ``python -m bench``).

The API server is not in the request path: a Go load generator (``bench/floor/loadgen``)
POSTs realistic AdmissionReviews straight to each server over keep-alive HTTP/1.1 TLS
connections, verified against the serving certificate's CA. Three servers, one at a time,
each pinned to CPU 0, with the load generator pinned to CPU 1:

* ``ours``: the real operator process (``--components webhook`` when the operator has it),
  with its serving certificate, against the run's local control plane, where the benchmark's
  ClusterGoMemPolicy (``bench_webhook.policy_manifest``) and the reviews' namespace exist.
* ``go``: the Go floor (``bench/floor/server``): net/http, encoding/json decoding the whole
  AdmissionReview, a static patch.
* ``aiohttp``: the Python floor (``bench/floor_aiohttp.py``): aiohttp and orjson, a static
  patch.

The corpus: AdmissionReviews of Pod CREATE, 5-15 KB each, with 1-5 containers (env entries,
volume mounts, probes, security contexts, resources), init containers in some, labels,
annotations and volumes. Container 0 is always ``app`` with a 512Mi limit and the others are
not governed, so our patch is the same for every review (checked: our engine's patch for
every pod, and our running webhook's answer to every review, must equal the floors' static
patch, or the benchmark stops).

For each server: fixed rates in an open loop (latency from each request's scheduled send
time, so queueing counts; full: 50, 100, 200, 400 and 800 req/s, 10 s each after a 2 s
warm-up; quick: 200 req/s for 2 s), then saturation: a closed loop over 8 connections (full
10 s, quick 2 s). The server's CPU time (``/proc/PID/stat``, all threads) over each run,
warm-up included, divided by the requests sent, is its CPU per request.

Nothing here asserts a speed: timings depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import random
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.floors import FloorServer, build_go_tools, expected_patch, pinned
from bench.shared import BenchRun, ServingCertificate, process_cpu, serving_certificate

NAMESPACE = "bench-service"
SERVERS = ("ours", "go", "aiohttp")
SATURATION_CONNECTIONS = 8
OPEN_LOOP_CONNECTIONS = 32  # most requests in flight in the open loop


@dataclass(frozen=True)
class Plan:
    rates: tuple[int, ...]
    duration: float
    warmup: float
    saturation: float
    reviews: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(rates=(200,), duration=2.0, warmup=0.25, saturation=2.0, reviews=32)
        return cls(
            rates=(50, 100, 200, 400, 800), duration=10.0, warmup=2.0, saturation=10.0, reviews=200
        )


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------

SIDECARS = ("istio-proxy", "log-shipper", "metrics-exporter", "config-reloader", "oauth-proxy")
ENV_WORDS = ("FEATURE", "SERVICE", "CACHE", "DB", "QUEUE", "TRACE", "AUTH", "REGION", "POOL")


def _env_entry(rng: random.Random, index: int) -> dict[str, Any]:
    name = f"{rng.choice(ENV_WORDS)}_{rng.choice(ENV_WORDS)}_{index}"
    kind = rng.random()
    if kind < 0.6:
        return {"name": name, "value": f"{rng.getrandbits(64):x}-{rng.randint(1, 10**6)}"}
    if kind < 0.75:
        path = rng.choice(("metadata.name", "metadata.namespace", "status.podIP", "spec.nodeName"))
        return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}
    ref = "configMapKeyRef" if kind < 0.9 else "secretKeyRef"
    source = {"name": f"svc-{rng.randint(1, 40)}-{ref[:6].lower()}", "key": name.lower()}
    return {"name": name, "valueFrom": {ref: source}}


def _probe(rng: random.Random, port: int) -> dict[str, Any]:
    if rng.random() < 0.7:
        handler: dict[str, Any] = {
            "httpGet": {
                "path": rng.choice(("/healthz", "/readyz", "/livez")),
                "port": port,
                "scheme": "HTTP",
            }
        }
    else:
        handler = {"tcpSocket": {"port": port}}
    return {
        **handler,
        "initialDelaySeconds": rng.randint(0, 30),
        "periodSeconds": rng.choice((5, 10, 15)),
        "timeoutSeconds": 1,
        "successThreshold": 1,
        "failureThreshold": 3,
    }


def _container(rng: random.Random, name: str, memory: str, env: int) -> dict[str, Any]:
    port = rng.choice((8080, 8443, 9090, 15090, 3000))
    container: dict[str, Any] = {
        "name": name,
        "image": f"registry.invalid/{name}:1.{rng.randint(0, 30)}.{rng.randint(0, 9)}",
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": [_env_entry(rng, i) for i in range(env)],
        "resources": {
            "requests": {"cpu": f"{rng.choice((50, 100, 250, 500))}m", "memory": memory},
            "limits": {"memory": memory},
        },
        "volumeMounts": [
            {
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "name": "kube-api-access-x7k2p",
                "readOnly": True,
            },
            {"mountPath": f"/etc/{name}", "name": "config"},
            {"mountPath": "/tmp", "name": "tmp"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    if rng.random() < 0.8:
        container["livenessProbe"] = _probe(rng, port)
        container["readinessProbe"] = _probe(rng, port)
    if rng.random() < 0.3:
        container["startupProbe"] = _probe(rng, port)
    if rng.random() < 0.3:
        container["args"] = [f"--{w.lower()}={rng.randint(1, 99)}" for w in ENV_WORDS[:5]]
    return container


def make_pod(rng: random.Random, index: int, namespace: str) -> dict[str, Any]:
    """One pod as the API server sends it to a webhook (defaults filled in), without the
    padding that brings its review to the target size (see :func:`make_review`)."""
    app_name = rng.choice(("checkout", "payments", "search", "catalog", "ledger", "gateway"))
    template_hash = f"{rng.getrandbits(40):010x}"[:10]
    containers = [_container(rng, "app", "512Mi", rng.randint(2, 6))]
    for name in rng.sample(SIDECARS, rng.randint(0, 4)):
        memory = rng.choice(("64Mi", "128Mi", "256Mi", "1Gi"))
        containers.append(_container(rng, name, memory, rng.randint(1, 4)))
    spec: dict[str, Any] = {
        "containers": containers,
        "dnsPolicy": "ClusterFirst",
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "securityContext": {"fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "serviceAccount": "default",
        "serviceAccountName": "default",
        "terminationGracePeriodSeconds": 30,
        "tolerations": [
            {
                "effect": "NoExecute",
                "key": f"node.kubernetes.io/{taint}",
                "operator": "Exists",
                "tolerationSeconds": 300,
            }
            for taint in ("not-ready", "unreachable")
        ],
        "volumes": [
            {
                "name": "kube-api-access-x7k2p",
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "fieldRef": {
                                            "apiVersion": "v1",
                                            "fieldPath": "metadata.namespace",
                                        },
                                        "path": "namespace",
                                    }
                                ]
                            }
                        },
                    ],
                },
            },
            {"name": "config", "configMap": {"name": f"{app_name}-config", "defaultMode": 420}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    if rng.random() < 0.3:
        spec["initContainers"] = [_container(rng, "init-migrate", "256Mi", rng.randint(1, 3))]
    if rng.random() < 0.5:
        spec["affinity"] = {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": {"app": app_name}},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            }
        }
    name = f"{app_name}-{template_hash}-{rng.getrandbits(25):05x}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": f"{app_name}-{template_hash}-",
            "namespace": namespace,
            "uid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "creationTimestamp": None,
            "labels": {
                "app": app_name,
                "app.kubernetes.io/name": app_name,
                "app.kubernetes.io/part-of": "shop",
                "app.kubernetes.io/version": f"1.{rng.randint(0, 40)}.{rng.randint(0, 9)}",
                "pod-template-hash": template_hash,
                "team": rng.choice(("red", "blue", "green")),
                "bench-index": str(index),
            },
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "kubectl.kubernetes.io/default-container": "app",
                "checksum/config": f"{rng.getrandbits(256):064x}",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{app_name}-{template_hash}",
                    "uid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
        "status": {},
    }


def review_of(pod: dict[str, Any], uid: str) -> dict[str, Any]:
    """The AdmissionReview the API server sends for this pod's CREATE."""
    kind = {"group": "", "version": "v1", "kind": "Pod"}
    resource = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": pod["metadata"]["name"],
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "5b0c9c3e-7f4e-4c6a-9a65-0d2f3c1b8e21",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated",
                ],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def make_review(rng: random.Random, index: int, namespace: str) -> dict[str, Any]:
    """A review of 5,000-15,000 bytes (as compact JSON): env entries are added to random
    containers until it reaches a size drawn for it."""
    while True:
        pod = make_pod(rng, index, namespace)
        review = review_of(pod, str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        target = rng.randint(5_200, 14_700)
        containers = pod["spec"]["containers"]
        extra = 100
        while len(orjson.dumps(review)) < target:
            rng.choice(containers)["env"].append(_env_entry(rng, extra))
            extra += 1
        if 5_000 <= len(orjson.dumps(review)) <= 15_000:
            return review


def make_corpus(count: int, namespace: str = NAMESPACE, seed: int = 20240) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [make_review(rng, index, namespace) for index in range(count)]


def static_patch(corpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The one patch our engine gives every pod of the corpus; raises if there is not one."""
    patches = [expected_patch(review["request"]["object"]) for review in corpus]
    first = patches[0]
    if not first:
        raise RuntimeError("our engine does not mutate the corpus' pods: no patch to serve")
    for index, patch in enumerate(patches):
        if patch != first:
            raise RuntimeError(
                f"review {index}: our engine's patch {patch} differs from review 0's {first}"
            )
    return first


def corpus_summary(corpus: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = [len(orjson.dumps(review)) for review in corpus]
    counts = [len(review["request"]["object"]["spec"]["containers"]) for review in corpus]
    return {
        "reviews": len(corpus),
        "min_bytes": min(sizes),
        "max_bytes": max(sizes),
        "containers": [min(counts), max(counts)],
    }


# ---------------------------------------------------------------------------------------------
# Processes, CPU and the load generator
# ---------------------------------------------------------------------------------------------


def pin_all_threads(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (threads started later inherit the main thread's mask)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, OSError):
            os.sched_setaffinity(int(task.name), cpus)


def choose_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, load generator CPUs): {0} and {1} when both are available to us."""
    available = os.sched_getaffinity(0)
    if {0, 1} <= available:
        return {0}, {1}
    print(f"  (CPUs 0 and 1 are not both available ({sorted(available)}): nothing is pinned)")
    return None, None


@dataclass
class Target:
    name: str
    url: str
    pid: int


@dataclass
class Load:
    loadgen: Path
    ca_file: Path
    reviews_file: Path
    expect_file: Path
    cpus: set[int] | None

    def run(
        self, target: Target, *, rate: float, connections: int, duration: float, warmup: float
    ) -> dict[str, Any]:
        """One load generator run against ``target``; its JSON, plus the server's CPU time
        per request sent (``cpu_ms_per_request``)."""
        command = [
            str(self.loadgen),
            "-url",
            target.url,
            "-ca",
            str(self.ca_file),
            "-reviews",
            str(self.reviews_file),
            "-expect",
            str(self.expect_file),
            "-rate",
            str(rate),
            "-connections",
            str(connections),
            "-duration",
            f"{duration}s",
            "-warmup",
            f"{warmup}s",
        ]
        env = dict(os.environ)
        if self.cpus:
            env["GOMAXPROCS"] = str(len(self.cpus))
        before, started = process_cpu(target.pid), time.monotonic()
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            preexec_fn=pinned(self.cpus),
            timeout=duration + warmup + 60,
        )
        used, wall = process_cpu(target.pid) - before, time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"loadgen failed ({result.returncode}): {result.stderr}")
        out: dict[str, Any] = json.loads(result.stdout)
        if out["bad_patches"] or out["bad_responses"]:
            raise RuntimeError(
                f"{target.name}: {out['bad_patches']} responses with a wrong patch and "
                f"{out['bad_responses']} malformed responses: {out}"
            )
        answered = out["requests"] - out["errors"]
        if out["patched"] != answered:
            raise RuntimeError(f"{target.name}: {answered} answered, {out['patched']} patched")
        out["cpu_ms_per_request"] = 1000 * used / max(out["sent_total"], 1)
        out["server_cores"] = used / wall  # for the table: is the server the bottleneck?
        return out


def fixed_row(out: dict[str, Any]) -> dict[str, Any]:
    keys = ("offered_rps", "achieved_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms")
    row = {key: round(float(out[key]), 3) for key in keys}
    row["errors"] = int(out["errors"])
    row["cpu_ms_per_request"] = round(float(out["cpu_ms_per_request"]), 4)
    return row


def saturation_row(out: dict[str, Any]) -> dict[str, Any]:
    row = {key: round(float(out[key]), 3) for key in ("achieved_rps", "p50_ms", "p99_ms")}
    row["errors"] = int(out["errors"])
    row["cpu_ms_per_request"] = round(float(out["cpu_ms_per_request"]), 4)
    return row


def print_header() -> None:
    print("  (latencies in ms; open loop: from each request's scheduled send time)")
    print(
        f"  {'server':<8} {'load':<16} {'achieved/s':>10} {'p50':>8} {'p95':>8} {'p99':>8} "
        f"{'max':>8} {'errors':>7} {'CPU ms/req':>11} {'server cores':>12}"
    )


def print_row(server: str, load: str, out: dict[str, Any]) -> None:
    print(
        f"  {server:<8} {load:<16} {out['achieved_rps']:>10.1f} {out['p50_ms']:>8.2f} "
        f"{out['p95_ms']:>8.2f} {out['p99_ms']:>8.2f} {out['max_ms']:>8.2f} "
        f"{out['errors']:>7d} {out['cpu_ms_per_request']:>11.3f} {out['server_cores']:>12.2f}",
        flush=True,
    )


def measure(server: str, target: Target, load: Load, plan: Plan) -> dict[str, Any]:
    fixed: dict[str, Any] = {}
    for rate in plan.rates:
        out = load.run(
            target,
            rate=rate,
            connections=OPEN_LOOP_CONNECTIONS,
            duration=plan.duration,
            warmup=plan.warmup,
        )
        print_row(server, f"open {rate}/s", out)
        fixed[str(rate)] = fixed_row(out)
    out = load.run(
        target,
        rate=0,
        connections=SATURATION_CONNECTIONS,
        duration=plan.saturation,
        warmup=plan.warmup,
    )
    print_row(server, f"closed, {SATURATION_CONNECTIONS} conns", out)
    return {"fixed": fixed, "saturation": saturation_row(out)}


# ---------------------------------------------------------------------------------------------
# Our webhook: the real operator process
# ---------------------------------------------------------------------------------------------


def operator_has_components() -> bool:
    """Whether the operator's CLI has ``--components`` yet."""
    result = subprocess.run(
        [sys.executable, "-m", "gomemlimit_operator.runtime.app", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--components" in result.stdout


def post_review(url: str, ca_pem: bytes, body: bytes, timeout: float = 10.0) -> dict[str, Any]:
    """One AdmissionReview over a new verified HTTPS connection; the response object."""
    host_port, _, path = url.removeprefix("https://").partition("/")
    host, _, port = host_port.partition(":")
    context = ssl.create_default_context(cadata=ca_pem.decode())
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=timeout)
    try:
        connection.request(
            "POST", "/" + path, body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"POST {url}: HTTP {response.status}: {data[:300]!r}")
    answer: dict[str, Any] = json.loads(data)["response"]
    return answer


def decoded_patch(answer: dict[str, Any]) -> list[dict[str, Any]] | None:
    if "patch" not in answer:
        return None
    if answer.get("patchType") != "JSONPatch":
        raise RuntimeError(f"patchType {answer.get('patchType')!r}")
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(answer["patch"]))
    return ops


def check_ours(url: str, ca_pem: bytes, corpus: list[dict[str, Any]], timeout: float) -> None:
    """Wait until our webhook mutates (it has seen the policy and the namespace), then check
    its patch for every review of the corpus against :func:`expected_patch`."""
    first = orjson.dumps(corpus[0])
    want = expected_patch(corpus[0]["request"]["object"])
    deadline = time.monotonic() + timeout
    while True:
        got = decoded_patch(post_review(url, ca_pem, first))
        if got == want:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"our webhook answers {got}, not {want}, after {timeout:.0f}s")
        time.sleep(0.2)
    for index, review in enumerate(corpus):
        answer = post_review(url, ca_pem, orjson.dumps(review))
        want = expected_patch(review["request"]["object"])
        got = decoded_patch(answer)
        if answer.get("uid") != review["request"]["uid"] or got != want:
            raise RuntimeError(
                f"review {index}: our webhook answered uid {answer.get('uid')} with patch "
                f"{got}; expected {review['request']['uid']} with {want}"
            )


@contextlib.contextmanager
def our_webhook(
    run: BenchRun,
    certificate: ServingCertificate,
    corpus: list[dict[str, Any]],
    cpus: set[int] | None,
) -> Iterator[Target]:
    from tests.e2e.operator_harness import OperatorProcess

    from bench.bench_webhook import BENCH_LABEL, policy_manifest
    from gomemlimit_operator.core.api import WEBHOOK_PATH

    began = time.monotonic()
    cluster = run.cluster()
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {BENCH_LABEL: "true"}},
    }
    for manifest in (policy_manifest(), namespace):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    print(f"  control plane ready in {time.monotonic() - began:.1f}s")

    components = ["--components", "webhook"] if operator_has_components() else []
    if not components:
        print("  (the operator has no --components yet: running all of it)")
    operator = OperatorProcess(
        cluster.kubeconfig,
        run.directory("service") / "operator.log",
        tls=(certificate.cert_file, certificate.key_file),
        extra_args=[*components, "--status-interval", "5"],
    )
    began = time.monotonic()
    operator.launch()
    try:
        assert operator.process is not None
        pid = operator.process.pid
        if cpus:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(pid, cpus)  # before it starts any thread, nearly always
        operator.wait_ready(timeout=120)
        if cpus:
            pin_all_threads(pid, cpus)
        url = f"https://127.0.0.1:{operator.webhook_port}{WEBHOOK_PATH}"
        check_ours(url, certificate.ca_pem, corpus, timeout=30)
        if cpus:
            pin_all_threads(pid, cpus)  # any thread started while answering
        print(
            f"  operator ({' '.join(components) or 'all components'}) ready in "
            f"{time.monotonic() - began:.1f}s; its patch for all {len(corpus)} reviews checked"
        )
        yield Target("ours", url, pid)
    finally:
        status = operator.stop()
        if status not in (0, None):
            print(f"  operator exited with status {status}; log: {operator.log_path}")


@contextlib.contextmanager
def floor(
    kind: str, certificate: ServingCertificate, patch: list[dict[str, Any]], cpus: set[int] | None
) -> Iterator[Target]:
    from tests.e2e.operator_harness import free_port

    assert kind in ("go", "aiohttp")
    server = FloorServer(
        "go" if kind == "go" else "aiohttp",
        cert=certificate.cert_file,
        key=certificate.key_file,
        patch=patch,
        port=free_port(),
        cpus=cpus,
    )
    with server:
        yield Target(kind, server.url, server.pid)


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def collect(run: BenchRun) -> dict[str, Any]:
    plan = Plan.of(run.quick)
    work = run.directory("service")
    print(
        f"--- service time without the API server: {', '.join(SERVERS)}; open loop at "
        f"{', '.join(map(str, plan.rates))} req/s ({plan.duration:.0f} s after {plan.warmup:g} s "
        f"warm-up), closed loop over {SATURATION_CONNECTIONS} connections "
        f"({plan.saturation:.0f} s)"
    )
    _, loadgen = build_go_tools()
    corpus = make_corpus(plan.reviews)
    patch = static_patch(corpus)
    summary = corpus_summary(corpus)
    print(
        f"  corpus: {summary['reviews']} Pod CREATE reviews, {summary['min_bytes']:,}-"
        f"{summary['max_bytes']:,} bytes, {summary['containers'][0]}-"
        f"{summary['containers'][1]} containers; one static patch of {len(patch)} operations"
    )
    reviews_file = work / "reviews.jsonl"
    reviews_file.write_bytes(b"\n".join(orjson.dumps(review) for review in corpus) + b"\n")
    expect_file = work / "patch.json"
    expect_file.write_bytes(orjson.dumps(patch))
    certificate = serving_certificate(work / "tls")
    server_cpus, loadgen_cpus = choose_cpus()
    if server_cpus:
        print(
            f"  servers pinned to CPUs {sorted(server_cpus)}, "
            f"the load generator to {sorted(loadgen_cpus or ())}"
        )
    load = Load(loadgen, certificate.ca_file, reviews_file, expect_file, loadgen_cpus)

    starters: dict[str, Callable[[], contextlib.AbstractContextManager[Target]]] = {
        "ours": lambda: our_webhook(run, certificate, corpus, server_cpus),
        "go": lambda: floor("go", certificate, patch, server_cpus),
        "aiohttp": lambda: floor("aiohttp", certificate, patch, server_cpus),
    }
    servers: dict[str, Any] = {}
    for name in SERVERS:
        with starters[name]() as target:
            if name == SERVERS[0]:
                print_header()
            servers[name] = measure(name, target, load, plan)

    def ratio(a: str, b: str) -> float:
        theirs = servers[b]["saturation"]["achieved_rps"]
        return round(servers[a]["saturation"]["achieved_rps"] / theirs, 4) if theirs else 0.0

    rate = "200" if "200" in servers["ours"]["fixed"] else str(plan.rates[0])
    result = {
        "corpus": summary,
        "servers": servers,
        "ours_p99_ms_at_200": float(servers["ours"]["fixed"][rate]["p99_ms"]),
        "saturation_vs_aiohttp": ratio("ours", "aiohttp"),
        "saturation_vs_go": ratio("ours", "go"),
    }
    print(
        f"  saturation: ours {servers['ours']['saturation']['achieved_rps']:.0f}/s = "
        f"{result['saturation_vs_aiohttp']:.2f}x aiohttp, {result['saturation_vs_go']:.2f}x go; "
        f"ours p99 at {rate}/s: {result['ours_p99_ms_at_200']:.2f} ms "
        f"(aiohttp {servers['aiohttp']['fixed'][rate]['p99_ms']:.2f}, "
        f"go {servers['go']['fixed'][rate]['p99_ms']:.2f})"
    )
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_service")
    parser.add_argument("--quick", action="store_true", help="200 req/s and saturation, 2 s each")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args, _ = parser.parse_known_args(argv)
    began = time.monotonic()
    with BenchRun(quick=args.quick, keep=args.keep) as run:
        if args.keep:
            print(f"  work directory (kept): {run.work}")
        result = collect(run)
    print(json.dumps(result, indent=2))
    print(f"  ({time.monotonic() - began:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
