"""The status a policy should have: a ``Ready`` and a ``Compliant`` condition and counts.

Pure: from a policy's validity, generation and (optional) container counts. The runtime's
status writer decides when to write it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError

from gomemlimit_operator.core.api import ContainerCounts, Mode, Policy, PolicyStatus
from gomemlimit_operator.core.engine import NONCOMPLIANT_STATES

__all__ = [
    "COMPLIANT",
    "READY",
    "Counts",
    "build_status",
    "noncompliant_count",
    "normalized_status",
]

READY: Final = "Ready"
COMPLIANT: Final = "Compliant"

Counts = tuple[int, int, ContainerCounts]
"""(matched pods, governed containers, containers per state) of one policy."""


def noncompliant_count(counts: ContainerCounts) -> int:
    """Containers in states that need someone to act (engine.NONCOMPLIANT_STATES)."""
    return sum(int(getattr(counts, str(state))) for state in NONCOMPLIANT_STATES)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    old = None
    for item in (previous or {}).get("conditions") or ():
        if isinstance(item, Mapping) and item.get("type") == type_:
            old = item
    keep = old is not None and old.get("status") == status and old.get("lastTransitionTime")
    condition: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": old["lastTransitionTime"] if keep and old else now,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _describe_counts(counts: ContainerCounts) -> str:
    parts = [
        f"{str(state).replace('_', ' ')} {getattr(counts, str(state))}"
        for state in sorted(NONCOMPLIANT_STATES)
        if getattr(counts, str(state))
    ]
    return ", ".join(parts)


def build_status(
    *,
    generation: int | None,
    policy: Policy | None,
    problem: str | None,
    counts: Counts | None,
    previous: Mapping[str, Any] | None,
    now: str | None = None,
) -> dict[str, Any]:
    """The status a policy should have. ``problem`` (``"spec.x: ..."``) marks it invalid.

    A condition keeps its ``lastTransitionTime`` while its status stays the same.
    """
    now = now or _now()
    status: dict[str, Any] = {}
    if generation is not None:
        status["observedGeneration"] = generation
    if problem is not None:
        ready = _condition(READY, "False", "InvalidSpec", problem, generation, previous, now)
        compliant = _condition(
            COMPLIANT,
            "Unknown",
            "InvalidSpec",
            "the policy is invalid and governs no pods",
            generation,
            previous,
            now,
        )
        counts = (0, 0, ContainerCounts())
    else:
        audit = policy is not None and policy.spec.mode is Mode.AUDIT
        message = (
            "valid; audit mode: reports compliance, never injects"
            if audit
            else "valid; GOMEMLIMIT is injected at pod creation"
        )
        ready = _condition(READY, "True", "Valid", message, generation, previous, now)
        if counts is None:
            compliant = _condition(
                COMPLIANT,
                "Unknown",
                "NotObserved",
                "pod compliance has not been observed yet",
                generation,
                previous,
                now,
            )
        else:
            matched, governed, by_state = counts
            bad = noncompliant_count(by_state)
            if bad == 0:
                compliant = _condition(
                    COMPLIANT,
                    "True",
                    "AllCompliant",
                    f"{governed} governed containers in {matched} pods; none needs action",
                    generation,
                    previous,
                    now,
                )
            else:
                compliant = _condition(
                    COMPLIANT,
                    "False",
                    "NoncompliantContainers",
                    f"{bad} of {governed} governed containers need action: "
                    f"{_describe_counts(by_state)}",
                    generation,
                    previous,
                    now,
                )
    status["conditions"] = [ready, compliant]
    if counts is not None:
        matched, governed, by_state = counts
        status["matchedPods"] = matched
        status["governedContainers"] = governed
        status["noncompliantContainers"] = noncompliant_count(by_state)
        status["containers"] = by_state.model_dump(by_alias=True, mode="json")
    return normalized_status(status) or status


def normalized_status(status: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The status as the API server stores it (schema defaults applied); None if malformed."""
    if not isinstance(status, Mapping):
        return None
    try:
        model = PolicyStatus.model_validate(dict(status))
    except ValidationError:
        return None
    dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    return {key: dumped[key] for key in status if key in dumped}
