"""The install, for real: the operator's image, run by the real node's kubelet from the Helm
chart, under the chart's ServiceAccount and RBAC, called by the API server through its Service.

The local cluster has no kube-proxy and no pod network, so (as the chart's ``hostNetwork``
value is for) the operator runs in the node's network namespace and binds one address of the
loopback service CIDR, which is also its Service's ClusterIP: the API server dials that
ClusterIP and reaches the operator directly. ``hostNetwork`` is the one thing the
``restricted`` Pod Security Standard refuses here (checked below); the default install, without
it, passes ``restricted`` (tests/e2e/test_chart.py).

In order: install, the webhook through the Service, a Go workload that gets its value and
runs, least privilege, alerts and dashboard queries in a real Prometheus, an upgrade under
load, and an uninstall that leaves nothing. Then the same round trip with ``deploy/``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gomemlimit_operator.install.dashboard import queries
from tests.cluster.controlplane import ControlPlane, KubectlError
from tests.cluster.images import BuiltImage
from tests.cluster.proof import container_env, pod_log_lines, terminated, workload_pod
from tests.cluster.realnode import RealNode
from tests.e2e.install_harness import (
    Release,
    create_pod,
    gomemlimit,
    governed_namespace,
    install_release,
    only_this_webhook,
    operator_log_lines,
    print_operator_logs,
)
from tests.e2e.operator_harness import get, wait_until
from tests.e2e.prometheus_harness import api, run_prometheus

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RELEASE = "gml"
NAMESPACE = "gomemlimit-e2e"
CLUSTER_IP = "127.96.201.17"  # in the loopback service CIDR: the operator binds it too
FULLNAME = f"{RELEASE}-gomemlimit-operator"
__all__ = ["only_this_webhook"]  # a fixture this module uses


@pytest.fixture(scope="module")
def release(
    cluster: ControlPlane, real_node: RealNode, only_this_webhook: None
) -> Iterator[Release]:
    with install_release(
        cluster, real_node, name=RELEASE, namespace=NAMESPACE, cluster_ip=CLUSTER_IP
    ) as installed:
        yield installed


def test_helm_install_runs_the_operator_from_its_image_on_the_real_node(
    release: Release,
) -> None:
    started = time.monotonic()
    out = release.install()
    print(f"helm install --wait: {time.monotonic() - started:.1f}s")
    assert "STATUS: deployed" in out.stdout
    [pod] = release.operator_pods()
    assert pod["spec"]["nodeName"] == release.node.name
    assert pod["spec"]["containers"][0]["image"] == release.image.ref
    assert pod["spec"]["serviceAccountName"] == FULLNAME
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True
    assert status["restartCount"] == 0
    service = get(release.cluster, "service", FULLNAME, "-n", NAMESPACE)
    assert service["spec"]["clusterIP"] == CLUSTER_IP
    # The managed certificate: the Secret is filled and the caBundle patched by the operator.
    secret = get(release.cluster, "secret", f"{FULLNAME}-certs", "-n", NAMESPACE)
    assert {"ca.crt", "tls.crt", "tls.key"} <= set(secret["data"])
    webhook = get(release.cluster, "mutatingwebhookconfiguration", FULLNAME)
    assert webhook["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert webhook["webhooks"][0]["clientConfig"]["service"]["name"] == FULLNAME


def test_restricted_refuses_only_host_network(release: Release) -> None:
    """The same pod, dry-run into a namespace enforcing `restricted`: what is refused is
    hostNetwork and what it implies, nothing else (the securityContext passes)."""
    [pod] = release.operator_pods()
    name = "restricted-check"
    release.cluster.kubectl("create", "namespace", name)
    try:
        release.cluster.kubectl(
            "label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted"
        )
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "operator", "namespace": name},
            "spec": {**pod["spec"], "nodeName": None, "serviceAccountName": "default"},
        }
        with pytest.raises(KubectlError) as refused:
            release.cluster.kubectl(
                "create", "--dry-run=server", "-f", "-", input=json.dumps(manifest)
            )
        message = refused.value.stderr
        print(message)
        marker = 'violates PodSecurity "restricted:latest": '
        assert marker in message
        violations = message.split(marker, 1)[1].strip()
        # Both follow from hostNetwork: the pod's own network namespace is the node's, and the
        # probes must name the node address the operator binds (bindHost).
        assert violations == (
            "host namespaces (hostNetwork=true), probe or lifecycle host "
            f'(container "operator" uses probe or lifecycle host "{CLUSTER_IP}")'
        )
    finally:
        release.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_the_api_server_calls_the_webhook_through_the_service_and_a_go_pod_runs(
    release: Release,
) -> None:
    cluster = release.cluster
    namespace = governed_namespace(cluster, "install-go")
    try:
        assert gomemlimit(create_pod(cluster, namespace, "probe")) == "460MiB"
        image = _goworkload(release)
        pod = workload_pod(
            "governed",
            image,
            limit="256Mi",
            args=["-live-mib=100", "-churn-mib-per-sec=100", "-duration=3s"],
        )
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

        def finished() -> dict[str, Any] | None:
            obj = get(cluster, "pod", "governed", "-n", namespace)
            return obj if terminated(obj) else None

        done = wait_until(finished, "the Go workload to finish", timeout=120)
        assert {"name": "GOMEMLIMIT", "value": "230MiB"} in container_env(done)
        assert terminated(done)["exitCode"] == 0  # type: ignore[index]
        reports = pod_log_lines(release.node, namespace, done)
        assert reports
        assert reports[-1]["memory_limit_bytes"] == 230 << 20  # what the Go runtime read
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _goworkload(release: Release) -> BuiltImage:
    from tests.cluster.goworkload import build_goworkload_image

    image = build_goworkload_image(Path(release.cluster.state_dir) / "goworkload")
    release.node.import_image(image.path)
    return image


def test_the_operator_has_exactly_the_access_it_needs(release: Release) -> None:
    """It runs under the chart's RBAC with nothing missing (no 403, no ERROR line since it
    started: kopf lists CRDs, for one) and nothing more than it needs."""
    logged = operator_log_lines(release)
    assert logged
    assert [line for line in logged if "[ERROR" in line or "orbidden" in line] == []
    sa = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"

    def can(*args: str) -> bool:
        out = release.cluster.kubectl("auth", "can-i", "--as", sa, *args, check=False)
        return out.stdout.strip() == "yes"

    assert can("watch", "pods", "--all-namespaces")
    assert can("get", "namespaces")
    assert can("patch", "gomempolicies.gomemlimit.io", "--subresource=status", "-n", "default")
    assert can("get", f"secret/{FULLNAME}-certs", "-n", NAMESPACE)
    for verb, what in [
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "pods"),
        ("patch", "pods"),
        ("update", "pods"),
        ("delete", "pods"),
        ("create", "mutatingwebhookconfigurations"),
        ("delete", f"mutatingwebhookconfiguration/{FULLNAME}"),
    ]:
        assert not can(verb, what, "-n", NAMESPACE), (verb, what)
    assert not can("get", "secrets", "-n", "kube-system")
    assert not can("get", "secret/other", "-n", NAMESPACE)


@contextlib.contextmanager
def prometheus(release: Release, tmp: Path) -> Iterator[str]:
    """A real Prometheus scraping the operator every second, with deploy/prometheus/alerts.yaml
    whose ``for:`` durations are set to 0 (the expressions are exactly the shipped ones)."""
    binary = next((Path(release.cluster.binaries.helm).parents[1]).glob("prometheus-*/prometheus"))
    scrape = {
        "job_name": "gomemlimit-operator",
        "honor_labels": True,
        "static_configs": [{"targets": [f"{CLUSTER_IP}:{release.ports['metrics']}"]}],
    }
    with run_prometheus(binary, tmp, [scrape]) as url:
        yield url


def test_alerts_fire_and_every_dashboard_query_returns_data(
    release: Release, tmp_path: Path
) -> None:
    cluster = release.cluster
    namespace = governed_namespace(cluster, "install-alerts")
    try:
        with prometheus(release, tmp_path) as url:
            bad = [{"name": "GOMEMLIMIT", "value": "512Mi"}]
            downward = [
                {
                    "name": "GOMEMLIMIT",
                    "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}},
                }
            ]
            for name, env in (("invalid", bad), ("downward", downward)):
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "registry.invalid/app:1",
                                "env": env,
                                "resources": {"limits": {"memory": "512Mi"}},
                            }
                        ]
                    },
                }
                cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

            def firing() -> set[str] | None:
                alerts = api(url, "alerts")["alerts"]
                names = {
                    a["labels"]["alertname"]
                    for a in alerts
                    if a["state"] == "firing" and a["labels"].get("namespace") == namespace
                }
                wanted = {"GoMemLimitInvalid", "GoMemLimitExceedsLimit"}
                return names if wanted <= names else None

            fired = wait_until(firing, "both alerts to fire", timeout=120)
            print(f"firing for {namespace}: {sorted(fired)}")
            # Rates need two scrapes of a counter inside their window: a few seconds.
            # The go-runtime panels need Go pods and cAdvisor: test_runtime_alerts.py runs them.
            for expr in queries("operator"):
                wait_until(
                    lambda expr=expr: api(url, "query", query=expr)["result"] or None,
                    f"data for the dashboard query {expr}",
                    timeout=30,
                )
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_helm_upgrade_admits_every_pod_with_its_value(release: Release) -> None:
    cluster = release.cluster
    namespace = governed_namespace(cluster, "install-upgrade")
    failures: list[str] = []
    created: list[dict[str, Any]] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                created.append(create_pod(cluster, namespace, f"p{n}"))
            except KubectlError as exc:
                failures.append(str(exc.stderr))
            time.sleep(0.1)

    try:
        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        [before] = release.operator_pods()
        try:
            release.install(
                "--set=logLevel=debug", "--set=webhook.timeoutSeconds=3", command="upgrade"
            )
        except KubectlError:
            print(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "yaml").stdout[-6000:])
            print_operator_logs(release)
            raise
        wait_until(
            lambda: (
                [p["metadata"]["uid"] for p in release.operator_pods()]
                != [before["metadata"]["uid"]]
                and len(release.operator_pods()) == 1
            ),
            "the old operator pod to be replaced",
            timeout=120,
        )
        time.sleep(2)
        stop.set()
        thread.join(timeout=30)
        unmutated = [p["metadata"]["name"] for p in created if gomemlimit(p) != "460MiB"]
        print(f"upgrade under load: {len(created)} pods created, {len(failures)} failed, "
              f"{len(unmutated)} without a value")  # fmt: skip
        if unmutated:  # what each operator pod said, for the failure's report
            stamps = {p["metadata"]["name"]: p["metadata"]["creationTimestamp"] for p in created}
            print("unmutated:", [(name, stamps[name]) for name in unmutated])
            for path in sorted(release.node.pod_logs_dir.glob(f"{NAMESPACE}_*/**/*.log")):
                text = path.read_text()
                print(
                    path,
                    "\n".join(
                        line
                        for line in text.splitlines()
                        if "kopf.objects" not in line and "Injected into" not in line
                    )[:8000],
                )
                print([line for line in text.splitlines() if any(p in line for p in unmutated)])
        assert len(created) > 20
        assert failures == []
        assert unmutated == []
        webhook = get(cluster, "mutatingwebhookconfiguration", FULLNAME)
        assert webhook["webhooks"][0]["timeoutSeconds"] == 3
    finally:
        stop.set()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _leftovers(cluster: ControlPlane, namespace: str, instance: str) -> list[str]:
    """Objects of one release (label ``app.kubernetes.io/instance``) that still exist, and
    the Lease the operator takes. Other tests' objects (the session's --dev operator keeps a
    webhook configuration of its own) do not count."""
    selector = f"app.kubernetes.io/instance={instance}"
    kinds = "mutatingwebhookconfigurations,clusterroles,clusterrolebindings"
    found = cluster.kubectl("get", kinds, "-l", selector, "-o", "name").stdout.split()
    if cluster.kubectl("get", "namespace", namespace, check=False).returncode == 0:
        names = cluster.kubectl(
            "get", "all,secrets,configmaps,roles,rolebindings,serviceaccounts,leases",
            "-n", namespace, "-l", selector, "-o", "name",
        ).stdout.split()  # fmt: skip
        found += names
        lease = cluster.kubectl("get", "lease", "gomemlimit-operator", "-n", namespace, check=False)
        if lease.returncode == 0:
            found.append("lease/gomemlimit-operator")
    return found


def test_helm_uninstall_leaves_nothing_and_pods_are_still_created(release: Release) -> None:
    cluster = release.cluster
    release.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=120s")
    wait_until(lambda: not _leftovers(cluster, NAMESPACE, RELEASE), "no leftovers", timeout=60)
    namespace = governed_namespace(cluster, "install-after")
    try:
        assert gomemlimit(create_pod(cluster, namespace, "after")) is None
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_kubectl_apply_and_delete_of_deploy_leave_nothing(
    cluster: ControlPlane, only_this_webhook: None
) -> None:
    """`kubectl apply -f deploy/` installs the default release (its pods land on kwok nodes,
    which run nothing: the webhook fails open), and `kubectl delete -f deploy/` removes it all."""
    namespace = "gomemlimit-system"
    cluster.kubectl("apply", "-f", str(DEPLOY))
    try:
        wait_until(
            lambda: cluster.kubectl(
                "get", "deployment", "gomemlimit-operator", "-n", namespace, check=False
            ).returncode == 0,
            "the Deployment",
            timeout=30,
        )  # fmt: skip
        labels = get(cluster, "namespace", namespace)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert get(cluster, "mutatingwebhookconfiguration", "gomemlimit-operator")
        scratch = governed_namespace(cluster, "deploy-check")
        try:  # the operator cannot run on a kwok node: pods are admitted (Ignore) unmutated
            assert gomemlimit(create_pod(cluster, scratch, "unmutated")) is None
        finally:
            cluster.kubectl("delete", "namespace", scratch, "--wait=false", check=False)
    finally:
        cluster.kubectl("delete", "-f", str(DEPLOY), "--ignore-not-found", "--wait=true",
                        timeout=180)  # fmt: skip
    wait_until(
        lambda: not _leftovers(cluster, namespace, "gomemlimit-operator"),
        "no leftovers of deploy/",
        timeout=90,
    )
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout
    assert "gomemlimit.io" not in crds  # deploy/ includes the CRDs, and deletes them
    # Put them back for the rest of the session (other modules apply them once).
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds")
    )


def test_every_release_object_names_the_chart(release: Release) -> None:
    """Kept last on purpose: nothing of the release is left for it to find."""
    assert _leftovers(release.cluster, NAMESPACE, RELEASE) == []
