"""The pod webhook's MutatingWebhookConfiguration (pure builder) and the --dev registration."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from gomemlimit_operator.core.api import WEBHOOK_PATH
from gomemlimit_operator.install.webhook_configuration import (
    MATCH_CONDITIONS,
    build_webhook_configuration,
    service_client_config,
    url_client_config,
)
from gomemlimit_operator.runtime.dev import (
    DevProbe,
    DevWebhookRegistration,
)


def config(**kwargs: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "name": "gomemlimit-operator-dev",
        "client_config": url_client_config(f"https://127.0.0.1:9443{WEBHOOK_PATH}", b"CA"),
        "exempt_namespaces": {"kube-system", "gomemlimit-system"},
    }
    return build_webhook_configuration(**{**defaults, **kwargs})


def test_webhook_manners() -> None:
    body = config()
    assert body["kind"] == "MutatingWebhookConfiguration"
    (hook,) = body["webhooks"]
    assert hook["clientConfig"] == {
        "url": "https://127.0.0.1:9443/gomemlimit-pod-mutate",
        "caBundle": base64.b64encode(b"CA").decode(),
    }
    assert hook["failurePolicy"] == "Ignore"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] == 2
    assert hook["admissionReviewVersions"] == ["v1"]
    (rule,) = hook["rules"]
    assert rule["operations"] == ["CREATE"]
    assert rule["resources"] == ["pods"]
    assert rule["apiGroups"] == [""]
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["gomemlimit-system", "kube-system"],
            }
        ]
    }
    names = [c["name"] for c in hook["matchConditions"]]
    assert names == ["not-opted-out", "not-a-mirror-pod"]


def test_no_exempt_namespaces_gives_no_empty_not_in() -> None:
    # The API server refuses NotIn with no values; with only_namespaces the In list remains.
    (hook,) = config(exempt_namespaces=(), only_namespaces=("team-a",))["webhooks"]
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}
        ]
    }
    (hook,) = config(exempt_namespaces=())["webhooks"]
    assert hook["namespaceSelector"] == {"matchExpressions": []}
    assert "gomemlimit.io/skip" in MATCH_CONDITIONS[0]["expression"]


def test_watch_namespaces_narrow_the_selector() -> None:
    (hook,) = config(only_namespaces=["team-a", "kube-system"])["webhooks"]
    expressions = hook["namespaceSelector"]["matchExpressions"]
    assert expressions[1] == {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": ["team-a"],
    }
    with pytest.raises(ValueError, match="exempt"):
        config(only_namespaces=["kube-system"])


@pytest.mark.parametrize(
    "bad", [{"timeout_seconds": 0}, {"timeout_seconds": 31}, {"failure_policy": "Maybe"}]
)
def test_rejects_impossible_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"timeoutSeconds|failurePolicy"):
        config(**bad)


def test_service_client_config() -> None:
    assert service_client_config("op", "ns", 443, WEBHOOK_PATH) == {
        "service": {"name": "op", "namespace": "ns", "port": 443, "path": "/gomemlimit-pod-mutate"}
    }


class FakeAdmissionApi:
    def __init__(self, existing: bool) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        if existing:
            self.objects["gomemlimit-operator-dev"] = {"metadata": {"resourceVersion": "7"}}
        self.calls: list[str] = []

    def create_mutating_webhook_configuration(self, body: dict[str, Any]) -> None:
        self.calls.append("create")
        if body["metadata"]["name"] in self.objects:
            raise ApiException(status=409, reason="Conflict")
        self.objects[body["metadata"]["name"]] = body

    def read_mutating_webhook_configuration(self, name: str) -> Any:
        self.calls.append("read")

        class Meta:
            resource_version = self.objects[name]["metadata"]["resourceVersion"]

        class Obj:
            metadata = Meta()

        return Obj()

    def replace_mutating_webhook_configuration(self, name: str, body: dict[str, Any]) -> None:
        self.calls.append("replace")
        assert body["metadata"]["resourceVersion"] == "7"
        self.objects[name] = body

    def delete_mutating_webhook_configuration(self, name: str, **_: Any) -> None:
        self.calls.append("delete")
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        del self.objects[name]


@pytest.mark.parametrize("existing", [False, True])
def test_registration_creates_or_replaces_then_deletes(existing: bool) -> None:
    api = FakeAdmissionApi(existing)
    registration = DevWebhookRegistration(api, config())
    registration.register()
    assert api.objects["gomemlimit-operator-dev"]["webhooks"][0]["name"] == "pods.gomemlimit.io"
    assert api.calls == (["create", "read", "replace"] if existing else ["create"])
    registration.remove()
    registration.remove()  # idempotent
    assert api.objects == {}
    assert api.calls.count("delete") == 1


def test_removal_tolerates_an_already_deleted_configuration() -> None:
    api = FakeAdmissionApi(existing=False)
    registration = DevWebhookRegistration(api, config())
    registration.register()
    api.objects.clear()
    registration.remove()
    assert not registration.registered


def test_probe_recognises_only_its_own_dry_run() -> None:
    probe = DevProbe("abc")
    annotations = probe.pod("default")["metadata"]["annotations"]
    assert probe.matches(annotations, dryrun=True)
    assert not probe.matches(annotations, dryrun=False)
    assert not DevProbe("xyz").matches(annotations, dryrun=True)
    assert not probe.confirmed
    probe.seen()
    assert probe.confirmed
