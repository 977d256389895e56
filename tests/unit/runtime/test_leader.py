"""Leader election on a Lease, against an in-memory Lease with real optimistic concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gomemlimit_operator.runtime.leader import (
    ElectionTiming,
    LeaderElector,
    LeaseConflictError,
    LeaseRecord,
)

TIMING = ElectionTiming()  # 15 s lease, renew every 5 s, deadline 10 s, poll every 2 s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LeaseServer:
    """One Lease object with resourceVersion preconditions, like the API server's."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.record: LeaseRecord | None = None
        self.version = 0
        self.broken: set[str] = set()
        """Identities whose requests fail (a partition between them and the API server)."""
        self.lost_replies: set[str] = set()
        """Identities whose writes succeed but whose replies never arrive."""
        self.latency = 0.0
        """Seconds each request takes."""
        self.writes: list[str | None] = []
        self.before_write: dict[str, Callable[[], object]] = {}
        """Run once right before an identity's next create or update (to interleave)."""

    def client(self, identity: str) -> LeaseClientFake:
        return LeaseClientFake(self, identity)

    def _store(self, record: LeaseRecord) -> LeaseRecord:
        self.version += 1
        self.record = replace(record, resource_version=str(self.version))
        self.writes.append(record.holder)
        return self.record


class LeaseClientFake:
    def __init__(self, server: LeaseServer, identity: str) -> None:
        self.server, self.identity = server, identity

    def _request(self) -> None:
        self.server.clock.now += self.server.latency
        if self.identity in self.server.broken:
            raise OSError("connection refused")

    def _reply(self, record: LeaseRecord) -> LeaseRecord:
        if self.identity in self.server.lost_replies:
            raise TimeoutError("read timed out")
        return record

    def get(self) -> LeaseRecord | None:
        self._request()
        return self.server.record

    def _interleave(self) -> None:
        hook = self.server.before_write.pop(self.identity, None)
        if hook is not None:
            hook()

    def create(self, record: LeaseRecord) -> LeaseRecord:
        self._request()
        self._interleave()
        if self.server.record is not None:
            raise LeaseConflictError("exists")
        return self._reply(self.server._store(record))

    def update(self, record: LeaseRecord) -> LeaseRecord:
        self._request()
        self._interleave()
        current = self.server.record
        if current is None or current.resource_version != record.resource_version:
            raise LeaseConflictError("changed")
        return self._reply(self.server._store(record))


def elector(server: LeaseServer, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(server.client(identity), identity, timing=TIMING, clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> LeaseServer:
    return LeaseServer(clock)


def round_of(candidate: LeaderElector) -> bool:
    """One round, as the campaign runs it: API errors mean 'not held'."""
    try:
        return candidate.try_acquire_or_renew()
    except (OSError, TimeoutError):
        return False


def test_the_first_candidate_creates_the_lease_and_the_second_follows(
    server: LeaseServer, clock: Clock
) -> None:
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    assert round_of(a)
    assert a.is_leader()
    assert not round_of(b)
    assert not b.is_leader()
    assert b.holder == "a"
    assert server.record is not None
    assert server.record.holder == "a"
    assert server.record.duration_seconds == 15
    assert server.record.transitions == 0


def test_a_renewing_leader_keeps_the_lease(server: LeaseServer, clock: Clock) -> None:
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    round_of(a)
    assert server.record is not None
    acquired = server.record.acquire_time
    for _ in range(60):  # five minutes
        clock.now += 5
        assert round_of(a)
        assert not round_of(b)
        assert a.is_leader()
        assert not b.is_leader()
    assert server.record.acquire_time == acquired  # renewals keep acquireTime
    assert server.writes == ["a"] * 61


def test_a_dead_leader_is_replaced_after_the_lease_duration(
    server: LeaseServer, clock: Clock
) -> None:
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    round_of(a)
    round_of(b)  # b sees a's record now
    # a dies. b polls every 2 s; it must wait 15 s from when it saw the last change.
    for _ in range(7):
        clock.now += 2
        assert not round_of(b)
    clock.now += 1  # 15 s since b saw a's last renewal
    assert round_of(b)
    assert b.is_leader()
    assert server.record is not None
    assert (server.record.holder, server.record.transitions) == ("b", 1)


def test_a_follower_that_starts_late_waits_a_full_lease(server: LeaseServer, clock: Clock) -> None:
    a = elector(server, "a", clock)
    round_of(a)
    clock.now += 60  # a died long ago, but the new follower cannot know when
    b = elector(server, "b", clock)
    assert not round_of(b)
    clock.now += 14.9
    assert not round_of(b)
    clock.now += 0.1
    assert round_of(b)


def test_a_partitioned_leader_stops_before_anyone_may_take_over(
    server: LeaseServer, clock: Clock
) -> None:
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    round_of(a)
    round_of(b)
    server.broken.add("a")
    clock.now += 9.9
    assert a.is_leader()  # still inside its renew deadline
    assert not round_of(a)
    clock.now += 0.1
    assert not a.is_leader()  # 10 s after its last renewal started
    clock.now += 4.9
    assert not round_of(b)  # 14.9 s: not yet expired
    clock.now += 0.1
    assert round_of(b)
    server.broken.clear()
    assert not round_of(a)  # a learns it lost
    assert a.holder == "b"


def test_release_hands_over_at_the_next_poll(server: LeaseServer, clock: Clock) -> None:
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    round_of(a)
    round_of(b)
    assert a.release()
    assert not a.is_leader()
    assert server.record is not None
    assert (server.record.holder, server.record.duration_seconds) == (None, 1)
    clock.now += 2
    assert round_of(b)
    assert not round_of(a)  # released for good: no round runs again
    assert not a.release()  # nothing to release twice
    assert server.writes == ["a", None, "b"]


def test_a_follower_releases_nothing(server: LeaseServer, clock: Clock) -> None:
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    round_of(a)
    round_of(b)
    assert not b.release()
    assert server.writes == ["a"]


def test_the_same_identity_takes_its_own_lease_back_at_once(
    server: LeaseServer, clock: Clock
) -> None:
    round_of(elector(server, "a", clock))
    clock.now += 1
    restarted = elector(server, "a", clock)  # a restarted process with the same identity
    assert round_of(restarted)
    assert server.record is not None
    assert server.record.transitions == 0


def test_racing_candidates_one_wins(server: LeaseServer, clock: Clock) -> None:
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    # b reads "no lease"; before b's create lands, a runs a whole round and creates it.
    server.before_write["b"] = lambda: round_of(a)
    assert not round_of(b)
    assert a.is_leader()
    assert not b.is_leader()
    # a dies; b and c both wait out the lease and read the same resourceVersion, but a
    # round of c lands first between b's read and b's update: b's update conflicts.
    c = elector(server, "c", clock)
    round_of(b)
    round_of(c)
    clock.now += 15
    server.before_write["b"] = lambda: round_of(c)
    assert not round_of(b)
    assert c.is_leader()
    assert not b.is_leader()
    assert server.writes == ["a", "c"]


def test_a_conflict_while_leading_steps_down_at_once(server: LeaseServer, clock: Clock) -> None:
    a = elector(server, "a", clock)
    round_of(a)
    assert server.record is not None
    server._store(replace(server.record, holder="intruder"))  # e.g. someone edited the Lease
    clock.now += 5
    assert not round_of(a)
    assert not a.is_leader()


def test_lost_replies_never_extend_leadership(server: LeaseServer, clock: Clock) -> None:
    a = elector(server, "a", clock)
    round_of(a)
    server.lost_replies.add("a")
    for _ in range(5):
        clock.now += 2
        round_of(a)  # the renewals land, but a never learns it
    assert not a.is_leader()  # 10 s after its last *confirmed* renewal


def test_timestamps_always_carry_microseconds(server: LeaseServer, clock: Clock) -> None:
    exact = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    a = LeaderElector(server.client("a"), "a", clock=clock, now=lambda: exact)
    round_of(a)
    assert server.record is not None
    assert server.record.renew_time is not None
    # The API server parses MicroTime with exactly six fractional digits.
    assert server.record.renew_time.isoformat() == "2026-01-02T03:04:05.000001+00:00"


def test_timing() -> None:
    assert ElectionTiming.for_lease(15) == ElectionTiming(15, 10, 5, 2)
    fast = ElectionTiming.for_lease(3)
    assert (fast.renew_interval, fast.renew_deadline, fast.retry_interval) == (1, 2, 0.6)
    assert fast.request_timeout == 1.0
    assert TIMING.request_timeout == 5.0
    with pytest.raises(ValueError, match="renew_deadline < lease_duration"):
        ElectionTiming(lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="retry_interval"):
        ElectionTiming(retry_interval=10)
    with pytest.raises(ValueError, match="identity"):
        LeaderElector(LeaseServer(Clock()).client(""), "")


# --- the safety property, under random schedules -----------------------------------------

steps = st.lists(
    st.one_of(
        st.tuples(st.just("round"), st.integers(0, 2)),
        st.tuples(st.just("advance"), st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0, 7.5])),
        st.tuples(st.just("break"), st.integers(0, 2)),
        st.tuples(st.just("heal"), st.integers(0, 2)),
        st.tuples(st.just("lose-replies"), st.integers(0, 2)),
        st.tuples(st.just("release"), st.integers(0, 2)),
        st.tuples(st.just("latency"), st.sampled_from([0.0, 0.5, 3.0])),
    ),
    max_size=80,
)


@settings(max_examples=500, deadline=None)
@given(steps)
def test_never_two_leaders_at_once(schedule: list[tuple[str, object]]) -> None:
    clock = Clock()
    server = LeaseServer(clock)
    candidates = [elector(server, name, clock) for name in "abc"]
    for action, arg in schedule:
        if action == "round":
            assert isinstance(arg, int)
            round_of(candidates[arg])
        elif action == "advance":
            assert isinstance(arg, float)
            clock.now += arg
        elif action == "break":
            server.broken.add("abc"[int(str(arg))])
        elif action == "heal":
            server.broken.discard("abc"[int(str(arg))])
            server.lost_replies.discard("abc"[int(str(arg))])
        elif action == "lose-replies":
            server.lost_replies.add("abc"[int(str(arg))])
        elif action == "release":
            assert isinstance(arg, int)
            with contextlib.suppress(OSError, TimeoutError):
                candidates[arg].release()
        else:
            assert isinstance(arg, float)
            server.latency = arg
        leaders = [c.identity for c in candidates if c.is_leader()]
        assert len(leaders) <= 1, leaders
        if leaders and server.record is not None:
            # Whoever believes it leads is the holder the API server has.
            assert server.record.holder == leaders[0]


# --- the campaign loop ---------------------------------------------------------------------


def test_the_campaign_announces_changes_and_stop_releases() -> None:
    server = LeaseServer(Clock())  # the fake's clock only matters for latency
    changes: list[tuple[str, bool]] = []
    fast = ElectionTiming(
        lease_duration=0.6, renew_deadline=0.4, renew_interval=0.1, retry_interval=0.05
    )
    a = LeaderElector(
        server.client("a"), "a", timing=fast, on_change=lambda on: changes.append(("a", on))
    )
    b = LeaderElector(
        server.client("b"), "b", timing=fast, on_change=lambda on: changes.append(("b", on))
    )

    async def wait_for(check: object, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():  # type: ignore[operator]
            assert loop.time() < deadline, "timed out"
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        task_a = asyncio.create_task(a.run())
        await wait_for(a.is_leader)
        task_b = asyncio.create_task(b.run())
        await asyncio.sleep(0.3)
        assert a.is_leader()
        assert not b.is_leader()
        task_a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task_a
        assert await a.stop()
        await wait_for(b.is_leader, timeout=1.0)  # released: no need to wait for expiry
        task_b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task_b
        assert await b.stop()

    asyncio.run(scenario())
    assert changes == [("a", True), ("a", False), ("b", True), ("b", False)]
    assert server.record is not None
    assert server.record.holder is None
