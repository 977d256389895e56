"""The engine's guarantees under hostile input: bounded linear work, never a value Go
rejects, no false "compliant" (README, "The value contract")."""

from __future__ import annotations

import fnmatch
import re
import time
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from unit_helpers import INVALID_POLICY_SPECS, container, env_value, policy

from gomemlimit_operator.cli import main as cli
from gomemlimit_operator.core.api import PolicyError
from gomemlimit_operator.core.engine import (
    ANNOTATION_INJECTED,
    DEFAULT_BOUNDS,
    Bounds,
    PodTooLarge,
    State,
    evaluate_pod,
    gomemlimit_for,
    mutate_pod,
    pod_facts,
)
from gomemlimit_operator.core.globs import MAX_GLOB_LENGTH, MAX_GLOBS, ContainerGlobs
from gomemlimit_operator.core.goruntime import MAX_INT64, parse_byte_count
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.core.quantity import CEILING, QuantityTooLarge, parse_bytes
from gomemlimit_operator.runtime.webhook import admit

GO_GRAMMAR = re.compile(r"^[0-9]+(([KMGT]i)?B)?$")
MIB = 1 << 20


def fanout_pod(count: int) -> dict[str, Any]:
    """``count`` containers whose GOMEMLIMIT reads the last container's limit by name: the
    shape that made every lookup rescan the pod (quadratic)."""
    last = f"c{count - 1}"
    ref = {"resourceFieldRef": {"resource": "limits.memory", "containerName": last}}
    containers = [
        container(f"c{i}", env=[{"name": "GOMEMLIMIT", "valueFrom": ref}]) for i in range(count)
    ]
    return {"containers": containers}


def cpu_seconds(count: int, bounds: Bounds) -> float:
    """Best of three: evaluating and mutating a fan-out pod of ``count`` containers."""
    best = float("inf")
    for _ in range(3):
        spec = fanout_pod(count)
        started = time.process_time()
        evaluate_pod({}, spec, policy(), bounds=bounds)
        mutate_pod({}, spec, policy(onExisting="override"), bounds=bounds)
        best = min(best, time.process_time() - started)
    return best


# --- 1. linear, bounded work -----------------------------------------------------------------


def test_work_grows_linearly_with_containers() -> None:
    """10, 100, 1,000 and 5,000 containers: time per container stays flat. The old code
    rescanned the pod for each containerName lookup: 50x more per container at 5,000."""
    roomy = Bounds(max_containers=10_000, max_env_entries=10_000)
    per_container = {n: cpu_seconds(n, roomy) / n for n in (10, 100, 1000, 5000)}
    baseline = min(per_container[100], per_container[1000])
    assert per_container[5000] < 3 * baseline, per_container


def test_a_pod_beyond_the_container_bound_is_refused_before_any_work() -> None:
    spec = fanout_pod(DEFAULT_BOUNDS.max_containers + 1)
    with pytest.raises(PodTooLarge, match=r"257 containers and init containers; .* at most 256"):
        pod_facts({}, spec)
    before = repr(spec)
    with pytest.raises(PodTooLarge):
        mutate_pod({}, spec, policy())
    assert repr(spec) == before  # nothing half-applied
    pod_facts({}, fanout_pod(DEFAULT_BOUNDS.max_containers))  # at the bound: evaluated


def test_env_entries_are_bounded_across_containers() -> None:
    per = DEFAULT_BOUNDS.max_env_entries // 2
    filler = [env_value(f"V{i}", "x") for i in range(per)]
    spec = {"containers": [container("a", env=filler), container("b", env=[*filler, filler[0]])]}
    with pytest.raises(PodTooLarge, match=r"8193 env entries; .* at most 8192"):
        pod_facts({}, spec)


def test_the_webhook_allows_a_pod_beyond_the_bounds_unchanged_with_a_warning() -> None:
    registry = PolicyView()
    registry.set_policy(policy())
    pod = {"metadata": {"namespace": "team", "name": "wide"}, "spec": fanout_pod(300)}
    admission = admit(pod, registry=registry)
    assert admission.result == "too_large"
    assert admission.spec is None
    assert admission.warnings == (
        "gomemlimit: not injected: spec: the pod has 300 containers and init containers; "
        "gomemlimit evaluates at most 256",
    )


def test_a_deeply_nested_injected_record_counts_as_none() -> None:
    annotations = {ANNOTATION_INJECTED: "[" * 100_000}
    spec = {"containers": [container()]}
    [report] = evaluate_pod({"annotations": annotations}, spec, policy())
    assert report.state is State.MISSING


@given(
    patterns=st.lists(st.text("ab*?[]!-", min_size=1, max_size=8), min_size=1, max_size=4),
    name=st.text("ab-", max_size=6),
)
def test_compiled_globs_match_exactly_like_fnmatch(patterns: list[str], name: str) -> None:
    expected = any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    assert ContainerGlobs(patterns).matches(name) is expected


def test_matching_globs_fills_no_process_wide_cache() -> None:
    pol = policy(containers=[f"app-{i}-*" for i in range(MAX_GLOBS)])
    fnmatch._compile_pattern.cache_clear()  # type: ignore[attr-defined]
    spec = {"containers": [container(f"app-{i}-x") for i in range(50)]}
    assert {r.state for r in evaluate_pod({}, spec, pol)} == {State.MISSING}
    assert fnmatch._compile_pattern.cache_info().currsize == 0  # type: ignore[attr-defined]


def test_glob_count_and_length_are_capped() -> None:
    with pytest.raises(PolicyError, match=r"spec\.containers"):
        policy(containers=["a"] * (MAX_GLOBS + 1))
    with pytest.raises(PolicyError, match=r"spec.containers\[0\]"):
        policy(containers=["a" * (MAX_GLOB_LENGTH + 1)])
    policy(containers=["a" * MAX_GLOB_LENGTH] * MAX_GLOBS)


# --- 2. one gate for every value written --------------------------------------------------


def test_a_limit_past_maxint64_never_yields_a_value_go_rejects() -> None:
    """The finding: 12E is stored by the API server; with maxHeadroom the old engine
    injected 11444091796874MiB, above MaxInt64, and Go died at start."""
    pol = policy(maxHeadroom="1Gi")
    expectation = gomemlimit_for(parse_bytes("12E"), pol.spec)
    assert expectation.value is None
    assert expectation.problem is not None
    assert "Go rejects as above its maximum of 9223372036854775807 bytes" in expectation.problem
    spec = {"containers": [container(limit="12E")]}
    metadata: dict[str, Any] = {}
    assert not mutate_pod(metadata, spec, pol).changed
    assert "env" not in spec["containers"][0]
    [report] = evaluate_pod(metadata, spec, pol)
    assert report.state is State.UNSATISFIABLE


def test_the_largest_value_go_accepts_is_still_written() -> None:
    value = gomemlimit_for(1 << 63, policy(maxHeadroom=1).spec).value
    assert value == "8796093022207MiB"
    count = parse_byte_count(value)
    assert count is not None
    assert count <= MAX_INT64


def test_a_limit_above_the_ceiling_is_read_cheaply_and_yields_no_value() -> None:
    spec = {"containers": [container(limit="1e999999")]}
    started = time.process_time()
    [report] = evaluate_pod({}, spec, policy())
    assert time.process_time() - started < 0.05
    assert report.state is State.UNSATISFIABLE
    assert "more than 1e24 bytes" in report.reason
    with pytest.raises(QuantityTooLarge):
        parse_bytes("1e999999")


def test_gogc_is_never_written_without_a_gomemlimit() -> None:
    spec = {"containers": [container(limit="512Ki")]}
    assert not mutate_pod({}, spec, policy(gogc="off")).changed
    assert "env" not in spec["containers"][0]


_mantissas = st.one_of(
    st.integers(min_value=0, max_value=10**40).map(str),
    st.builds(
        "{}.{}".format,
        st.integers(min_value=0, max_value=10**20),
        st.integers(min_value=0, max_value=10**30),
    ),
)
_suffixes = st.one_of(
    st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G"]),
    st.sampled_from(["T", "P", "E"]),
    st.integers(min_value=-30, max_value=10**9).map(lambda e: f"e{e}"),
    st.integers(min_value=0, max_value=40).map(lambda e: f"E{e}"),
)
_headroom = st.none() | st.sampled_from(["1", "1Mi", "64Mi", "1Gi", "4E", "1e24", "8Ei"])


@given(
    limit=st.builds("{}{}".format, _mantissas, _suffixes),
    ratio=st.sampled_from([0.1, 0.5, 0.7, 0.9, 0.99, 0.999999]),
    low=_headroom,
    high=_headroom,
)
@example(limit="12E", ratio=0.9, low=None, high="1Gi")
@example(limit="9223372036854775807", ratio=0.999999, low=None, high="1")
@example(limit="1e999999999", ratio=0.9, low=None, high=None)
@example(limit="0.000000001", ratio=0.9, low=None, high=None)
def test_every_quantity_form_gives_a_value_go_accepts_or_none(
    limit: str, ratio: float, low: str | None, high: str | None
) -> None:
    fields: dict[str, Any] = {"ratio": ratio}
    if low is not None:
        fields["minHeadroom"] = low
    if high is not None:
        fields["maxHeadroom"] = high
    try:
        pol = policy(**fields)
    except PolicyError:
        return  # minHeadroom > maxHeadroom: the policy itself is refused
    started = time.process_time()
    spec = {"containers": [container(limit=limit)]}
    metadata: dict[str, Any] = {}
    mutate_pod(metadata, spec, pol)
    [report] = evaluate_pod(metadata, spec, pol)
    assert time.process_time() - started < 0.1
    try:
        limit_bytes: int | None = parse_bytes(limit)
    except QuantityTooLarge:
        limit_bytes = None
    written = {e["name"]: e["value"] for e in spec["containers"][0].get("env", [])}
    if report.expected is None:
        assert written == {}
        assert report.state is State.UNSATISFIABLE
        return
    assert limit_bytes is not None
    assert limit_bytes <= CEILING
    assert written == {"GOMEMLIMIT": report.expected}
    assert GO_GRAMMAR.match(report.expected)
    count = parse_byte_count(report.expected)
    assert count is not None
    assert count <= MAX_INT64
    assert count < limit_bytes
    assert report.state is State.COMPLIANT


# --- 3. honest states ------------------------------------------------------------------------


def test_headroom_at_least_the_limit_is_unsatisfiable_not_compliant() -> None:
    """The finding: minHeadroom 1Gi on a 512Mi container injected nothing and was reported
    compliant, "the limit is under the 1MiB a GOMEMLIMIT needs"."""
    pol = policy(minHeadroom="1Gi")
    spec = {"containers": [container(limit="512Mi")]}
    assert not mutate_pod({}, spec, pol).changed
    [report] = evaluate_pod({}, spec, pol)
    assert report.state is State.UNSATISFIABLE
    assert report.expected is None
    assert report.reason == (
        "no GOMEMLIMIT can be set: the policy leaves 0 bytes of a 536870912-byte limit after "
        "1073741824 bytes of headroom, under the 1MiB a GOMEMLIMIT needs; raise the memory "
        "limit or lower the policy's minHeadroom"
    )


def test_a_containers_own_valid_value_stays_compliant_when_the_policy_yields_none() -> None:
    spec = {"containers": [container(limit="512Mi", env=[env_value("GOMEMLIMIT", "400MiB")])]}
    [report] = evaluate_pod({}, spec, policy(minHeadroom="1Gi"))
    assert report.state is State.COMPLIANT
    assert "the policy yields no value here" in report.reason


def test_audit_exits_1_for_an_unsatisfiable_container(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: small}\nspec:\n  containers:\n"
        "  - {name: app, image: x, resources: {limits: {memory: 512Mi}}}\n"
    )
    rules = tmp_path / "policy.yaml"
    rules.write_text(
        "apiVersion: gomemlimit.io/v1alpha1\nkind: ClusterGoMemPolicy\n"
        "metadata: {name: roomy}\nspec: {minHeadroom: 1Gi}\n"
    )
    assert cli.main(["audit", "-f", str(manifest), "--policy", str(rules)]) == 1
    assert "unsatisfiable" in capsys.readouterr().out


# --- the CRD and the models agree -----------------------------------------------------------


@pytest.mark.parametrize(("spec", "field"), INVALID_POLICY_SPECS)
def test_the_models_reject_every_invalid_policy(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as error:
        policy(kind="GoMemPolicy", namespace="team", **spec)
    assert error.value.field.startswith(field), error.value
