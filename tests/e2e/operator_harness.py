"""Run the real operator process against the local control plane, for end-to-end tests.

Fixtures (import them into a test module:
``from tests.e2e.operator_harness import operator_process``):

* ``crds`` (session): applies ``crds/`` once and waits until they are Established.
* ``operator_service`` (session): one ``python -m gomemlimit_operator.runtime.app --dev``
  process on free ports, output in a log file; stopped (SIGTERM) at the end of the session.
* ``operator_process`` (per test): the same process, restarted first if an earlier test
  killed it; after the test, the log lines written during it are printed, and pytest shows
  them when the test failed.

Plus small helpers shared by the tests: ``apply``, ``wait_until``, ``get``, ``pods``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jsonpatch
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gomemlimit_operator.core.api import PLURALS, WEBHOOK_PATH

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
DEV_WEBHOOK_NAME = "gomemlimit-operator-dev"
T = TypeVar("T")

__all__ = [
    "OperatorProcess",
    "apply",
    "cluster_policies",
    "crds",
    "free_port",
    "free_ports",
    "get",
    "operator_process",
    "operator_service",
    "pods",
    "wait_ready",
    "wait_until",
]


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all sockets stay bound until every port is chosen
    (binding one at a time can return the same port twice)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def wait_until(
    check: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.2
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # e.g. NotFound while an object is being created
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    suffix = f" (last error: {last_error})" if last_error else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")


def _http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


class OperatorProcess:
    """One operator process on free ports; ``start``/``stop``/``kill`` it as needed.

    By default it runs with ``--dev`` (it registers its own webhook configuration). With
    ``tls=(cert, key)`` it runs as an installed replica does: that certificate, and no
    webhook configuration of its own. ``mode`` replaces both with other flags (for example
    ``--manage-certificates ...``). ``identity`` is its Lease holder identity: a process
    restarted with the same identity takes its own lease back at once.
    """

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        extra_args: Sequence[str] = (),
        webhook_name: str = DEV_WEBHOOK_NAME,
        tls: tuple[Path, Path] | None = None,
        mode: Sequence[str] | None = None,
        identity: str | None = None,
        lease_namespace: str | None = None,
        lease_duration: int | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.webhook_name = webhook_name
        self.tls = tls
        self.mode = None if mode is None else list(mode)
        self.identity = identity
        self.lease_namespace = lease_namespace
        self.lease_duration = lease_duration
        self.process: subprocess.Popen[bytes] | None = None
        self.webhook_port = self.metrics_port = self.health_port = 0
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        if self.mode is not None:
            mode = list(self.mode)
        elif self.tls is None:
            mode = ["--dev", "--dev-webhook-name", self.webhook_name]
        else:
            mode = ["--tls-cert-file", str(self.tls[0]), "--tls-key-file", str(self.tls[1])]
        election: list[str] = []
        if self.identity is not None:
            election += ["--leader-election-identity", self.identity]
        if self.lease_namespace is not None:
            election += ["--leader-election-namespace", self.lease_namespace]
        if self.lease_duration is not None:
            election += ["--leader-election-lease-duration", str(self.lease_duration)]
        return [
            sys.executable,
            "-m",
            "gomemlimit_operator.runtime.app",
            *mode,
            *election,
            "--kubeconfig",
            str(self.kubeconfig),
            "--webhook-port",
            str(self.webhook_port),
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
            "--status-interval",
            "1",
            *self.extra_args,
        ]

    def start(self, timeout: float = 90.0) -> None:
        """Start it (unless running) and wait until /readyz is ok."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self, ports: Sequence[int] | None = None) -> None:
        """Start the process without waiting (see :meth:`wait_ready`).

        ``ports``: (webhook, metrics, health); by default three free ones. Processes launched
        together need ports chosen together (:func:`free_ports`): a port is only taken once
        the process binds it.
        """
        if self.running:
            return
        self.webhook_port, self.metrics_port, self.health_port = ports or free_ports(3)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOMEMLIMIT_OPERATOR_")}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start #{self.starts + 1}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
            )
        self.starts += 1

    def wait_ready(self, timeout: float = 90.0) -> None:
        try:
            wait_until(self._ready_or_dead, "the operator's /readyz", timeout=timeout)
        except AssertionError:
            self.stop()
            raise AssertionError(f"the operator did not become ready:\n{self.log_tail()}") from None
        if not self.running:
            raise AssertionError(f"the operator exited at start:\n{self.log_tail()}")

    def _ready_or_dead(self) -> bool:
        if not self.running:
            return True  # start() reports it
        with contextlib.suppress(OSError):
            return self.readyz()[0] == 200
        return False

    def readyz(self) -> tuple[int, str]:
        return _http_get(self.health_port, "/readyz?verbose")

    def healthz(self) -> tuple[int, str]:
        return _http_get(self.health_port, "/healthz")

    def metrics(self) -> str:
        status, text = _http_get(self.metrics_port, "/metrics")
        assert status == 200
        return text

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 if absent)."""
        return self.samples(name).get(tuple(sorted(labels.items())), 0.0)

    def samples(self, name: str, **where: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample called ``name`` whose labels include ``where``: labels -> value.

        Labels are a sorted tuple of (name, value) pairs.
        """
        found: dict[tuple[tuple[str, str], ...], float] = {}
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and where.items() <= sample.labels.items():
                    found[tuple(sorted(sample.labels.items()))] = sample.value
        return found

    def families(self) -> set[str]:
        """The names of the metric families on /metrics."""
        return {family.name for family in text_string_to_metric_families(self.metrics())}

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, and SIGKILL if it does not exit in time. Returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: like a crash, the webhook configuration stays behind."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self, offset: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# Cluster helpers (through the pinned kubectl of the `cluster` fixture)
# ---------------------------------------------------------------------------------------------


def pod_review(namespace: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """An AdmissionReview as the API server sends it for a pod CREATE."""
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    pods = {"group": "", "version": "v1", "resource": "pods"}
    kind = {"group": "", "version": "v1", "kind": "Pod"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": pods,
            "requestKind": kind,
            "requestResource": pods,
            "name": obj["metadata"]["name"],
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "e2e", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def admitted_gomemlimit(
    port: int, ca_pem: bytes, namespace: str, obj: Mapping[str, Any]
) -> str | None:
    """POST a real AdmissionReview for ``obj`` over a new, verified TLS connection to the
    webhook on ``port``; the GOMEMLIMIT its patch gives the first container."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request(
            "POST",
            WEBHOOK_PATH,
            body=json.dumps(pod_review(namespace, obj)),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200
        answer = json.loads(response.read())["response"]
    finally:
        connection.close()
    assert answer["allowed"] is True
    if "patch" not in answer:
        return None
    assert answer["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(dict(obj), json.loads(base64.b64decode(answer["patch"])))
    env = patched["spec"]["containers"][0].get("env") or []
    values = [e["value"] for e in env if e["name"] == "GOMEMLIMIT"]
    return values[0] if values else None


def apply(cluster: Any, *objects: Mapping[str, Any] | str, namespace: str | None = None) -> None:
    """kubectl apply objects (dicts or YAML text); raises KubectlError with stderr on failure."""
    docs = [obj if isinstance(obj, str) else yaml.safe_dump(dict(obj)) for obj in objects]
    args = ["apply", "-f", "-"]
    if namespace:
        args += ["-n", namespace]
    cluster.kubectl(*args, input="\n---\n".join(docs))


def get(cluster: Any, *args: str) -> Any:
    """kubectl get ... -o json, parsed."""
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def pods(cluster: Any, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
    args = ["pods", "-n", namespace]
    if selector:
        args += ["-l", selector]
    return list(get(cluster, *args)["items"])


def condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or ():
        if item.get("type") == type_:
            return dict(item)
    return None


def wait_ready(
    cluster: Any, kind: str, name: str, namespace: str | None = None, status: str = "True"
) -> dict[str, Any]:
    """Wait until the operator wrote Ready=<status> for the policy's current generation.

    Since status is written after the policy reached the registry, a policy that is Ready for
    its current generation is what the webhook uses from then on.
    """
    args = [PLURALS[kind], name, *(["-n", namespace] if namespace else [])]

    def check() -> dict[str, Any] | None:
        obj: dict[str, Any] = get(cluster, *args)
        ready = condition(obj, "Ready")
        generation = obj["metadata"]["generation"]
        if (
            ready is not None
            and ready["status"] == status
            and ready.get("observedGeneration") == generation
            and (obj.get("status") or {}).get("observedGeneration") == generation
        ):
            return obj
        return None

    return wait_until(check, f"{kind} {name}: Ready={status}", timeout=30)


def policy_yaml(kind: str, name: str, spec: Mapping[str, Any], namespace: str | None = None) -> str:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return yaml.safe_dump(
        {"apiVersion": "gomemlimit.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}
    )


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def crds(cluster: Any) -> None:
    cluster.kubectl("apply", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))


_SESSION_OPERATORS: dict[str, OperatorProcess] = {}
"""The one session operator per cluster, shared by every module that imports the fixture."""


def session_operator(cluster: Any) -> OperatorProcess | None:
    """The session's ``--dev`` operator for this cluster, if a module has started one."""
    return _SESSION_OPERATORS.get(str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def operator_service(
    cluster: Any, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The session's ``--dev`` operator. Test modules import this fixture, which makes pytest
    create one fixture per module; they all share one process, or two of them would run at
    once, both registering the same webhook configuration and both holding the lease (they
    have the same identity)."""
    key = str(cluster.kubeconfig)
    operator = _SESSION_OPERATORS.get(key)
    owner = operator is None
    if operator is None:
        log_path = tmp_path_factory.mktemp("operator") / "operator.log"
        # A fixed identity: restarted after a kill, it takes its own lease back at once.
        operator = OperatorProcess(Path(cluster.kubeconfig), log_path, identity="e2e-operator")
        _SESSION_OPERATORS[key] = operator
    operator.start()
    try:
        yield operator
    finally:
        if owner:  # set up first, so torn down last
            _SESSION_OPERATORS.pop(key, None)
            status = operator.stop()
            print(f"operator exit status {status}; log: {operator.log_path}")
            cluster.kubectl(
                "delete",
                "mutatingwebhookconfiguration",
                operator.webhook_name,
                "--ignore-not-found",
            )


@pytest.fixture
def cluster_policies(cluster: Any) -> Iterator[Callable[..., dict[str, Any]]]:
    """Apply ClusterGoMemPolicies with kubectl and wait until Ready; deleted after the test.

    Cluster policies outlive namespaces: scope them to the test's namespace (namespaceSelector)
    so that they cannot touch other tests' pods.
    """
    created: list[str] = []

    def make(name: str, spec: Mapping[str, Any], ready: str | None = "True") -> dict[str, Any]:
        created.append(name)
        cluster.kubectl("apply", "-f", "-", input=policy_yaml("ClusterGoMemPolicy", name, spec))
        if ready is None:
            return dict(get(cluster, "clustergomempolicies", name))
        return wait_ready(cluster, "ClusterGoMemPolicy", name, status=ready)

    yield make
    if created:
        cluster.kubectl(
            "delete", "clustergomempolicies", *created, "--ignore-not-found", "--wait=false"
        )


@pytest.fixture
def operator_process(operator_service: OperatorProcess) -> Iterator[OperatorProcess]:
    operator_service.start()  # no-op unless an earlier test stopped or killed it
    offset = operator_service.log_size()
    yield operator_service
    # Printed output is shown by pytest only when the test failed.
    print(f"--- operator log during this test ({operator_service.log_path}) ---")
    print(operator_service.log_text(offset)[-20000:])
