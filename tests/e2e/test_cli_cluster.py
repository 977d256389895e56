"""``gomemlimit audit --cluster`` against the local control plane.

Three namespaces with every kind of state, under policies in ``mode: audit`` (so a session
operator's webhook, if one runs, injects nothing and the states stay what the manifests say).
The same manifests audited from files give the same states and exit codes; the live audit
groups a Deployment's, a StatefulSet's and a CronJob's pods into one row each; ``-o wide``
shows every pod; ``kubectl gomemlimit`` passes its arguments through; a ServiceAccount bound
only to deploy/audit-reader/clusterrole.yaml can audit, one without it gets exit 2 and the
permission it lacks. Last, 10,000 pods on kwok nodes, listed in pages: time and peak RSS.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench.bench_kwok import Api, create_all, node
from bench.bench_kwok import pod as bench_pod

from gomemlimit_operator.install.manifests import AUDIT_READER_FILE
from tests.cluster.controlplane import ControlPlane
from tests.e2e.operator_harness import crds, wait_until

__all__ = ["crds"]  # the fixture, imported for pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GOMEMLIMIT = str(BIN / "gomemlimit")
TOKEN = f"t{secrets.token_hex(3)}"  # never a YAML number (865e57)
LABEL = "gomemlimit.io/cli-e2e"
A, B, C = (f"cli-{letter}-{TOKEN}" for letter in "abc")
POLICY = f"cli-e2e-{TOKEN}"


def container(name: str, limit: str | None, value: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "image": "registry.k8s.io/pause:3.10"}
    if limit is not None:
        out["resources"] = {"limits": {"memory": limit}}
    if value is not None:
        out["env"] = [{"name": "GOMEMLIMIT", "value": value}]
    return out


def pod(namespace: str, name: str, *containers: dict[str, Any], **annotations: str) -> Any:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"state": name}}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": list(containers)}}  # fmt: skip


def template(app: str, *containers: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": app}}, "spec": {"containers": list(containers)}}


def namespaces() -> list[dict[str, Any]]:
    """A and B carry the label the cluster policy selects; C has no policy."""
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": name, **({"labels": {LABEL: TOKEN}} if name != C else {})}}
        for name in (A, B, C)
    ]  # fmt: skip


def policies() -> list[dict[str, Any]]:
    """A cluster policy for A and B (by namespace label), and B's own, which beats it there."""
    return [
        {"apiVersion": "gomemlimit.io/v1alpha1", "kind": "ClusterGoMemPolicy",
         "metadata": {"name": POLICY},
         "spec": {"mode": "audit", "namespaceSelector": {"matchLabels": {LABEL: TOKEN}}}},
        {"apiVersion": "gomemlimit.io/v1alpha1", "kind": "GoMemPolicy",
         "metadata": {"name": "half", "namespace": B},
         "spec": {"mode": "audit", "ratio": 0.5}},
    ]  # fmt: skip


def workloads() -> list[dict[str, Any]]:
    apps = {"apiVersion": "apps/v1"}
    return [
        pod(A, "compliant", container("app", "512Mi", "400MiB")),
        pod(A, "missing", container("app", "512Mi")),
        pod(A, "invalid", container("app", "512Mi", "512Mi")),
        pod(A, "exceeds", container("app", "256Mi", "300MiB")),
        pod(A, "nolimit", container("app", None)),
        pod(A, "skipped", container("app", "512Mi"), **{"gomemlimit.io/skip": "true"}),
        {**apps, "kind": "Deployment", "metadata": {"name": "api", "namespace": A},
         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "api"}},
                  "template": template("api", container("api", "256Mi"),
                                       container("proxy", "128Mi", "100MiB"))}},
        {**apps, "kind": "StatefulSet", "metadata": {"name": "db", "namespace": A},
         "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                  "template": template("db", container("db", "1Gi", "900MiB"))}},
        {"apiVersion": "batch/v1", "kind": "CronJob",
         "metadata": {"name": "nightly", "namespace": A},
         "spec": {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": {
             "template": {"spec": {
                 "restartPolicy": "Never",
                 "nodeSelector": {LABEL: "nowhere"},  # Pending: kwok would complete it
                 "containers": [container("report", "256Mi")]}}}}}},
        pod(B, "half", container("app", "1Gi")),
        pod(C, "plain", container("app", "128Mi")),
        pod(C, "bad", container("app", "128Mi", "1G")),
    ]  # fmt: skip


# (namespace, kind, name, container) -> (state, pods) of the live audit
EXPECTED: dict[tuple[str, str, str, str], tuple[str, int]] = {
    (A, "Pod", "compliant", "app"): ("compliant", 1),
    (A, "Pod", "missing", "app"): ("missing", 1),
    (A, "Pod", "invalid", "app"): ("invalid", 1),
    (A, "Pod", "exceeds", "app"): ("exceeds_limit", 1),
    (A, "Pod", "nolimit", "app"): ("no_memory_limit", 1),
    (A, "Pod", "skipped", "app"): ("opted_out", 1),
    (A, "Deployment", "api", "api"): ("missing", 3),
    (A, "Deployment", "api", "proxy"): ("compliant", 3),
    (A, "StatefulSet", "db", "db"): ("compliant", 2),
    (A, "CronJob", "nightly", "report"): ("missing", 1),
    (B, "Pod", "half", "app"): ("missing", 1),
    (C, "Pod", "plain", "app"): ("unmanaged", 1),
    (C, "Pod", "bad", "app"): ("invalid", 1),
}


def run(
    cluster: ControlPlane, *args: str, kubeconfig: Path | None = None, command: str = GOMEMLIMIT
) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env(), "KUBECONFIG": str(kubeconfig or cluster.kubeconfig)}
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [command, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def by_key(rows: list[dict[str, Any]], *scope: str) -> dict[tuple[str, ...], dict[str, Any]]:
    return {
        (r["namespace"], r["kind"], r["name"], r["container"]): r
        for r in rows
        if r["namespace"] in scope
    }


@pytest.fixture(scope="module")
def world(
    cluster: ControlPlane, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The namespaces, policies and workloads, live; returns the manifests' directory."""
    files = tmp_path_factory.mktemp("cli-cluster")
    manifests = files / "manifests.yaml"
    manifests.write_text(yaml.safe_dump_all([*namespaces(), *workloads()], sort_keys=False))
    (files / "policies.yaml").write_text(yaml.safe_dump_all(policies(), sort_keys=False))
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(namespaces()))
    for name in (A, B, C):
        wait_until(
            lambda name=name: cluster.kubectl(
                "get", "serviceaccount", "default", "-n", name, check=False
            ).returncode == 0,
            f"the default ServiceAccount of {name}",
            timeout=30,
        )  # fmt: skip
    cluster.kubectl("apply", "-f", str(files / "policies.yaml"))
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(workloads()))
    cluster.kubectl("create", "job", "nightly-manual", "--from=cronjob/nightly", "-n", A)

    def all_pods_exist() -> bool:
        found = json.loads(cluster.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
        return (
            sum(p["metadata"]["namespace"] in (A, B, C) for p in found) == 15
        )  # 12 in A, 1 in B, 2 in C

    wait_until(all_pods_exist, "every pod of the world", timeout=60)
    try:
        yield files
    finally:
        cluster.kubectl(
            "delete", "clustergomempolicy", POLICY, "--ignore-not-found", "--wait=false"
        )
        cluster.kubectl("delete", "namespace", A, B, C, "--ignore-not-found", "--wait=false")


def test_live_audit_groups_by_owner_with_the_states_of_the_file_audit(
    cluster: ControlPlane, world: Path
) -> None:
    live = run(cluster, "audit", "--cluster", "-A", "-o", "json")
    assert live.returncode == 1, live.stderr
    assert live.stderr == ""
    rows = by_key(json.loads(live.stdout), A, B, C)
    assert {key: (r["state"], r["count"]) for key, r in rows.items()} == EXPECTED
    assert all(r["file"] is None for r in rows.values())
    assert rows[A, "Deployment", "api", "api"]["expected"] == "230MiB"
    assert rows[B, "Pod", "half", "app"]["policy"] == f"GoMemPolicy/{B}/half"
    assert rows[B, "Pod", "half", "app"]["expected"] == "512MiB"
    assert rows[A, "Pod", "missing", "app"]["policy"] == f"ClusterGoMemPolicy/{POLICY}"
    assert rows[C, "Pod", "plain", "app"]["policy"] is None

    # The same manifests and policies, from files: the same rows and the same exit status.
    files = run(cluster, "audit", "-f", str(world / "manifests.yaml"), "--policy",
                str(world / "policies.yaml"), "-o", "json")  # fmt: skip
    assert files.returncode == live.returncode, files.stderr
    offline = by_key(json.loads(files.stdout), A, B, C)
    assert offline.keys() == rows.keys()
    fields = ("state", "expected", "policy", "memoryLimitBytes", "gomemlimit", "reason", "init")
    for key, row in rows.items():
        assert {f: row[f] for f in fields} == {f: offline[key][f] for f in fields}, key
        assert set(offline[key]) | {"count"} == set(row)  # only additive fields


def test_table_wide_namespace_selector_and_exit_codes(cluster: ControlPlane, world: Path) -> None:
    table = run(cluster, "audit", "-n", A)  # -n implies --cluster
    assert table.returncode == 1, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "WORKLOAD", "PODS", "CONTAINER", "LIMIT",
                                "GOMEMLIMIT", "EXPECTED", "STATE", "POLICY"]  # fmt: skip
    api_rows = [line.split() for line in lines if "Deployment/api" in line and line.startswith(A)]
    assert [row[2:4] for row in api_rows] == [["3", "api"], ["3", "proxy"]]
    assert f"{A}/Deployment/api (3 pods) api: missing: GOMEMLIMIT is not set" in table.stdout
    # 6 bare pods + 3 + 2 + 1 = 12 pods of 9 workloads; api has 2 containers
    assert "15 containers in 12 pods of 9 workloads" in table.stdout
    assert B not in table.stdout
    assert C not in table.stdout

    wide = run(cluster, "audit", "-n", A, "-o", "wide")
    assert wide.returncode == 1
    header, *body = wide.stdout.splitlines()
    assert header.split()[:4] == ["NAMESPACE", "WORKLOAD", "POD", "CONTAINER"]
    api_pods = {line.split()[2] for line in body if "Deployment/api" in line and " api " in line}
    assert len(api_pods) == 3
    assert all(name.startswith("api-") for name in api_pods)

    compliant = run(cluster, "audit", "-n", A, "-l", "state=compliant", "-o", "json")
    assert compliant.returncode == 0, compliant.stderr
    assert [(r["name"], r["state"]) for r in json.loads(compliant.stdout)] == [
        ("compliant", "compliant")
    ]
    nothing = run(cluster, "audit", "--cluster", "-n", A, "-l", "state=none")
    assert (nothing.returncode, nothing.stdout) == (0, "No pods found.\n")


def test_kubectl_plugin_passes_its_arguments(
    cluster: ControlPlane, world: Path, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "kubectl-gomemlimit").symlink_to(BIN / "kubectl-gomemlimit")
    env = {**cluster.env(), "PATH": f"{plugins}{os.pathsep}{cluster.env()['PATH']}"}
    context = cluster.kubectl("config", "current-context").stdout.strip()

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(cluster.binaries.kubectl), "gomemlimit", *args]
        return subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=120, check=False
        )

    plugin = kubectl("audit", "-A", "-o", "json")
    direct = run(cluster, "audit", "--cluster", "-A", "-o", "json")
    assert plugin.returncode == direct.returncode == 1, plugin.stderr
    assert by_key(json.loads(plugin.stdout), A, B, C) == by_key(json.loads(direct.stdout), A, B, C)
    scoped = kubectl("audit", "--context", context, "-n", C, "-l", "state=plain")
    assert scoped.returncode == 0, scoped.stderr
    assert "Pod/plain" in scoped.stdout
    assert "Pod/bad" not in scoped.stdout
    usage = kubectl("audit", "-A", "-f", "x.yaml")
    assert usage.returncode == 2
    assert usage.stderr.startswith("usage: kubectl gomemlimit audit")


def test_bad_kubeconfig_context_or_server_exit_2_with_one_clear_line(
    cluster: ControlPlane, world: Path, tmp_path: Path
) -> None:
    cases = {
        "no context named 'nope'": run(cluster, "audit", "-A", "--context", "nope"),
        "kubeconfig": run(cluster, "audit", "-A", kubeconfig=tmp_path / "missing"),
    }
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    unreachable = tmp_path / "unreachable"
    unreachable.write_text(yaml.safe_dump(config))
    cases["cannot reach the API server at https://127.0.0.1:1"] = run(
        cluster, "audit", "-A", kubeconfig=unreachable
    )
    for expected, done in cases.items():
        assert done.returncode == 2, (expected, done.stderr)
        assert done.stdout == ""
        assert done.stderr.startswith("gomemlimit: error: ")
        assert expected in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _token_kubeconfig(cluster: ControlPlane, namespace: str, account: str, path: Path) -> Path:
    token = cluster.kubectl("create", "token", account, "-n", namespace).stdout.strip()
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {
            "server": cluster.server, "certificate-authority": str(cluster.ca_cert_path)}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": account}}],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_audit_reader_clusterrole_is_enough_and_needed(
    cluster: ControlPlane, world: Path, tmp_path: Path
) -> None:
    cluster.kubectl("apply", "-f", str(REPO / AUDIT_READER_FILE))
    binding = f"cli-e2e-reader-{TOKEN}"
    for account in ("reader", "nobody"):
        cluster.kubectl("create", "serviceaccount", account, "-n", C)
    role = "--clusterrole=gomemlimit-audit-reader"
    cluster.kubectl("create", "clusterrolebinding", binding, role, f"--serviceaccount={C}:reader")
    try:
        reader = _token_kubeconfig(cluster, C, "reader", tmp_path / "reader")
        nobody = _token_kubeconfig(cluster, C, "nobody", tmp_path / "nobody")

        def allowed() -> bool:  # RBAC caches settle quickly, but not instantly
            return run(cluster, "audit", "-A", "-o", "json", kubeconfig=reader).returncode == 1

        wait_until(allowed, "the binding to take effect", timeout=30)
        done = run(cluster, "audit", "-A", "-o", "json", kubeconfig=reader)
        assert done.stderr == ""
        rows = by_key(json.loads(done.stdout), A, B, C)
        assert {key: (r["state"], r["count"]) for key, r in rows.items()} == EXPECTED

        denied = run(cluster, "audit", "-A", kubeconfig=nobody)
        assert denied.returncode == 2
        assert denied.stdout == ""
        assert "Traceback" not in denied.stderr
        assert "forbidden" in denied.stderr
        assert f'"system:serviceaccount:{C}:nobody"' in denied.stderr
        assert "gomemlimit-audit-reader" in denied.stderr
        assert str(AUDIT_READER_FILE) in denied.stderr
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found")


# --- 10,000 pods --------------------------------------------------------------------------------

SCALE_PODS = 10_000
PODS_PER_NODE = 110
SCALE_NODE_LABEL = "gomemlimit-cli-scale"


def test_ten_thousand_pods_are_listed_in_pages_in_bounded_memory(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    """10,000 bare pods (the worst case: every pod its own row) on 91 kwok nodes, then
    ``audit --cluster -n NS -o json`` in a subprocess: wall time and peak RSS.

    In a control plane of its own, stopped afterwards: 10,000 pods (and their deletion)
    would slow every later test of the session's cluster and its operators' watchers. With
    no policy there, the implicit default governs every container, as for files."""
    with ControlPlane(tmp_path / "scale", binaries=cluster.binaries) as own:
        _ten_thousand_pods(own, tmp_path)


def _ten_thousand_pods(cluster: ControlPlane, tmp_path: Path) -> None:
    api = Api(cluster)
    namespace = f"cli-scale-{TOKEN}"
    nodes = [f"cli-scale-{TOKEN}-{i}" for i in range(-(-SCALE_PODS // PODS_PER_NODE))]
    version = cluster.binaries.versions["K8S_VERSION"]
    began = time.monotonic()
    made = create_all(api, [("/api/v1/nodes", json.dumps(
        {**node(name, version), "metadata": {**node(name, version)["metadata"],
                                             "labels": {SCALE_NODE_LABEL: TOKEN}}}).encode())
        for name in nodes], 16)  # fmt: skip
    assert made.failures == 0, made.errors
    api.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    wait_until(
        lambda: (
            api.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default")[0] == 200
        ),
        "the default ServiceAccount",
        timeout=30,
    )
    created = create_all(api, [
        (f"/api/v1/namespaces/{namespace}/pods",
         json.dumps(bench_pod(index, nodes[index % len(nodes)])).encode())
        for index in range(SCALE_PODS)
    ], 16)  # fmt: skip
    assert created.failures == 0, created.errors
    setup = time.monotonic() - began

    out = tmp_path / "audit.json"
    env = {**cluster.env(), "KUBECONFIG": str(cluster.kubeconfig)}
    with out.open("w") as stdout:
        start = time.monotonic()
        child = subprocess.Popen(
            [GOMEMLIMIT, "audit", "--cluster", "-n", namespace, "-o", "json"],
            stdout=stdout, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        assert child.stderr is not None
        peak_kib = 0
        while True:
            # The peak of the audit's own memory (VmHWM, since its exec), not ru_maxrss: that
            # counts the forked child before exec, with all of pytest's memory.
            peak_kib = max(peak_kib, _vm_hwm_kib(child.pid))
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.02)
        seconds = time.monotonic() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        err = child.stderr.read().decode()
    rows = json.loads(out.read_text())
    peak_mib = peak_kib / 1024
    states = Counter(row["state"] for row in rows)
    print(
        f"\n10k-pod live audit: {SCALE_PODS:,} pods, {len(nodes)} kwok nodes, "
        f"{os.cpu_count()} CPUs: setup {setup:.1f} s (pods {created.seconds:.1f} s); "
        f"audit --cluster -o json {seconds:.2f} s wall, {usage.ru_utime:.2f} s user, "
        f"peak RSS {peak_mib:.0f} MiB; {len(rows):,} rows: {dict(states)}"
    )
    assert child.returncode == 1, err  # 5% of the pods have GOMEMLIMIT=512Mi
    assert sum(row["count"] for row in rows if row["container"] == "app") == SCALE_PODS
    assert states["invalid"] == SCALE_PODS // 20
    assert peak_mib < 200, f"peak RSS {peak_mib:.0f} MiB"


def _vm_hwm_kib(pid: int) -> int:
    """A running process's peak resident set (KiB); 0 once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
