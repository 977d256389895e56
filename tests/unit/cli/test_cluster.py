"""The live audit's pure parts: grouping by owner, progress, usage; the reader ClusterRole.

The API calls themselves run against a real API server in tests/e2e/test_cli_cluster.py.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from gomemlimit_operator.cli import cluster
from gomemlimit_operator.cli import main as cli
from gomemlimit_operator.core.api import DEFAULT_POLICY
from gomemlimit_operator.core.engine import State
from gomemlimit_operator.install import manifests, rbac

ROOT = Path(__file__).resolve().parents[3]


def live_pod(name: str, value: str | None = None, owner: tuple[str, str] | None = None) -> Any:
    env = [] if value is None else [{"name": "GOMEMLIMIT", "value": value}]
    metadata: dict[str, Any] = {"name": name, "namespace": "shop", "labels": {"app": name}}
    if owner is not None:
        metadata["ownerReferences"] = [
            {"kind": "Other", "name": "not-the-controller"},
            {"kind": owner[0], "name": owner[1], "controller": True},
        ]
    container = {"name": "app", "resources": {"limits": {"memory": "512Mi"}}, "env": env}
    return {"metadata": metadata, "spec": {"containers": [container]}}


def test_pods_group_by_their_top_owner_and_state() -> None:
    audit = cluster.LiveAudit([DEFAULT_POLICY], {})
    for i in range(3):
        audit.add(live_pod(f"api-7d9-{i}", owner=("ReplicaSet", "api-7d9")))
    audit.add(live_pod("api-5c1-0", "460MiB", owner=("ReplicaSet", "api-5c1")))  # new rollout
    audit.add(live_pod("report-1-x", owner=("Job", "report-1")))
    audit.add(live_pod("db-0", "460MiB", owner=("StatefulSet", "db")))
    audit.add(live_pod("lonely", "512Mi"))
    wanted = audit.controllers_to_resolve()
    assert wanted == {
        "ReplicaSet": {("shop", "api-7d9"), ("shop", "api-5c1")},
        "Job": {("shop", "report-1")},
    }
    owners = {
        ("shop", "ReplicaSet", "api-7d9"): ("Deployment", "api"),
        ("shop", "ReplicaSet", "api-5c1"): ("Deployment", "api"),
        ("shop", "Job", "report-1"): ("CronJob", "report"),
    }
    result = audit.rows(owners, "ctx")
    got = [(r.workload.kind, r.workload.name, r.report.state, r.count) for r in result.rows]
    assert got == [
        ("CronJob", "report", State.MISSING, 1),
        ("Deployment", "api", State.MISSING, 3),
        ("Deployment", "api", State.COMPLIANT, 1),
        ("Pod", "lonely", State.INVALID, 1),
        ("StatefulSet", "db", State.COMPLIANT, 1),
    ]
    assert (result.pods, result.workloads, result.context) == (7, 4, "ctx")


def test_wide_keeps_every_pod_and_an_unresolved_owner_stays_itself() -> None:
    audit = cluster.LiveAudit([DEFAULT_POLICY], {}, wide=True)
    audit.add(live_pod("api-7d9-b", owner=("ReplicaSet", "api-7d9")))
    audit.add(live_pod("api-7d9-a", owner=("ReplicaSet", "api-7d9")))
    rows = audit.rows({}).rows
    assert [(r.workload.kind, r.pod, r.count) for r in rows] == [
        ("ReplicaSet", "api-7d9-a", 1),
        ("ReplicaSet", "api-7d9-b", 1),
    ]


def test_a_pod_the_engine_cannot_read_is_skipped_with_a_warning() -> None:
    warnings: list[str] = []
    audit = cluster.LiveAudit([DEFAULT_POLICY], {}, warn=warnings.append)
    bad = live_pod("odd")
    bad["spec"]["containers"][0]["resources"]["limits"]["memory"] = "12xyz"
    audit.add(bad)
    assert audit.pods == 0
    assert warnings
    assert warnings[0].startswith("warning: Pod/shop/odd: not evaluated:")


def test_namespace_labels_select_cluster_policies() -> None:
    from gomemlimit_operator.core.api import parse_policy

    policy = parse_policy(
        {
            "apiVersion": "gomemlimit.io/v1alpha1",
            "kind": "ClusterGoMemPolicy",
            "metadata": {"name": "prod"},
            "spec": {"namespaceSelector": {"matchLabels": {"env": "prod"}}},
        }
    )
    for labels, state in (({"env": "prod"}, State.MISSING), ({}, State.UNMANAGED)):
        audit = cluster.LiveAudit([policy], {"shop": labels})
        audit.add(live_pod("api"))
        (row,) = audit.rows({}).rows
        assert row.report.state is state


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_only_after_a_second() -> None:
    now = [0.0]
    tty = Tty()
    progress = cluster.Progress(tty, clock=lambda: now[0])
    progress.update(500)
    assert tty.getvalue() == ""
    now[0] = 1.5
    progress.update(12_500)
    assert tty.getvalue() == "\rlisted 12,500 pods..."
    progress.done()
    assert tty.getvalue().endswith("\r\033[K")
    pipe = io.StringIO()
    quiet = cluster.Progress(pipe, clock=lambda: now[0], delay=0)
    quiet.update(1)
    quiet.done()
    assert pipe.getvalue() == ""


def test_controller_of_prefers_the_controller_reference() -> None:
    assert cluster.controller_of(live_pod("x", owner=("DaemonSet", "agent"))["metadata"]) == (
        "DaemonSet",
        "agent",
    )
    assert cluster.controller_of({"ownerReferences": [{"kind": "Node", "name": "n1"}]}) == (
        "Node",
        "n1",
    )
    assert cluster.controller_of({}) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["audit", "--cluster", "-f", "x.yaml"], "not both"),
        (["audit", "-A", "-f", "x.yaml"], "not both"),
        (["audit", "-n", "a", "-A"], "not allowed with argument"),
        (["audit", "-o", "wide"], "one of -f PATH or --cluster is required"),
    ],
)
def test_usage_errors_of_the_live_audit(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: gomemlimit audit")
    assert message in err


def test_a_missing_kubeconfig_is_exit_2_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nothing"))
    assert cli.main(["audit", "-A"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"gomemlimit: error: kubeconfig {tmp_path / 'nothing'}: ")
    assert "Traceback" not in err


def test_the_reader_clusterrole_is_generated_read_only_and_named_in_errors() -> None:
    files = manifests.audit_reader_files(ROOT)
    (path,) = files
    assert path == ROOT / manifests.AUDIT_READER_FILE
    assert path.read_text() == files[path], "drifted: run `make generate`"
    role = yaml.safe_load(path.read_text())
    assert role["metadata"]["name"] == rbac.AUDIT_READER_NAME == cluster.AUDIT_READER
    assert str(manifests.AUDIT_READER_FILE) == cluster.ROLE_FILE
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert verbs <= {"get", "list"}
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert granted == {
        ("", "pods"),
        ("", "namespaces"),
        ("gomemlimit.io", "gomempolicies"),
        ("gomemlimit.io", "clustergomempolicies"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
    }
    assert set(cluster.OWNER_KINDS.values()) <= granted
    # In a subdirectory: `kubectl apply -f deploy/` (not recursive) installs exactly the chart.
    assert path.parent != ROOT / "deploy"
