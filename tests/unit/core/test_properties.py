"""Property-based tests of the value contract against an independent exact computation.

The reference below never touches Fraction, Decimal or floats: it reads the ratio
as the decimal text a user writes ("0.7") and works on its numerator and
denominator (7 and 10) in integer arithmetic.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from unit_helpers import policy

from gomemlimit_operator.core.api import Policy, PolicyError
from gomemlimit_operator.core.engine import State, evaluate_pod, expected_gomemlimit, mutate_pod
from gomemlimit_operator.core.goruntime import parse_byte_count

MIB = 1 << 20
GO_GRAMMAR = re.compile(r"^[0-9]+(([KMGT]i)?B)?$")
MAX_INT64 = (1 << 63) - 1

settings.register_profile(
    "gomemlimit", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("gomemlimit")


def reference(limit: int, ratio_text: str, low: int | None, high: int | None) -> str | None:
    """The issue's value contract, written independently of the engine."""
    whole, _, digits = ratio_text.partition(".")
    assert whole == "0"
    numerator, denominator = int(digits), 10 ** len(digits)
    kept = limit * numerator // denominator  # floor(L * ratio), exactly
    headroom = limit - kept
    if low is not None and headroom < low:
        headroom = low
    if high is not None and headroom > high:
        headroom = high
    remaining = limit - headroom
    if remaining < MIB:
        return None
    value = remaining // MIB * MIB
    if value > MAX_INT64 or value >= limit:  # Go rejects it, or it is no limit at all
        return None
    return str(remaining // MIB) + "MiB"


# Ratios as people write them: 0.9, 0.75, 0.333, 0.999999 ... never 0 or 1.
ratios = st.integers(min_value=1, max_value=7).flatmap(
    lambda places: st.integers(min_value=1, max_value=10**places - 1).map(
        lambda n: f"0.{n:0{places}d}".rstrip("0")
    )
)
limits = st.one_of(
    st.integers(min_value=0, max_value=1 << 36),  # up to 64Gi, any byte count
    st.integers(min_value=1, max_value=1 << 20).map(lambda mib: mib * MIB),  # whole Mi
    st.integers(min_value=1, max_value=1 << 16).map(lambda mb: mb * 10**6),  # whole M
    st.integers(min_value=0, max_value=MAX_INT64),
)


@st.composite
def quantities(draw: st.DrawFn) -> tuple[int, str | int]:
    """A byte count and one way a user could write it in a policy."""
    unit, size = draw(
        st.sampled_from([("", 1), ("Ki", 1 << 10), ("Mi", MIB), ("Gi", 1 << 30), ("M", 10**6)])
    )
    amount = draw(st.integers(min_value=0, max_value=(1 << 34) // size))
    if unit == "" and draw(st.booleans()):
        return amount, amount  # an integer in YAML
    return amount * size, f"{amount}{unit}"


@given(limit=limits, ratio=ratios)
@example(limit=90 * MIB, ratio="0.7")  # a binary float gives 62MiB here
@example(limit=512 * MIB, ratio="0.9")
@example(limit=MIB, ratio="0.9")
@example(limit=MAX_INT64, ratio="0.9999999")
def test_engine_matches_reference(limit: int, ratio: str) -> None:
    spec = policy(ratio=float(ratio)).spec  # as a YAML or JSON number arrives
    assert expected_gomemlimit(limit, spec) == reference(limit, ratio, None, None)


Bound = tuple[int, str | int] | None


def bounded_policy(ratio: str, low: Bound, high: Bound) -> Policy | None:
    """The policy with these bounds, or None after checking that it is rejected."""
    fields: dict[str, Any] = {"ratio": float(ratio)}
    if low is not None:
        fields["minHeadroom"] = low[1]
    if high is not None:
        fields["maxHeadroom"] = high[1]
    if high is not None and high[0] == 0:
        with pytest.raises(PolicyError, match=r"spec\.maxHeadroom: .*greater than 0"):
            policy(**fields)
        return None
    if low is not None and high is not None and low[0] > high[0]:
        with pytest.raises(PolicyError, match="must not be greater than maxHeadroom"):
            policy(**fields)
        return None
    return policy(**fields)


@given(limit=limits, ratio=ratios, low=st.none() | quantities(), high=st.none() | quantities())
@example(limit=1 << 30, ratio="0.9", low=(64 * MIB, "64Mi"), high=(64 * MIB, "64Mi"))
def test_engine_matches_reference_with_headroom_bounds(
    limit: int, ratio: str, low: Bound, high: Bound
) -> None:
    pol = bounded_policy(ratio, low, high)
    if pol is not None:
        want = reference(limit, ratio, low and low[0], high and high[0])
        assert expected_gomemlimit(limit, pol.spec) == want


@given(limit=limits, ratio=ratios, low=st.none() | quantities(), high=st.none() | quantities())
@example(limit=MIB, ratio="0.1", low=None, high=(1, 1))  # 1 byte of headroom at most
def test_every_value_is_safe(limit: int, ratio: str, low: Bound, high: Bound) -> None:
    pol = bounded_policy(ratio, low, high)
    value = None if pol is None else expected_gomemlimit(limit, pol.spec)
    if value is None:
        return
    assert GO_GRAMMAR.fullmatch(value)
    count = parse_byte_count(value)
    assert count is not None
    assert count % MIB == 0
    assert MIB <= count < limit  # never the exceeds_limit state
    if low is not None:
        assert limit - count >= low[0]  # at least minHeadroom is left
    if high is not None:
        assert limit - count < high[0] + MIB  # at most maxHeadroom, plus the MiB rounding


@given(a=limits, b=limits, ratio=ratios)
def test_monotonic_in_the_limit(a: int, b: int, ratio: str) -> None:
    spec = policy(ratio=float(ratio), minHeadroom="16Mi", maxHeadroom="2Gi").spec
    small, large = sorted((a, b))

    def mib(limit: int) -> int:
        value = expected_gomemlimit(limit, spec)
        return 0 if value is None else int(value.removesuffix("MiB"))

    assert mib(small) <= mib(large)


@given(ratio=st.one_of(st.decimals(max_value=0, allow_nan=False), st.decimals(min_value=1)))
def test_ratios_outside_the_open_interval_are_rejected(ratio: Any) -> None:
    if not ratio.is_finite():
        return
    with pytest.raises(PolicyError, match=r"spec\.ratio"):
        policy(ratio=float(ratio) if abs(ratio) < 10**300 else ratio)


@given(
    limit=st.integers(min_value=1, max_value=1 << 40),
    ratio=ratios,
    existing=st.lists(st.sampled_from(["A", "B", "GOGC_X"]), max_size=3),
    gogc=st.none() | st.sampled_from(["off", "50", "100"]),
)
def test_mutate_then_audit_is_compliant_and_idempotent(
    limit: int, ratio: str, existing: list[str], gogc: str | None
) -> None:
    fields: dict[str, Any] = {"ratio": float(ratio)}
    if gogc is not None:
        fields["gogc"] = gogc
    pol = policy(**fields)
    env = [{"name": name, "value": "x"} for name in existing]
    metadata: dict[str, Any] = {}
    app = {"name": "app", "env": copy.deepcopy(env), "resources": {"limits": {"memory": limit}}}
    spec: dict[str, Any] = {"containers": [app]}
    mutate_pod(metadata, spec, pol)
    written = spec["containers"][0]["env"]
    assert written[: len(env)] == env  # existing entries untouched, new ones appended
    [report] = evaluate_pod(metadata, spec, pol)
    expected = reference(limit, ratio, None, None)
    # No value for the limit is a failing state, never a silent "compliant".
    assert report.state is (State.COMPLIANT if expected is not None else State.UNSATISFIABLE)
    assert report.gomemlimit == expected
    snapshot = copy.deepcopy((metadata, spec))
    assert not mutate_pod(metadata, spec, pol).changed
    assert (metadata, spec) == snapshot


def float_value(limit: int, ratio: float) -> int:
    """What a naive implementation computes: floor(L * ratio) in binary floating point."""
    return math.floor(limit * ratio) // MIB


def test_floats_get_one_mib_wrong_where_the_engine_does_not() -> None:
    """The pitfall behind "exact decimals only": at ratio 0.7, 289 of the limits from
    1Mi to 20000Mi round to the wrong MiB with floats (90Mi gives 62MiB, not 63MiB)."""
    spec = policy(ratio=0.7).spec
    wrong_with_floats = []
    for mib in range(1, 20001):
        limit = mib * MIB
        exact = reference(limit, "0.7", None, None)
        assert expected_gomemlimit(limit, spec) == exact
        naive = float_value(limit, 0.7)
        if (f"{naive}MiB" if naive >= 1 else None) != exact:
            wrong_with_floats.append(mib)
    assert len(wrong_with_floats) == 289
    assert 90 in wrong_with_floats
