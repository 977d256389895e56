"""Wires the pod compliance watcher into the operator process (issue 5).

:func:`register` is called once from ``operator_main.build_components``. It creates the
record store, subscribes it to the policy registry, adds the ``@kopf.on.event`` pod handler,
registers the Prometheus collector, feeds the policy status writer its counts, and adds the
watcher's housekeeping loop to the background tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry

from . import watcher as watcher_module
from .metrics import WatcherCollector, register_collector
from .records import PodStore
from .watcher import PodWatcher

if TYPE_CHECKING:
    from .operator_main import Components

__all__ = ["PodCompliance", "register"]

_registered: dict[int, WatcherCollector] = {}
"""The collector on each Prometheus registry (by id): a second build replaces the first."""


@dataclass
class PodCompliance:
    store: PodStore
    watcher: PodWatcher
    collector: WatcherCollector


def register(
    components: Components,
    *,
    is_active: Callable[[], bool] = lambda: True,
    prometheus_registry: CollectorRegistry = REGISTRY,
) -> PodCompliance:
    """Add the pod watcher, its metrics and the status counts to the operator.

    ``is_active``: whether this replica's watch streams run (the peering leader; always
    True with ``standalone``).
    """
    config = components.config
    store = PodStore(components.registry, per_namespace_listing=not config.clusterwide)
    components.registry.subscribe(store.policy_changed)
    watcher = PodWatcher(store, watches=config.watches, is_active=is_active)
    watcher_module.register(components.kopf_registry, watcher)
    components.status_writer.counts_provider = store.counts
    components.background.append(watcher.run)

    previous = _registered.pop(id(prometheus_registry), None)
    if previous is not None:
        prometheus_registry.unregister(previous)
    collector = register_collector(
        store,
        components.registry,
        noncompliant_info=config.noncompliant_info,
        is_active=is_active,
        prometheus_registry=prometheus_registry,
    )
    _registered[id(prometheus_registry)] = collector
    return PodCompliance(store, watcher, collector)
