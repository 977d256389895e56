"""Builders for pods and policies shared by the unit tests."""

from __future__ import annotations

from typing import Any

from gomemlimit_operator.api import Policy, parse_policy


def policy(
    name: str = "p",
    kind: str = "ClusterGoMemPolicy",
    namespace: str | None = None,
    **spec: Any,
) -> Policy:
    """A validated policy from camelCase spec fields, exactly as a user writes them."""
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return parse_policy(
        {"apiVersion": "gomemlimit.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}
    )


def container(
    name: str = "app",
    limit: str | int | None = "512Mi",
    request: str | None = None,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name, "image": "example/app:1"}
    resources: dict[str, Any] = {}
    if request is not None:
        resources["requests"] = {"memory": request}
    if limit is not None:
        resources["limits"] = {"memory": limit}
    if resources:
        result["resources"] = resources
    if env is not None:
        result["env"] = env
    return result


def env_value(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}
