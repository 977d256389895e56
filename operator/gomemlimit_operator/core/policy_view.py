"""The operator's in-memory view of policies and namespace labels.

Filled by the watch handlers, read by the webhook and the pod watcher. Holds
validated policies only (an invalid one is remembered by reference, with its
problem, for status); never whole Kubernetes objects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gomemlimit_operator.core.api import Policy, object_ref
from gomemlimit_operator.core.engine import governing_policy
from gomemlimit_operator.core.selectors import namespace_labels

__all__ = ["Listener", "NamespaceListener", "PolicyKey", "PolicyView"]


@dataclass(frozen=True, order=True)
class PolicyKey:
    kind: str
    namespace: str | None
    name: str

    @property
    def ref(self) -> str:
        return object_ref(self.kind, self.name, self.namespace)

    @classmethod
    def of(cls, policy: Policy) -> PolicyKey:
        return cls(policy.kind, policy.namespace, policy.name)


Listener = Callable[[PolicyKey, Policy | None, Policy | None], None]
"""Called with (key, old, new) after a valid policy appears, changes or goes away."""
NamespaceListener = Callable[[str, dict[str, str], dict[str, str]], None]
"""Called with (name, old labels, new labels) after a namespace's effective labels change.

Effective labels always include ``kubernetes.io/metadata.name``; a namespace the registry
does not know has just that one, so learning about a labelled namespace, or forgetting one,
is a change too. Repeating the same labels (a re-listing) notifies no one.
"""


class PolicyView:
    """Thread-safe store of valid policies, invalid-policy problems and namespace labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies: dict[PolicyKey, Policy] = {}
        self._invalid: dict[PolicyKey, str] = {}
        self._namespaces: dict[str, dict[str, str]] = {}
        self._listeners: list[Listener] = []
        self._namespace_listeners: list[NamespaceListener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def subscribe_namespaces(self, listener: NamespaceListener) -> None:
        """Call ``listener`` whenever a namespace's effective labels change.

        Listeners run in the caller's thread, after the registry's lock is released.
        """
        self._namespace_listeners.append(listener)

    def set_policy(self, policy: Policy) -> None:
        key = PolicyKey.of(policy)
        with self._lock:
            old = self._policies.get(key)
            self._policies[key] = policy
            self._invalid.pop(key, None)
        if old != policy:
            self._notify(key, old, policy)

    def set_invalid(self, key: PolicyKey, problem: str) -> None:
        """An object that failed validation governs nothing until it is fixed."""
        with self._lock:
            old = self._policies.pop(key, None)
            self._invalid[key] = problem
        if old is not None:
            self._notify(key, old, None)

    def remove_policy(self, key: PolicyKey) -> None:
        with self._lock:
            old = self._policies.pop(key, None)
            self._invalid.pop(key, None)
        if old is not None:
            self._notify(key, old, None)

    def policies(self) -> list[Policy]:
        with self._lock:
            return list(self._policies.values())

    def invalid(self) -> dict[PolicyKey, str]:
        with self._lock:
            return dict(self._invalid)

    def set_namespace(self, name: str, labels: Mapping[str, str] | None) -> None:
        new = namespace_labels(name, labels)
        with self._lock:
            old = self._namespaces.get(name) or namespace_labels(name)
            self._namespaces[name] = new
        if old != new:
            self._notify_namespace(name, old, new)

    def remove_namespace(self, name: str) -> None:
        with self._lock:
            old = self._namespaces.pop(name, None)
        default = namespace_labels(name)
        if old is not None and old != default:
            self._notify_namespace(name, old, default)

    def namespace_labels(self, name: str) -> dict[str, str]:
        with self._lock:
            return self._namespaces.get(name) or namespace_labels(name)

    def governing(self, namespace: str, pod_labels: Mapping[str, str]) -> Policy | None:
        """The one policy that governs a pod with these labels in this namespace, if any."""
        with self._lock:
            policies = list(self._policies.values())
            labels = self._namespaces.get(namespace) or namespace_labels(namespace)
        return governing_policy(namespace, pod_labels, labels, policies)

    def _notify(self, key: PolicyKey, old: Policy | None, new: Policy | None) -> None:
        for listener in list(self._listeners):
            listener(key, old, new)

    def _notify_namespace(self, name: str, old: dict[str, str], new: dict[str, str]) -> None:
        for listener in list(self._namespace_listeners):
            listener(name, dict(old), dict(new))
