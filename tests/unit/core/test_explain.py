"""``explain_pod`` and ``gomemlimit explain``: the explanation is the engine's own evaluation.

The property: for any pod and any set of policies, the explanation names the policy that
``governing_policy`` picks and gives, container by container, exactly the reports of
``evaluate_pod`` (expected value, state, reason), and its recorded steps are the numbers
that value came from. The rest are golden-ish checks of the text and the JSON.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_properties import MIB, Bound, bounded_policy, limits, quantities, ratios, reference
from unit_helpers import container, env_value, policy

from gomemlimit_operator.cli.explain import Explained, PodSubject, explanation_json, render_text
from gomemlimit_operator.cli.main import main
from gomemlimit_operator.core.api import Policy, PolicyError
from gomemlimit_operator.core.engine import (
    LimitSource,
    State,
    evaluate_pod,
    explain_pod,
    governing_policy,
)
from gomemlimit_operator.core.goruntime import parse_byte_count
from gomemlimit_operator.core.selectors import namespace_labels

NS = "team"
NS_LABELS = namespace_labels(NS, {"tier": "gold"})

gomemlimit_envs = st.sampled_from(
    [
        None,
        env_value("GOMEMLIMIT", "460MiB"),
        env_value("GOMEMLIMIT", "512Mi"),
        env_value("GOMEMLIMIT", "off"),
        env_value("GOMEMLIMIT", ""),
        env_value("GOMEMLIMIT", "1GiB"),
        {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
        {"name": "GOMEMLIMIT", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
    ]
)


@st.composite
def pods(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, spec): containers with or without limits and GOMEMLIMIT entries, init
    containers, a pod-level limit, the opt-out, records of injected values."""
    names = draw(st.lists(st.sampled_from(["app", "api", "proxy", "x-go"]), unique=True))
    containers = []
    injected: dict[str, dict[str, str]] = {}
    for name in names:
        limit = draw(st.none() | limits)
        env = draw(gomemlimit_envs)
        containers.append(container(name, limit, env=None if env is None else [env]))
        if env is not None and "value" in env and draw(st.booleans()):
            injected[name] = {"GOMEMLIMIT": env["value"]}
    spec: dict[str, Any] = {"containers": containers}
    if draw(st.booleans()):
        spec["initContainers"] = [container("init-go", draw(st.none() | limits))]
    if draw(st.booleans()):
        spec["resources"] = {"limits": {"memory": draw(limits)}}
    annotations = {"gomemlimit.io/injected": json.dumps(injected)}
    if draw(st.booleans()):
        annotations["gomemlimit.io/skip"] = "true"
    labels = draw(st.sampled_from([{}, {"runtime": "go"}, {"runtime": "go", "app": "api"}]))
    return {"labels": labels, "annotations": annotations}, spec


@st.composite
def policy_sets(draw: st.DrawFn) -> list[Policy]:
    """Up to five policies of both scopes, some in another namespace, with clashing
    priorities and names, selectors that match or not, and headroom bounds."""
    found: list[Policy] = []
    for index in range(draw(st.integers(0, 5))):
        fields: dict[str, Any] = {
            "priority": draw(st.integers(-1, 1)),
            "ratio": float(draw(ratios)),
            "onExisting": draw(st.sampled_from(["respect", "override"])),
            "includeInitContainers": draw(st.booleans()),
        }
        if draw(st.booleans()):
            fields["selector"] = {"matchLabels": {"runtime": "go"}}
        if draw(st.booleans()):
            fields["containers"] = draw(st.sampled_from([["app"], ["*-go", "api"], ["init-*"]]))
        for key in ("minHeadroom", "maxHeadroom"):
            if draw(st.booleans()):
                fields[key] = draw(quantities())[1]
        name = draw(st.sampled_from(["a", "b", "c"])) + ("" if draw(st.booleans()) else str(index))
        if draw(st.booleans()):
            namespace = draw(st.sampled_from([NS, "other"]))
            kind, where = "GoMemPolicy", namespace
        else:
            kind, where = "ClusterGoMemPolicy", None
            if draw(st.booleans()):
                tier = draw(st.sampled_from(["gold", "silver"]))
                fields["namespaceSelector"] = {"matchLabels": {"tier": tier}}
        try:
            found.append(policy(name, kind, where, **fields))
        except PolicyError:
            continue  # minHeadroom > maxHeadroom, or maxHeadroom 0: refused, as by the CRD
    return found


@given(pod=pods(), policies=policy_sets())
def test_the_explanation_is_the_engines_evaluation(
    pod: tuple[dict[str, Any], dict[str, Any]], policies: list[Policy]
) -> None:
    metadata, spec = pod
    winner = governing_policy(NS, metadata["labels"], NS_LABELS, policies)
    explanation = explain_pod(metadata, spec, NS, NS_LABELS, policies)
    assert explanation.choice.winner is winner
    assert explanation.choice.scope == (
        None if winner is None else "namespaced" if winner.kind == "GoMemPolicy" else "cluster"
    )
    candidates = [*explanation.choice.namespaced, *explanation.choice.cluster]
    assert sorted(map(id, candidates + [p for p, _ in explanation.choice.passed_over])) == sorted(
        map(id, policies)
    )
    if winner is not None:
        scope = explanation.choice.namespaced or explanation.choice.cluster
        assert scope[0] is winner  # first in precedence order
    reports = evaluate_pod(metadata, spec, winner)
    assert [c.report for c in explanation.containers] == reports
    for item in explanation.containers:
        report, steps = item.report, item.steps
        if steps is None:
            continue
        assert winner is not None
        assert report.memory_limit_bytes == steps.limit_bytes
        assert steps.raw_headroom == steps.limit_bytes - steps.kept
        low, high = steps.min_headroom, steps.max_headroom
        assert steps.headroom == min(
            max(steps.raw_headroom, low if low is not None else 0), high or 1 << 90
        )
        if report.expected is not None:  # the value is the rounded L - headroom
            count = parse_byte_count(report.expected)
            assert count is not None
            assert count <= steps.limit_bytes - steps.headroom < count + MIB
        else:
            assert item.problem is not None


@given(limit=limits, ratio=ratios, low=st.none() | quantities(), high=st.none() | quantities())
def test_the_recorded_steps_give_the_reference_value(
    limit: int, ratio: str, low: Bound, high: Bound
) -> None:
    pol = bounded_policy(ratio, low, high)
    if pol is None:
        return
    spec = {"containers": [container("app", limit)]}
    [item] = explain_pod({}, spec, NS, NS_LABELS, [pol]).containers
    assert item.report.expected == reference(limit, ratio, low and low[0], high and high[0])
    if item.steps is not None:
        assert item.steps.ratio.limit_denominator(10**7) == item.steps.ratio  # exact, no float


# --- golden-ish: the text and the JSON -------------------------------------------------------


def explained(
    spec: dict[str, Any], policies: list[Policy], metadata: dict[str, Any] | None = None
) -> Explained:
    metadata = metadata or {"labels": {"runtime": "go"}}
    subject = PodSubject(NS, "Pod", "web", metadata, spec, "spec", ("Deployment", "web"))
    explanation = explain_pod(metadata, spec, NS, NS_LABELS, policies)
    return Explained(subject, explanation, {p.ref: p for p in policies})


def text(item: Explained) -> str:
    out = io.StringIO()
    render_text([item], out)
    return out.getvalue()


def test_namespaced_beats_cluster_and_priority_wins_within_a_scope() -> None:
    policies = [
        policy("zz", "ClusterGoMemPolicy", priority=100),
        policy("low", namespace=NS, priority=1),
        policy("high", namespace=NS, priority=5),
        policy("elsewhere", namespace="other", priority=9),
    ]
    item = explained({"containers": [container("app", "512Mi")]}, policies)
    out = text(item)
    assert "Policy: GoMemPolicy/team/high governs the pod" in out
    assert (
        "why: a GoMemPolicy in the pod's namespace selects the pod; it beats every "
        "ClusterGoMemPolicy (1 of them select the pod too); the highest priority: 5 > 1 "
        "(GoMemPolicy/team/low)"
    ) in out
    assert "loses: GoMemPolicy/team/low (namespaced, priority 1): lower priority: 1 < 5" in out
    assert (
        "loses: ClusterGoMemPolicy/zz (cluster, priority 100): a GoMemPolicy in the pod's "
        "namespace selects the pod: namespaced beats cluster"
    ) in out
    assert (
        "does not select the pod: GoMemPolicy/other/elsewhere: a GoMemPolicy of namespace "
        "other, not of the pod's (team)"
    ) in out
    data = explanation_json(item)
    assert data["policy"]["governing"] == "GoMemPolicy/team/high"
    assert [(c["policy"], c["wins"]) for c in data["policy"]["candidates"]] == [
        ("GoMemPolicy/team/high", True),
        ("GoMemPolicy/team/low", False),
        ("ClusterGoMemPolicy/zz", False),
    ]


def test_a_priority_tie_goes_to_the_smallest_name() -> None:
    policies = [
        policy("beta", "ClusterGoMemPolicy"),
        policy("alpha", "ClusterGoMemPolicy"),
        policy("gold-only", "ClusterGoMemPolicy", namespaceSelector={"matchLabels": {"t": "x"}}),
    ]
    out = text(explained({"containers": [container("app", "512Mi")]}, policies))
    assert "Policy: ClusterGoMemPolicy/alpha governs the pod" in out
    assert "2 candidates tie at priority 0; the lexically smallest name wins" in out
    assert "the same priority, 0, and 'alpha' sorts before 'beta'" in out
    assert "its namespaceSelector does not match namespace team's labels" in out


def test_clamps_and_rounding_step_by_step() -> None:
    pol = policy("p", "ClusterGoMemPolicy", minHeadroom="64Mi", maxHeadroom="1Gi")
    spec = {"containers": [container("small", "256Mi"), container("big", "32Gi")]}
    item = explained(spec, [pol])
    small, big = (line for line in text(item).split("\n\n")[1:])
    assert "headroom: L - floor(L x 0.9) = 268435456 - 241591910 = 26843546 bytes (25.6 MiB)" in (
        small
    )
    assert "minHeadroom 67108864 bytes (64 MiB) raises it to 67108864" in small
    assert "maxHeadroom 1073741824 bytes (1024 MiB) leaves it as it is" in small
    assert "down to a whole MiB: 192MiB = 201326592 bytes" in small
    assert "maxHeadroom 1073741824 bytes (1024 MiB) lowers it to 1073741824" in big
    assert "expected: 31744MiB" in big
    [_, js] = explanation_json(item)["containers"]
    assert js["headroom"]["clamps"] == [
        {"clamp": "minHeadroom", "bytes": 64 * MIB, "applied": False, "to": 3435973837},
        {"clamp": "maxHeadroom", "bytes": 1 << 30, "applied": True, "to": 1 << 30},
    ]
    assert js["rounding"] == {
        "unrounded": (32 << 30) - (1 << 30),
        "value": "31744MiB",
        "bytes": 31744 * MIB,
    }
    assert js["ratio"] == "0.9"


def test_limits_from_the_pod_level_and_from_a_limit_range_default() -> None:
    spec = {
        "resources": {"limits": {"memory": "1Gi"}},
        "containers": [container("app", None), container("api", "512Mi"), container("x", None)],
    }
    metadata = {
        "labels": {},
        "annotations": {
            "kubernetes.io/limit-ranger": (
                "LimitRanger plugin set: cpu, memory request for container api; "
                "memory limit for container api"
            )
        },
    }
    item = explained(spec, [policy("p", "ClusterGoMemPolicy")], metadata)
    app, api, x = item.explanation.containers
    assert (app.limit_source, app.limit_path) == (LimitSource.POD, "spec.resources.limits.memory")
    assert app.report.expected == "921MiB"
    assert api.limit_source is LimitSource.LIMIT_RANGE
    assert x.limit_source is LimitSource.POD
    out = text(item)
    assert "from the pod level: spec.resources.limits.memory" in out
    assert "from a LimitRange default, set at creation" in out


@pytest.mark.parametrize(
    ("env", "limit", "state", "command"),
    [
        (None, "512Mi", State.MISSING, "kubectl rollout restart deployment/web -n team"),
        (
            [env_value("GOMEMLIMIT", "512Mi")],
            "512Mi",
            State.INVALID,
            "kubectl set env deployment/web -c app GOMEMLIMIT=460MiB -n team",
        ),
        (
            [
                {
                    "name": "GOMEMLIMIT",
                    "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}},
                }
            ],
            "512Mi",
            State.EXCEEDS_LIMIT,
            "kubectl set env deployment/web -c app GOMEMLIMIT=460MiB -n team",
        ),
        (
            None,
            None,
            State.NO_MEMORY_LIMIT,
            "kubectl set resources deployment/web -c app '--limits=memory=<LIMIT>' -n team",
        ),
        ([env_value("GOMEMLIMIT", "460MiB")], "512Mi", State.COMPLIANT, None),
    ],
)
def test_the_next_step_is_a_command_for_the_workload(
    env: list[dict[str, Any]] | None, limit: str | None, state: State, command: str | None
) -> None:
    item = explained(
        {"containers": [container("app", limit, env=env)]}, [policy("p", "ClusterGoMemPolicy")]
    )
    [js] = explanation_json(item)["containers"]
    assert js["state"] == state.value
    assert js["next"]["command"] == command
    if command is not None:
        assert f"$ {command}" in text(item)


def test_cli_explain_offline_matches_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: team}\n"
        "spec:\n  template:\n    metadata: {labels: {runtime: go}}\n    spec:\n"
        "      containers:\n      - name: app\n        resources: {limits: {memory: 1Gi}}\n"
        "        env: [{name: GOMEMLIMIT, value: 1G}]\n"
    )
    assert main(["explain", "-f", str(manifest), "deployment/api", "-o", "json"]) == 0
    [explained_pod] = json.loads(capsys.readouterr().out)
    assert main(["audit", "-f", str(manifest), "-o", "json"]) == 1
    [audited] = json.loads(capsys.readouterr().out)
    [row] = explained_pod["containers"]
    assert (
        (row["expected"], row["state"])
        == (audited["expected"], audited["state"])
        == (
            "921MiB",
            "invalid",
        )
    )
    assert row["next"]["command"] == (
        f"kubectl set env --local -f {manifest} -c app GOMEMLIMIT=921MiB -o yaml"
    )
    assert main(["explain", "-f", str(manifest), "deployment/nope"]) == 2
    assert "no pod spec deployment/nope" in capsys.readouterr().err
    assert main(["explain"]) == 2
    assert "name a pod" in capsys.readouterr().err
