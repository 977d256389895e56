"""The Go runtime's rules for the GOMEMLIMIT and GOGC environment variables.

Mirrors ``parseByteCount`` and ``readGOMEMLIMIT`` in Go's ``src/runtime``: a
value Go rejects makes the program die at start with ``fatal error: malformed
GOMEMLIMIT`` (exit 2). tests/unit/test_go_runtime.py checks every rule here
against the real Go runtime.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "GOGC",
    "GOMEMLIMIT",
    "MAX_INT64",
    "format_mib",
    "is_no_limit",
    "parse_byte_count",
    "valid_gogc",
]

GOMEMLIMIT: Final = "GOMEMLIMIT"
GOGC: Final = "GOGC"
MAX_INT64: Final = (1 << 63) - 1

# The grammar every Go release since 1.19 accepts. Go 1.21+ also reads a leading
# sign through strconv.ParseInt ("+1GiB", "-0"); older runtimes reject that, so
# such values count as invalid here: a pod image may carry any Go version.
_BYTE_COUNT: Final = re.compile(r"([0-9]+)(?:([KMGT])iB|B)?")
_UNIT_SHIFT: Final = {None: 0, "K": 10, "M": 20, "G": 30, "T": 40}
_GOGC: Final = re.compile(r"off|[0-9]+")


def is_no_limit(value: str) -> bool:
    """True for the two spellings Go reads as "no memory limit": unset or ``off``."""
    return value in ("", "off")


def parse_byte_count(value: str) -> int | None:
    """Bytes for a GOMEMLIMIT value Go accepts, or None when Go would refuse to start.

    ``""`` and ``"off"`` are not byte counts; check them with :func:`is_no_limit` first.
    """
    match = _BYTE_COUNT.fullmatch(value)
    if match is None:
        return None
    digits, unit = match.groups()
    count = int(digits) << _UNIT_SHIFT[unit]
    if count > MAX_INT64:
        return None  # Go: overflow past MaxInt64 is malformed
    return count


def format_mib(mebibytes: int) -> str:
    """The canonical GOMEMLIMIT this project writes: a whole number of MiB."""
    if mebibytes < 1:
        raise ValueError(f"a GOMEMLIMIT must be at least 1MiB, got {mebibytes}")
    return f"{mebibytes}MiB"


def valid_gogc(value: str) -> bool:
    """GOGC values this project writes: ``off`` or a non-negative integer.

    Go itself silently falls back to 100 for anything else, which is why a
    policy that asks for anything else is rejected instead.
    """
    return _GOGC.fullmatch(value) is not None and (value == "off" or int(value) <= 2**31 - 1)
