"""goruntime: Go's GOMEMLIMIT grammar and GOGC rules (checked against real Go in
test_go_runtime.py; these are the same rules without a Go toolchain)."""

from __future__ import annotations

import re

import pytest

from gomemlimit_operator.core.goruntime import (
    MAX_INT64,
    format_mib,
    is_no_limit,
    parse_byte_count,
    valid_gogc,
)

GO_GRAMMAR = re.compile(r"^[0-9]+(([KMGT]i)?B)?$")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("1B", 1),
        ("1KiB", 1 << 10),
        ("460MiB", 460 << 20),
        ("1GiB", 1 << 30),
        ("1TiB", 1 << 40),
        ("0460MiB", 460 << 20),  # leading zeros are fine
        ("9223372036854775807", MAX_INT64),
        ("9223372036854775807B", MAX_INT64),
        ("8388607TiB", 8388607 << 40),
        ("9007199254740991KiB", 9007199254740991 << 10),
    ],
)
def test_accepts_go_grammar(value: str, expected: int) -> None:
    assert parse_byte_count(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "512Mi",  # Kubernetes spelling: Go dies at start
        "1G",
        "1GB",
        "1KB",
        "1.5GiB",
        "1 GiB",
        " 1",
        "1 ",
        "1gib",
        "1kiB",
        "1PiB",
        "1EiB",
        "-1",
        "B",
        "MiB",
        "1iB",
        "1MiBB",
        "1_000",
        "0x10",
        "\uff11",  # full-width digit one
        "9223372036854775808",  # MaxInt64 + 1
        "8388608TiB",  # overflows int64 after the shift
        "9007199254740992KiB",
        "off ",
        "OFF",
    ],
)
def test_rejects_what_go_rejects(value: str) -> None:
    assert parse_byte_count(value) is None


@pytest.mark.parametrize("value", ["+1GiB", "+0", "-0", "-0B", "+1"])
def test_signed_values_are_invalid_on_purpose(value: str) -> None:
    """Go 1.21+ reads a leading sign through strconv.ParseInt and accepts these;
    Go 1.19/1.20 reject them. A pod image may carry any Go release, so the project
    treats them as invalid (test_go_runtime.py documents what the local Go does)."""
    assert parse_byte_count(value) is None


def test_every_accepted_value_matches_the_grammar() -> None:
    for value in ["0", "1B", "460MiB", "1TiB", "9223372036854775807"]:
        assert GO_GRAMMAR.fullmatch(value)
        assert parse_byte_count(value) is not None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", True), ("off", True), ("0", False), ("Off", False), ("none", False)],
)
def test_no_limit_spellings(value: str, expected: bool) -> None:
    assert is_no_limit(value) is expected


def test_format_mib() -> None:
    assert format_mib(460) == "460MiB"
    assert format_mib(1) == "1MiB"
    assert parse_byte_count(format_mib(12345)) == 12345 << 20
    with pytest.raises(ValueError, match="at least 1MiB"):
        format_mib(0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("off", True),
        ("0", True),
        ("100", True),
        ("2147483647", True),
        ("2147483648", False),
        ("-1", False),
        ("", False),
        ("OFF", False),
        ("50%", False),
        (" 100", False),
    ],
)
def test_valid_gogc(value: str, expected: bool) -> None:
    assert valid_gogc(value) is expected
