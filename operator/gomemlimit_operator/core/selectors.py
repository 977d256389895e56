"""Label selectors, evaluated the way Kubernetes does (container globs: globs.py)."""

from __future__ import annotations

from collections.abc import Mapping

from gomemlimit_operator.core.api import LabelSelector

__all__ = ["matches_selector", "namespace_labels"]


def matches_selector(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: absent or empty selects everything."""
    if selector is None:
        return True
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions or ():
        present = req.key in labels
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
        if req.operator == "In" and (not present or labels[req.key] not in (req.values or ())):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in (req.values or ()):
            return False
    return True


def namespace_labels(name: str, labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """A namespace's labels, with the ``kubernetes.io/metadata.name`` label the API server sets."""
    return {**(labels or {}), "kubernetes.io/metadata.name": name}
