"""The engine: the value contract, container states, precedence and mutation."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from unit_helpers import VALUE_CONTRACT_CASES, container, env_value, policy

from gomemlimit_operator.core.api import DEFAULT_POLICY, Policy
from gomemlimit_operator.core.engine import (
    ANNOTATION_INJECTED,
    ANNOTATION_POLICY,
    ANNOTATION_SKIP,
    FAILING_STATES,
    NONCOMPLIANT_STATES,
    ContainerReport,
    SpecError,
    State,
    evaluate_pod,
    expected_gomemlimit,
    governing_policy,
    mutate_pod,
)
from gomemlimit_operator.core.quantity import MIB, parse_bytes

MI = MIB
GI = 1 << 30


def expect(limit: str | int, **spec: Any) -> str | None:
    limit_bytes = limit if isinstance(limit, int) else parse_bytes(limit)
    return expected_gomemlimit(limit_bytes, policy(**spec).spec)


def evaluate(
    containers: list[dict[str, Any]],
    pol: Policy | None = DEFAULT_POLICY,
    annotations: dict[str, str] | None = None,
    init: list[dict[str, Any]] | None = None,
    pod_limit: str | None = None,
) -> list[ContainerReport]:
    spec: dict[str, Any] = {"containers": containers}
    if init is not None:
        spec["initContainers"] = init
    if pod_limit is not None:
        spec["resources"] = {"limits": {"memory": pod_limit}}
    return evaluate_pod({"annotations": annotations or {}}, spec, pol)


def state_of(cont: dict[str, Any], pol: Policy | None = DEFAULT_POLICY, **kw: Any) -> State:
    return evaluate([cont], pol, **kw)[0].state


# --- the value contract ----------------------------------------------------------------------


def test_the_issue_example_512mi_at_0_9_is_460mib() -> None:
    assert expect("512Mi") == "460MiB"
    assert expect("512Mi", ratio=0.9) == "460MiB"
    assert expected_gomemlimit(512 * MI, DEFAULT_POLICY.spec) == "460MiB"


@pytest.mark.parametrize(("limit", "spec", "expected"), VALUE_CONTRACT_CASES)
def test_value_contract(limit: str, spec: dict[str, Any], expected: str | None) -> None:
    assert expect(limit, **spec) == expected


def test_min_headroom_raises_the_headroom() -> None:
    # 10% of 256Mi is 25.6Mi, below the 64Mi floor: the value is 256 - 64.
    assert expect("256Mi", minHeadroom="64Mi") == "192MiB"
    # Above the floor, the ratio decides.
    assert expect("4Gi", minHeadroom="64Mi") == "3686MiB"


def test_max_headroom_lowers_the_headroom() -> None:
    # 10% of 32Gi is 3.2Gi, above the 1Gi ceiling: the value is 32Gi - 1Gi.
    assert expect("32Gi", maxHeadroom="1Gi") == "31744MiB"
    assert expect("1Gi", maxHeadroom="1Gi") == "921MiB"


def test_equal_bounds_fix_the_headroom() -> None:
    assert expect("1Gi", minHeadroom="100Mi", maxHeadroom="100Mi") == "924MiB"
    assert expect("10Gi", minHeadroom="100Mi", maxHeadroom="100Mi") == "10140MiB"


def test_headroom_above_the_limit_gives_nothing() -> None:
    assert expect("64Mi", minHeadroom="64Mi") is None
    assert expect("32Mi", minHeadroom="64Mi") is None


def test_headroom_bounds_in_decimal_units_and_fractions() -> None:
    # minHeadroom 100M = 100,000,000 bytes; 512Mi - 100M = 436,870,912 bytes = 416.6MiB.
    assert expect("512Mi", minHeadroom="100M") == "416MiB"
    # A fractional-byte bound rounds up to a whole byte, like every quantity.
    assert expect("2Mi", ratio=0.5, maxHeadroom="0.5") == "1MiB"


def test_ratio_is_the_decimal_written_not_a_float() -> None:
    # 0.7 as a binary float is 0.6999999999999999556, which floors 90Mi * 0.7 to 62.99..MiB.
    assert 90 * MI * 0.7 < 63 * MI
    assert expect("90Mi", ratio=0.7) == "63MiB"


def test_value_matches_go_grammar_for_many_limits() -> None:
    for mib in range(1, 3000, 7):
        value = expect(mib * MI)
        assert value is None or (value.endswith("MiB") and value[:-3].isdigit())


# --- states ----------------------------------------------------------------------------------


def test_state_sets() -> None:
    assert {
        State.MISSING,
        State.INVALID,
        State.EXCEEDS_LIMIT,
        State.NO_MEMORY_LIMIT,
        State.UNSATISFIABLE,
    } == set(FAILING_STATES)
    assert FAILING_STATES | {State.STALE} == NONCOMPLIANT_STATES


def test_missing() -> None:
    [report] = evaluate([container()])
    assert report.state is State.MISSING
    assert report.expected == "460MiB"
    assert report.memory_limit_bytes == 512 * MI
    assert report.gomemlimit is None
    assert report.policy == "ClusterGoMemPolicy/default"
    assert "460MiB" in report.reason


@pytest.mark.parametrize("value", ["", "off"])
def test_no_limit_spellings_are_missing(value: str) -> None:
    assert state_of(container(env=[env_value("GOMEMLIMIT", value)])) is State.MISSING


def test_compliant_own_value() -> None:
    [report] = evaluate([container(env=[env_value("GOMEMLIMIT", "400MiB")])])
    assert report.state is State.COMPLIANT
    assert report.gomemlimit == "400MiB"
    assert report.source == "value"
    assert not report.injected


@pytest.mark.parametrize("value", ["512Mi", "1G", "1GB", "1.5GiB", "1 GiB", "1gib", "+1GiB"])
def test_invalid_with_and_without_policy(value: str) -> None:
    cont = container(env=[env_value("GOMEMLIMIT", value)])
    assert state_of(cont) is State.INVALID
    assert state_of(cont, None) is State.INVALID


@pytest.mark.parametrize("value", ["512MiB", "600MiB", "536870912", "1GiB"])
def test_exceeds_limit_with_and_without_policy(value: str) -> None:
    cont = container(env=[env_value("GOMEMLIMIT", value)])
    assert state_of(cont) is State.EXCEEDS_LIMIT
    assert state_of(cont, None) is State.EXCEEDS_LIMIT


def test_just_below_the_limit_is_compliant() -> None:
    cont = container(env=[env_value("GOMEMLIMIT", "536870911")])
    assert state_of(cont) is State.COMPLIANT


def test_the_last_env_entry_wins() -> None:
    cont = container(env=[env_value("GOMEMLIMIT", "400MiB"), env_value("GOMEMLIMIT", "512Mi")])
    assert state_of(cont) is State.INVALID
    cont = container(env=[env_value("GOMEMLIMIT", "512Mi"), env_value("GOMEMLIMIT", "400MiB")])
    assert state_of(cont) is State.COMPLIANT


def field_ref(resource: str, divisor: str | None = None, **extra: str) -> dict[str, Any]:
    ref: dict[str, Any] = {"resource": resource, **extra}
    if divisor is not None:
        ref["divisor"] = divisor
    return {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": ref}}


def test_resource_field_ref_limits_memory_is_100_percent() -> None:
    [report] = evaluate([container(env=[field_ref("limits.memory")])])
    assert report.state is State.EXCEEDS_LIMIT
    assert report.gomemlimit == str(512 * MI)
    assert report.source == "resourceFieldRef"
    # Without a policy it is just as unsafe.
    assert state_of(container(env=[field_ref("limits.memory")]), None) is State.EXCEEDS_LIMIT


def test_resource_field_ref_requests_memory() -> None:
    cont = container(request="256Mi", env=[field_ref("requests.memory")])
    [report] = evaluate([cont])
    assert report.gomemlimit == str(256 * MI)
    assert report.state is State.COMPLIANT  # valid and below the limit; a user's own choice
    # Requests default to limits: then it is 100% again.
    assert state_of(container(env=[field_ref("requests.memory")])) is State.EXCEEDS_LIMIT


def test_resource_field_ref_divisor_rounds_up() -> None:
    [report] = evaluate([container(limit="1000Mi", env=[field_ref("limits.memory", "1Gi")])])
    assert report.gomemlimit == "1"  # ceil(1000Mi / 1Gi): Go reads it as 1 byte
    [report] = evaluate([container(env=[field_ref("limits.memory", "1Mi")])])
    assert report.gomemlimit == "512"


def test_resource_field_ref_other_container() -> None:
    ref = field_ref("limits.memory", containerName="big")
    conts = [container("app", "256Mi", env=[ref]), container("big", "1Gi")]
    report = evaluate(conts)[0]
    assert report.gomemlimit == str(GI)
    assert report.state is State.EXCEEDS_LIMIT


def test_resource_field_ref_without_any_limit_is_unknowable() -> None:
    cont = container(limit=None, env=[field_ref("limits.memory")])
    [report] = evaluate([cont])
    assert report.gomemlimit is None  # the kubelet would use node allocatable
    assert report.state is State.NO_MEMORY_LIMIT


def test_resource_field_ref_uses_pod_level_limit() -> None:
    cont = container(limit=None, env=[field_ref("limits.memory")])
    [report] = evaluate([cont], pod_limit="1Gi")
    assert report.gomemlimit == str(GI)
    assert report.state is State.EXCEEDS_LIMIT


@pytest.mark.parametrize(
    "source",
    [
        {"configMapKeyRef": {"name": "cfg", "key": "GOMEMLIMIT"}},
        {"secretKeyRef": {"name": "s", "key": "k"}},
        {"fieldRef": {"fieldPath": "metadata.annotations['x']"}},
        {"resourceFieldRef": {"resource": "limits.cpu"}},
    ],
)
def test_unverifiable_sources(source: dict[str, Any]) -> None:
    cont = container(env=[{"name": "GOMEMLIMIT", "valueFrom": source}])
    [report] = evaluate([cont])
    assert report.state is State.UNVERIFIABLE
    assert report.source == next(iter(source))
    assert report.gomemlimit is None
    assert state_of(cont, None) is State.UNMANAGED


def test_no_memory_limit() -> None:
    [report] = evaluate([container(limit=None)])
    assert report.state is State.NO_MEMORY_LIMIT
    assert report.expected is None
    assert report.memory_limit_bytes is None
    assert state_of(container(limit=None), None) is State.UNMANAGED


def test_pod_level_limit_is_used_when_the_container_has_none() -> None:
    reports = evaluate([container("a", limit=None), container("b", "256Mi")], pod_limit="1Gi")
    assert [(r.memory_limit_bytes, r.expected) for r in reports] == [
        (GI, "921MiB"),
        (256 * MI, "230MiB"),
    ]


def test_unmanaged_without_a_governing_policy() -> None:
    [report] = evaluate([container(env=[env_value("GOMEMLIMIT", "400MiB")])], None)
    assert report.state is State.UNMANAGED
    assert report.expected is None
    assert report.policy is None


def test_opted_out() -> None:
    annotations = {ANNOTATION_SKIP: "true"}
    assert state_of(container(), annotations=annotations) is State.OPTED_OUT
    assert state_of(container(), annotations={ANNOTATION_SKIP: "True"}) is State.OPTED_OUT
    assert state_of(container(), annotations={ANNOTATION_SKIP: "false"}) is State.MISSING
    # An opt-out does not hide a value that crashes Go.
    bad = container(env=[env_value("GOMEMLIMIT", "512Mi")])
    assert state_of(bad, annotations=annotations) is State.INVALID


def test_stale_injected_value_after_a_limit_change() -> None:
    # Injected for 512Mi, then the limit was raised to 1Gi (e.g. an in-place resize).
    annotations = {ANNOTATION_INJECTED: json.dumps({"app": {"GOMEMLIMIT": "460MiB"}})}
    cont = container(limit="1Gi", env=[env_value("GOMEMLIMIT", "460MiB")])
    [report] = evaluate([cont], annotations=annotations)
    assert report.state is State.STALE
    assert report.injected
    assert report.expected == "921MiB"
    assert "rollout restart" in report.reason


def test_stale_after_a_policy_change() -> None:
    annotations = {ANNOTATION_INJECTED: json.dumps({"app": {"GOMEMLIMIT": "460MiB"}})}
    cont = container(env=[env_value("GOMEMLIMIT", "460MiB")])
    assert state_of(cont, policy(ratio=0.8), annotations=annotations) is State.STALE
    assert state_of(cont, policy(ratio=0.9), annotations=annotations) is State.COMPLIANT


def test_own_value_differing_from_expected() -> None:
    cont = container(env=[env_value("GOMEMLIMIT", "300MiB")])
    assert state_of(cont, policy(onExisting="respect")) is State.COMPLIANT
    assert state_of(cont, policy(onExisting="override")) is State.STALE


def test_injected_value_that_now_exceeds_the_limit() -> None:
    # Injected for 1Gi, then the limit was lowered to 512Mi: exceeding beats stale.
    annotations = {ANNOTATION_INJECTED: json.dumps({"app": {"GOMEMLIMIT": "921MiB"}})}
    cont = container(env=[env_value("GOMEMLIMIT", "921MiB")])
    assert state_of(cont, annotations=annotations) is State.EXCEEDS_LIMIT


def test_damaged_injection_record_counts_as_none() -> None:
    cont = container(limit="1Gi", env=[env_value("GOMEMLIMIT", "460MiB")])
    for record in ["{not json", "[1, 2]", '{"app": "460MiB"}']:
        [report] = evaluate([cont], annotations={ANNOTATION_INJECTED: record})
        assert not report.injected
        assert report.state is State.COMPLIANT


def test_init_containers_are_reported_first_and_governed_only_when_asked() -> None:
    init = [container("migrate", "256Mi")]
    reports = evaluate([container("app")], init=init)
    assert [(r.container, r.init, r.state) for r in reports] == [
        ("migrate", True, State.UNMANAGED),
        ("app", False, State.MISSING),
    ]
    reports = evaluate([container("app")], policy(includeInitContainers=True), init=init)
    assert [(r.container, r.state, r.expected) for r in reports] == [
        ("migrate", State.MISSING, "230MiB"),
        ("app", State.MISSING, "460MiB"),
    ]


def test_init_containers_still_need_matching_names() -> None:
    pol = policy(includeInitContainers=True, containers=["app"])
    reports = evaluate([container("app")], pol, init=[container("migrate")])
    assert [r.state for r in reports] == [State.UNMANAGED, State.MISSING]


def test_container_globs() -> None:
    pol = policy(containers=["api", "*-go"])
    conts = [container("api"), container("worker-go"), container("envoy"), container("apix")]
    assert [r.state for r in evaluate(conts, pol)] == [
        State.MISSING,
        State.MISSING,
        State.UNMANAGED,
        State.UNMANAGED,
    ]


def test_audit_mode_still_reports() -> None:
    assert state_of(container(), policy(mode="audit")) is State.MISSING


def test_invalid_limit_names_the_field() -> None:
    with pytest.raises(SpecError) as info:
        evaluate([container("a"), container("b", limit="12xyz")])
    assert info.value.field == "spec.containers[1].resources.limits.memory"
    assert "'12xyz' is not a valid quantity" in str(info.value)


def test_invalid_pod_limit_names_the_field_with_prefix() -> None:
    spec = {"resources": {"limits": {"memory": "lots"}}, "containers": [container(limit=None)]}
    with pytest.raises(SpecError) as info:
        evaluate_pod({}, spec, DEFAULT_POLICY, prefix="spec.template.spec")
    assert info.value.field == "spec.template.spec.resources.limits.memory"


# --- precedence ------------------------------------------------------------------------------


def govern(
    policies: list[Policy],
    namespace: str = "team",
    labels: dict[str, str] | None = None,
    ns_labels: dict[str, str] | None = None,
) -> str | None:
    found = governing_policy(namespace, labels or {}, ns_labels or {}, policies)
    return None if found is None else found.ref


def test_namespaced_policy_beats_every_cluster_policy() -> None:
    policies = [
        policy("zz-cluster", priority=1000),
        policy("low", kind="GoMemPolicy", namespace="team", priority=-5),
    ]
    assert govern(policies) == "GoMemPolicy/team/low"


def test_namespaced_policy_only_governs_its_own_namespace() -> None:
    policies = [policy("cluster"), policy("other", kind="GoMemPolicy", namespace="other")]
    assert govern(policies) == "ClusterGoMemPolicy/cluster"
    assert govern(policies, namespace="other") == "GoMemPolicy/other/other"


def test_namespaced_policy_that_does_not_select_the_pod_falls_back_to_cluster() -> None:
    policies = [
        policy("cluster"),
        policy("ns", kind="GoMemPolicy", namespace="team", selector={"matchLabels": {"a": "b"}}),
    ]
    assert govern(policies) == "ClusterGoMemPolicy/cluster"
    assert govern(policies, labels={"a": "b"}) == "GoMemPolicy/team/ns"


def test_higher_priority_wins_within_a_scope() -> None:
    policies = [policy("a", priority=1), policy("b", priority=5), policy("c", priority=-1)]
    assert govern(policies) == "ClusterGoMemPolicy/b"
    ns = [
        policy("a", kind="GoMemPolicy", namespace="team"),
        policy("b", kind="GoMemPolicy", namespace="team", priority=2),
    ]
    assert govern(ns) == "GoMemPolicy/team/b"


def test_priority_tie_goes_to_the_lexically_smallest_name() -> None:
    policies = [policy("beta", priority=3), policy("alpha", priority=3), policy("Zed", priority=3)]
    assert govern(policies) == "ClusterGoMemPolicy/Zed"  # "Z" < "a" in code points
    assert govern(list(reversed(policies))) == "ClusterGoMemPolicy/Zed"
    assert govern(policies[:2]) == "ClusterGoMemPolicy/alpha"


def test_selectors_and_namespace_selectors() -> None:
    policies = [
        policy(
            "prod-go",
            namespaceSelector={"matchLabels": {"env": "prod"}},
            selector={"matchExpressions": [{"key": "runtime", "operator": "In", "values": ["go"]}]},
        ),
    ]
    assert govern(policies, labels={"runtime": "go"}, ns_labels={"env": "prod"}) is not None
    assert govern(policies, labels={"runtime": "go"}, ns_labels={"env": "dev"}) is None
    assert govern(policies, labels={"runtime": "java"}, ns_labels={"env": "prod"}) is None


def test_no_policy_governs() -> None:
    assert govern([]) is None


def test_only_the_governing_policy_decides_which_containers() -> None:
    # "wide" would cover the sidecar, but "narrow" wins on priority: the sidecar is ungoverned.
    policies = [policy("wide", priority=0), policy("narrow", priority=1, containers=["app"])]
    pol = governing_policy("default", {}, {}, policies)
    assert pol is not None
    assert pol.name == "narrow"
    reports = evaluate([container("app"), container("sidecar")], pol)
    assert [(r.container, r.state) for r in reports] == [
        ("app", State.MISSING),
        ("sidecar", State.UNMANAGED),
    ]


# --- mutation --------------------------------------------------------------------------------


def pod(*containers: dict[str, Any], **metadata: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return dict(metadata), {"containers": list(containers)}


def env_of(spec: dict[str, Any], index: int = 0) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = spec["containers"][index].get("env", [])
    return env


def test_mutate_injects_and_records() -> None:
    metadata, spec = pod(container("app"), container("sidecar", "128Mi"))
    result = mutate_pod(metadata, spec, policy("go", containers=["app"]))
    assert result.changed
    assert result.injected == {"app": {"GOMEMLIMIT": "460MiB"}}
    assert env_of(spec) == [{"name": "GOMEMLIMIT", "value": "460MiB"}]
    assert "env" not in spec["containers"][1]
    assert json.loads(metadata["annotations"][ANNOTATION_INJECTED]) == result.injected
    assert metadata["annotations"][ANNOTATION_POLICY] == "ClusterGoMemPolicy/go"
    assert [r.state for r in evaluate_pod(metadata, spec, policy("go", containers=["app"]))] == [
        State.COMPLIANT,
        State.UNMANAGED,
    ]


def test_mutate_appends_after_existing_env_entries() -> None:
    existing = [env_value("A", "1"), {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]
    metadata, spec = pod(container(env=copy.deepcopy(existing)))
    mutate_pod(metadata, spec, DEFAULT_POLICY)
    assert env_of(spec) == [*existing, {"name": "GOMEMLIMIT", "value": "460MiB"}]


def test_mutate_is_idempotent() -> None:
    metadata, spec = pod(container("a"), container("b", "1Gi"), annotations={"keep": "me"})
    pol = policy(gogc="off")
    assert mutate_pod(metadata, spec, pol).changed
    snapshot = copy.deepcopy((metadata, spec))
    again = mutate_pod(metadata, spec, pol)
    assert not again.changed
    assert again.reason == "already up to date"
    assert (metadata, spec) == snapshot
    assert metadata["annotations"]["keep"] == "me"


def test_mutate_injects_gogc_the_same_way() -> None:
    metadata, spec = pod(container())
    result = mutate_pod(metadata, spec, policy(gogc="50"))
    assert env_of(spec) == [env_value("GOMEMLIMIT", "460MiB"), env_value("GOGC", "50")]
    assert result.injected == {"app": {"GOMEMLIMIT": "460MiB", "GOGC": "50"}}


def test_mutate_respects_a_users_own_value() -> None:
    own = [env_value("GOMEMLIMIT", "300MiB"), env_value("GOGC", "200")]
    metadata, spec = pod(container(env=copy.deepcopy(own)))
    result = mutate_pod(metadata, spec, policy(gogc="off"))
    assert not result.changed
    assert env_of(spec) == own
    assert ANNOTATION_INJECTED not in metadata.get("annotations", {})


def test_mutate_respects_a_value_from_a_configmap() -> None:
    own = [{"name": "GOMEMLIMIT", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]
    metadata, spec = pod(container(env=copy.deepcopy(own)))
    assert not mutate_pod(metadata, spec, DEFAULT_POLICY).changed
    assert env_of(spec) == own


def test_mutate_override_replaces_in_place() -> None:
    own = [env_value("GOMEMLIMIT", "512Mi"), env_value("OTHER", "x")]
    metadata, spec = pod(container(env=copy.deepcopy(own)))
    result = mutate_pod(metadata, spec, policy(onExisting="override"))
    assert result.changed
    assert env_of(spec) == [env_value("GOMEMLIMIT", "460MiB"), env_value("OTHER", "x")]
    assert result.injected == {"app": {"GOMEMLIMIT": "460MiB"}}


def test_mutate_override_replaces_the_100_percent_resource_field_ref() -> None:
    metadata, spec = pod(container(env=[field_ref("limits.memory")]))
    mutate_pod(metadata, spec, policy(onExisting="override"))
    assert env_of(spec) == [env_value("GOMEMLIMIT", "460MiB")]
    # respect leaves it, and the audit keeps flagging it.
    metadata, spec = pod(container(env=[field_ref("limits.memory")]))
    assert not mutate_pod(metadata, spec, DEFAULT_POLICY).changed
    assert evaluate_pod(metadata, spec, DEFAULT_POLICY)[0].state is State.EXCEEDS_LIMIT


def test_reinvocation_corrects_its_own_value_after_a_limit_change() -> None:
    # First admission at 512Mi; a later webhook (e.g. VPA) raises the limit to 1Gi;
    # the API server calls us again (reinvocationPolicy: IfNeeded).
    metadata, spec = pod(container(env=[env_value("A", "1")]))
    mutate_pod(metadata, spec, DEFAULT_POLICY)
    spec["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    result = mutate_pod(metadata, spec, DEFAULT_POLICY)
    assert result.changed
    assert env_of(spec) == [env_value("A", "1"), env_value("GOMEMLIMIT", "921MiB")]
    assert json.loads(metadata["annotations"][ANNOTATION_INJECTED]) == {
        "app": {"GOMEMLIMIT": "921MiB"}
    }
    assert evaluate_pod(metadata, spec, DEFAULT_POLICY)[0].state is State.COMPLIANT
    assert not mutate_pod(metadata, spec, DEFAULT_POLICY).changed


def test_reinvocation_never_corrects_a_users_value() -> None:
    # The record says we wrote 460MiB, but the user's entry holds something else.
    annotations = {ANNOTATION_INJECTED: json.dumps({"app": {"GOMEMLIMIT": "460MiB"}})}
    metadata, spec = pod(
        container(limit="1Gi", env=[env_value("GOMEMLIMIT", "700MiB")]), annotations=annotations
    )
    mutate_pod(metadata, spec, DEFAULT_POLICY)
    assert env_of(spec) == [env_value("GOMEMLIMIT", "700MiB")]


def test_mutate_leaves_pods_alone_when_it_should() -> None:
    cases: list[tuple[dict[str, Any], Policy | None, str]] = [
        ({}, None, "no policy"),
        ({}, policy(mode="audit"), "audit mode"),
        ({"annotations": {ANNOTATION_SKIP: "true"}}, DEFAULT_POLICY, ANNOTATION_SKIP),
        ({"annotations": {"kubernetes.io/config.mirror": "x"}}, DEFAULT_POLICY, "mirror"),
    ]
    for metadata, pol, reason in cases:
        spec = {"containers": [container()]}
        before = copy.deepcopy((metadata, spec))
        result = mutate_pod(metadata, spec, pol)
        assert not result.changed
        assert reason in result.reason
        assert (metadata, spec) == before


def test_mutate_nothing_to_inject() -> None:
    metadata, spec = pod(container(limit=None), container("tiny", limit="1Mi"))
    result = mutate_pod(metadata, spec, DEFAULT_POLICY)
    assert not result.changed
    assert result.reason == "nothing to inject"
    assert metadata == {}


def test_mutate_handles_null_annotations_and_env() -> None:
    # `annotations:` and `env:` with nothing after them are null in YAML.
    metadata: dict[str, Any] = {"annotations": None}
    spec = {"containers": [{**container(), "env": None}]}
    assert mutate_pod(metadata, spec, DEFAULT_POLICY).changed
    assert env_of(spec) == [env_value("GOMEMLIMIT", "460MiB")]
    assert ANNOTATION_INJECTED in metadata["annotations"]


def test_mutate_init_containers_when_included() -> None:
    metadata: dict[str, Any] = {}
    spec = {"initContainers": [container("sidecar", "64Mi")], "containers": [container()]}
    mutate_pod(metadata, spec, policy(includeInitContainers=True))
    assert spec["initContainers"][0]["env"] == [env_value("GOMEMLIMIT", "57MiB")]
    assert json.loads(metadata["annotations"][ANNOTATION_INJECTED]) == {
        "app": {"GOMEMLIMIT": "460MiB"},
        "sidecar": {"GOMEMLIMIT": "57MiB"},
    }


def test_mutate_uses_the_pod_level_limit() -> None:
    metadata: dict[str, Any] = {}
    spec = {"resources": {"limits": {"memory": "2Gi"}}, "containers": [container(limit=None)]}
    mutate_pod(metadata, spec, DEFAULT_POLICY)
    assert env_of(spec) == [env_value("GOMEMLIMIT", "1843MiB")]


def test_a_bad_quantity_anywhere_leaves_the_pod_as_it_was() -> None:
    """mutate_pod reads every limit before it writes: nothing is half-applied."""
    spec: dict[str, Any] = {"containers": [container("good"), container("bad", limit="lots")]}
    metadata: dict[str, Any] = {}
    before = copy.deepcopy((metadata, spec))
    with pytest.raises(SpecError, match=r"spec\.containers\[1\]\.resources\.limits\.memory"):
        mutate_pod(metadata, spec, DEFAULT_POLICY)
    assert (metadata, spec) == before


def test_two_containers_of_one_name_are_refused_before_anything_is_written() -> None:
    """Found by test_lean_webhook.py (with more examples): the injected record is by name, so
    of two init containers named proxy, the first one's own GOMEMLIMIT was taken for ours on
    the next call and replaced. Kubernetes refuses such a pod anyway, after the webhooks."""
    own = container("proxy", limit=None, env=[env_value("GOMEMLIMIT", "460MiB")])
    spec = {
        "initContainers": [own, container("proxy", "512Mi")],
        "containers": [container("app")],
        "resources": {"limits": {"memory": "2Gi"}},
    }
    metadata: dict[str, Any] = {}
    before = copy.deepcopy((metadata, spec))
    with pytest.raises(SpecError, match=r"spec\.initContainers\[1\]\.name: the same name as an"):
        mutate_pod(metadata, spec, policy(includeInitContainers=True))
    assert (metadata, spec) == before
