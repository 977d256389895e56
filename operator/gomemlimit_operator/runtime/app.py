"""``gomemlimit operator``: the composition root of the operator process, and its run.

:func:`build_components` builds everything with explicit constructor arguments, in one
place, and nothing reaches back into it (the dependency is one-way: app -> parts):

* a shared :class:`~.core.policy_view.PolicyView`, filled by :mod:`.policy_reconciler` and
  read by :mod:`.webhook` and the pod records;
* an explicit ``kopf.OperatorRegistry`` and ``kopf.OperatorSettings`` (no global state; no
  ``kopf run``), run with ``standalone=True``;
* :func:`build_reporting`: the pod records and :mod:`.watcher`, the policy status writer, the
  pod series collector, and the Lease (:mod:`.leader`) that decides which replica reports;
* one ``prometheus_client.CollectorRegistry``, made by :func:`new_metrics_registry` and given
  to every metrics object (admission, watcher, event loop) and to the ``/metrics`` server;
* the background tasks: the policy LIST/resync, the status writer, the leader election
  campaign, the pod watcher's housekeeping and start-up barrier, the event-loop monitor, and
  with ``--dev`` the :class:`~.dev.DevMode` registration and probe, or with
  ``--manage-certificates`` the :class:`~.certificate_manager.CertificateManager`'s checks
  (its first pass runs before the webhook serves).

:func:`run` starts the webhook's own HTTPS server (:mod:`.webhook_server`: explicit host and
port, the certificate files, reloaded when they change, and the serving limits; kopf serves no
admission, and its managed webhook mode is never used), the ``/healthz`` and ``/readyz``
server and the ``/metrics`` server, and runs kopf.

High availability: every replica runs kopf standalone (policies, namespaces and pods are
watched everywhere, so every webhook answers with a current policy index) and a Lease
elects the one replica that writes policy status and exports the pod series.
kopf peering is not used: it pauses every watch stream of a non-leader replica.

kopf writes nothing onto pods: its only pod handler is the watcher's ``@kopf.on.event``,
which only reads (the admission webhook is not a kopf handler). :func:`assert_pods_read_only`
refuses to start if a handler that would write annotations or finalizers
(on.create/update/resume/delete/field, timers, daemons) is ever registered for pods.

SIGTERM or SIGINT stops kopf cleanly; the Lease is released, the ``--dev`` configuration is
deleted and the process exits 0. Bad flags exit 2; failures at start (no cluster
credentials, a port in use) exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from gomemlimit_operator import __version__
from gomemlimit_operator.core.api import WEBHOOK_PATH
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.core.records import PodStore
from gomemlimit_operator.runtime import policy_reconciler, watcher
from gomemlimit_operator.runtime.admission_metrics import AdmissionMetrics, ServingMetrics
from gomemlimit_operator.runtime.certificate_manager import (
    READY_CERTIFICATES,
    CertificateManager,
    CertificateMetrics,
    CertificatePolicy,
    KubernetesCertificateApi,
)
from gomemlimit_operator.runtime.compliance_metrics import WatcherCollector, register_collector
from gomemlimit_operator.runtime.config import ConfigError, OperatorConfig, parse_config
from gomemlimit_operator.runtime.dev import (
    READY_DEV,
    DevMode,
    DevProbe,
    ProbeAnsweringWebhook,
    dev_certificates,
    kubeconfig_files_in_memory,
)
from gomemlimit_operator.runtime.health import HealthServer, Readiness, metrics_server
from gomemlimit_operator.runtime.leader import (
    LEASE_NAME,
    ElectionTiming,
    KubernetesLeaseClient,
    LeaderElector,
)
from gomemlimit_operator.runtime.loop_monitor import LoopMonitor, freeze_when
from gomemlimit_operator.runtime.status_writer import PolicyStatusWriter, kubernetes_status_patcher
from gomemlimit_operator.runtime.watcher import PodWatcher, confirm_listing, pod_uid_lister
from gomemlimit_operator.runtime.webhook import PodWebhook
from gomemlimit_operator.runtime.webhook_server import ServingLimits, WebhookServer

__all__ = [
    "Components",
    "Reporting",
    "WatchOnlyDiffBaseStorage",
    "assert_pods_read_only",
    "assert_watch_only",
    "build_components",
    "build_reporting",
    "build_settings",
    "main",
    "new_metrics_registry",
    "run",
]

logger = logging.getLogger("gomemlimit_operator")

READY_WEBHOOK = "webhook"
READY_POLICIES = "policy-index"


# -------------------------------------------------------------------------------------------
# Kubernetes credentials
# -------------------------------------------------------------------------------------------


def load_kube_configuration(kubeconfig: Path | None) -> Any:
    """A kubernetes.client.Configuration: --kubeconfig, else in-cluster, else $KUBECONFIG."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    if kubeconfig is not None:
        with kubeconfig_files_in_memory(configuration) as scratch:  # no key left after a crash
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig),
                client_configuration=configuration,
                temp_file_path=scratch,
            )
        return configuration
    try:
        kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except kubernetes.config.ConfigException:
        with kubeconfig_files_in_memory(configuration) as scratch:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration, temp_file_path=scratch
            )
    return configuration


def connection_info(configuration: Any) -> kopf.ConnectionInfo:
    """The same credentials for kopf (mirrors kopf.login_via_client, for our Configuration)."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else tuple(parts)
    )
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        default_namespace="default",  # where events about cluster-scoped policies go
    )


# -------------------------------------------------------------------------------------------
# kopf settings and registry
# -------------------------------------------------------------------------------------------


def build_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.posting.enabled = True  # Warning events on invalid policies
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "gomemlimit-operator"
    settings.posting.reporting_instance = os.environ.get("POD_NAME") or socket.gethostname()
    settings.posting.event_name_prefix = "gomemlimit-"
    # Watches end server-side before the client gives up, so a dead connection is noticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.chunk_size = 500
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.admission.server = None  # the webhook has its own server (webhook_server)
    settings.admission.managed = None  # never: the install declares the configuration
    settings.peering.standalone = True
    settings.execution.max_workers = 4  # all our handlers are async; kopf's own needs few
    settings.process.ultimate_exiting_timeout = 20
    settings.persistence.diffbase_storage = WatchOnlyDiffBaseStorage()
    return settings


class WatchOnlyDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base storage, minus the per-event "essence" of each object.

    On every watch event kopf deep-copies the whole body (twice) to build an essence that
    only change-detecting handlers (on.create/update/resume/field) and daemons or timers
    use. This operator has none of them, which :func:`assert_watch_only` enforces at start,
    so the essence is always empty: watching 1,000 pods costs about 0.5 s of CPU less
    (bench/README.md, bench_webhook).
    """

    def build(
        self,
        *,
        body: kopf.Body,
        extra_fields: Any = None,
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()


PODS = kopf.Resource(
    "",
    "v1",
    "pods",
    kind="Pod",
    singular="pod",
    shortcuts=frozenset({"po"}),
    categories=frozenset({"all"}),
    namespaced=True,
)


def assert_watch_only(kopf_registry: kopf.OperatorRegistry) -> None:
    """Refuse change-detecting handlers, daemons and timers on any resource.

    :class:`WatchOnlyDiffBaseStorage` gives kopf an empty essence, which such handlers
    would need to see what changed."""
    writers = [
        *kopf_registry._changing.get_all_handlers(),
        *kopf_registry._spawning.get_all_handlers(),
    ]
    if writers:
        names = ", ".join(repr(handler.id) for handler in writers)
        raise RuntimeError(
            f"handlers {names} need kopf's diff base; this operator is watch-only "
            "(@kopf.on.event, @kopf.index)"
        )


def assert_pods_read_only(kopf_registry: kopf.OperatorRegistry) -> None:
    """Refuse handlers that would make kopf write annotations or finalizers onto pods."""
    writers = [
        *kopf_registry._changing.get_all_handlers(),
        *kopf_registry._spawning.get_all_handlers(),
    ]
    for handler in writers:
        selector = getattr(handler, "selector", None)
        if selector is None or selector.check(PODS):
            raise RuntimeError(
                f"handler {handler.id!r} would write onto pods; watch pods only with "
                "@kopf.on.event or @kopf.index"
            )


# -------------------------------------------------------------------------------------------
# Composition
# -------------------------------------------------------------------------------------------


BackgroundTask = Callable[[], Coroutine[Any, Any, None]]


def new_metrics_registry() -> CollectorRegistry:
    """The one registry the operator serves on /metrics: the process, platform and garbage
    collector series prometheus_client's global registry would have, and then ours."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass(frozen=True)
class Reporting:
    """What the leader reports: the pod series and the policy status, and who leads.

    Every replica watches pods and keeps its records current; only the leader exports the
    pod series (:meth:`exports`), and it writes status only once its records are synced
    (:meth:`writes_status`): a new leader never publishes partial counts.
    """

    store: PodStore
    watcher: PodWatcher
    status_writer: PolicyStatusWriter
    collector: WatcherCollector
    elector: LeaderElector | None
    """The Lease campaign; None with --no-leader-election (this replica always leads)."""
    background: tuple[BackgroundTask, ...]

    def exports(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def writes_status(self) -> bool:
        return self.exports() and self.store.synced


def build_reporting(
    config: OperatorConfig,
    api_client: Any,
    registry: PolicyView,
    kopf_registry: kopf.OperatorRegistry,
    metrics_registry: CollectorRegistry,
    *,
    list_uids: Callable[[], set[str]] | None,
) -> Reporting:
    """The pod records, the watcher's handler, the status writer, the collector, the Lease.

    ``list_uids``: the start-up barrier's LIST (:func:`~.watcher.pod_uid_lister`). With it,
    the store is synced as soon as the watch delivered the pods it names; without it, once
    kopf's listing has been quiet for 10 s, or after 30 s with no listing at all.
    """
    store = PodStore(
        registry, per_namespace_listing=not config.clusterwide, quiet_sync=list_uids is None
    )
    registry.subscribe(store.policy_changed)
    registry.subscribe_namespaces(store.namespace_changed)
    pod_watcher = PodWatcher(store, watches=config.watches)
    watcher.register(kopf_registry, pod_watcher)

    elector: LeaderElector | None = None
    if config.leader_election:
        timing = ElectionTiming.for_lease(config.leader_election_lease_duration)
        elector = LeaderElector(
            KubernetesLeaseClient(
                api_client,
                config.leader_election_namespace,
                LEASE_NAME,
                timeout=timing.request_timeout,
            ),
            config.leader_election_identity or default_identity(),
            timing=timing,
            # A new leader writes at once. (status_writer is built just below; the elector
            # calls back only from run(), a background task.)
            on_change=lambda leading: status_writer.wake(),
            description=f"lease {config.leader_election_namespace}/{LEASE_NAME}",
        )

    def exports() -> bool:
        return elector is None or elector.is_leader()

    status_writer = PolicyStatusWriter(
        kubernetes_status_patcher(api_client),
        interval=config.status_interval_seconds,
        counts_provider=store.counts,
        is_leader=lambda: exports() and store.synced,
    )
    collector = register_collector(
        store,
        registry,
        noncompliant_info=config.noncompliant_info,
        is_active=exports,
        status_writes=lambda: status_writer.writes,
        prometheus_registry=metrics_registry,
    )
    background: list[BackgroundTask] = [status_writer.run]
    if elector is not None:
        background.append(elector.run)
    background.append(pod_watcher.run)
    if list_uids is not None:
        barrier_lister = list_uids
        background.append(lambda: confirm_listing(store, barrier_lister))
    return Reporting(store, pod_watcher, status_writer, collector, elector, tuple(background))


@dataclass(frozen=True)
class Components:
    """What :func:`run` needs of the built operator."""

    api_client: Any
    kopf_registry: kopf.OperatorRegistry
    readiness: Readiness
    webhook: WebhookParts | None
    """None with --components watcher: no webhook is served."""
    serving: asyncio.Event
    """Set once the webhook server listens."""
    background: tuple[BackgroundTask, ...]
    reporting: Reporting | None
    """None with --components webhook (no pod is watched). Its elector is logged at start
    and releases the Lease at shutdown."""


def build_components(
    config: OperatorConfig,
    kube_configuration: Any,
    cert_dir: Path,
    metrics_registry: CollectorRegistry,
) -> Components:
    import kubernetes

    api_client = kubernetes.client.ApiClient(kube_configuration)
    registry = PolicyView()
    kopf_registry = kopf.OperatorRegistry()
    readiness = Readiness()
    readiness.add(READY_POLICIES)
    serving = asyncio.Event()

    @kopf.on.login(registry=kopf_registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kube_configuration)

    reporting: Reporting | None = None
    if config.watches_pods:
        reporting = build_reporting(
            config,
            api_client,
            registry,
            kopf_registry,
            metrics_registry,
            list_uids=pod_uid_lister(api_client, config.watch_namespaces),
        )
    reconciler = policy_reconciler.PolicyReconciler(
        registry, reporting.status_writer if reporting else None, watches=config.watches
    )
    lister = policy_reconciler.KubernetesLister(api_client, config.watch_namespaces)
    policy_reconciler.register(kopf_registry, reconciler)

    loop_monitor = LoopMonitor(metrics_registry)
    background: list[BackgroundTask] = [
        lambda: policy_reconciler.load_and_resync(
            reconciler, lister, on_loaded=lambda: readiness.set(READY_POLICIES)
        ),
        *(reporting.background if reporting else ()),
        loop_monitor.run,
        lambda: freeze_when(lambda: readiness.ready),
    ]
    webhook: WebhookParts | None = None
    if config.serves_webhook:
        readiness.add(READY_WEBHOOK)

        def on_serving() -> None:
            readiness.set(READY_WEBHOOK)
            serving.set()

        webhook = build_webhook(
            config,
            api_client,
            registry,
            cert_dir,
            metrics_registry,
            readiness,
            ensure_namespace=policy_reconciler.namespace_ensurer(reconciler, lister),
            on_serving=on_serving,
        )
        if webhook.dev is not None:
            dev_mode = webhook.dev
            background.append(lambda: dev_mode.run(serving, lambda: readiness.set(READY_DEV)))
        if webhook.certificates is not None:
            background.append(webhook.certificates.run)
    assert_pods_read_only(kopf_registry)
    assert_watch_only(kopf_registry)
    return Components(
        api_client=api_client,
        kopf_registry=kopf_registry,
        readiness=readiness,
        webhook=webhook,
        serving=serving,
        background=tuple(background),
        reporting=reporting,
    )


@dataclass(frozen=True)
class WebhookParts:
    """What serving the webhook needs: the handler, its certificate and what keeps that, and
    the server (built here, started by :func:`run`)."""

    pod_webhook: PodWebhook
    cert_file: Path
    key_file: Path
    ca_bundle: bytes | None
    dev: DevMode | None
    certificates: CertificateManager | None
    """With --manage-certificates: its first pass must finish before the webhook serves."""
    server: WebhookServer


def file_check_interval(certificates: CertificateManager | None) -> float:
    """How often the webhook server re-reads its certificate files."""
    if certificates is not None:
        return certificates.policy.file_check_interval
    return 10.0


def serving_limits(config: OperatorConfig) -> ServingLimits:
    return ServingLimits(
        idle_timeout=config.webhook_idle_timeout_seconds,
        header_timeout=config.webhook_header_timeout_seconds,
        max_connections=config.webhook_max_connections,
    )


def build_webhook(
    config: OperatorConfig,
    api_client: Any,
    registry: PolicyView,
    cert_dir: Path,
    metrics_registry: CollectorRegistry,
    readiness: Readiness,
    *,
    ensure_namespace: Callable[[str], Awaitable[None]],
    on_serving: Callable[[], None],
) -> WebhookParts:
    """The pod webhook, its certificate (--manage-certificates, --dev or the given files) and
    its server; ``on_serving`` is called once the server listens."""

    webhook_arguments: dict[str, Any] = {
        "exempt": config.exempt,
        "metrics": AdmissionMetrics(metrics_registry),
        "ensure_namespace": ensure_namespace,
    }
    dev: DevMode | None = None
    certificates: CertificateManager | None = None
    pod_webhook: PodWebhook
    ca_bundle: bytes | None
    if config.manage_certificates:
        certificates = build_certificate_manager(config, api_client, cert_dir, metrics_registry)
        certificates.on_ready = lambda ready: readiness.set(READY_CERTIFICATES, ready)
        readiness.add(READY_CERTIFICATES)
        cert_file, key_file, ca_bundle = certificates.cert_file, certificates.key_file, None
        pod_webhook = PodWebhook(registry, **webhook_arguments)
    elif config.dev:
        cert_file, key_file, ca_pem = dev_certificates(config, cert_dir)
        ca_bundle = ca_pem
        probe = DevProbe()
        pod_webhook = ProbeAnsweringWebhook(registry, probe=probe, **webhook_arguments)
        dev = DevMode(config, api_client, ca_pem, probe)
        readiness.add(READY_DEV)
    else:
        assert config.tls_cert_file is not None
        assert config.tls_key_file is not None
        cert_file, key_file, ca_bundle = config.tls_cert_file, config.tls_key_file, None
        pod_webhook = PodWebhook(registry, **webhook_arguments)
    server = WebhookServer(
        pod_webhook.review,
        host=config.bind_host,
        port=config.webhook_port,
        path=WEBHOOK_PATH,
        cert_file=cert_file,
        key_file=key_file,
        metrics=ServingMetrics(metrics_registry),
        limits=serving_limits(config),
        file_check_interval=file_check_interval(certificates),
        on_serving=on_serving,
        drain_timeout=config.webhook_drain_seconds,
    )
    return WebhookParts(pod_webhook, cert_file, key_file, ca_bundle, dev, certificates, server)


def build_certificate_manager(
    config: OperatorConfig,
    api_client: Any,
    cert_dir: Path,
    metrics_registry: CollectorRegistry,
) -> CertificateManager:
    """--manage-certificates: the Secret, the webhook configuration and the files."""
    assert config.certificate_secret is not None
    assert config.webhook_configuration_name is not None
    assert config.service_name is not None
    policy = CertificatePolicy.for_service(
        config.service_name,
        config.namespace,
        extra_hosts=config.certificate_extra_sans,
        serving_validity=config.certificate_validity,
        ca_validity=config.ca_validity,
    )
    api = KubernetesCertificateApi(
        api_client, config.namespace, config.certificate_secret, config.webhook_configuration_name
    )
    return CertificateManager(
        api,
        policy,
        cert_dir,
        metrics=CertificateMetrics(metrics_registry),
        description=f"Secret {config.namespace}/{config.certificate_secret}",
    )


def default_identity() -> str:
    """$POD_NAME (else the host name) and a random suffix, like controller-runtime's.

    The suffix makes a restarted process a new candidate: it waits for its predecessor's
    lease to expire instead of acting as if it had held it all along.
    """
    base = os.environ.get("POD_NAME") or socket.gethostname() or "gomemlimit-operator"
    return f"{base}_{secrets.token_hex(4)}"


# -------------------------------------------------------------------------------------------
# Running
# -------------------------------------------------------------------------------------------


async def run(config: OperatorConfig) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit status."""
    loop = asyncio.get_running_loop()
    # Until kopf installs its own signal handlers, remember a signal and re-send it from a
    # startup handler (kopf's stop_flag= would leave a task behind that delays the exit by 5s).
    early_signals: list[int] = []
    signalled = asyncio.Event()

    def early_signal(signum: int) -> None:
        early_signals.append(signum)
        signalled.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, early_signal, signum)

    try:
        kube_configuration = await asyncio.to_thread(load_kube_configuration, config.kubeconfig)
    except Exception as exc:
        logger.error("No Kubernetes credentials: %s", exc)
        return 1

    with tempfile.TemporaryDirectory(prefix="gomemlimit-operator-") as temp:
        metrics_registry = new_metrics_registry()
        cert_dir = config.cert_dir or Path(temp)
        components = build_components(config, kube_configuration, cert_dir, metrics_registry)

        @kopf.on.startup(registry=components.kopf_registry)
        async def resend_early_signals(**_: Any) -> None:
            for signum in early_signals:
                os.kill(os.getpid(), signum)

        webhook = components.webhook

        async def stop_serving() -> None:
            """The --dev configuration goes first (no calls fail meanwhile), then the server
            drains and stops. Safe to call twice."""
            if webhook is not None:
                if webhook.dev is not None:
                    await webhook.dev.remove()
                await webhook.server.stop()

        @kopf.on.cleanup(registry=components.kopf_registry)
        async def stop_serving_first(**_: Any) -> None:
            # kopf cancels every task created after it started (our connections' tasks among
            # them) up to 5 s after its own tasks stopped. The webhook drains and stops before
            # that, as soon as kopf begins to stop, so that no request is cut off.
            await stop_serving()

        settings = build_settings(config)
        health = HealthServer(components.readiness, config.bind_host, config.health_port)
        tasks: list[asyncio.Task[None]] = []
        try:
            with metrics_server(config.bind_host, config.metrics_port, metrics_registry):
                await health.start()
                certificates = webhook.certificates if webhook else None
                if certificates is not None and not await _first(certificates.start(), signalled):
                    return 0  # stopped before the certificate was in place
                tasks = [asyncio.create_task(factory()) for factory in components.background]
                if webhook is not None:
                    # Listening is receiving: with SO_REUSEPORT (a rolling update on one host
                    # port, the webhook processes of one pod) the kernel hands this process
                    # connections as soon as it listens, ready or not. Before the policy index
                    # is loaded it would allow pods unmutated ("no policy governs"), so it
                    # listens only then; until then the other process gets every connection.
                    if not await _first(_policies_loaded(components.readiness), signalled):
                        return 0
                    await webhook.server.start()
                logger.info(
                    "gomemlimit-operator %s (%s): %smetrics :%d, health :%d on %s%s.",
                    __version__,
                    config.components,
                    f"webhook :{config.webhook_port}, " if webhook else "",
                    config.metrics_port,
                    config.health_port,
                    config.bind_host,
                    " (dev)" if config.dev else "",
                )
                elector = components.reporting.elector if components.reporting else None
                if elector is not None:
                    logger.info(
                        "Leader election: %s as %s (lease duration %ds).",
                        elector.description,
                        elector.identity,
                        config.leader_election_lease_duration,
                    )
                await kopf.operator(
                    registry=components.kopf_registry,
                    settings=settings,
                    standalone=True,
                    clusterwide=config.clusterwide,
                    namespaces=list(config.watch_namespaces),
                )
        except OSError as exc:
            logger.error("Cannot start: %s", exc)
            return 1
        except Exception:
            logger.exception("The operator failed.")
            return 1
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):  # ignore repeats while cleaning up
                loop.add_signal_handler(signum, lambda: None)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            if components.reporting and components.reporting.elector:  # status writing stopped
                await components.reporting.elector.stop()  # hand over now
            await stop_serving()  # if kopf did not run its cleanup
            await health.stop()
            components.api_client.close()
    logger.info("Stopped.")
    return 0


async def _policies_loaded(readiness: Readiness, poll: float = 0.02) -> None:
    """Until the policy index is loaded (its readiness check passed)."""
    while not readiness.checks().get(READY_POLICIES):
        await asyncio.sleep(poll)


async def _first(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` until it returns (True) or ``stop`` is set (False, ``work`` cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def configure_logging(config: OperatorConfig) -> None:
    kopf.configure(
        debug=config.log_level == "debug",
        quiet=config.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.FULL,
    )
    logging.getLogger().setLevel(config.logging_level)
    # kopf logs "Handler/Webhook ... succeeded" for every event and admission request, and
    # aiohttp a line per request: too many. Our handlers log what matters.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if config.log_level != "debug":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gomemlimit operator ARGS`` (argv without the subcommand)."""
    try:
        config = parse_config(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        print(f"gomemlimit operator: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    configure_logging(config)
    try:
        return asyncio.run(run(config))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
