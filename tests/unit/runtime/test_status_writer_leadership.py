"""The status writer under leader election: it stops as soon as leadership is lost."""

from __future__ import annotations

import asyncio
from typing import Any

from unit_helpers import policy

from gomemlimit_operator.core.policy_view import PolicyKey
from gomemlimit_operator.runtime.status_writer import PolicyStatusWriter


def test_losing_leadership_stops_the_writes_of_the_current_round() -> None:
    leading = True
    written: list[str] = []

    def patch(key: PolicyKey, body: dict[str, Any]) -> None:
        nonlocal leading
        written.append(key.name)
        if len(written) == 1:
            leading = False  # the lease is lost while the first write is in flight

    status_writer = PolicyStatusWriter(patch, interval=5.0, is_leader=lambda: leading)
    for name in ("a", "b", "c"):
        key = PolicyKey("ClusterGoMemPolicy", None, name)
        status_writer.observe(
            key, generation=1, policy=policy(name), problem=None, live_status=None
        )
    asyncio.run(status_writer.flush())
    assert written == ["a"]
    leading = True  # leads again: the rest is still due
    asyncio.run(status_writer.flush())
    assert written == ["a", "b", "c"]
    assert status_writer.writes == 3
