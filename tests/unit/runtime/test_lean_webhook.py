"""The webhook's answer patches a pod into exactly what the engine makes of it.

The reference is the engine itself: ``engine.mutate_pod`` on a deep copy of the request's pod,
under the policy that governs it. The webhook answers an AdmissionReview
(``PodWebhook.review``) with the engine's own operations (``engine.plan_mutation``), computed
from shallow copies. For every generated pod and policy, that patch applied with jsonpatch to
the request's pod must give the engine's pod exactly, and no patch at all when the engine
changes nothing. (kopf's whole-body diff, which this test compared against until issue 13,
is gone: kopf serves no admission.)
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from unit_helpers import policy

from gomemlimit_operator.core.engine import ANNOTATION_INJECTED, SpecError, mutate_pod
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.runtime.admission_metrics import AdmissionMetrics
from gomemlimit_operator.runtime.webhook import PodWebhook

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


def engine_pod(pod: dict[str, Any], registry: PolicyView) -> dict[str, Any]:
    """What the engine makes of the pod: mutate_pod on a deep copy, under its policy."""
    metadata = pod.get("metadata") or {}
    governing = registry.governing(metadata["namespace"], metadata.get("labels") or {})
    expected = copy.deepcopy(pod)
    try:
        mutate_pod(expected["metadata"], expected["spec"], governing)
    except SpecError:  # a quantity it cannot read: it changes nothing (the webhook warns)
        return copy.deepcopy(pod)
    return expected


def as_review(pod: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "operation": "CREATE",
            "dryRun": dry_run,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "object": pod,
        },
    }


@given(pod=pods(), pol=policies, dry_run=st.booleans())
def test_the_answers_patch_gives_exactly_the_engines_mutation(
    pod: dict[str, Any], pol: Any, dry_run: bool
) -> None:
    registry = PolicyView()
    registry.set_policy(pol)
    pod = json.loads(json.dumps(pod))  # as from the wire: no object appears twice
    original = copy.deepcopy(pod)
    expected = engine_pod(pod, registry)
    hook = PodWebhook(
        registry, exempt=lambda ns: False, metrics=AdmissionMetrics(CollectorRegistry())
    )
    response = asyncio.run(hook.review(as_review(pod, dry_run)))["response"]
    assert pod == original  # the request's pod is never modified
    assert (response["uid"], response["allowed"]) == ("u-1", True)
    if expected == original:
        assert "patch" not in response
        return
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert jsonpatch.apply_patch(original, ops) == expected
    assert all(op["op"] in ("add", "replace") for op in ops)
    # Idempotent: the patched pod, sent again (a reinvocation), needs nothing more.
    again = asyncio.run(hook.review(as_review(expected, dry_run)))["response"]
    assert "patch" not in again


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


def ignored(hook: PodWebhook) -> float:
    return hook.metrics.requests.labels(result="ignored")._value.get()


@pytest.mark.parametrize("operation", ["UPDATE", "CONNECT", "DELETE"])
def test_other_operations_are_allowed_unchanged_and_counted(operation: str) -> None:
    hook = webhook()
    assert answer(hook, review(operation))["response"] == {"uid": "u-1", "allowed": True}
    assert ignored(hook) == 1
    assert hook.metrics.duration._sum.get() == 0  # nothing was decided


@pytest.mark.parametrize(
    "request_fields",
    [
        {"resource": {"group": "apps", "version": "v1", "resource": "deployments"}},
        {"resource": {"group": "example.com", "version": "v1", "resource": "pods"}},
        {"subResource": "eviction"},  # a CREATE of pods/eviction carries an Eviction
        {"subResource": "binding"},
        {"object": None},
    ],
)
def test_other_resources_are_allowed_unchanged_and_counted(
    request_fields: dict[str, Any],
) -> None:
    hook = webhook()
    assert answer(hook, review(**request_fields))["response"] == {"uid": "u-1", "allowed": True}
    assert ignored(hook) == 1


def test_a_pod_create_is_not_counted_as_ignored() -> None:
    hook = webhook()
    answer(hook, review())
    assert ignored(hook) == 0
    assert hook.metrics.requests.labels(result="mutated")._value.get() == 1


def test_the_answer_is_an_admission_review_whatever_the_request_says() -> None:
    """A kind or apiVersion that is not a string is not echoed: the answer always encodes."""
    body = {**review(), "apiVersion": {"deep": [[[]]]}, "kind": "Other"}
    out = answer(webhook(), body)
    assert (out["apiVersion"], out["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")


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
