"""The Helm chart and deploy/: generated files in sync, lint, and what the templates render."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit.install.chart_support import (
    CHART,
    CI_VALUES,
    ROOT,
    by_kind,
    helm,
    helm_binary,
    render,
)

from gomemlimit_operator.core.api import WEBHOOK_PATH
from gomemlimit_operator.install import chart, crds, dashboard, manifests, rbac
from gomemlimit_operator.install.webhook_configuration import (
    build_webhook_configuration,
    service_client_config,
)

ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    return helm_binary()


# --- generated files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(chart.generated_files(ROOT)), ids=lambda p: str(p.relative_to(ROOT))
)
def test_chart_file_is_up_to_date(path: Path) -> None:
    expected = chart.generated_files(ROOT)[path]
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run `make generate`"
    assert path.read_text() == expected, f"{path.relative_to(ROOT)} drifted: run `make generate`"


def test_chart_generates_its_crds_readme_rbac_webhook_rules_and_dashboard() -> None:
    names = {p.relative_to(CHART).as_posix() for p in chart.generated_files(ROOT)}
    assert names == {
        "crds/gomemlimit.io_gomempolicies.yaml",
        "crds/gomemlimit.io_clustergomempolicies.yaml",
        "templates/rbac.yaml",
        "templates/mutatingwebhookconfiguration.yaml",
        "files/prometheus-rules.yaml",
        "files/dashboard.json",
        "README.md",
    }


def test_chart_crds_are_the_repositorys_crds() -> None:
    for path, content in crds.generated_files(ROOT).items():
        if path.parent.name == "crds":
            assert (CHART / "crds" / path.name).read_text() == content == path.read_text()


def test_check_mode_notices_drift(tmp_path: Path) -> None:
    assert chart.main(["--root", str(ROOT), "--check"]) == 0
    (tmp_path / "deploy" / "prometheus").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yaml", tmp_path / "deploy" / "prometheus")
    assert chart.main(["--root", str(tmp_path), "--check"]) == 1


def test_prometheus_rules_are_exactly_the_alert_file_groups() -> None:
    ours = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    theirs = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    assert ours == {"groups": theirs["groups"]}


def test_values_table_lists_every_value_of_values_yaml() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def leaves(node: Any, prefix: str = "") -> set[str]:
        if isinstance(node, dict) and node and prefix.rstrip(".") not in _MAPS:
            return set().union(*(leaves(v, f"{prefix}{k}.") for k, v in node.items()))
        return {prefix.rstrip(".")}

    table = (CHART / "README.md").read_text()
    rows = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert leaves(values) <= rows
    assert {path for path, _, _ in chart._leaves(schema, values)} == rows
    assert all(prop.get("description") for _, prop, _ in chart._leaves(schema, values))


_MAPS = {"resources", "defaultPolicy.spec", "certManager.issuerRef", "serviceAccount.annotations"}


# --- the dashboard --------------------------------------------------------------------------


def test_every_dashboard_query_parses_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH: `make tools` builds it (make unit sets PATH)")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{n}", "expr": expr}
                    for n, expr in enumerate(dashboard.queries())
                ],
            }
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(dashboard.queries())} rules found" in result.stdout


def test_dashboard_covers_the_required_panels_on_gomemlimit_series() -> None:
    text = " ".join(dashboard.queries())
    for series in (
        "gomemlimit_containers",
        "gomemlimit_noncompliant_container_info",
        "gomemlimit_admission_requests_total",
        "gomemlimit_admission_duration_seconds_bucket",
        "gomemlimit_leader",
        "gomemlimit_last_evaluation_timestamp_seconds",
    ):
        assert series in text
    # The Go runtime panels read the recording rules that join the apps with cAdvisor.
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    runtime = " ".join(dashboard.queries("go-runtime"))
    assert {record for record in records if record not in runtime} == set()
    assert dashboard.queries("operator") + dashboard.queries("go-runtime") == dashboard.queries()
    with pytest.raises(ValueError, match="unknown source"):
        dashboard.queries("grafana")
    model = json.loads(dashboard.dashboard_json())
    assert [p["title"] for p in model["panels"]] == [p.title for p in dashboard.PANELS]
    assert any(p["type"] == "table" for p in model["panels"])


# --- helm -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "default")
def test_helm_lint_strict(helm_bin: Path, values: Path | None) -> None:
    args = ["-f", str(values)] if values else []
    result = helm(helm_bin, "lint", "--strict", str(CHART), *args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_rejects_bad_values(helm_bin: Path) -> None:
    for bad in (
        "webhook.timeoutSeconds=6",
        "webhook.timeoutSeconds=0",
        "webhook.failurePolicy=Maybe",
        "image.pullPolicy=Sometimes",
        "unknownValue=1",
        "replicas=0",
    ):
        result = helm(helm_bin, "template", "rel", str(CHART), "--set", bad)
        assert result.returncode != 0, bad
    both = ["--set", "certManager.enabled=true", "--set", "existingSecret.name=x"]
    result = helm(helm_bin, "template", "rel", str(CHART), *both)
    assert "exclude each other" in result.stderr


def _expected_webhook(
    name: str,
    namespace: str,
    port: int,
    exempt: list[str],
    only: list[str],
    policy: str,
    timeout: int,
) -> dict[str, Any]:
    return build_webhook_configuration(
        name=name,
        client_config=service_client_config(name, namespace, port, WEBHOOK_PATH),
        exempt_namespaces=exempt,
        only_namespaces=only,
        timeout_seconds=timeout,
        failure_policy=policy,
    )


def _without_chart_metadata(configuration: dict[str, Any]) -> dict[str, Any]:
    configuration = json.loads(json.dumps(configuration))
    configuration["metadata"].pop("labels")
    configuration["metadata"].pop("annotations", None)
    for webhook in configuration["webhooks"]:
        webhook["clientConfig"].pop("caBundle", None)
    return configuration


def test_default_webhook_is_the_builders(helm_bin: Path) -> None:
    docs = render(helm_bin, release="gomemlimit-operator", namespace="gomemlimit-system")
    (configuration,) = by_kind(docs, "MutatingWebhookConfiguration")
    expected = _expected_webhook(
        "gomemlimit-operator",
        "gomemlimit-system",
        443,
        ["gomemlimit-system", "kube-system"],
        [],
        "Ignore",
        2,
    )
    assert _without_chart_metadata(configuration) == expected
    assert "caBundle" not in configuration["webhooks"][0]["clientConfig"]  # the operator's
    assert "annotations" not in configuration["metadata"]


def test_non_default_webhook_is_the_builders(helm_bin: Path) -> None:
    docs = render(helm_bin, "-f", str(ALL_OPTIONS))
    (configuration,) = by_kind(docs, "MutatingWebhookConfiguration")
    expected = _expected_webhook(
        "rel-gomemlimit-operator",
        "ops",
        10443,
        ["ops", "kube-system", "monitoring"],
        ["team-a", "team-b", "kube-system"],
        "Fail",
        5,
    )
    assert _without_chart_metadata(configuration) == expected
    annotations = configuration["metadata"]["annotations"]
    assert annotations == {"cert-manager.io/inject-ca-from": "ops/rel-gomemlimit-operator"}


def test_existing_secret_sets_the_ca_bundle(helm_bin: Path) -> None:
    docs = render(helm_bin, "-f", str(CHART / "ci" / "existing-secret-values.yaml"))
    (configuration,) = by_kind(docs, "MutatingWebhookConfiguration")
    assert configuration["webhooks"][0]["clientConfig"]["caBundle"].startswith("LS0t")
    (deployment,) = by_kind(docs, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--tls-cert-file=/etc/gomemlimit/tls/tls.crt" in args
    assert "--no-leader-election" in args
    assert "--manage-certificates" not in args
    assert by_kind(docs, "Secret") == []
    result = helm(helm_bin, "template", "rel", str(CHART), "--set", "existingSecret.name=x")
    assert result.returncode != 0
    assert "existingSecret.caBundle" in result.stderr


def test_rendered_rbac_is_the_declaration(helm_bin: Path) -> None:
    docs = render(helm_bin, release="gomemlimit-operator", namespace="gomemlimit-system")
    (cluster_role,) = by_kind(docs, "ClusterRole")
    (role,) = by_kind(docs, "Role")
    assert (
        cluster_role["rules"]
        == rbac.cluster_role("x", webhook_configuration="gomemlimit-operator")["rules"]
    )
    assert role["rules"] == rbac.role("x", "y", secret="gomemlimit-operator-certs")["rules"]
    (secret,) = by_kind(docs, "Secret")
    assert secret["metadata"]["name"] == "gomemlimit-operator-certs"
    assert "data" not in secret
    # cert-manager: the operator reads no Secret and patches no webhook configuration.
    docs = render(helm_bin, "-f", str(ALL_OPTIONS))
    (cluster_role,) = by_kind(docs, "ClusterRole")
    (role,) = by_kind(docs, "Role")
    assert (
        cluster_role["rules"]
        == rbac.cluster_role("x", webhook_configuration="", manage_certificates=False)["rules"]
    )
    assert role["rules"] == rbac.role("x", "y", secret="", manage_certificates=False)["rules"]


def _container(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_default_deployment(helm_bin: Path) -> None:
    docs = render(helm_bin, release="gomemlimit-operator", namespace="gomemlimit-system")
    pod, container = _container(docs)
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert by_kind(docs, "PodDisruptionBudget")[0]["spec"]["maxUnavailable"] == 1
    assert "preferredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    assert container["image"] == "gomemlimit-operator:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["args"][:2] == ["operator", "--bind-host=0.0.0.0"]
    for arg in (
        "--namespace=gomemlimit-system",
        "--manage-certificates",
        "--certificate-secret=gomemlimit-operator-certs",
        "--webhook-configuration-name=gomemlimit-operator",
        "--service-name=gomemlimit-operator",
        "--cert-dir=/tmp/certs",
        "--webhook-port=9443",
    ):
        assert arg in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["ports"][0] == {
        "name": "webhook",
        "port": 443,
        "targetPort": "webhook",
        "protocol": "TCP",
    }
    for kind in (
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "ClusterGoMemPolicy",
        "NetworkPolicy",
        "Certificate",
    ):
        assert by_kind(docs, kind) == [], kind


@pytest.mark.parametrize("values", [None, ALL_OPTIONS], ids=["default", "all-options"])
def test_pods_pass_the_restricted_pod_security_standard(
    helm_bin: Path, values: Path | None
) -> None:
    docs = render(helm_bin, *(["-f", str(values)] if values else []))
    pods = [_container(docs)[0]] + [doc["spec"] for doc in by_kind(docs, "Pod")]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"]["runAsUser"] == 65532
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["readOnlyRootFilesystem"] is True
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= {"emptyDir", "secret", "configMap", "projected"}


def test_host_network_service_port_is_the_container_port(helm_bin: Path) -> None:
    docs = render(helm_bin, "-f", str(ALL_OPTIONS))
    pod, container = _container(docs)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 10443
    assert service["spec"]["ports"][0]["targetPort"] == 10443
    # Undeclared: declared ports become host ports the scheduler reserves, and a rolling
    # update could not place the new replica beside the old one on a node.
    assert "ports" not in container
    assert container["readinessProbe"]["httpGet"]["port"] == 18081  # healthPort
    assert container["args"][-1] == "--status-interval=10"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert by_kind(docs, "PodDisruptionBudget") == []  # one replica
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    (config_map,) = by_kind(docs, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["gomemlimit-operator.json"]) == dashboard.dashboard()
    (policy,) = by_kind(docs, "ClusterGoMemPolicy")
    assert policy["spec"] == {"ratio": 0.8, "minHeadroom": "32Mi"}


def test_helm_test_hook_calls_the_webhook_through_the_service(helm_bin: Path) -> None:
    docs = render(helm_bin, "--show-only", "templates/tests/test-webhook.yaml")
    (pod,) = docs
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    assert command[0] == "python3"
    assert command[3:] == ["rel-gomemlimit-operator.ops.svc", "443", WEBHOOK_PATH, "/ca/ca.crt"]
    compile(command[2], "check_webhook.py", "exec")


# --- deploy/ --------------------------------------------------------------------------------


def test_deploy_is_the_chart_with_default_values(helm_bin: Path) -> None:
    files = manifests.generated_files(helm_bin, ROOT)
    assert sorted(p.name for p in files) == [
        "00-namespace.yaml",
        "01-crds.yaml",
        "02-operator.yaml",
    ]
    for path, content in files.items():
        assert path.exists(), f"{path.relative_to(ROOT)} is missing: run `make generate`"
        assert path.read_text() == content, f"{path.relative_to(ROOT)} drifted: run `make generate`"
    assert manifests.main(["--root", str(ROOT), "--helm", str(helm_bin), "--check"]) == 0
    kinds = [
        doc["kind"]
        for doc in yaml.safe_load_all((ROOT / "deploy" / "02-operator.yaml").read_text())
    ]
    assert "Pod" not in kinds  # no test hook
    assert "MutatingWebhookConfiguration" in kinds
    assert "Deployment" in kinds


def test_the_lease_belongs_to_the_release(helm_bin: Path) -> None:
    """Templated, so `helm uninstall` deletes it; named as the runtime and the RBAC name it."""
    from gomemlimit_operator.install.rbac import LEASE_NAME
    from gomemlimit_operator.runtime.leader import LEASE_NAME as RUNTIME_LEASE

    (lease,) = by_kind(render(helm_bin), "Lease")
    assert lease["metadata"]["name"] == LEASE_NAME == RUNTIME_LEASE
    single = render(helm_bin, "--set=leaderElection.enabled=false", "--set=replicas=1")
    assert by_kind(single, "Lease") == []
