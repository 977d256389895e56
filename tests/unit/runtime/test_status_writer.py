"""Policy status: the pure builder and the throttled writer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from unit_helpers import policy

from gomemlimit_operator.core.api import ContainerCounts
from gomemlimit_operator.core.policy_view import PolicyKey
from gomemlimit_operator.core.status import build_status
from gomemlimit_operator.runtime.status_writer import PolicyGoneError, PolicyStatusWriter

KEY = PolicyKey("ClusterGoMemPolicy", None, "p")


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_valid_policy_is_ready_and_compliance_unknown() -> None:
    status = build_status(
        generation=3, policy=policy("p"), problem=None, counts=None, previous=None, now="T1"
    )
    assert status["observedGeneration"] == 3
    ready, compliant = conditions(status)["Ready"], conditions(status)["Compliant"]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("True", "Valid", 3)
    assert ready["lastTransitionTime"] == "T1"
    assert (compliant["status"], compliant["reason"]) == ("Unknown", "NotObserved")
    assert "matchedPods" not in status  # leaves counts to whoever observes pods


def test_audit_mode_is_named() -> None:
    status = build_status(
        generation=1, policy=policy("p", mode="audit"), problem=None, counts=None, previous=None
    )
    assert "audit" in conditions(status)["Ready"]["message"]


def test_invalid_policy() -> None:
    status = build_status(
        generation=2, policy=None, problem="spec.gogc: too big", counts=None, previous=None
    )
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"] == "spec.gogc: too big"
    assert (status["matchedPods"], status["governedContainers"]) == (0, 0)


def test_counts_give_compliant_condition() -> None:
    good = (2, 3, ContainerCounts(compliant=3))
    status = build_status(
        generation=1, policy=policy("p"), problem=None, counts=good, previous=None
    )
    assert conditions(status)["Compliant"]["status"] == "True"
    assert status["noncompliantContainers"] == 0
    assert status["containers"]["compliant"] == 3
    bad = (2, 5, ContainerCounts(compliant=2, missing=2, stale=1, opted_out=0))
    status = build_status(generation=1, policy=policy("p"), problem=None, counts=bad, previous=None)
    compliant = conditions(status)["Compliant"]
    assert (compliant["status"], compliant["reason"]) == ("False", "NoncompliantContainers")
    assert "3 of 5" in compliant["message"]
    assert "missing 2" in compliant["message"]
    assert status["noncompliantContainers"] == 3
    assert status["containers"]["noMemoryLimit"] == 0


def test_transition_time_kept_while_status_stays() -> None:
    first = build_status(
        generation=1, policy=policy("p"), problem=None, counts=None, previous=None, now="T1"
    )
    same = build_status(
        generation=2, policy=policy("p"), problem=None, counts=None, previous=first, now="T2"
    )
    assert conditions(same)["Ready"]["lastTransitionTime"] == "T1"
    flipped = build_status(
        generation=3, policy=None, problem="spec.x: bad", counts=None, previous=same, now="T3"
    )
    assert conditions(flipped)["Ready"]["lastTransitionTime"] == "T3"


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[PolicyKey, dict[str, Any]]] = []
        self.fail: Exception | None = None

    def __call__(self, key: PolicyKey, body: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.writes.append((key, body))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def writer(**kwargs: Any) -> tuple[PolicyStatusWriter, Recorder, Clock]:
    recorder, clock = Recorder(), Clock()
    return PolicyStatusWriter(recorder, interval=5.0, clock=clock, **kwargs), recorder, clock


def test_writes_once_and_not_again_when_live_status_matches() -> None:
    status_writer, recorder, clock = writer()
    status_writer.observe(KEY, generation=1, policy=policy("p"), problem=None, live_status=None)
    asyncio.run(status_writer.flush())
    assert len(recorder.writes) == 1
    written = recorder.writes[0][1]["status"]
    # The watch event that our own write causes carries the written status back.
    clock.now += 60
    status_writer.observe(KEY, generation=1, policy=policy("p"), problem=None, live_status=written)
    asyncio.run(status_writer.flush())
    assert len(recorder.writes) == 1


def test_live_status_with_schema_defaults_counts_as_equal() -> None:
    status_writer, recorder, clock = writer()
    status_writer.observe(KEY, generation=1, policy=policy("p"), problem=None, live_status=None)
    asyncio.run(status_writer.flush())
    written = recorder.writes[0][1]["status"]
    as_stored = {**written, "matchedPods": 0, "governedContainers": 0, "containers": {}}
    clock.now += 60
    status_writer.observe(
        KEY, generation=1, policy=policy("p"), problem=None, live_status=as_stored
    )
    asyncio.run(status_writer.flush())
    assert len(recorder.writes) == 1


def test_changes_are_throttled_per_policy() -> None:
    counts: dict[str, Any] = {"value": (1, 1, ContainerCounts(compliant=1))}
    status_writer, recorder, clock = writer(counts_provider=lambda ref: counts["value"])
    status_writer.observe(KEY, generation=1, policy=policy("p"), problem=None, live_status=None)
    asyncio.run(status_writer.flush())
    assert len(recorder.writes) == 1
    counts["value"] = (2, 2, ContainerCounts(compliant=1, missing=1))
    clock.now += 1
    wait = asyncio.run(status_writer.flush())
    assert len(recorder.writes) == 1  # too soon
    assert wait == pytest.approx(4.0)
    clock.now += 4
    asyncio.run(status_writer.flush())
    assert len(recorder.writes) == 2
    assert recorder.writes[1][1]["status"]["noncompliantContainers"] == 1


def test_counts_provider_receives_the_policy_ref() -> None:
    seen: list[str] = []

    def provider(ref: str) -> None:
        seen.append(ref)

    status_writer, _, _ = writer(counts_provider=provider)
    key = PolicyKey("GoMemPolicy", "team", "p")
    status_writer.observe(
        key, generation=1, policy=policy("p", "GoMemPolicy", "team"), problem=None, live_status=None
    )
    asyncio.run(status_writer.flush())
    assert seen == ["GoMemPolicy/team/p"]


def test_only_the_leader_writes() -> None:
    leader = {"value": False}
    status_writer, recorder, _ = writer(is_leader=lambda: leader["value"])
    status_writer.observe(KEY, generation=1, policy=policy("p"), problem=None, live_status=None)
    asyncio.run(status_writer.flush())
    assert recorder.writes == []
    leader["value"] = True
    asyncio.run(status_writer.flush())
    assert len(recorder.writes) == 1


def test_errors_are_retried_after_the_interval_and_gone_objects_forgotten() -> None:
    status_writer, recorder, clock = writer()
    status_writer.observe(KEY, generation=1, policy=policy("p"), problem=None, live_status=None)
    recorder.fail = RuntimeError("apiserver down")
    asyncio.run(status_writer.flush())
    recorder.fail = None
    asyncio.run(status_writer.flush())
    assert recorder.writes == []
    clock.now += 5
    asyncio.run(status_writer.flush())
    assert len(recorder.writes) == 1
    recorder.fail = PolicyGoneError("gone")
    status_writer.observe(KEY, generation=2, policy=policy("p"), problem=None, live_status=None)
    clock.now += 5
    asyncio.run(status_writer.flush())
    assert status_writer.desired(KEY) is None


def test_run_loop_writes_promptly_on_observe() -> None:
    async def scenario() -> list[tuple[PolicyKey, dict[str, Any]]]:
        recorder = Recorder()
        status_writer = PolicyStatusWriter(recorder, interval=30.0)
        task = asyncio.create_task(status_writer.run())
        await asyncio.sleep(0.01)
        status_writer.observe(KEY, generation=1, policy=policy("p"), problem=None, live_status=None)
        for _ in range(100):
            if recorder.writes:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        return recorder.writes

    assert len(asyncio.run(scenario())) == 1
