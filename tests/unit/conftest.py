"""Fixtures shared by the pod watcher and metrics tests: a pod store under one
all-governing ClusterGoMemPolicy, on a fake clock. Test modules that need another
setup (test_records, test_leader, test_webhook_unit) define their own fixtures of
the same names, which take precedence."""

from __future__ import annotations

import pytest
from unit_helpers import Clock, policy

from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.core.records import PodStore


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> PolicyView:
    registry = PolicyView()
    registry.set_policy(policy("all"))
    return registry


@pytest.fixture
def store(registry: PolicyView, clock: Clock) -> PodStore:
    store = PodStore(registry, settle_seconds=5, clock=clock, wall_clock=clock)
    registry.subscribe(store.policy_changed)
    return store
