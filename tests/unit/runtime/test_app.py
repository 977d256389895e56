"""The operator's composition, without a cluster: handlers, readiness checks, exit codes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from gomemlimit_operator.core.api import WEBHOOK_PATH
from gomemlimit_operator.runtime.app import (
    WatchOnlyDiffBaseStorage,
    assert_pods_read_only,
    assert_watch_only,
    build_components,
    build_settings,
    default_identity,
    main,
    new_metrics_registry,
)
from gomemlimit_operator.runtime.config import parse_config
from gomemlimit_operator.runtime.webhook_server import ServingLimits


def components(tmp_path: Path) -> Any:
    config = parse_config(["--dev"], env={})
    return build_components(
        config, kubernetes.client.Configuration(), tmp_path, CollectorRegistry()
    )


def test_handlers_are_read_only_and_the_webhook_is_served_by_its_own_server(
    tmp_path: Path,
) -> None:
    built = components(tmp_path)
    kopf_registry = built.kopf_registry
    assert kopf_registry._webhooks.get_all_handlers() == []  # kopf serves no admission
    server = built.webhook.server
    assert server.path == WEBHOOK_PATH
    assert (server.host, server.port) == ("127.0.0.1", 9443)
    assert (server.cert_file, server.key_file) == (built.webhook.cert_file, built.webhook.key_file)
    assert server.limits == ServingLimits()  # the defaults: 60 s, 10 s, 1,000, 4 MiB
    assert server.file_check_interval == 10.0
    assert not server.serving  # run() starts it
    watched = {
        h.selector.any_name or h.selector.plural for h in kopf_registry._watching.get_all_handlers()
    }
    assert {"gomempolicies", "clustergomempolicies", "namespaces", "pods"} <= watched
    # Nothing that makes kopf write annotations, finalizers or status onto any object.
    assert kopf_registry._changing.get_all_handlers() == []
    assert kopf_registry._spawning.get_all_handlers() == []
    assert set(built.readiness.checks()) == {"webhook", "policy-index", "dev-webhook-configuration"}
    assert not built.readiness.ready
    assert built.webhook.cert_file.is_file()
    assert built.webhook.key_file.is_file()
    assert built.webhook.ca_bundle is not None
    assert built.background  # the policy loader, the status writer, the pod watcher


def test_the_serving_limits_come_from_the_flags(tmp_path: Path) -> None:
    config = parse_config(
        [
            "--dev",
            "--webhook-idle-timeout=30",
            "--webhook-header-timeout=2.5",
            "--webhook-max-connections=50",
            "--webhook-port=10443",
            "--bind-host=0.0.0.0",
        ],
        env={},
    )
    built = build_components(
        config, kubernetes.client.Configuration(), tmp_path, CollectorRegistry()
    )
    server = built.webhook.server
    assert server.limits == ServingLimits(idle_timeout=30, header_timeout=2.5, max_connections=50)
    assert (server.host, server.port) == ("0.0.0.0", 10443)


def test_kopf_serves_no_admission() -> None:
    settings = build_settings(parse_config(["--dev"], env={}))
    assert settings.admission.server is None
    assert settings.admission.managed is None


def watched_plurals(kopf_registry: kopf.OperatorRegistry) -> set[str]:
    return {
        h.selector.any_name or h.selector.plural for h in kopf_registry._watching.get_all_handlers()
    }


def test_the_webhook_component_serves_admission_and_never_watches_pods(tmp_path: Path) -> None:
    metrics = new_metrics_registry()
    config = parse_config(["--components", "webhook", "--dev"], env={})
    built = build_components(config, kubernetes.client.Configuration(), tmp_path, metrics)
    assert built.reporting is None
    assert built.webhook is not None
    assert built.kopf_registry._webhooks.get_all_handlers() == []
    assert watched_plurals(built.kopf_registry) == {
        "gomempolicies",
        "clustergomempolicies",
        "namespaces",
    }
    assert set(built.readiness.checks()) == {"webhook", "policy-index", "dev-webhook-configuration"}
    names = {family.name for family in metrics.collect()}
    assert {
        "gomemlimit_admission_requests",
        "gomemlimit_admission_rejected_requests",
        "gomemlimit_webhook_connections",
        "gomemlimit_webhook_connections_closed",
    } <= names
    # No pod records, so no compliance series and no Lease.
    assert not {"gomemlimit_watch_events", "gomemlimit_leader"} & names


def test_the_watcher_component_keeps_the_records_and_serves_no_webhook(tmp_path: Path) -> None:
    metrics = new_metrics_registry()
    config = parse_config(["--components", "watcher"], env={})  # no certificate needed
    built = build_components(config, kubernetes.client.Configuration(), tmp_path, metrics)
    assert built.webhook is None
    assert built.reporting is not None
    assert built.kopf_registry._webhooks.get_all_handlers() == []
    assert "pods" in watched_plurals(built.kopf_registry)
    assert set(built.readiness.checks()) == {"policy-index"}
    names = {family.name for family in metrics.collect()}
    assert {"gomemlimit_watch_events", "gomemlimit_leader"} <= names
    assert "gomemlimit_admission_requests" not in names
    assert "gomemlimit_webhook_connections" not in names
    assert not list(tmp_path.iterdir())  # no certificate was made


WRITING_POD_HANDLERS: list[Callable[[kopf.OperatorRegistry], Any]] = [
    lambda r: kopf.on.create("v1", "pods", registry=r),
    lambda r: kopf.on.update("", "v1", "pods", registry=r),
    lambda r: kopf.on.resume(kind="Pod", registry=r),
    lambda r: kopf.on.delete("pods", registry=r),
    lambda r: kopf.on.field("v1", "pods", field="spec", registry=r),
    lambda r: kopf.timer("v1", "pods", interval=60, registry=r),
    lambda r: kopf.daemon("po", registry=r),
]


@pytest.mark.parametrize("decorator", WRITING_POD_HANDLERS)
def test_a_pod_handler_that_writes_is_refused(
    decorator: Callable[[kopf.OperatorRegistry], Any],
) -> None:
    kopf_registry = kopf.OperatorRegistry()
    decorator(kopf_registry)(lambda **_: None)
    with pytest.raises(RuntimeError, match="would write onto pods"):
        assert_pods_read_only(kopf_registry)


def test_a_policy_handler_that_writes_is_not_our_concern_here() -> None:
    kopf_registry = kopf.OperatorRegistry()

    @kopf.on.create("gomemlimit.io", "v1alpha1", "gomempolicies", registry=kopf_registry)
    def on_policy(**_: Any) -> None:
        pass

    assert_pods_read_only(kopf_registry)


def test_watch_only_refuses_change_detecting_handlers_on_any_resource() -> None:
    kopf_registry = kopf.OperatorRegistry()

    @kopf.on.update("gomemlimit.io", "v1alpha1", "gomempolicies", registry=kopf_registry)
    def on_policy(**_: Any) -> None:
        pass

    with pytest.raises(RuntimeError, match="watch-only"):
        assert_watch_only(kopf_registry)


def test_the_operator_registry_is_watch_only() -> None:
    kopf_registry = kopf.OperatorRegistry()
    kopf.on.event("", "v1", "pods", registry=kopf_registry)(lambda **_: None)
    kopf.index("", "v1", "pods", registry=kopf_registry)(lambda **_: None)
    assert_watch_only(kopf_registry)


def test_watch_only_diff_base_builds_no_essence_and_stores_nothing_on_pods() -> None:
    storage = WatchOnlyDiffBaseStorage()
    body = kopf.Body(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "app"}]},
        }
    )
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None  # nothing was ever written onto the pod


def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--webhook-port", "nope", "--dev"]) == 2
    assert "--webhook-port" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_leader_election_decides_who_writes_status_and_exports(tmp_path: Path) -> None:
    config = parse_config(
        ["--dev", "--leader-election-identity", "replica-a", "--leader-election-namespace", "x"],
        env={},
    )
    built = build_components(
        config, kubernetes.client.Configuration(), tmp_path, CollectorRegistry()
    )
    elector = built.reporting.elector
    assert elector is not None
    assert elector.identity == "replica-a"
    assert elector.client.namespace == "x"  # type: ignore[attr-defined]
    assert elector.client.name == "gomemlimit-operator"  # type: ignore[attr-defined]
    assert elector.run in built.background
    reporting = built.reporting
    store = reporting.store
    assert not store.quiet_sync  # the start-up barrier decides
    # A follower neither exports nor writes.
    assert not reporting.exports()
    assert not reporting.status_writer.is_leader()
    # A leader exports at once, but writes status only once its records are synced.
    elector._leading, elector._valid_until = True, float("inf")
    assert reporting.exports()
    assert not reporting.status_writer.is_leader()
    store.begin_confirmation()
    store.finish_confirmation()
    assert reporting.status_writer.is_leader()


def test_without_leader_election_the_replica_always_leads(tmp_path: Path) -> None:
    config = parse_config(["--dev", "--no-leader-election"], env={})
    built = build_components(
        config, kubernetes.client.Configuration(), tmp_path, CollectorRegistry()
    )
    assert built.reporting.elector is None
    assert built.reporting.exports()
    built.reporting.store.finish_confirmation()
    assert built.reporting.status_writer.is_leader()


def test_the_default_identity_is_the_pod_name_and_a_suffix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAME", "gomemlimit-operator-7d9f-abcde")
    first, second = default_identity(), default_identity()
    assert first.startswith("gomemlimit-operator-7d9f-abcde_")
    assert first != second  # a restarted process is a new candidate


def test_every_series_is_on_the_one_injected_registry(tmp_path: Path) -> None:
    metrics = new_metrics_registry()
    build_components(
        parse_config(["--dev"], env={}), kubernetes.client.Configuration(), tmp_path, metrics
    )
    names = {family.name for family in metrics.collect()}
    assert {
        "gomemlimit_admission_requests",
        "gomemlimit_admission_duration_seconds",
        "gomemlimit_event_loop_stall_seconds",
        "gomemlimit_event_loop_longest_stall_seconds",
        "gomemlimit_leader",
        "gomemlimit_build_info",
        "process_cpu_seconds",
        "python_gc_objects_collected",
        "python_info",
    } <= names
    on_the_global_registry = {family.name for family in REGISTRY.collect()}
    assert not {name for name in on_the_global_registry if name.startswith("gomemlimit_")}
