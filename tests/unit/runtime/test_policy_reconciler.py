"""PolicyReconciler: events and LISTs into the registry; events always win over a LIST."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gomemlimit_operator.core.policy_view import PolicyKey, PolicyView
from gomemlimit_operator.runtime.policy_reconciler import PolicyReconciler, namespace_ensurer


def obj(
    name: str,
    kind: str = "ClusterGoMemPolicy",
    namespace: str | None = None,
    generation: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "generation": generation}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "gomemlimit.io/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def names(registry: PolicyView) -> set[str]:
    return {p.ref for p in registry.policies()}


def test_valid_and_invalid_policies() -> None:
    registry = PolicyView()
    index = PolicyReconciler(registry)
    assert index.policy_event("ADDED", obj("good")).policy is not None
    outcome = index.policy_event("ADDED", obj("bad", gogc="99999999999"))
    assert outcome.error is not None
    assert outcome.problem is not None
    assert outcome.problem.startswith("spec.gogc")
    assert outcome.report
    assert names(registry) == {"ClusterGoMemPolicy/good"}
    assert registry.invalid()[PolicyKey("ClusterGoMemPolicy", None, "bad")].startswith("spec.gogc")
    # The same problem in the same generation is reported once (status updates re-deliver it).
    assert not index.policy_event("MODIFIED", obj("bad", gogc="99999999999")).report
    assert index.policy_event("MODIFIED", obj("bad", generation=2, gogc="99999999999")).report
    # Fixed: valid again.
    index.policy_event("MODIFIED", obj("bad", generation=3))
    assert names(registry) == {"ClusterGoMemPolicy/good", "ClusterGoMemPolicy/bad"}
    assert registry.invalid() == {}
    index.policy_event("DELETED", obj("good"))
    assert names(registry) == {"ClusterGoMemPolicy/bad"}


def test_listing_loads_and_removes_what_disappeared() -> None:
    registry = PolicyView()
    index = PolicyReconciler(registry)
    token = index.begin_listing()
    index.apply_listing(token, [obj("a"), obj("b", "GoMemPolicy", "team")], [ns("team", tier="1")])
    assert index.loaded
    assert names(registry) == {"ClusterGoMemPolicy/a", "GoMemPolicy/team/b"}
    assert registry.namespace_labels("team")["tier"] == "1"
    assert index.knows_namespace("team")
    # A resync without "a" and "team" (deleted while the watch was disconnected).
    token = index.begin_listing()
    index.apply_listing(token, [obj("b", "GoMemPolicy", "team")], [])
    assert names(registry) == {"GoMemPolicy/team/b"}
    assert not index.knows_namespace("team")


def test_events_during_a_listing_win() -> None:
    registry = PolicyView()
    index = PolicyReconciler(registry)
    token = index.begin_listing()
    # While the LIST is in flight: "old" is deleted, "new" is created, a namespace relabelled.
    index.policy_event("DELETED", obj("old"))
    index.policy_event("ADDED", obj("new"))
    index.namespace_event("MODIFIED", ns("team", tier="2"))
    # The LIST response was taken before those events.
    index.apply_listing(token, [obj("old")], [ns("team", tier="1")])
    assert names(registry) == {"ClusterGoMemPolicy/new"}
    assert registry.namespace_labels("team")["tier"] == "2"


def test_overlapping_lookups_keep_stamps_for_the_older_listing() -> None:
    registry = PolicyView()
    index = PolicyReconciler(registry)
    listing = index.begin_listing()
    index.policy_event("DELETED", obj("gone"))
    lookup = index.begin_listing()  # a namespace GET by the webhook starts and ends meanwhile
    index.apply_namespace_lookup(lookup, ns("x"), "x")
    index.apply_listing(listing, [obj("gone")], [ns("x")])
    assert names(registry) == set()


def test_unwatched_namespaces_are_ignored() -> None:
    registry = PolicyView()
    index = PolicyReconciler(registry, watches=lambda namespace: namespace == "mine")
    index.policy_event("ADDED", obj("p", "GoMemPolicy", "other"))
    index.policy_event("ADDED", obj("q", "GoMemPolicy", "mine"))
    index.policy_event("ADDED", obj("c"))
    assert names(registry) == {"GoMemPolicy/mine/q", "ClusterGoMemPolicy/c"}


def test_namespace_labels_matter_only_with_namespace_selectors() -> None:
    registry = PolicyView()
    index = PolicyReconciler(registry)
    index.policy_event("ADDED", obj("plain"))
    assert not index.needs_namespace_labels()
    index.policy_event("ADDED", obj("picky", namespaceSelector={"matchLabels": {"a": "b"}}))
    assert index.needs_namespace_labels()


class _Lister:
    """Records the namespaces the webhook's ensurer GETs; none of them exists."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get_namespace(self, name: str, timeout: float = 1.0) -> dict[str, Any] | None:
        self.asked.append(name)
        return None


@pytest.mark.parametrize(
    ("name", "looked_up"),
    [
        ("team-a", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("x" * 1_000_000, False),
        ("Team", False),
        ("%2F..%2Fsecrets", False),
        ("ns\n", False),
        ("-a", False),
        ("", False),
    ],
)
def test_the_webhook_never_looks_up_a_name_no_namespace_can_have(
    name: str, looked_up: bool
) -> None:
    """Found by tests/e2e/test_fuzz.py: a review naming a megabyte namespace made a GET with
    a megabyte URL, which took the whole timeout (1.5 s) and one of the lookup threads."""
    registry = PolicyView()
    index = PolicyReconciler(registry)
    index.policy_event("ADDED", obj("picky", namespaceSelector={"matchLabels": {"a": "b"}}))
    lister = _Lister()
    asyncio.run(namespace_ensurer(index, lister)(name))  # type: ignore[arg-type]
    assert lister.asked == ([name] if looked_up else [])
