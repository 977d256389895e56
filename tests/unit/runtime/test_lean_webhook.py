"""The lean admission path answers exactly what kopf's whole-body diff answered.

The reference is kopf's own path: ``Patch.as_json_patch`` deep-copies the request's pod,
applies the handler's patch function and diffs the two whole objects. The lean path takes the
engine's operations (``engine.plan_mutation``). For every generated pod, both patches applied
to the request's pod must give the same object. Kept until kopf's path is deleted.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from typing import Any

import jsonpatch
import kopf
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from unit_helpers import policy

from gomemlimit_operator.core.engine import ANNOTATION_INJECTED
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.runtime.admission_metrics import AdmissionMetrics
from gomemlimit_operator.runtime.webhook import PodWebhook, admit

names = st.sampled_from(["app", "proxy", "app-go", "init", "x"])
limits = st.none() | st.sampled_from(["512Mi", "1Gi", "64Mi", "1Mi", "12E", "1e999999", "100M"])
env_entry = st.one_of(
    st.builds(
        lambda v: {"name": "GOMEMLIMIT", "value": v}, st.sampled_from(["460MiB", "512Mi", "1"])
    ),
    st.builds(lambda v: {"name": "GOGC", "value": v}, st.sampled_from(["50", "off"])),
    st.just(
        {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}
    ),
    st.builds(lambda n: {"name": n, "value": "v"}, st.sampled_from(["A", "B"])),
)
envs = st.none() | st.just("null") | st.lists(env_entry, max_size=4)


@st.composite
def containers(draw: st.DrawFn) -> dict[str, Any]:
    result: dict[str, Any] = {"name": draw(names), "image": "example/app:1"}
    limit = draw(limits)
    if limit is not None:
        result["resources"] = {"limits": {"memory": limit}}
    env = draw(envs)
    if env == "null":
        result["env"] = None
    elif env is not None:
        result["env"] = env
    return result


annotations = st.one_of(
    st.none(),
    st.just("null"),
    st.dictionaries(st.sampled_from(["a/b", "t~x", "gomemlimit.io/policy", "k"]), st.just("v")),
    st.just({ANNOTATION_INJECTED: '{"app":{"GOMEMLIMIT":"460MiB"}}'}),
)


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "namespace": "team"}
    found = draw(annotations)
    if found == "null":
        metadata["annotations"] = None
    elif found is not None:
        metadata["annotations"] = found
    spec: dict[str, Any] = {"containers": draw(st.lists(containers(), min_size=1, max_size=4))}
    if draw(st.booleans()):
        spec["initContainers"] = draw(st.lists(containers(), max_size=2))
    if draw(st.booleans()):
        spec["resources"] = {"limits": {"memory": "2Gi"}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


policies = st.builds(
    lambda override, gogc, init, high: policy(
        onExisting="override" if override else "respect",
        includeInitContainers=init,
        **({"gogc": gogc} if gogc else {}),
        **({"maxHeadroom": high} if high else {}),
    ),
    st.booleans(),
    st.none() | st.sampled_from(["off", "75"]),
    st.booleans(),
    st.none() | st.sampled_from(["1Gi", "100Mi"]),
)


def kopf_patch(pod: dict[str, Any], admission_metadata: Any, admission_spec: Any) -> Any:
    """kopf's own path: a Patch whose function puts the mutated parts in, diffed whole."""
    patch = kopf.Patch(body=kopf.Body(pod))

    def put(body: Any) -> None:
        body["metadata"] = admission_metadata
        body["spec"] = admission_spec

    patch.fns.append(put)
    return patch.as_json_patch()


@given(pod=pods(), pol=policies)
def test_the_lean_patch_gives_the_same_pod_as_kopfs_whole_body_diff(
    pod: dict[str, Any], pol: Any
) -> None:
    registry = PolicyView()
    registry.set_policy(pol)
    pod = json.loads(json.dumps(pod))  # as from the wire: no object appears twice
    original = copy.deepcopy(pod)
    admission = admit(pod, registry=registry)
    assert pod == original  # the request's pod is never modified
    if admission.result != "mutated":
        assert admission.operations == []
        return
    reference = jsonpatch.apply_patch(original, kopf_patch(pod, admission.metadata, admission.spec))
    lean = jsonpatch.apply_patch(original, admission.operations)
    assert lean == reference
    assert pod == original
    assert all(op["op"] in ("add", "replace") for op in admission.operations)


def webhook() -> PodWebhook:
    registry = PolicyView()
    registry.set_policy(policy())
    return PodWebhook(
        registry,
        exempt=lambda ns: ns == "kube-system",
        metrics=AdmissionMetrics(CollectorRegistry()),
    )


def review(operation: str = "CREATE", dry_run: bool = False, **request: Any) -> dict[str, Any]:
    pod = {
        "metadata": {"name": "p", "namespace": "team"},
        "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "512Mi"}}}]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "operation": operation,
            "dryRun": dry_run,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "object": pod,
            **request,
        },
    }


def answer(hook: PodWebhook, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = asyncio.run(hook.review(body))
    return result


def test_a_create_review_gets_the_engines_operations() -> None:
    out = answer(webhook(), review())
    assert out["apiVersion"] == "admission.k8s.io/v1"
    assert out["kind"] == "AdmissionReview"
    response = out["response"]
    assert response["uid"] == "u-1"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert ops[0] == {
        "op": "add",
        "path": "/spec/containers/0/env",
        "value": [{"name": "GOMEMLIMIT", "value": "460MiB"}],
    }
    assert ops[1]["path"] == "/metadata/annotations"


def test_a_dry_run_gets_the_same_patch() -> None:
    hook = webhook()
    assert answer(hook, review(dry_run=True))["response"] == answer(hook, review())["response"]


@pytest.mark.parametrize("operation", ["UPDATE", "CONNECT", "DELETE"])
def test_other_operations_are_allowed_unchanged(operation: str) -> None:
    assert answer(webhook(), review(operation))["response"] == {"uid": "u-1", "allowed": True}


def test_other_resources_are_allowed_unchanged() -> None:
    body = review(resource={"group": "apps", "version": "v1", "resource": "deployments"})
    assert answer(webhook(), body)["response"] == {"uid": "u-1", "allowed": True}


@pytest.mark.parametrize("body", [{}, {"request": []}, {"request": {"uid": 5}}])
def test_a_body_that_is_not_a_review_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="not an AdmissionReview request"):
        answer(webhook(), body)


def test_our_own_failure_allows_the_pod_unmutated_and_is_counted() -> None:
    hook = webhook()

    def broken(namespace: str, labels: Any) -> Any:
        raise RuntimeError("bug")

    hook.registry.governing = broken  # type: ignore[method-assign]
    assert answer(hook, review())["response"] == {"uid": "u-1", "allowed": True}
    assert hook.metrics.requests.labels(result="error")._value.get() == 1
