"""The registry's listeners: policy changes and namespace label changes."""

from __future__ import annotations

from unit_helpers import policy

from gomemlimit_operator.core.policy_view import PolicyKey, PolicyView

NAME = "kubernetes.io/metadata.name"


def test_namespace_listeners_hear_effective_label_changes_only() -> None:
    registry = PolicyView()
    heard: list[tuple[str, dict[str, str], dict[str, str]]] = []
    registry.subscribe_namespaces(lambda *change: heard.append(change))

    registry.set_namespace("plain", None)  # only the name label: what it had when unknown
    registry.set_namespace("plain", {NAME: "plain"})
    assert heard == []

    registry.set_namespace("shop", {"env": "prod"})
    registry.set_namespace("shop", {"env": "prod"})  # a re-listing repeats it
    assert heard == [("shop", {NAME: "shop"}, {"env": "prod", NAME: "shop"})]

    registry.set_namespace("shop", {"env": "dev"})
    registry.remove_namespace("shop")
    registry.remove_namespace("shop")
    registry.remove_namespace("plain")  # had no labels of its own: nothing changes
    assert heard[1:] == [
        ("shop", {"env": "prod", NAME: "shop"}, {"env": "dev", NAME: "shop"}),
        ("shop", {"env": "dev", NAME: "shop"}, {NAME: "shop"}),
    ]
    assert registry.namespace_labels("shop") == {NAME: "shop"}


def test_listeners_run_after_the_lock_is_released() -> None:
    registry = PolicyView()
    seen: list[object] = []
    # A listener that reads the registry would deadlock if it ran under the lock.
    registry.subscribe_namespaces(
        lambda name, old, new: seen.append(registry.namespace_labels(name))
    )
    registry.subscribe(lambda key, old, new: seen.append(registry.governing("a", {})))
    registry.set_namespace("a", {"team": "x"})
    registry.set_policy(policy("all"))
    registry.remove_policy(PolicyKey("ClusterGoMemPolicy", None, "all"))
    assert seen[0] == {"team": "x", NAME: "a"}
    assert seen[1] is not None
    assert seen[2] is None
