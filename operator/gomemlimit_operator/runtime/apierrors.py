"""Kubernetes API errors, described in one short line for logs and readiness messages."""

from __future__ import annotations

__all__ = ["describe"]


def describe(exc: BaseException) -> str:
    """``HTTP 403 Forbidden`` for an API error, else the exception's own text or type."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return str(exc) or type(exc).__name__
