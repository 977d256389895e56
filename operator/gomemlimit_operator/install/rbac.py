"""The operator's RBAC, declared once as data: the chart's and deploy/'s Roles come from here.

Least privilege. Every rule says why the operator needs it. Two rule sets are conditional:

* ``certificates`` rules exist only when the operator manages its own certificates
  (``--manage-certificates``): its Secret and its MutatingWebhookConfiguration, both by
  ``resourceNames``. With cert-manager or a user-provided Secret the operator reads no Secret.

A rule that names objects (``resource_names``) names them by role (:class:`Name`); the caller
maps each role to the real name (a Helm expression in the chart, a string elsewhere).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gomemlimit_operator.core import api

__all__ = [
    "AUDIT_READER_NAME",
    "AUDIT_READER_RULES",
    "LEASE_NAME",
    "RULES",
    "Name",
    "Rule",
    "Scope",
    "audit_reader_cluster_role",
    "cluster_role",
    "policy_rules",
    "role",
]

LEASE_NAME: Final = "gomemlimit-operator"
"""The leader-election Lease (docs/operator.md, "High availability")."""


class Scope(enum.Enum):
    CLUSTER = "cluster"
    """A ClusterRole rule."""
    NAMESPACE = "namespace"
    """A Role rule in the operator's own namespace."""


class Name(enum.Enum):
    """Objects a rule may name, by their role."""

    LEASE = "lease"
    CERTIFICATE_SECRET = "certificate-secret"
    WEBHOOK_CONFIGURATION = "webhook-configuration"


@dataclass(frozen=True)
class Rule:
    scope: Scope
    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    resource_names: tuple[Name, ...] = ()
    certificates: bool = False
    """Only with --manage-certificates."""


_READ: Final = ("get", "list", "watch")
_POLICY_RESOURCES: Final = tuple(api.PLURALS[kind] for kind in api.POLICY_KINDS)

RULES: Final[tuple[Rule, ...]] = (
    Rule(
        Scope.CLUSTER,
        "",
        ("pods", "namespaces"),
        _READ,
        "the pod watcher, and namespace labels for ClusterGoMemPolicy selectors",
    ),
    Rule(Scope.CLUSTER, api.GROUP, _POLICY_RESOURCES, _READ, "the policy index"),
    Rule(
        Scope.CLUSTER,
        api.GROUP,
        tuple(f"{plural}/status" for plural in _POLICY_RESOURCES),
        ("get", "patch"),
        "policy status, written by the leader",
    ),
    Rule(Scope.CLUSTER, "", ("events",), ("create",), "InvalidSpec events on policies"),
    Rule(
        Scope.CLUSTER,
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        _READ,
        "kopf's resource discovery (it logs 403s without)",
    ),
    Rule(
        Scope.NAMESPACE,
        "coordination.k8s.io",
        ("leases",),
        ("create",),
        "creating the leader Lease (create cannot be limited by name)",
    ),
    Rule(
        Scope.NAMESPACE,
        "coordination.k8s.io",
        ("leases",),
        ("get", "update"),
        "leader election",
        resource_names=(Name.LEASE,),
    ),
    Rule(
        Scope.NAMESPACE,
        "",
        ("secrets",),
        ("get", "update"),
        "the operator-managed CA and serving certificate (the chart creates the Secret)",
        resource_names=(Name.CERTIFICATE_SECRET,),
        certificates=True,
    ),
    Rule(
        Scope.CLUSTER,
        "admissionregistration.k8s.io",
        ("mutatingwebhookconfigurations",),
        ("get", "patch"),
        "patching the caBundle after a rotation",
        resource_names=(Name.WEBHOOK_CONFIGURATION,),
        certificates=True,
    ),
)
"""Everything the operator may do. Nothing else: no other Secret, no write on Pods."""


def policy_rules(
    scope: Scope,
    names: Mapping[Name, str],
    *,
    manage_certificates: bool,
    rules: Iterable[Rule] = RULES,
) -> list[dict[str, Any]]:
    """The Kubernetes PolicyRules of one scope, with the named objects' real names."""
    return [
        rule_dict(rule, names)
        for rule in rules
        if rule.scope is scope and (manage_certificates or not rule.certificates)
    ]


def rule_dict(rule: Rule, names: Mapping[Name, str]) -> dict[str, Any]:
    """One rule as a Kubernetes PolicyRule."""
    out: dict[str, Any] = {
        "apiGroups": [rule.group],
        "resources": list(rule.resources),
        "verbs": list(rule.verbs),
    }
    if rule.resource_names:
        out["resourceNames"] = [names[name] for name in rule.resource_names]
    return out


def _names(secret: str, webhook_configuration: str, lease: str = LEASE_NAME) -> dict[Name, str]:
    return {
        Name.LEASE: lease,
        Name.CERTIFICATE_SECRET: secret,
        Name.WEBHOOK_CONFIGURATION: webhook_configuration,
    }


def cluster_role(
    name: str, *, webhook_configuration: str, manage_certificates: bool = True
) -> dict[str, Any]:
    """The ClusterRole (a plain object, for tests and non-Helm installs)."""
    names = _names("", webhook_configuration)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": policy_rules(Scope.CLUSTER, names, manage_certificates=manage_certificates),
    }


def role(
    name: str, namespace: str, *, secret: str, manage_certificates: bool = True
) -> dict[str, Any]:
    """The Role in the operator's namespace."""
    names = _names(secret, "")
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": policy_rules(Scope.NAMESPACE, names, manage_certificates=manage_certificates),
    }


AUDIT_READER_NAME: Final = "gomemlimit-audit-reader"
"""The ClusterRole a person (or a CI job) needs for ``gomemlimit audit --cluster``."""

AUDIT_READER_RULES: Final[tuple[Rule, ...]] = (
    Rule(Scope.CLUSTER, "", ("pods",), ("list",), "the pods to audit, listed in pages"),
    Rule(
        Scope.CLUSTER,
        "",
        ("namespaces",),
        ("get", "list"),
        "namespace labels for ClusterGoMemPolicy namespaceSelectors (get with -n)",
    ),
    Rule(Scope.CLUSTER, api.GROUP, _POLICY_RESOURCES, ("list",), "the policies that govern pods"),
    Rule(
        Scope.CLUSTER,
        "apps",
        ("replicasets",),
        ("list",),
        "grouping: the Deployment that owns a pod's ReplicaSet (metadata only)",
    ),
    Rule(
        Scope.CLUSTER,
        "batch",
        ("jobs",),
        ("list",),
        "grouping: the CronJob that owns a pod's Job (metadata only)",
    ),
)
"""Everything the live audit reads, and nothing else: no Secret, no ConfigMap, no write."""


def audit_reader_cluster_role(name: str = AUDIT_READER_NAME) -> dict[str, Any]:
    """The read-only ClusterRole of ``gomemlimit audit --cluster`` (deploy/audit-reader/)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "gomemlimit-operator"},
            "annotations": {
                "gomemlimit.io/purpose": "read-only access for `gomemlimit audit --cluster`"
            },
        },
        "rules": [rule_dict(rule, {}) for rule in AUDIT_READER_RULES],
    }
