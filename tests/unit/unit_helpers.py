"""The one set of builders for the unit tests: policies, containers, pods, a fake clock."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gomemlimit_operator.core.api import Policy, parse_policy
from gomemlimit_operator.core.engine import pod_facts
from gomemlimit_operator.core.records import PodStore


def policy(
    name: str = "p",
    kind: str | None = None,
    namespace: str | None = None,
    **spec: Any,
) -> Policy:
    """A validated policy from camelCase spec fields, exactly as a user writes them.

    ``kind`` defaults to GoMemPolicy with a ``namespace`` and to ClusterGoMemPolicy without.
    """
    kind = kind or ("ClusterGoMemPolicy" if namespace is None else "GoMemPolicy")
    metadata: dict[str, Any] = {"name": name, "generation": 1}
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


VALUE_CONTRACT_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # (memory limit, policy spec as written, expected GOMEMLIMIT). test_engine.py checks
    # the engine gives these; test_go_runtime.py checks Go reads each as the same bytes.
    ("512Mi", {}, "460MiB"),  # the example
    ("1Gi", {}, "921MiB"),  # floor(1024 * 0.9) = 921.6 -> 921
    ("128Mi", {}, "115MiB"),
    ("100Mi", {"ratio": 0.5}, "50MiB"),
    ("1Gi", {"ratio": 0.75}, "768MiB"),
    ("90Mi", {"ratio": 0.7}, "63MiB"),  # binary floats give 62MiB here
    ("2Mi", {}, "1MiB"),
    ("1Mi", {}, None),  # 0.9MiB rounds down to 0: nothing to inject
    ("1048576", {"ratio": 0.999999}, None),
    ("1", {}, None),
    ("0", {}, None),
    ("500M", {}, "429MiB"),  # 450,000,000 bytes = 429.15MiB
    ("1.5Gi", {"ratio": 0.95}, "1459MiB"),
    ("64Gi", {"ratio": 0.99}, "64880MiB"),
    ("256Mi", {"minHeadroom": "64Mi"}, "192MiB"),
    ("4Gi", {"minHeadroom": "64Mi"}, "3686MiB"),
    ("32Gi", {"maxHeadroom": "1Gi"}, "31744MiB"),
    ("1Gi", {"minHeadroom": "100Mi", "maxHeadroom": "100Mi"}, "924MiB"),
    ("512Mi", {"minHeadroom": "100M"}, "416MiB"),
    ("2Mi", {"ratio": 0.5, "maxHeadroom": "0.5"}, "1MiB"),
    ("64Mi", {"minHeadroom": "64Mi"}, None),
    ("8Ti", {"ratio": 0.9999}, "8387769MiB"),
]


INVALID_POLICY_SPECS: list[tuple[dict[str, Any], str]] = [
    # (GoMemPolicy spec, the field the error names). test_hostile_input.py checks the
    # pydantic models reject each; tests/e2e/test_policies.py checks the API server does too.
    ({"ratio": 1.5}, "spec.ratio"),
    ({"ratio": 0}, "spec.ratio"),
    ({"ratio": "0.9"}, "spec.ratio"),
    ({"minHeadroom": "1Gi", "maxHeadroom": "64Mi"}, "spec.maxHeadroom"),
    ({"maxHeadroom": 0}, "spec.maxHeadroom"),
    ({"maxHeadroom": "0Mi"}, "spec.maxHeadroom"),
    ({"minHeadroom": "64 MB"}, "spec.minHeadroom"),
    ({"minHeadroom": -5}, "spec.minHeadroom"),
    ({"minHeadroom": "10000000E"}, "spec.minHeadroom"),  # 1e25 bytes
    ({"maxHeadroom": "1" * 65}, "spec.maxHeadroom"),
    ({"mode": "dry"}, "spec.mode"),
    ({"onExisting": "keep"}, "spec.onExisting"),
    ({"includeInitContainers": "yes"}, "spec.includeInitContainers"),
    ({"priority": 2**31}, "spec.priority"),
    ({"priority": "5"}, "spec.priority"),
    ({"gogc": "fast"}, "spec.gogc"),
    ({"gogc": "2147483648"}, "spec.gogc"),
    ({"gogc": "99999999999"}, "spec.gogc"),
    ({"containers": []}, "spec.containers"),
    ({"containers": [""]}, "spec.containers[0]"),
    ({"containers": ["a" * 129]}, "spec.containers[0]"),
    ({"containers": ["a"] * 65}, "spec.containers"),
    ({"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "spec.selector"),
    (
        {"selector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
        "spec.selector",
    ),
    ({"selector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}}, "spec.selector"),
    ({"selector": {"matchExpressions": [{"key": "", "operator": "Exists"}]}}, "spec.selector"),
    ({"selector": {"matchLabels": {f"k{i}": "v" for i in range(33)}}}, "spec.selector"),
    ({"selector": {"matchLabels": {"k": "v" * 64}}}, "spec.selector"),
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pod(
    name: str,
    namespace: str = "default",
    *,
    uid: str | None = None,
    labels: Mapping[str, str] | None = None,
    limit: str | None = "1Gi",
    gomemlimit: str | None = None,
    injected: bool = False,
    sidecar: bool = False,
    skip: bool = False,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app"}
    if limit is not None:
        container["resources"] = {"limits": {"memory": limit}}
    if gomemlimit is not None:
        container["env"] = [{"name": "GOMEMLIMIT", "value": gomemlimit}]
    annotations: dict[str, str] = {}
    if injected and gomemlimit is not None:
        annotations["gomemlimit.io/injected"] = json.dumps({"app": {"GOMEMLIMIT": gomemlimit}})
    if skip:
        annotations["gomemlimit.io/skip"] = "true"
    containers = [container]
    if sidecar:
        containers.append({"name": "proxy", "resources": {"limits": {"memory": "128Mi"}}})
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": uid or f"uid-{namespace}-{name}",
            "labels": dict(labels or {}),
            "annotations": annotations,
        },
        "spec": {"containers": containers},
    }


def observe(store: PodStore, pod: Mapping[str, Any], *, listing: bool = False) -> None:
    md = pod["metadata"]
    store.observe(
        md["namespace"],
        md["name"],
        md["uid"],
        md.get("labels"),
        pod_facts(md, pod["spec"]),
        listing=listing,
    )
