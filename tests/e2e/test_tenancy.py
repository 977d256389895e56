"""Tenancy, end to end: a GoMemPolicy in namespace A never affects namespace B, and a user who
may edit GoMemPolicies only in A can change nothing outside A.

Every pod here is created through the API server, so the values are the webhook's. The
tenants act through RBAC impersonation (``kubectl --as``) on a control plane that authorizes
with RBAC, so every refusal below is the API server's own.

The RBAC the tests grant a tenant, and what they decide about it:

* **A Role in A** with every verb on ``gomempolicies.gomemlimit.io`` (and on pods, so that the
  tenant has workloads of its own). Subresources need rules of their own, so this grants
  nothing on ``gomempolicies/status``: the status is the operator's report, and a tenant
  cannot forge it. Nothing on ClusterGoMemPolicies, Namespaces (whose labels select cluster
  policies), the MutatingWebhookConfiguration or the CRDs.
* **The built-in ``edit`` role bound in A**, after the aggregated ClusterRoles that
  :data:`PROPOSED_ROLES` proposes (``gomemlimit-policy-editor`` with the ``aggregate-to-edit``
  and ``aggregate-to-admin`` labels, ``gomemlimit-policy-viewer`` with ``aggregate-to-view``).
  The project does not ship them yet; the test creates them, shows that they aggregate, and
  that they give the same guarantees.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from gomemlimit_operator.core.api import MAX_SELECTOR_TERMS
from gomemlimit_operator.core.engine import ANNOTATION_POLICY
from gomemlimit_operator.core.globs import MAX_GLOB_LENGTH, MAX_GLOBS
from gomemlimit_operator.core.quantity import CEILING
from tests.cluster.controlplane import ControlPlane
from tests.e2e.operator_harness import (
    OperatorProcess,
    apply,
    cluster_policies,
    crds,
    get,
    operator_process,
    operator_service,
    policy_yaml,
    wait_ready,
    wait_until,
)

__all__ = ["cluster_policies", "crds", "operator_process", "operator_service"]

LIMIT = "1000Mi"  # ratios read straight off the values: 0.6 -> 600MiB
OWN_VALUES = {"GOMEMLIMIT": "123MiB", "GOGC": "50"}
"""What the ``own`` container sets itself: only an ``onExisting: override`` policy changes it."""
RBAC = "rbac.authorization.k8s.io/v1"
POLICIES = "gomempolicies.gomemlimit.io"
CLUSTER_POLICIES = "clustergomempolicies.gomemlimit.io"
WEBHOOKS = "mutatingwebhookconfigurations.admissionregistration.k8s.io"
CRDS = "customresourcedefinitions.apiextensions.k8s.io"

PROPOSED_ROLES: tuple[dict[str, Any], ...] = (
    {
        "apiVersion": RBAC,
        "kind": "ClusterRole",
        "metadata": {
            "name": "gomemlimit-policy-editor",
            "labels": {
                "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                "rbac.authorization.k8s.io/aggregate-to-admin": "true",
            },
        },
        "rules": [
            {
                "apiGroups": ["gomemlimit.io"],
                "resources": ["gomempolicies"],
                "verbs": [
                    "get",
                    "list",
                    "watch",
                    "create",
                    "update",
                    "patch",
                    "delete",
                    "deletecollection",
                ],
            }
        ],
    },
    {
        "apiVersion": RBAC,
        "kind": "ClusterRole",
        "metadata": {
            "name": "gomemlimit-policy-viewer",
            "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"},
        },
        "rules": [
            {
                "apiGroups": ["gomemlimit.io"],
                "resources": ["gomempolicies", "gomempolicies/status"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    },
)
"""The proposed aggregated ClusterRoles (not shipped by the project yet; see the docstring)."""


# ---------------------------------------------------------------------------------------------
# Acting as a tenant
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    """Someone the admin kubeconfig impersonates: a user, and perhaps groups."""

    user: str
    groups: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        return [f"--as={self.user}", *(f"--as-group={group}" for group in self.groups)]

    def kubectl(
        self, cluster: ControlPlane, *args: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl as this tenant; never raises (the caller checks the outcome)."""
        return cluster.kubectl(*self.flags(), *args, input=input, check=False)

    def can(self, cluster: ControlPlane, verb: str, resource: str, *where: str) -> bool:
        """``kubectl auth can-i``: the API server's own answer (a SubjectAccessReview)."""
        result = self.kubectl(cluster, "auth", "can-i", verb, resource, *where)
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), (result.stdout, result.stderr)
        return answer == "yes"

    def refused(self, cluster: ControlPlane, *args: str, input: str | None = None) -> str:
        """Run a write that RBAC must refuse: returns the API server's message."""
        result = self.kubectl(cluster, *args, input=input)
        assert result.returncode != 0, f"{self.user} was allowed: kubectl {' '.join(args)}"
        assert "Forbidden" in result.stderr or "forbidden" in result.stderr, result.stderr
        assert self.user in result.stderr, result.stderr  # refused as the tenant, not as admin
        return result.stderr

    def allowed(
        self, cluster: ControlPlane, *args: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = self.kubectl(cluster, *args, input=input)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result


def grant_role(cluster: ControlPlane, namespace: str, tenant: Tenant, name: str) -> None:
    """A Role in ``namespace``: every verb on GoMemPolicies (and pods, for the tenant's own
    workloads), nothing on any subresource, bound to the tenant's user and groups."""
    role = {
        "apiVersion": RBAC,
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": [
            {"apiGroups": ["gomemlimit.io"], "resources": ["gomempolicies"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
        ],
    }
    apply(cluster, role)
    bind(cluster, namespace, tenant, name, {"kind": "Role", "name": name})


def bind(
    cluster: ControlPlane, namespace: str, tenant: Tenant, name: str, role_ref: Mapping[str, str]
) -> None:
    subjects = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": tenant.user}]
    subjects += [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}
        for group in tenant.groups
    ]
    apply(
        cluster,
        {
            "apiVersion": RBAC,
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", **role_ref},
            "subjects": subjects,
        },
    )


def assert_confined(
    cluster: ControlPlane, tenant: Tenant, spaces: Namespaces, webhook: str
) -> None:
    """What a GoMemPolicy editor of ``spaces.a`` may do there, and all it may not do
    elsewhere (in the namespace with a policy of its own, "team"): first the API server's
    answers (``auth can-i``), then real writes, each refused."""
    own, other, other_policy = spaces.a, spaces.own_policy, "team"
    cluster_policy = spaces.cluster_policy_name
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"):
        assert tenant.can(cluster, verb, POLICIES, "-n", own), verb
    # Elsewhere: nothing. Nor status, anywhere: it is the operator's report.
    denied: list[tuple[str, str, tuple[str, ...]]] = [
        *((verb, POLICIES, ("-n", other)) for verb in ("create", "update", "patch", "delete")),
        ("list", POLICIES, ("--all-namespaces",)),
        ("create", POLICIES, ("--all-namespaces",)),
        ("patch", POLICIES, ("-n", own, "--subresource=status")),
        ("update", POLICIES, ("-n", own, "--subresource=status")),
        ("patch", POLICIES, ("-n", other, "--subresource=status")),
        *((verb, CLUSTER_POLICIES, ()) for verb in ("create", "update", "patch", "delete")),
        ("patch", CLUSTER_POLICIES, ("--subresource=status",)),
        *((verb, "namespaces", ()) for verb in ("create", "update", "patch", "delete")),
        ("patch", f"namespaces/{own}", ()),
        ("patch", f"namespaces/{other}", ()),
        *((verb, WEBHOOKS, ()) for verb in ("create", "update", "patch", "delete")),
        *((verb, "validatingwebhookconfigurations", ()) for verb in ("create", "patch")),
        *((verb, CRDS, ()) for verb in ("create", "update", "patch", "delete")),
        *(
            (verb, resource, ("-n", own))
            for verb in ("create", "bind", "escalate")
            for resource in ("roles", "rolebindings")
        ),
        ("create", "pods", ("-n", other)),
    ]
    allowed = [
        (verb, resource, where)
        for verb, resource, where in denied
        if tenant.can(cluster, verb, resource, *where)
    ]
    assert allowed == [], f"{tenant.user} may do more than edit GoMemPolicies in {own}"

    # Real writes. Its own policy: created and deleted, but its status is not the tenant's.
    mine = f"mine-{tenant.user}"
    tenant.allowed(
        cluster, "create", "-f", "-", input=policy_yaml("GoMemPolicy", mine, {"ratio": 0.5}, own)
    )
    status = json.dumps({"status": {"matchedPods": 999, "observedGeneration": 99}})
    for namespace, name in ((own, mine), (other, other_policy)):
        tenant.refused(
            cluster,
            "patch",
            POLICIES,
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        )
    tenant.allowed(cluster, "delete", POLICIES, mine, "-n", own)
    # Everything else is refused by the API server.
    sneaky = {"ratio": 0.999, "priority": 2**31 - 1}
    tenant.refused(
        cluster, "create", "-f", "-", input=policy_yaml("GoMemPolicy", "sneaky", sneaky, other)
    )
    patch = json.dumps({"spec": {"ratio": 0.999}})
    tenant.refused(
        cluster, "patch", POLICIES, other_policy, "-n", other, "--type=merge", "-p", patch
    )
    tenant.refused(cluster, "delete", POLICIES, other_policy, "-n", other)
    tenant.refused(cluster, "delete", POLICIES, "--all", "-n", other)
    tenant.refused(
        cluster,
        "create",
        "-f",
        "-",
        input=policy_yaml("ClusterGoMemPolicy", f"sneaky-{tenant.user}", sneaky),
    )
    tenant.refused(cluster, "patch", CLUSTER_POLICIES, cluster_policy, "--type=merge", "-p", patch)
    tenant.refused(cluster, "delete", CLUSTER_POLICIES, cluster_policy)
    # Namespace labels select ClusterGoMemPolicies: neither its own namespace nor another.
    for namespace in (own, other):
        tenant.refused(cluster, "label", "namespace", namespace, "gomemlimit.io/e2e-team=mine")
    tenant.refused(
        cluster,
        "patch",
        WEBHOOKS,
        webhook,
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Fail"}]),
    )
    tenant.refused(cluster, "delete", WEBHOOKS, webhook)
    tenant.refused(
        cluster,
        "create",
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": f"sneaky-{tenant.user}"},
                "webhooks": [],
            }
        ),
    )
    tenant.refused(
        cluster,
        "patch",
        CRDS,
        POLICIES,
        "--type=merge",
        "-p",
        json.dumps({"metadata": {"labels": {"sneaky": "yes"}}}),
    )


# ---------------------------------------------------------------------------------------------
# Pods and what they got
# ---------------------------------------------------------------------------------------------


def pod_manifest(name: str) -> dict[str, Any]:
    """An init container and two containers, all with the same limit; ``own`` sets its own
    GOMEMLIMIT and GOGC. Labels that every policy here selects on."""

    def container(container_name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": container_name,
            "image": "registry.invalid/app:1",  # kwok runs no containers
            "resources": {"limits": {"memory": LIMIT}},
        }
        if env:
            spec["env"] = [{"name": key, "value": value} for key, value in env.items()]
        return spec

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "shared", "tier": "db"}},
        "spec": {
            "initContainers": [container("init")],
            "containers": [container("app"), container("own", OWN_VALUES)],
        },
    }


Outcome = tuple[str | None, dict[str, dict[str, str]]]
"""(the policy annotation, container -> its GOMEMLIMIT/GOGC env values)."""


def outcome(pod_obj: Mapping[str, Any]) -> Outcome:
    values: dict[str, dict[str, str]] = {}
    for key in ("initContainers", "containers"):
        for container in pod_obj["spec"].get(key) or ():
            values[container["name"]] = {
                e["name"]: e.get("value")
                for e in container.get("env") or ()
                if e["name"] in ("GOMEMLIMIT", "GOGC")
            }
    return (pod_obj["metadata"].get("annotations") or {}).get(ANNOTATION_POLICY), values


def create_pod(
    cluster: ControlPlane, namespace: str, name: str, tenant: Tenant | None = None
) -> Outcome:
    """Create the pod through the API server (as ``tenant``, if given); what it got."""
    manifest = yaml.safe_dump(pod_manifest(name))
    if tenant is None:
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=manifest)
    else:
        tenant.allowed(cluster, "create", "-n", namespace, "-f", "-", input=manifest)
    return outcome(get(cluster, "pod", name, "-n", namespace))


def expected(policy: str | None, value: str | None) -> Outcome:
    """A pod of :func:`pod_manifest` under a policy with defaults (no init containers, respect
    what a container sets) that gives ``app`` the GOMEMLIMIT ``value``."""
    app = {} if value is None else {"GOMEMLIMIT": value}
    return policy, {"init": {}, "app": app, "own": dict(OWN_VALUES)}


# ---------------------------------------------------------------------------------------------
# The reporting: /metrics and policy status
# ---------------------------------------------------------------------------------------------


def containers_by_policy(operator: OperatorProcess, namespace: str) -> dict[tuple[str, str], int]:
    """``gomemlimit_containers`` of one namespace: (policy, state) -> count."""
    return {
        (dict(labels)["policy"], dict(labels)["state"]): int(value)
        for labels, value in operator.samples("gomemlimit_containers", namespace=namespace).items()
    }


def policies_reported_in(operator: OperatorProcess, family: str) -> dict[str, set[str]]:
    """For every policy reference on ``family``, the namespaces it is reported in."""
    found: dict[str, set[str]] = {}
    for labels in operator.samples(family):
        fields = dict(labels)
        found.setdefault(fields["policy"], set()).add(fields["namespace"])
    return found


def wait_recorded(
    operator: OperatorProcess, namespaces: Mapping[str, int]
) -> dict[str, dict[tuple[str, str], int]]:
    """Wait until the watcher counts ``namespaces[ns]`` containers in each namespace."""

    def check() -> dict[str, dict[tuple[str, str], int]] | None:
        series = {ns: containers_by_policy(operator, ns) for ns in namespaces}
        counted = {ns: sum(by_policy.values()) for ns, by_policy in series.items()}
        return series if counted == dict(namespaces) else None

    return wait_until(check, f"the watcher to count the containers of {dict(namespaces)}", 30)


def wait_counted(cluster: ControlPlane, want: Mapping[tuple[str, str], tuple[int, int]]) -> None:
    """Wait until each GoMemPolicy (namespace, name) reports (matchedPods,
    governedContainers) as in ``want``; then check that they stay so over several status
    intervals (the harness runs with --status-interval 1)."""

    def counts() -> dict[tuple[str, str], tuple[int, int]]:
        found = {}
        for namespace, name in want:
            status = get(cluster, POLICIES, name, "-n", namespace).get("status") or {}
            found[namespace, name] = (status.get("matchedPods"), status.get("governedContainers"))
        return found

    wait_until(lambda: counts() == dict(want), f"the policies' status to count {want}", 30)
    time.sleep(3)
    assert counts() == dict(want)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Namespaces:
    """``a``, the tenant's namespace, and three others: one no policy governs, one a
    ClusterGoMemPolicy (ratio 0.6) governs, one with a GoMemPolicy of its own (ratio 0.7)
    that has the same name as A's (``team``)."""

    a: str
    no_policy: str
    cluster_policy: str
    own_policy: str
    cluster_policy_name: str

    @property
    def others(self) -> tuple[str, str, str]:
        return (self.no_policy, self.cluster_policy, self.own_policy)

    def expected(self) -> dict[str, Outcome]:
        """What a pod of :func:`pod_manifest` gets in each of the others."""
        return {
            self.no_policy: expected(None, None),
            self.cluster_policy: expected(
                f"ClusterGoMemPolicy/{self.cluster_policy_name}", "600MiB"
            ),
            self.own_policy: expected(f"GoMemPolicy/{self.own_policy}/team", "700MiB"),
        }


@pytest.fixture
def spaces(
    cluster: ControlPlane,
    new_namespace: Callable[[], str],
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> Namespaces:
    a, no_policy, cluster_governed, own_policy = (new_namespace() for _ in range(4))
    name = f"tenancy-{secrets.token_hex(3)}"
    selector = {"matchLabels": {"kubernetes.io/metadata.name": cluster_governed}}
    cluster_policies(name, {"ratio": 0.6, "namespaceSelector": selector})
    apply(cluster, policy_yaml("GoMemPolicy", "team", {"ratio": 0.7}, own_policy))
    wait_ready(cluster, "GoMemPolicy", "team", own_policy)
    return Namespaces(a, no_policy, cluster_governed, own_policy, name)


@pytest.fixture
def proposed_roles(cluster: ControlPlane) -> Iterator[None]:
    apply(cluster, *PROPOSED_ROLES)
    try:
        yield
    finally:
        names = [role["metadata"]["name"] for role in PROPOSED_ROLES]
        cluster.kubectl("delete", "clusterroles", *names, "--ignore-not-found")


def greedy_policies(namespace: str) -> list[str]:
    """GoMemPolicies in ``namespace`` that use everything a GoMemPolicy spec can hold, each at
    its most far-reaching: selectors that match the other namespaces' pods (or any pod at
    all), every container name, init containers, ``onExisting: override``, the highest
    priority, ``gogc``, the largest ratio and headroom; plus selectors and globs at the sizes
    the CRD allows."""
    top = 2**31 - 1  # "team" has it alone: it governs A's pods, with its distinctive 0.5
    long_value = "v" * 63
    wide_selector = {
        "matchExpressions": [
            {
                "key": f"example.com/key-{i}",
                "operator": "NotIn",
                "values": [f"{long_value[:-3]}{j:03d}" for j in range(MAX_SELECTOR_TERMS)],
            }
            for i in range(MAX_SELECTOR_TERMS)
        ]
    }
    many_globs = [("*?" * MAX_GLOB_LENGTH)[: MAX_GLOB_LENGTH - 1] + "*"] * (MAX_GLOBS - 1) + ["*"]
    specs: dict[str, dict[str, Any]] = {
        # The same name as the GoMemPolicy of the own-policy namespace.
        "team": {
            "ratio": 0.5,
            "selector": {"matchLabels": {"app": "shared", "tier": "db"}},
            "containers": ["*"],
            "includeInitContainers": True,
            "onExisting": "override",
            "priority": top,
            "gogc": "off",
        },
        "everything": {
            "priority": top - 1,
            "onExisting": "override",
            "includeInitContainers": True,
        },
        "max-ratio": {"ratio": 0.9999999999, "priority": top - 1, "onExisting": "override"},
        "huge-headroom": {
            "minHeadroom": str(CEILING),  # 1e24 bytes, digits: YAML would read 1e24 as a number
            "maxHeadroom": str(CEILING),
            "priority": top - 1,
        },
        "wide": {"selector": wide_selector, "containers": many_globs, "priority": top - 1},
        "exists": {
            "selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
            "priority": top - 1,
        },
    }
    return [policy_yaml("GoMemPolicy", name, spec, namespace) for name, spec in specs.items()]


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_a_policy_in_one_namespace_never_governs_or_reports_pods_of_another(
    cluster: ControlPlane, spaces: Namespaces, operator_process: OperatorProcess
) -> None:
    a = spaces.a
    for document in greedy_policies(a):
        apply(cluster, document)
    for name in ("team", "everything", "max-ratio", "huge-headroom", "wide", "exists"):
        wait_ready(cluster, "GoMemPolicy", name, a)

    # In A, "team" governs (the highest priority), with everything it asks for.
    team_values = {"GOMEMLIMIT": "500MiB", "GOGC": "off"}
    assert create_pod(cluster, a, "mine") == (
        f"GoMemPolicy/{a}/team",
        {"init": team_values, "app": team_values, "own": team_values},
    )

    # Elsewhere: no value, the cluster policy's, or the namespace's own policy's.
    for namespace, want in spaces.expected().items():
        for index in range(2):
            assert create_pod(cluster, namespace, f"p{index}") == want, namespace

    # A field a GoMemPolicy does not have is refused, and pruned when validation is off:
    # nothing can make a GoMemPolicy select namespaces.
    reach = {"namespaceSelector": {}, "ratio": 0.5}
    refused = cluster.kubectl(
        "apply", "-f", "-", check=False, input=policy_yaml("GoMemPolicy", "reach", reach, a)
    )
    assert refused.returncode != 0
    assert 'unknown field "spec.namespaceSelector"' in refused.stderr
    cluster.kubectl(
        "apply",
        "--validate=false",
        "-f",
        "-",
        input=policy_yaml("GoMemPolicy", "reach", {**reach, "priority": 2**31 - 2}, a),
    )
    stored = wait_ready(cluster, "GoMemPolicy", "reach", a)
    assert "namespaceSelector" not in stored["spec"]
    # The API server refuses a policy whose object names another namespace than its request.
    elsewhere = yaml.safe_load(policy_yaml("GoMemPolicy", "elsewhere", {}, spaces.no_policy))
    mismatch = cluster.kubectl(
        "create",
        "--raw",
        f"/apis/gomemlimit.io/v1alpha1/namespaces/{a}/gomempolicies",
        "-f",
        "-",
        check=False,
        input=json.dumps(elsewhere),
    )
    assert mismatch.returncode != 0
    assert "does not match the namespace" in mismatch.stderr, mismatch.stderr
    for namespace, want in spaces.expected().items():
        assert create_pod(cluster, namespace, "after-reach") == want, namespace

    # The reporting: no other namespace's container is counted under A's policies.
    series = wait_recorded(
        operator_process, {a: 3, **{namespace: 9 for namespace in spaces.others}}
    )
    cluster_ref = f"ClusterGoMemPolicy/{spaces.cluster_policy_name}"
    own_ref = f"GoMemPolicy/{spaces.own_policy}/team"
    assert series == {
        a: {(f"GoMemPolicy/{a}/team", "compliant"): 3},
        spaces.no_policy: {("", "unmanaged"): 9},
        # The init containers: no policy of theirs includes them.
        spaces.cluster_policy: {(cluster_ref, "compliant"): 6, ("", "unmanaged"): 3},
        spaces.own_policy: {(own_ref, "compliant"): 6, ("", "unmanaged"): 3},
    }
    for family in ("gomemlimit_containers", "gomemlimit_noncompliant_container_info"):
        for policy, namespaces in policies_reported_in(operator_process, family).items():
            if policy.startswith(f"GoMemPolicy/{a}/"):
                assert namespaces == {a}, (family, policy, namespaces)
    # Policy status: A's "team" and the own-policy namespace's "team" each count their own
    # pods; A's other policies, which select every pod, count none (they govern none).
    wait_counted(
        cluster,
        {
            (a, "team"): (1, 3),
            (spaces.own_policy, "team"): (3, 6),
            **{(a, name): (0, 0) for name in ("everything", "exists", "wide", "reach")},
        },
    )


def test_a_policy_editor_of_one_namespace_can_change_nothing_outside_it(
    cluster: ControlPlane, spaces: Namespaces, operator_process: OperatorProcess
) -> None:
    a = spaces.a
    tenant = Tenant("tenant-a")
    team = Tenant("someone-of-team-a", groups=("team-a",))  # granted through the group only
    grant_role(cluster, a, tenant, "gomempolicy-editor")
    bind(
        cluster, a, team, "gomempolicy-editor-group", {"kind": "Role", "name": "gomempolicy-editor"}
    )
    before = {namespace: create_pod(cluster, namespace, "before") for namespace in spaces.others}
    assert before == spaces.expected()
    errors_before = operator_process.metric("gomemlimit_admission_requests_total", result="error")

    for who in (tenant, team):
        wait_until(lambda who=who: who.can(cluster, "create", POLICIES, "-n", a), "RBAC", 10)
        assert_confined(cluster, who, spaces, operator_process.webhook_name)

    # In A, the tenant may do what it likes: create, patch, delete, and the most extreme
    # policies the CRD accepts.
    tenant.allowed(cluster, "apply", "-f", "-", input=policy_yaml("GoMemPolicy", "first", {}, a))
    tenant.allowed(
        cluster, "patch", POLICIES, "first", "-n", a, "--type=merge", "-p", '{"spec":{"ratio":0.8}}'
    )
    tenant.allowed(cluster, "delete", POLICIES, "first", "-n", a)
    tenant.allowed(cluster, "apply", "-f", "-", input="\n---\n".join(greedy_policies(a)))
    # Many of them: each admission looks at every policy (one comparison for another
    # namespace's), so a tenant's volume is a cost for all; a ResourceQuota on
    # count/gomempolicies.gomemlimit.io bounds it.
    filler = [
        policy_yaml("GoMemPolicy", f"filler-{i:03d}", {"ratio": 0.51, "priority": 2**31 - 2}, a)
        for i in range(100)
    ]
    tenant.allowed(cluster, "apply", "-f", "-", input="\n---\n".join(filler))
    # Invalid ones never get stored: the CRD refuses them (Invalid, not Forbidden).
    for index, bad in enumerate(({"ratio": 1}, {"maxHeadroom": 0}, {"gogc": "-1"})):
        result = tenant.kubectl(
            cluster, "create", "-f", "-", input=policy_yaml("GoMemPolicy", f"bad-{index}", bad, a)
        )
        assert result.returncode != 0
        assert "Invalid" in result.stderr, result.stderr
        assert "Forbidden" not in result.stderr, result.stderr
    wait_ready(cluster, "GoMemPolicy", "filler-099", a)
    wait_ready(cluster, "GoMemPolicy", "team", a)
    # Its own pods follow its policies...
    _, mine = create_pod(cluster, a, "mine", tenant)
    assert mine["app"] == {"GOMEMLIMIT": "500MiB", "GOGC": "off"}
    # ...and the API server refuses a pod that claims another namespace than its request's,
    # before any webhook: the webhook may read the namespace off the object.
    claim = {**pod_manifest("claim"), "metadata": {"name": "claim", "namespace": spaces.no_policy}}
    claimed = tenant.kubectl(
        cluster,
        "create",
        "--raw",
        f"/api/v1/namespaces/{a}/pods",
        "-f",
        "-",
        input=json.dumps(claim),
    )
    assert claimed.returncode != 0
    assert "does not match the namespace" in claimed.stderr, claimed.stderr

    # The other namespaces: exactly what they got before.
    for namespace in spaces.others:
        for index in range(3):
            assert create_pod(cluster, namespace, f"after-{index}") == before[namespace], namespace
    assert (
        operator_process.metric("gomemlimit_admission_requests_total", result="error")
        == errors_before
    )
    # And nothing the tenant tried outside A exists.
    (untouched,) = get(cluster, POLICIES, "-n", spaces.own_policy)["items"]
    assert (untouched["spec"]["ratio"], untouched["metadata"]["generation"]) == (0.7, 1)
    assert [
        p["metadata"]["name"] for p in get(cluster, POLICIES, "-n", spaces.no_policy)["items"]
    ] == []
    names = {p["metadata"]["name"] for p in get(cluster, CLUSTER_POLICIES)["items"]}
    assert not any(name.startswith("sneaky") for name in names)
    labels = get(cluster, "namespace", a)["metadata"].get("labels") or {}
    assert "gomemlimit.io/e2e-team" not in labels
    (hook,) = get(cluster, WEBHOOKS, operator_process.webhook_name)["webhooks"]
    assert hook["failurePolicy"] == "Ignore"

    # Deleting everything in A changes nothing elsewhere either.
    tenant.allowed(cluster, "delete", POLICIES, "--all", "-n", a)
    for namespace in spaces.others:
        assert create_pod(cluster, namespace, "after-delete") == before[namespace], namespace


def test_the_proposed_aggregated_editor_role_gives_the_same_guarantees(
    cluster: ControlPlane,
    spaces: Namespaces,
    operator_process: OperatorProcess,
    proposed_roles: None,
) -> None:
    a = spaces.a
    editor, viewer = Tenant("tenant-a-edit"), Tenant("tenant-a-view")
    bind(cluster, a, editor, "edit", {"kind": "ClusterRole", "name": "edit"})
    bind(cluster, a, viewer, "view", {"kind": "ClusterRole", "name": "view"})
    # The aggregation controller adds the rules to edit, admin and view.
    wait_until(
        lambda: editor.can(cluster, "create", POLICIES, "-n", a),
        "the editor role to aggregate into edit",
        30,
    )
    wait_until(
        lambda: viewer.can(cluster, "list", POLICIES, "-n", a),
        "the viewer role to aggregate into view",
        30,
    )
    admin_rules = get(cluster, "clusterrole", "admin")["rules"]
    assert any("gomempolicies" in rule.get("resources", ()) for rule in admin_rules)
    assert_confined(cluster, editor, spaces, operator_process.webhook_name)
    # edit grants pods as well, so the editor can run workloads; nothing changes elsewhere.
    editor.allowed(cluster, "apply", "-f", "-", input="\n---\n".join(greedy_policies(a)))
    wait_ready(cluster, "GoMemPolicy", "team", a)
    for namespace, want in spaces.expected().items():
        assert create_pod(cluster, namespace, "after-edit") == want, namespace
    # The viewer reads A's policies (and their status), and writes nothing.
    assert viewer.can(cluster, "get", POLICIES, "-n", a, "--subresource=status")
    for verb in ("create", "patch", "delete"):
        assert not viewer.can(cluster, verb, POLICIES, "-n", a)
    assert not viewer.can(cluster, "list", POLICIES, "-n", spaces.own_policy)
    viewer.allowed(cluster, "get", POLICIES, "-n", a)
    viewer.refused(cluster, "delete", POLICIES, "team", "-n", a)
