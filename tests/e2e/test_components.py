"""The split roles, end to end: two ``--components webhook`` processes share one port, one
``--components watcher`` process keeps the records and writes status.

The webhook configuration is this test's own (a URL to the shared port, limited to the
test's namespace), so the API server itself spreads real admission requests over both
webhook processes. The session's ``--dev`` operator is stopped meanwhile (its webhook would
inject too, and it would write status); the next test that needs it starts it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gomemlimit_operator.core.api import WEBHOOK_PATH
from gomemlimit_operator.install.webhook_configuration import (
    build_webhook_configuration,
    url_client_config,
)
from gomemlimit_operator.runtime.certs import generate, write_files
from tests.cluster.controlplane import ControlPlane
from tests.e2e.operator_harness import (
    OperatorProcess,
    admitted_gomemlimit,
    apply,
    crds,
    free_ports,
    get,
    operator_service,
    policy_yaml,
    wait_ready,
    wait_until,
)

__all__ = ["crds", "operator_service"]

IMAGE = "registry.invalid/app:1"


@dataclass
class Split:
    webhooks: tuple[OperatorProcess, OperatorProcess]
    watcher: OperatorProcess
    ca_pem: bytes


@pytest.fixture
def split(
    cluster: ControlPlane,
    namespace: str,
    operator_service: OperatorProcess,
    tmp_path: Path,
) -> Iterator[Split]:
    operator_service.stop()  # restarted by the next test that asks for operator_process
    bundle = generate(["127.0.0.1", "localhost"])
    files = write_files(bundle, tmp_path / "tls")
    tls = ["--tls-cert-file", str(files.cert_file), "--tls-key-file", str(files.key_file)]
    webhooks = tuple(
        OperatorProcess(
            Path(cluster.kubeconfig),
            tmp_path / f"webhook-{index}.log",
            mode=["--components", "webhook", *tls],
        )
        for index in (1, 2)
    )
    watcher = OperatorProcess(
        Path(cluster.kubeconfig),
        tmp_path / "watcher.log",
        mode=["--components", "watcher"],
        lease_namespace=namespace,
        lease_duration=4,
    )
    shared, *own = free_ports(8)
    name = f"e2e-components-{namespace}"
    configuration = build_webhook_configuration(
        name=name,
        client_config=url_client_config(f"https://127.0.0.1:{shared}{WEBHOOK_PATH}", bundle.ca_pem),
        exempt_namespaces=(),
        only_namespaces=(namespace,),
    )
    processes = [*webhooks, watcher]
    try:
        webhooks[0].launch((shared, own[0], own[1]))
        webhooks[1].launch((shared, own[2], own[3]))
        watcher.launch((own[4], own[5], own[6]))  # its webhook port is never bound
        for process in processes:
            process.wait_ready()
        apply(cluster, configuration)
        yield Split((webhooks[0], webhooks[1]), watcher, bundle.ca_pem)
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        for process in processes:
            status = process.stop()
            print(f"--- {process.log_path.name}: exit status {status} ---")
            print(process.log_text()[-6000:])


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "split"}},
        "spec": {
            "containers": [
                {"name": "app", "image": IMAGE, "resources": {"limits": {"memory": "1Gi"}}}
            ]
        },
    }


def gomemlimit(obj: dict[str, Any]) -> str | None:
    env = obj["spec"]["containers"][0].get("env") or []
    return next((e["value"] for e in env if e["name"] == "GOMEMLIMIT"), None)


def create(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    created = cluster.kubectl(
        "create", "-n", namespace, "-o", "json", "-f", "-", input=json.dumps(pod(name))
    )
    return dict(json.loads(created.stdout))


def test_two_webhook_processes_share_the_port_and_the_watcher_reports(
    cluster: ControlPlane, namespace: str, split: Split
) -> None:
    cluster.kubectl("apply", "-f", "-", input=policy_yaml("GoMemPolicy", "all", {}, namespace))
    wait_ready(cluster, "GoMemPolicy", "all", namespace)
    # Each webhook process learns the policy from its own watch. Every review goes over a new
    # connection to the shared port, and the kernel spreads connections over both listeners.
    port = split.webhooks[0].webhook_port
    wait_until(
        lambda: (
            all(
                w.metric("gomemlimit_admission_requests_total", result="mutated") > 0
                for w in split.webhooks
            )
            if admitted_gomemlimit(port, split.ca_pem, namespace, pod("probe")) == "921MiB"
            else False
        ),
        "both webhook processes to answer on the shared port with the policy's value",
        timeout=30,
        interval=0.05,
    )
    direct = [mutated(w) for w in split.webhooks]

    # Real admissions through the API server.
    created = [create(cluster, namespace, f"p{i}") for i in range(24)]
    assert [gomemlimit(obj) for obj in created] == ["921MiB"] * 24
    answered = [mutated(w) - before for w, before in zip(split.webhooks, direct, strict=True)]
    assert sum(answered) == 24
    for webhook in split.webhooks:
        families = webhook.families()
        assert "gomemlimit_watch_events" not in families  # pods are never watched
        assert "gomemlimit_containers" not in families
    assert "gomemlimit_admission_requests" not in split.watcher.families()

    # The watcher's records and the status it writes as the Lease holder.
    wait_until(
        lambda: (
            (get(cluster, "gomempolicies", "all", "-n", namespace).get("status") or {})
            .get("containers", {})
            .get("compliant")
            == 24
        ),
        "the watcher to report 24 compliant containers",
        timeout=30,
    )
    assert split.watcher.metric("gomemlimit_leader") == 1

    # One webhook process dies: the other keeps answering on the same port.
    survivor = split.webhooks[1]
    served = mutated(survivor)
    split.webhooks[0].kill()
    time.sleep(1)  # the API server drops its idle connections to the dead process
    after = [create(cluster, namespace, f"q{i}") for i in range(6)]
    assert [gomemlimit(obj) for obj in after] == ["921MiB"] * 6
    assert mutated(survivor) == served + 6


def mutated(webhook: OperatorProcess) -> float:
    return webhook.metric("gomemlimit_admission_requests_total", result="mutated")
