"""quantity.parse_bytes: Kubernetes quantities to exact whole bytes."""

from __future__ import annotations

import math
import time
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity

from gomemlimit_operator.core.quantity import (
    CEILING,
    MIB,
    QuantityError,
    QuantityTooLarge,
    parse_bytes,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("512Mi", 512 * MIB),
        ("1Gi", 1 << 30),
        ("1.5Gi", 3 << 29),
        ("0.5Ki", 512),
        ("1Ki", 1024),
        ("2Ti", 2 << 40),
        ("1Pi", 1 << 50),
        ("1Ei", 1 << 60),
        ("8Ei", 8 << 60),  # beyond int64: still exact
        ("500M", 500_000_000),
        ("1k", 1000),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),
        ("1e9", 10**9),
        ("1E3", 1000),  # E followed by digits is an exponent, not exa
        ("129e6", 129_000_000),
        ("1.5e3", 1500),
        ("+1Mi", MIB),
        (".5Ki", 512),
        ("1.", 1),
        ("1000m", 1),  # milli: 1000m is one byte
    ],
)
def test_parses_exactly(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1m", 1),  # a thousandth of a byte rounds up to a whole byte
        ("1001m", 2),
        ("0.1", 1),
        ("1.0000001Ki", 1025),
        ("100.5", 101),
        ("1n", 1),
    ],
)
def test_fractional_bytes_round_up(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


def test_huge_mantissa_with_suffix_is_exact() -> None:
    digits = "123456"
    assert parse_bytes(digits + "Ei") == int(digits) << 60
    assert parse_bytes("0." + "0" * 40 + "1Ei") == 1
    # 1024 and a tiny fraction: rounding to a fixed Decimal precision would lose the fraction.
    assert parse_bytes("1." + "0" * 300 + "1Ki") == 1025
    assert parse_bytes(f"{CEILING}") == CEILING


@pytest.mark.parametrize(
    "text",
    ["1e25", "123456789012345678901234567890Ei", "999999999999999999E", "1e999999999"],
)
def test_amounts_above_the_ceiling_are_refused_cheaply(text: str) -> None:
    # The API server stores "1e999999999" as a memory limit; an exact integer of it would
    # take minutes of CPU. The ceiling is checked on the Decimal, before any conversion.
    started = time.process_time()
    with pytest.raises(QuantityTooLarge, match="more than 1e24 bytes"):
        parse_bytes(text)
    assert time.process_time() - started < 0.05


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (536870912, 512 * MIB),
        (0, 0),
        (1.5, 2),  # YAML float: read as its decimal 1.5, rounded up
        (0.1, 1),
        (1e9, 10**9),
        (Decimal("2.5"), 3),
    ],
)
def test_numbers_from_yaml(value: int | float | Decimal, expected: int) -> None:
    assert parse_bytes(value) == expected


@pytest.mark.parametrize(
    "text",
    [
        "12xyz",
        "",
        " 1Gi",
        "1Gi ",
        "1 Gi",
        "1gi",
        "1GiB",
        "1MB",
        "1K",  # kilo is lower-case k
        "Mi",
        "1_000",
        "NaN",
        "Infinity",
        "0x10",
        "1e",
        "1.5.1",
        "--1",
        "1Mi1",
        "\uff11Gi",  # full-width digit one
    ],
)
def test_rejects_invalid_text(text: str) -> None:
    with pytest.raises(QuantityError, match="not a valid quantity"):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e" + "0" * 5000 + "3", 1000),  # int() refuses more than 4,300 digits
        ("1e-" + "0" * 5000 + "3", 1),
        ("0e99999999999999999999", 0),  # past Decimal's exponent limit: InvalidOperation
        ("1e-99999999999999999999", 1),
        ("1e-" + "9" * 5000, 1),
        ("0." + "0" * 100 + "1e124", 10**23),
    ],
)
def test_exponents_of_any_length(text: str, expected: int) -> None:
    """Found by tests/e2e/test_fuzz.py: a ValueError (or decimal.InvalidOperation) instead of a
    QuantityError made the webhook count an error, and the CLI exit 3 with a traceback."""
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "text", ["1e" + "9" * 5000, "1e99999999999999999999", "0.001e99999999999999999999"]
)
def test_exponents_past_every_limit_are_above_the_ceiling(text: str) -> None:
    with pytest.raises(QuantityTooLarge):
        parse_bytes(text)
    with pytest.raises(QuantityError, match="negative"):
        parse_bytes("-" + text)


@pytest.mark.parametrize("text", ["-1", "-1Mi", "-0.5Gi"])
def test_rejects_negative(text: str) -> None:
    with pytest.raises(QuantityError, match="negative"):
        parse_bytes(text)


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}, float("nan"), float("inf")])
def test_rejects_non_quantities(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_bytes(value)


def test_error_message_names_the_value() -> None:
    with pytest.raises(QuantityError) as info:
        parse_bytes("12xyz")
    assert str(info.value).startswith("'12xyz' is not a valid quantity")


@given(
    number=st.from_regex(r"[0-9]{1,12}(\.[0-9]{0,9})?", fullmatch=True),
    suffix=st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T"]),
)
def test_agrees_with_the_kubernetes_client(number: str, suffix: str) -> None:
    """The Kubernetes Python client's parse_quantity, rounded up, at a wide precision."""
    with localcontext() as ctx:
        ctx.prec = 80
        expected = math.ceil(parse_quantity(number + suffix))
    if expected > CEILING:
        with pytest.raises(QuantityTooLarge):
            parse_bytes(number + suffix)
    else:
        assert parse_bytes(number + suffix) == expected
