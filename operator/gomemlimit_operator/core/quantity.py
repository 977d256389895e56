"""Kubernetes resource quantities as exact whole bytes.

apimachinery's grammar (``resource/quantity.go``): a decimal number, then a binary SI suffix
(Ki ... Ei), a decimal SI suffix (n ... E) or a decimal exponent (e3, E-2). The number is read
with ``Decimal`` at a precision wide enough to be exact for any input, and fractional bytes
round up to the next byte, as Kubernetes rounds them. (The core wing imports no Kubernetes
client; ``kubernetes.utils.parse_quantity`` is the same arithmetic, without the strict
grammar, the exactness or the ceiling.)

The ceiling bounds the work. The API server stores decimal quantities as an int64
mantissa times ``10**scale`` with any int32 scale, uncapped: ``1e999999`` is a memory
limit it accepts. Turning that into an exact integer takes a Python process 45 s of CPU,
so amounts above :data:`CEILING` (10^24 bytes, a million times more than any int64 can
hold) raise :class:`QuantityTooLarge` after a cheap ``Decimal`` comparison, before any
big-integer arithmetic.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, localcontext

__all__ = ["CEILING", "CEILING_TEXT", "MIB", "QuantityError", "QuantityTooLarge", "parse_bytes"]

MIB = 1 << 20
CEILING = 10**24
"""The largest amount, in bytes, that :func:`parse_bytes` converts to an integer."""
CEILING_TEXT = "1e24"
""":data:`CEILING` as a quantity, for CEL rules and messages."""

# apimachinery's grammar: <sign><digits>[.<digits>]<suffix>, where the suffix is a
# binary SI unit, a decimal SI unit or a decimal exponent (resource/quantity.go).
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?"
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


class QuantityError(ValueError):
    """A value that is not a valid, non-negative Kubernetes quantity."""


class QuantityTooLarge(QuantityError):
    """A valid quantity above :data:`CEILING` bytes."""


def parse_bytes(value: object) -> int:
    """Parse a Kubernetes quantity into whole bytes, rounding fractions up.

    Accepts the strings and integers that appear in manifests (``"512Mi"``,
    ``"1.5Gi"``, ``"1e9"``, ``1073741824``). Floats from YAML are read through
    their shortest decimal form, never through binary arithmetic.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise QuantityError(f"expected a quantity such as 512Mi, got {value!r}")
    text = value if isinstance(value, str) else _decimal_text(value)
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise QuantityError(f"{text!r} is not a valid quantity (examples: 512Mi, 1Gi, 500M)")
    with localcontext() as ctx:
        # Exact for any input: the product of the written digits and the largest suffix
        # (2**60, 19 digits) never has more significant digits than this.
        ctx.prec = len(text) + 40
        number, suffix = match["number"], match["suffix"] or ""
        if suffix in _BINARY:
            amount = Decimal(number) * (1 << _BINARY[suffix])
        else:  # a Decimal built from text keeps any exponent exactly: 1e999999 costs nothing
            exponent = _DECIMAL[suffix] if suffix in _DECIMAL else _exponent(suffix[1:], text)
            amount = Decimal(f"{number}e{exponent}")
        if amount < 0:
            raise QuantityError(f"{text!r} is negative")
        if amount > CEILING:  # compares exponents: cheap for any size
            raise QuantityTooLarge(f"{text!r} is more than {CEILING_TEXT} bytes")
        return math.ceil(amount)


def _exponent(written: str, text: str) -> int:
    """A decimal exponent, clamped to ``len(text) + 25`` either way. Beyond that, any number
    of that many digits is already above the ceiling, or below one byte (rounded up to 1),
    so the result is the same; and there is no ``int()`` of thousands of digits (a
    ValueError past 4,300) nor a Decimal past its exponent limit (InvalidOperation)."""
    bound = len(text) + 25
    digits = written.lstrip("+-").lstrip("0") or "0"
    magnitude = bound if len(digits) > len(str(bound)) else min(int(digits), bound)
    return -magnitude if written.startswith("-") else magnitude


def _decimal_text(value: int | float | Decimal) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise QuantityError(f"{value!r} is not a valid quantity")
    # repr() of a float is the shortest decimal that reads back as the same float,
    # which is the decimal a person wrote in YAML or JSON.
    return format(Decimal(repr(value)) if isinstance(value, float) else Decimal(value), "f")
