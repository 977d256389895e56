"""Wires the pod compliance watcher into the operator process (issue 5).

:func:`register` is called once from ``operator_main.build_components``. It creates the
record store, subscribes it to the policy registry (policy and namespace label changes), adds
the ``@kopf.on.event`` pod handler, registers the Prometheus collector, feeds the policy status
writer its counts, and adds the watcher's housekeeping loop and, given a pod lister, the
start-up barrier (:func:`~.watcher.confirm_listing`) to the background tasks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import REGISTRY, CollectorRegistry

from gomemlimit_operator.core.records import PodStore
from gomemlimit_operator.runtime import watcher as watcher_module
from gomemlimit_operator.runtime.compliance_metrics import WatcherCollector, register_collector
from gomemlimit_operator.runtime.watcher import PodWatcher, confirm_listing

if TYPE_CHECKING:
    from gomemlimit_operator.runtime.app import Components

__all__ = ["PodCompliance", "pod_uid_lister", "register"]

PARTIAL_METADATA: Final = (
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)
"""Ask the API server for metadata only; plain JSON from a server that cannot."""
NOT_FINISHED: Final = "status.phase!=Succeeded,status.phase!=Failed"
PAGE: Final = 500

_registered: dict[int, WatcherCollector] = {}
"""The collector on each Prometheus registry (by id): a second build replaces the first."""


@dataclass
class PodCompliance:
    store: PodStore
    watcher: PodWatcher
    collector: WatcherCollector


def pod_uid_lister(
    api_client: Any, watch_namespaces: tuple[str, ...] = ()
) -> Callable[[], set[str]]:
    """A blocking function that LISTs the uids of the pods that have not finished.

    Paged (500 per page), metadata only (``PartialObjectMetadataList``), and each page's
    JSON is dropped once its uids are read: nothing but the uid strings is kept.
    """
    from kubernetes.client import CoreV1Api

    core = CoreV1Api(api_client)
    options: dict[str, Any] = {
        "limit": PAGE,
        "field_selector": NOT_FINISHED,
        "_preload_content": False,
        "_request_timeout": 60,
        "_headers": {"Accept": PARTIAL_METADATA},
    }

    def page(namespace: str | None, token: str | None) -> tuple[list[str], str | None]:
        response: Any  # the raw urllib3 response (_preload_content=False)
        if namespace is None:
            response = core.list_pod_for_all_namespaces(_continue=token, **options)
        else:
            response = core.list_namespaced_pod(namespace, _continue=token, **options)
        try:
            data = json.loads(response.data)
        finally:
            response.release_conn()
        uids = [
            str((item.get("metadata") or {}).get("uid") or "") for item in data.get("items") or ()
        ]
        return [uid for uid in uids if uid], (data.get("metadata") or {}).get("continue") or None

    def list_uids() -> set[str]:
        uids: set[str] = set()
        for namespace in watch_namespaces or (None,):
            token: str | None = None
            while True:
                found, token = page(namespace, token)
                uids.update(found)
                if token is None:
                    break
        return uids

    return list_uids


def register(
    components: Components,
    *,
    is_active: Callable[[], bool] = lambda: True,
    list_uids: Callable[[], set[str]] | None = None,
    prometheus_registry: CollectorRegistry = REGISTRY,
) -> PodCompliance:
    """Add the pod watcher, its metrics and the status counts to the operator.

    ``is_active``: whether this replica exports the pod-derived series (the leader; always
    True without leader election). Every replica watches pods and keeps its store current.
    ``list_uids``: the start-up barrier's LIST (:func:`pod_uid_lister`). With it, the store
    is synced as soon as the watch delivered the pods it names; without it, once kopf's
    listing has been quiet for 10 s, or after 30 s with no listing at all.
    """
    config = components.config
    store = PodStore(
        components.registry,
        per_namespace_listing=not config.clusterwide,
        quiet_sync=list_uids is None,
    )
    components.registry.subscribe(store.policy_changed)
    components.registry.subscribe_namespaces(store.namespace_changed)
    watcher = PodWatcher(store, watches=config.watches)
    watcher_module.register(components.kopf_registry, watcher)
    components.status_writer.counts_provider = store.counts
    components.background.append(watcher.run)
    if list_uids is not None:
        barrier_lister = list_uids
        components.background.append(lambda: confirm_listing(store, barrier_lister))

    previous = _registered.pop(id(prometheus_registry), None)
    if previous is not None:
        prometheus_registry.unregister(previous)
    status_writer = components.status_writer
    collector = register_collector(
        store,
        components.registry,
        noncompliant_info=config.noncompliant_info,
        is_active=is_active,
        status_writes=lambda: status_writer.writes,
        prometheus_registry=prometheus_registry,
    )
    _registered[id(prometheus_registry)] = collector
    return PodCompliance(store, watcher, collector)
