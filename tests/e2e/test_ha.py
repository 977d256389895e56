"""Two replicas, end to end: both serve the webhook, one (the Lease holder) writes status.

The replicas run as installed replicas do: a shared serving certificate from files and no
webhook configuration of their own (``--dev`` would make each register its own). Their Lease
lives in the test's namespace, with a 4 s lease duration to keep failover quick. The
session's ``--dev`` operator is stopped meanwhile, so that nothing else writes status; the
next test that needs it starts it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gomemlimit_operator.runtime.certs import generate, write_files
from gomemlimit_operator.runtime.leader import LEASE_NAME
from gomemlimit_operator.runtime.status_writer import FIELD_MANAGER
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

LEASE_SECONDS = 4  # renew every 1.3 s, step down 2.7 s after the last renewal: some margin
# for a loaded 2-core machine
IMAGE = "registry.invalid/app:1"


class Pair:
    def __init__(self, a: OperatorProcess, b: OperatorProcess, ca_pem: bytes) -> None:
        self.replicas = (a, b)
        self.ca_pem = ca_pem

    def by_identity(self, identity: str) -> OperatorProcess:
        (found,) = [r for r in self.replicas if r.identity == identity]
        return found


@pytest.fixture
def pair(
    cluster: ControlPlane,
    namespace: str,
    operator_service: OperatorProcess,
    tmp_path: Path,
) -> Iterator[Pair]:
    operator_service.stop()  # restarted by the next test that asks for operator_process
    bundle = generate(["127.0.0.1", "localhost"])
    files = write_files(bundle, tmp_path / "tls")
    replicas = [
        OperatorProcess(
            Path(cluster.kubeconfig),
            tmp_path / f"replica-{name}.log",
            tls=(files.cert_file, files.key_file),
            identity=f"replica-{name}",
            lease_namespace=namespace,
            lease_duration=LEASE_SECONDS,
        )
        for name in ("a", "b")
    ]
    ports = free_ports(6)
    try:
        for index, replica in enumerate(replicas):
            replica.launch(ports[3 * index : 3 * index + 3])
        for replica in replicas:
            replica.wait_ready()
        yield Pair(replicas[0], replicas[1], bundle.ca_pem)
    finally:
        for replica in replicas:
            status = replica.stop()
            print(f"--- {replica.identity}: exit status {status}; log {replica.log_path} ---")
            print(replica.log_text()[-10000:])


def pod(name: str, limit: str = "1Gi") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "containers": [
                {"name": "app", "image": IMAGE, "resources": {"limits": {"memory": limit}}}
            ]
        },
    }


def injected(replica: OperatorProcess, pair: Pair, namespace: str) -> str | None:
    return admitted_gomemlimit(replica.webhook_port, pair.ca_pem, namespace, pod("probe"))


def holder(cluster: ControlPlane, namespace: str) -> str | None:
    lease = get(cluster, "lease", LEASE_NAME, "-n", namespace)
    return lease["spec"].get("holderIdentity") or None


def policy_status(cluster: ControlPlane, namespace: str) -> dict[str, Any]:
    return dict(get(cluster, "gomempolicies", "all", "-n", namespace).get("status") or {})


def missing(cluster: ControlPlane, namespace: str) -> int:
    return int((policy_status(cluster, namespace).get("containers") or {}).get("missing", -1))


# ---------------------------------------------------------------------------------------------


def test_every_replica_serves_the_webhook_with_a_current_policy_index(
    cluster: ControlPlane, namespace: str, pair: Pair
) -> None:
    # Created after both started: the follower learns policies from its own watch.
    spec: dict[str, Any] = {"ratio": 0.5}
    cluster.kubectl("apply", "-f", "-", input=policy_yaml("GoMemPolicy", "all", spec, namespace))
    wait_ready(cluster, "GoMemPolicy", "all", namespace)
    for replica in pair.replicas:
        wait_until(
            lambda r=replica: (
                admitted_gomemlimit(r.webhook_port, pair.ca_pem, namespace, pod("probe"))
                == "512MiB"
            ),
            f"{replica.identity}'s webhook to inject half of 1Gi",
            timeout=30,
        )
    cluster.kubectl(
        "patch",
        "gomempolicies",
        "all",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"ratio": 0.25}}),
    )
    for replica in pair.replicas:
        wait_until(
            lambda r=replica: (
                admitted_gomemlimit(r.webhook_port, pair.ca_pem, namespace, pod("probe"))
                == "256MiB"
            ),
            f"{replica.identity}'s webhook to follow the policy change",
            timeout=30,
        )
    leaders = [r.metric("gomemlimit_leader") for r in pair.replicas]
    assert sorted(leaders) == [0, 1]


def test_one_replica_writes_status_and_another_takes_over(
    cluster: ControlPlane, namespace: str, pair: Pair
) -> None:
    ref = f"GoMemPolicy/{namespace}/all"
    cluster.kubectl("apply", "-f", "-", input=policy_yaml("GoMemPolicy", "all", {}, namespace))
    wait_ready(cluster, "GoMemPolicy", "all", namespace)
    apply(cluster, pod("p1"), pod("p2"), namespace=namespace)  # no webhook: both missing
    wait_until(lambda: missing(cluster, namespace) == 2, "status: 2 missing", timeout=30)

    leader = pair.by_identity(wait_until(lambda: holder(cluster, namespace), "a lease holder"))
    (follower,) = [r for r in pair.replicas if r is not leader]
    series = {(("namespace", namespace), ("policy", ref), ("state", "missing")): 2.0}
    wait_until(
        lambda: leader.samples("gomemlimit_containers", namespace=namespace) == series,
        "the leader to export the namespace's containers",
        timeout=30,
    )
    assert leader.metric("gomemlimit_leader") == 1
    assert follower.metric("gomemlimit_leader") == 0
    # The follower has the same records, but exports none of the cluster state.
    families = follower.families()
    for name in (
        "gomemlimit_containers",
        "gomemlimit_noncompliant_container_info",
        "gomemlimit_watched_pods",
        "gomemlimit_policies",
    ):
        assert name not in families
    # Only the leader wrote status (Ready, then the counts), though both saw every change. A
    # replica counts a write once the API server answered it: poll, the status may be earlier.
    wait_until(
        lambda: leader.metric("gomemlimit_policy_status_writes_total") >= 2,
        "the leader to count its status writes",
    )
    assert follower.metric("gomemlimit_policy_status_writes_total") == 0
    managers = {
        entry["manager"]
        for entry in get(cluster, "gomempolicies", "all", "-n", namespace, "--show-managed-fields")[
            "metadata"
        ]["managedFields"]
        if entry.get("subresource") == "status"
    }
    assert managers == {FIELD_MANAGER}

    # The leader crashes: the follower takes the lease over once it expires.
    leader.kill()
    killed = time.monotonic()
    wait_until(
        lambda: holder(cluster, namespace) == follower.identity,
        "the follower to take the lease over",
        timeout=30,
        interval=0.1,
    )
    failover = time.monotonic() - killed
    print(f"failover after SIGKILL: {failover:.1f}s (lease duration {LEASE_SECONDS}s)")
    wait_until(
        lambda: follower.samples("gomemlimit_containers", namespace=namespace) == series,
        "the new leader to export the same containers at once",
        timeout=30,
    )
    apply(cluster, pod("p3"), namespace=namespace)
    wait_until(lambda: missing(cluster, namespace) == 3, "the new leader to update status")
    wait_until(
        lambda: follower.metric("gomemlimit_policy_status_writes_total") >= 1,
        "the new leader to count its status write",
    )

    # The old leader comes back as a follower; a clean stop of the new leader releases the
    # lease, so the other takes over at its next poll instead of after the lease duration.
    leader.start()
    assert holder(cluster, namespace) == follower.identity
    assert leader.metric("gomemlimit_leader") == 0
    assert follower.stop() == 0
    assert "Released the lease" in follower.log_text()
    wait_until(
        lambda: holder(cluster, namespace) == leader.identity,
        "the restarted replica to take the released lease",
        timeout=30,
        interval=0.1,
    )
    apply(cluster, pod("p4"), namespace=namespace)
    wait_until(lambda: missing(cluster, namespace) == 4, "status to follow the hand-over")
