"""The admission webhook, end to end: real API server, real operator process, kubectl.

Every ClusterGoMemPolicy here selects only the test's own namespace, so tests cannot see
each other's policies or pods.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from gomemlimit_operator.core.engine import ANNOTATION_INJECTED, ANNOTATION_POLICY
from gomemlimit_operator.runtime.certs import generate, write_files
from tests.cluster.controlplane import ControlPlane, KubectlError
from tests.e2e.operator_harness import (
    OperatorProcess,
    apply,
    cluster_policies,
    crds,
    get,
    operator_process,
    operator_service,
    pods,
    wait_ready,
    wait_until,
)

__all__ = ["cluster_policies", "crds", "operator_process", "operator_service"]

IMAGE = "registry.invalid/app:1"  # kwok runs no containers; never pulled


def only(namespace: str) -> dict[str, Any]:
    """A namespaceSelector for exactly this namespace."""
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def container(
    name: str, limit: str | None, env: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name, "image": IMAGE}
    if limit is not None:
        result["resources"] = {"limits": {"memory": limit}}
    if env is not None:
        result["env"] = env
    return result


def env(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value": value}


def deployment(
    name: str,
    containers: list[dict[str, Any]],
    *,
    replicas: int = 2,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    pod_labels = {"app": name, **(labels or {})}
    template: dict[str, Any] = {
        "metadata": {"labels": pod_labels},
        "spec": {"containers": containers},
    }
    if annotations:
        template["metadata"]["annotations"] = annotations
    if init_containers:
        template["spec"]["initContainers"] = init_containers
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": template,
        },
    }


def pod(
    name: str,
    containers: list[dict[str, Any]],
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels or {"app": name}}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": containers},
    }


def wait_pods(
    cluster: ControlPlane, namespace: str, selector: str, count: int
) -> list[dict[str, Any]]:
    return wait_until(
        lambda: found if len(found := pods(cluster, namespace, selector)) == count else None,
        f"{count} pods with {selector} in {namespace}",
    )


def env_of(
    pod_obj: dict[str, Any], container_name: str, init: bool = False
) -> list[dict[str, Any]]:
    key = "initContainers" if init else "containers"
    (found,) = [c for c in pod_obj["spec"][key] if c["name"] == container_name]
    return list(found.get("env") or [])


def gomemlimit_of(pod_obj: dict[str, Any], container_name: str) -> str | None:
    values = [e.get("value") for e in env_of(pod_obj, container_name) if e["name"] == "GOMEMLIMIT"]
    assert len(values) <= 1, f"{container_name} has {len(values)} GOMEMLIMIT entries"
    return values[0] if values else None


def test_deployment_pods_carry_the_expected_values_and_nothing_else_changes(
    cluster: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> None:
    mutated_before = operator_process.metric(
        "gomemlimit_admission_requests_total", result="mutated"
    )
    cluster_policies(
        "go-services",
        {
            "selector": {"matchLabels": {"runtime": "go"}},
            "containers": ["api", "*-go"],
            "ratio": 0.8,
            "minHeadroom": "32Mi",
            **only(namespace),
        },
    )
    containers = [
        container("api", "512Mi", [env("LOG_LEVEL", "info"), env("GOGC", "200")]),
        container("worker-go", "1Gi"),
        container("proxy", "128Mi", [env("MODE", "sidecar")]),
        container("tiny-go", "16Mi"),  # the 32Mi minimum headroom leaves no room: no value
    ]
    init = [container("setup-go", "256Mi", [env("STEP", "1")])]  # init containers not governed
    manifest = deployment(
        "shop",
        containers,
        replicas=3,
        labels={"runtime": "go"},
        annotations={"team": "payments"},
        init_containers=init,
    )
    template = copy.deepcopy(manifest["spec"]["template"])
    apply(cluster, manifest, namespace=namespace)

    expected = {"api": "409MiB", "worker-go": "819MiB"}  # floor(0.8 x limit) in MiB
    for pod_obj in wait_pods(cluster, namespace, "app=shop", 3):
        for spec_container in template["spec"]["containers"]:
            name = spec_container["name"]
            got = env_of(pod_obj, name)
            want = list(spec_container.get("env") or [])
            if name in expected:
                want.append(env("GOMEMLIMIT", expected[name]))
            assert got == want, f"{pod_obj['metadata']['name']}/{name}"
            (live,) = [c for c in pod_obj["spec"]["containers"] if c["name"] == name]
            assert live["image"] == spec_container["image"]
            assert live["resources"]["limits"] == spec_container["resources"]["limits"]
        assert [c["name"] for c in pod_obj["spec"]["containers"]] == [
            "api",
            "worker-go",
            "proxy",
            "tiny-go",
        ]
        assert env_of(pod_obj, "setup-go", init=True) == [env("STEP", "1")]
        annotations = pod_obj["metadata"]["annotations"]
        assert set(annotations) == {"team", ANNOTATION_INJECTED, ANNOTATION_POLICY}
        assert annotations["team"] == "payments"
        assert annotations[ANNOTATION_POLICY] == "ClusterGoMemPolicy/go-services"
        assert json.loads(annotations[ANNOTATION_INJECTED]) == {
            name: {"GOMEMLIMIT": value} for name, value in expected.items()
        }
        labels = dict(pod_obj["metadata"]["labels"])
        labels.pop("pod-template-hash")
        assert labels == template["metadata"]["labels"]
    mutated_after = operator_process.metric("gomemlimit_admission_requests_total", result="mutated")
    assert mutated_after - mutated_before >= 3


def test_dry_run_shows_the_injected_value_and_stores_nothing(
    cluster: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> None:
    cluster_policies("dry", only(namespace))
    manifest = yaml.safe_dump(pod("preview", [container("app", "1Gi")]))
    result = cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-n", namespace, "-f", "-", input=manifest
    )
    preview = json.loads(result.stdout)
    assert gomemlimit_of(preview, "app") == "921MiB"  # floor(0.9 x 1024)
    assert preview["metadata"]["annotations"][ANNOTATION_POLICY] == "ClusterGoMemPolicy/dry"
    missing = cluster.kubectl("get", "pod", "preview", "-n", namespace, check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr
    assert pods(cluster, namespace) == []


def test_opt_out_annotation_leaves_the_pod_alone(
    cluster: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> None:
    cluster_policies("all", only(namespace))
    apply(
        cluster,
        pod("skipped", [container("app", "512Mi")], annotations={"gomemlimit.io/skip": "true"}),
        pod("governed", [container("app", "512Mi")]),
        namespace=namespace,
    )
    skipped = get(cluster, "pod", "skipped", "-n", namespace)
    assert env_of(skipped, "app") == []
    assert set(skipped["metadata"]["annotations"]) == {
        "gomemlimit.io/skip",
        "kubectl.kubernetes.io/last-applied-configuration",
    }
    assert gomemlimit_of(get(cluster, "pod", "governed", "-n", namespace), "app") == "460MiB"


def test_existing_value_is_respected_or_overridden_per_policy(
    cluster: ControlPlane, namespace: str, operator_process: OperatorProcess
) -> None:
    policies = [
        {
            "apiVersion": "gomemlimit.io/v1alpha1",
            "kind": "GoMemPolicy",
            "metadata": {"name": mode},
            "spec": {"selector": {"matchLabels": {"mode": mode}}, "onExisting": mode},
        }
        for mode in ("respect", "override")
    ]
    apply(cluster, *policies, namespace=namespace)
    for mode in ("respect", "override"):
        wait_ready(cluster, "GoMemPolicy", mode, namespace)
    user_env = [env("GOMEMLIMIT", "300MiB"), env("OTHER", "x")]
    apply(
        cluster,
        pod("kept", [container("app", "512Mi", user_env)], labels={"mode": "respect"}),
        pod("replaced", [container("app", "512Mi", user_env)], labels={"mode": "override"}),
        namespace=namespace,
    )
    kept = get(cluster, "pod", "kept", "-n", namespace)
    assert env_of(kept, "app") == user_env
    assert ANNOTATION_INJECTED not in kept["metadata"].get("annotations", {})

    replaced = get(cluster, "pod", "replaced", "-n", namespace)
    assert env_of(replaced, "app") == [env("GOMEMLIMIT", "460MiB"), env("OTHER", "x")]  # in place
    assert json.loads(replaced["metadata"]["annotations"][ANNOTATION_INJECTED]) == {
        "app": {"GOMEMLIMIT": "460MiB"}
    }


def test_audit_mode_never_injects(
    cluster: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> None:
    cluster_policies("audit-only", {"mode": "audit", **only(namespace)})
    apply(cluster, pod("audited", [container("app", "512Mi")]), namespace=namespace)
    audited = get(cluster, "pod", "audited", "-n", namespace)
    assert env_of(audited, "app") == []
    assert ANNOTATION_INJECTED not in audited["metadata"].get("annotations", {})


# ---------------------------------------------------------------------------------------------
# Reinvocation: a second webhook, called after ours, raises the memory limit.
# ---------------------------------------------------------------------------------------------

RAISED_LIMIT = "1Gi"
LATER_WEBHOOK = "zz-gomemlimit-e2e-raise-limit"  # sorts after gomemlimit-operator-dev


class RaiseLimitWebhook:
    """A tiny HTTPS admission webhook (like VPA's) that sets containers[0]'s limit to 1Gi."""

    def __init__(self, certdir: Path) -> None:
        bundle = generate(["127.0.0.1"])
        files = write_files(bundle, certdir)
        self.ca_pem = bundle.ca_pem
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = review["request"]
                outer.requests.append(request)
                response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
                first = request["object"]["spec"]["containers"][0]
                limits = (first.get("resources") or {}).get("limits") or {}
                if limits.get("memory") != RAISED_LIMIT:
                    patch = [
                        {
                            "op": "add",
                            "path": "/spec/containers/0/resources/limits/memory",
                            "value": RAISED_LIMIT,
                        }
                    ]
                    response["patchType"] = "JSONPatch"
                    response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
                body = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": response,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert_file, files.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def configuration(self, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": LATER_WEBHOOK},
            "webhooks": [
                {
                    "name": "raise-limit.e2e.gomemlimit.io",
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{self.port}/raise",
                        "caBundle": base64.b64encode(self.ca_pem).decode(),
                    },
                    "failurePolicy": "Fail",
                    "reinvocationPolicy": "IfNeeded",
                    "sideEffects": "None",
                    "timeoutSeconds": 5,
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ],
                    "namespaceSelector": only(namespace)["namespaceSelector"],
                    "objectSelector": {"matchLabels": {"raise-limit": "true"}},
                }
            ],
        }


@pytest.fixture
def raise_limit_webhook(cluster: ControlPlane, namespace: str) -> Iterator[RaiseLimitWebhook]:
    with tempfile.TemporaryDirectory() as certdir:
        hook = RaiseLimitWebhook(Path(certdir))
        hook.thread.start()
        try:
            apply(cluster, hook.configuration(namespace))
            # Wait until the API server calls it (its configuration informer may lag).
            probe = yaml.safe_dump(
                pod("probe", [container("app", "64Mi")], labels={"raise-limit": "true"})
            )

            def called() -> bool:
                cluster.kubectl(
                    "create", "--dry-run=server", "-n", namespace, "-f", "-", input=probe
                )
                return bool(hook.requests)

            wait_until(called, "the API server to call the test webhook", timeout=30, interval=0.3)
            hook.requests.clear()
            yield hook
        finally:
            cluster.kubectl(
                "delete", "mutatingwebhookconfiguration", LATER_WEBHOOK, "--ignore-not-found"
            )
            hook.server.shutdown()
            hook.server.server_close()


def test_reinvocation_corrects_our_value_after_a_later_webhook_raises_the_limit(
    cluster: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
    raise_limit_webhook: RaiseLimitWebhook,
) -> None:
    cluster_policies("reinvoked", only(namespace))
    user_env = [env("GOMEMLIMIT", "100MiB")]
    apply(
        cluster,
        pod("vpa", [container("app", "512Mi")], labels={"raise-limit": "true"}),
        # A user's own value stays untouched even when the limit changes under it.
        pod("users", [container("app", "512Mi", user_env)], labels={"raise-limit": "true"}),
        namespace=namespace,
    )
    final = get(cluster, "pod", "vpa", "-n", namespace)
    (app,) = final["spec"]["containers"]
    assert app["resources"]["limits"]["memory"] == RAISED_LIMIT
    assert env_of(final, "app") == [env("GOMEMLIMIT", "921MiB")]  # 90% of 1Gi, not of 512Mi
    assert json.loads(final["metadata"]["annotations"][ANNOTATION_INJECTED]) == {
        "app": {"GOMEMLIMIT": "921MiB"}
    }
    # The later webhook saw our first value: so we ran before it and were called again after.
    seen = [
        (r["object"]["spec"]["containers"][0].get("env") or [])
        for r in raise_limit_webhook.requests
        if r["object"]["metadata"].get("name") == "vpa"
    ]
    assert [env("GOMEMLIMIT", "460MiB")] in seen

    users = get(cluster, "pod", "users", "-n", namespace)
    assert users["spec"]["containers"][0]["resources"]["limits"]["memory"] == RAISED_LIMIT
    assert env_of(users, "app") == user_env


# ---------------------------------------------------------------------------------------------
# The operator down: failurePolicy Ignore lets pods through, unmutated.
# ---------------------------------------------------------------------------------------------


def test_pods_are_created_unmutated_while_the_operator_is_down(
    cluster: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> None:
    cluster_policies("while-down", only(namespace))
    apply(cluster, pod("before", [container("app", "512Mi")]), namespace=namespace)
    assert gomemlimit_of(get(cluster, "pod", "before", "-n", namespace), "app") == "460MiB"

    operator_process.kill()  # a crash: the webhook configuration stays behind
    configuration = get(cluster, "mutatingwebhookconfiguration", operator_process.webhook_name)
    (hook,) = configuration["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["clientConfig"]["url"].endswith(
        f":{operator_process.webhook_port}/gomemlimit-pod-mutate"
    )

    apply(
        cluster, deployment("during", [container("app", "512Mi")], replicas=2), namespace=namespace
    )
    for pod_obj in wait_pods(cluster, namespace, "app=during", 2):
        assert env_of(pod_obj, "app") == []
        assert ANNOTATION_INJECTED not in (pod_obj["metadata"].get("annotations") or {})

    operator_process.start()  # back: new pods are mutated again
    apply(cluster, pod("after", [container("app", "512Mi")]), namespace=namespace)
    assert gomemlimit_of(get(cluster, "pod", "after", "-n", namespace), "app") == "460MiB"


def test_clean_shutdown_removes_the_dev_configuration(
    cluster: ControlPlane, operator_process: OperatorProcess
) -> None:
    get(cluster, "mutatingwebhookconfiguration", operator_process.webhook_name)
    assert operator_process.stop() == 0
    with pytest.raises(KubectlError, match="NotFound"):
        cluster.kubectl("get", "mutatingwebhookconfiguration", operator_process.webhook_name)
    log = operator_process.log_tail(20)
    assert "Deleted MutatingWebhookConfiguration" in log
