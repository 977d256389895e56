"""The pod webhook without a cluster: admit(), and PodWebhook.review's AdmissionReview answers
(the JSON patch, warnings, counts, and our own failures)."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
from typing import Any

import jsonpatch
import pytest
from prometheus_client import CollectorRegistry
from unit_helpers import container, env_value, policy

from gomemlimit_operator.core.engine import ANNOTATION_INJECTED, ANNOTATION_POLICY
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.runtime.admission_metrics import AdmissionMetrics
from gomemlimit_operator.runtime.dev import PROBE_ANNOTATION, DevProbe, ProbeAnsweringWebhook
from gomemlimit_operator.runtime.webhook import PodWebhook, admit


def pod(
    *containers: dict[str, Any],
    namespace: str = "team",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"generateName": "app-", "namespace": namespace}
    if labels is not None:
        metadata["labels"] = labels
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": list(containers) or [container()]},
    }


@pytest.fixture
def registry() -> PolicyView:
    registry = PolicyView()
    registry.set_policy(policy("go", containers=["app"]))
    return registry


def test_injects_into_a_copy(registry: PolicyView) -> None:
    original = pod(container("app", env=[env_value("A", "1")]), container("sidecar"))
    request = copy.deepcopy(original)
    admission = admit(request, registry=registry)
    assert request == original  # untouched
    assert admission.result == "mutated"
    assert admission.policy == "ClusterGoMemPolicy/go"
    assert admission.spec is not None
    assert admission.metadata is not None
    assert admission.spec["containers"][0]["env"] == [
        env_value("A", "1"),
        env_value("GOMEMLIMIT", "460MiB"),
    ]
    assert "env" not in admission.spec["containers"][1]
    assert json.loads(admission.metadata["annotations"][ANNOTATION_INJECTED]) == {
        "app": {"GOMEMLIMIT": "460MiB"}
    }
    assert admission.injected == {"app": {"GOMEMLIMIT": "460MiB"}}


@pytest.mark.parametrize(
    ("request_pod", "reason"),
    [
        (pod(namespace="kube-system"), "exempt"),
        (pod(annotations={"gomemlimit.io/skip": "TRUE"}), "skip"),
        (pod(annotations={"kubernetes.io/config.mirror": "x"}), "mirror"),
        ({"metadata": {}, "spec": {"containers": [container()]}}, "no namespace"),
    ],
)
def test_skips(registry: PolicyView, request_pod: dict[str, Any], reason: str) -> None:
    admission = admit(request_pod, registry=registry, exempt=lambda ns: ns == "kube-system")
    assert admission.result == "skipped"
    assert reason in admission.reason
    assert admission.spec is None


def test_no_policy_and_audit_mode_skip() -> None:
    registry = PolicyView()
    assert admit(pod(), registry=registry).result == "skipped"
    registry.set_policy(policy("audit", mode="audit"))
    admission = admit(pod(), registry=registry)
    assert (admission.result, admission.policy) == ("skipped", "ClusterGoMemPolicy/audit")
    assert "audit" in admission.reason


def test_unchanged_when_already_injected(registry: PolicyView) -> None:
    first = admit(pod(), registry=registry)
    assert first.metadata is not None
    assert first.spec is not None
    again = admit({"metadata": first.metadata, "spec": first.spec}, registry=registry)
    assert again.result == "unchanged"


def test_respects_a_user_value_and_warns_when_go_would_crash(registry: PolicyView) -> None:
    admission = admit(
        pod(container("app", env=[env_value("GOMEMLIMIT", "400Mi")])), registry=registry
    )
    assert admission.result == "unchanged"
    assert len(admission.warnings) == 1
    assert "container app" in admission.warnings[0]
    assert "400Mi" in admission.warnings[0]


def test_warns_about_a_governed_container_without_limit(registry: PolicyView) -> None:
    admission = admit(pod(container("app", limit=None)), registry=registry)
    assert admission.result == "unchanged"
    assert any("no memory limit" in w for w in admission.warnings)


# --- the AdmissionReview answer --------------------------------------------------------------


def handle(
    webhook: PodWebhook, request_pod: dict[str, Any], dryrun: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """The patch and warnings that ``review`` answers for a Pod CREATE of ``request_pod``."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "operation": "CREATE",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "object": request_pod,
            "dryRun": dryrun,
        },
    }
    response = asyncio.run(webhook.review(review))["response"]
    assert response["uid"] == "u-1"
    assert response["allowed"] is True
    ops: list[dict[str, Any]] = []
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(response["patch"]))
        assert ops, "an empty patch is sent as none"
    return ops, list(response.get("warnings", []))


def make_webhook(registry: PolicyView, **kwargs: Any) -> tuple[PodWebhook, AdmissionMetrics]:
    metrics = AdmissionMetrics(CollectorRegistry())
    return PodWebhook(
        registry, exempt=lambda ns: ns == "kube-system", metrics=metrics, **kwargs
    ), metrics


def count(metrics: AdmissionMetrics, result: str) -> float:
    return metrics.requests.labels(result=result)._value.get()


def test_handler_returns_only_add_operations(registry: PolicyView) -> None:
    webhook, metrics = make_webhook(registry)
    request_pod = pod(
        container("app", env=[env_value("A", "1")]),
        container("sidecar", env=[env_value("B", "2")]),
        annotations={"team": "x"},
    )
    ops, warnings = handle(webhook, request_pod)
    assert warnings == []
    assert {op["op"] for op in ops} == {"add"}
    paths = sorted(op["path"] for op in ops)
    assert paths == [
        "/metadata/annotations/gomemlimit.io~1injected",
        "/metadata/annotations/gomemlimit.io~1policy",
        "/spec/containers/0/env/-",  # appended: the user's entries keep their places
    ]
    patched = jsonpatch.apply_patch(request_pod, ops)
    assert patched["spec"]["containers"][0]["env"] == [
        env_value("A", "1"),
        env_value("GOMEMLIMIT", "460MiB"),
    ]
    assert patched["spec"]["containers"][1] == request_pod["spec"]["containers"][1]
    assert patched["metadata"]["annotations"]["team"] == "x"
    env_op = next(op for op in ops if op["path"].startswith("/spec"))
    assert env_op["value"] == env_value("GOMEMLIMIT", "460MiB")
    policy_op = next(op for op in ops if op["path"].endswith("policy"))
    assert policy_op["value"] == "ClusterGoMemPolicy/go"
    assert count(metrics, "mutated") == 1
    assert metrics.duration._sum.get() > 0


def test_handler_adds_whole_env_and_annotations_when_absent(registry: PolicyView) -> None:
    webhook, _ = make_webhook(registry)
    ops, _ = handle(webhook, pod(container("app")))
    assert sorted(op["path"] for op in ops) == ["/metadata/annotations", "/spec/containers/0/env"]
    annotations = next(op for op in ops if op["path"] == "/metadata/annotations")["value"]
    assert annotations[ANNOTATION_POLICY] == "ClusterGoMemPolicy/go"


def test_dry_run_gets_the_same_patch(registry: PolicyView) -> None:
    webhook, metrics = make_webhook(registry)
    real, _ = handle(webhook, pod())
    dry, _ = handle(webhook, pod(), dryrun=True)
    assert dry == real
    assert count(metrics, "mutated") == 2


def test_handler_counts_skips_and_unchanged(registry: PolicyView) -> None:
    webhook, metrics = make_webhook(registry)
    ops, _ = handle(webhook, pod(namespace="kube-system"))
    assert ops == []
    ops, _ = handle(webhook, pod(container("other")))
    assert ops == []
    assert count(metrics, "skipped") == 1
    assert count(metrics, "unchanged") == 1


class BrokenRegistry(PolicyView):
    def governing(self, namespace: str, pod_labels: Any) -> Any:
        raise RuntimeError("bug")


def test_our_bug_allows_the_pod_unmutated(caplog: pytest.LogCaptureFixture) -> None:
    webhook, metrics = make_webhook(BrokenRegistry())
    ops, warnings = handle(webhook, pod())
    assert ops == []
    assert warnings == []
    assert count(metrics, "error") == 1
    assert "allowing it unmutated" in caplog.text


def test_the_same_bug_on_every_request_is_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pod that trips a bug of ours, sent again and again, must not flood the log with
    tracebacks: every request is counted, one traceback is logged per interval."""
    webhook, metrics = make_webhook(BrokenRegistry())
    for _ in range(5):
        assert handle(webhook, pod()) == ([], [])
    assert count(metrics, "error") == 5
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "RuntimeError: bug" in caplog.text


def test_an_object_that_is_not_a_pod_is_allowed_and_counted_as_our_error(
    registry: PolicyView,
) -> None:
    webhook, metrics = make_webhook(registry)
    assert handle(webhook, {"metadata": ["not", "a", "map"]}) == ([], [])
    assert count(metrics, "error") == 1


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("field", "result"),
    [("namespace", "error"), ("name", "mutated"), ("generateName", "mutated")],
)
def test_a_field_nested_1000_levels_deep_is_answered_never_a_server_error(
    registry: PolicyView, caplog: pytest.LogCaptureFixture, field: str, result: str
) -> None:
    """Found by tests/e2e/test_fuzz.py: describing such a pod for a log line raised
    RecursionError (in the handler's own error path for a namespace), so review() raised and
    the server answered 500. Now only strings are shown."""
    caplog.set_level(logging.DEBUG)
    webhook, metrics = make_webhook(registry)
    request_pod = pod(container("app"))
    request_pod["metadata"][field] = _nested(1000)
    ops, _ = handle(webhook, request_pod)
    assert bool(ops) == (result == "mutated")
    assert count(metrics, result) == 1


def test_log_lines_stay_short_whatever_the_names(caplog: pytest.LogCaptureFixture) -> None:
    """The webhook sees a pod before the API server validates it, so a container name can be
    megabytes long; the "Injected into" line shortens it (tests/e2e/test_fuzz.py bounds the
    operator log's growth under such pods)."""
    caplog.set_level(logging.INFO)
    registry = PolicyView()
    registry.set_policy(policy("all"))
    webhook, metrics = make_webhook(registry)
    ops, _ = handle(webhook, pod(container("x" * 1_000_000), container("y" * 1_000_000)))
    assert ops
    assert count(metrics, "mutated") == 1
    assert caplog.records
    assert all(len(record.getMessage()) < 1000 for record in caplog.records)


def test_namespace_lookup_failure_is_not_fatal(registry: PolicyView) -> None:
    async def ensure(namespace: str) -> None:
        raise TimeoutError

    webhook, metrics = make_webhook(registry, ensure_namespace=ensure)
    ops, _ = handle(webhook, pod())
    assert ops
    assert count(metrics, "mutated") == 1


def test_namespace_lookup_happens_before_the_decision() -> None:
    registry = PolicyView()
    registry.set_policy(policy("labelled", namespaceSelector={"matchLabels": {"team": "a"}}))

    async def ensure(namespace: str) -> None:
        registry.set_namespace(namespace, {"team": "a"})

    webhook, _ = make_webhook(registry, ensure_namespace=ensure)
    ops, _ = handle(webhook, pod())
    assert ops


def test_dev_probe_is_answered_without_patch_or_count(registry: PolicyView) -> None:
    probe = DevProbe("n1")
    metrics = AdmissionMetrics(CollectorRegistry())
    webhook = ProbeAnsweringWebhook(
        registry, exempt=lambda ns: ns == "kube-system", metrics=metrics, probe=probe
    )
    request_pod = pod(annotations={PROBE_ANNOTATION: "n1"})
    ops, _ = handle(webhook, request_pod, dryrun=True)
    assert ops == []
    assert probe.confirmed
    assert sum(count(metrics, r) for r in ("mutated", "unchanged", "skipped", "error")) == 0
    # Not a dry run: an ordinary pod, mutated as usual.
    ops, _ = handle(webhook, request_pod, dryrun=False)
    assert ops


def test_the_production_webhook_knows_nothing_of_the_dev_probe(registry: PolicyView) -> None:
    webhook, metrics = make_webhook(registry)
    ops, _ = handle(webhook, pod(annotations={PROBE_ANNOTATION: "n1"}), dryrun=True)
    assert ops  # an ordinary dry run: the same patch, counted
    assert count(metrics, "mutated") == 1
