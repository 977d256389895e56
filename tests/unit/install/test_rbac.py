"""The RBAC declaration: least privilege, and exactly what the issue allows."""

from __future__ import annotations

from gomemlimit_operator.install import rbac
from gomemlimit_operator.runtime import leader


def _grants(rules: list[dict[str, object]]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))  # type: ignore[arg-type]
        for rule in rules
        for group in rule["apiGroups"]  # type: ignore[attr-defined]
        for resource in rule["resources"]  # type: ignore[attr-defined]
        for verb in rule["verbs"]  # type: ignore[attr-defined]
    }


def test_cluster_role_grants_exactly_these() -> None:
    role = rbac.cluster_role("op", webhook_configuration="hook")
    read = {"get", "list", "watch"}
    expected = {("", r, v, ()) for r in ("pods", "namespaces") for v in read}
    expected |= {
        ("gomemlimit.io", r, v, ()) for r in ("gomempolicies", "clustergomempolicies") for v in read
    }
    expected |= {
        ("gomemlimit.io", f"{r}/status", v, ())
        for r in ("gomempolicies", "clustergomempolicies")
        for v in ("get", "patch")
    }
    expected |= {("", "events", "create", ())}
    expected |= {("apiextensions.k8s.io", "customresourcedefinitions", v, ()) for v in read}
    expected |= {
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", v, ("hook",))
        for v in ("get", "patch")
    }
    assert _grants(role["rules"]) == expected


def test_role_grants_the_lease_and_only_its_own_secret() -> None:
    role = rbac.role("op", "ns", secret="op-certs")
    assert role["metadata"] == {"name": "op", "namespace": "ns"}
    assert _grants(role["rules"]) == {
        ("coordination.k8s.io", "leases", "create", ()),
        ("coordination.k8s.io", "leases", "get", ("gomemlimit-operator",)),
        ("coordination.k8s.io", "leases", "update", ("gomemlimit-operator",)),
        ("", "secrets", "get", ("op-certs",)),
        ("", "secrets", "update", ("op-certs",)),
    }


def test_without_managed_certificates_no_secret_and_no_webhook_write() -> None:
    cluster = rbac.cluster_role("op", webhook_configuration="hook", manage_certificates=False)
    namespaced = rbac.role("op", "ns", secret="s", manage_certificates=False)
    resources = {g[1] for g in _grants(cluster["rules"]) | _grants(namespaced["rules"])}
    assert "secrets" not in resources
    assert "mutatingwebhookconfigurations" not in resources


def test_never_writes_pods_never_wildcards_and_every_rule_says_why() -> None:
    for rule in rbac.RULES:
        assert rule.why
        assert "*" not in rule.verbs
        assert "*" not in rule.resources
        assert rule.group != "*"
        if "pods" in rule.resources or "namespaces" in rule.resources:
            assert set(rule.verbs) <= {"get", "list", "watch"}
        if rule.scope is rbac.Scope.CLUSTER:
            assert "secrets" not in rule.resources
            assert "leases" not in rule.resources
        if "secrets" in rule.resources:
            assert rule.resource_names == (rbac.Name.CERTIFICATE_SECRET,)
            assert rule.certificates
            assert rule.scope is rbac.Scope.NAMESPACE
        if any(verb in rule.verbs for verb in ("update", "patch", "delete")):
            assert rule.resource_names or all(r.endswith("/status") for r in rule.resources)


def test_lease_name_is_the_runtimes() -> None:
    assert rbac.LEASE_NAME == leader.LEASE_NAME
