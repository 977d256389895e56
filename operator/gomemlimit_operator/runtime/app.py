"""``gomemlimit operator``: composes the operator process and runs it on kopf.

Composition (all in :func:`build_components`, one place to add handlers):

* a shared :class:`registry.PolicyView`, filled by :mod:`policies` and read by :mod:`webhook`;
* an explicit ``kopf.OperatorRegistry`` and ``kopf.OperatorSettings`` (no global state; no
  ``kopf run``), run with ``standalone=True``;
* kopf's ``WebhookServer`` with an explicit host, port and certificate files (it reloads
  changed files), never kopf's managed webhook mode;
* the Prometheus ``/metrics`` server and the ``/healthz``, ``/readyz`` server;
* background tasks: the policy LIST/resync, the status writer, the pod watcher's
  housekeeping and start-up barrier, the leader election campaign, and with ``--dev`` the
  webhook configuration registration and its probe.

High availability: every replica runs kopf standalone (policies, namespaces and pods are
watched everywhere, so every webhook answers with a current policy index) and a Lease
(:mod:`leader`) elects the one replica that writes policy status and exports the pod series.
kopf peering is not used: it pauses every watch stream of a non-leader replica.

kopf writes nothing onto pods: the only pod handler is the admission webhook, which answers
requests and never calls the API. :func:`assert_pods_read_only` refuses to start if a
handler that would write annotations or finalizers (on.create/update/resume/delete/field,
timers, daemons) is ever registered for pods.

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
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
from prometheus_client import REGISTRY

from gomemlimit_operator import __version__
from gomemlimit_operator.core.api import WEBHOOK_PATH
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.install.webhook_configuration import (
    build_webhook_configuration,
    url_client_config,
)
from gomemlimit_operator.runtime import certs, webhook
from gomemlimit_operator.runtime import pod_wiring as pods
from gomemlimit_operator.runtime import policy_reconciler as policies
from gomemlimit_operator.runtime.admission_metrics import AdmissionMetrics, default_metrics
from gomemlimit_operator.runtime.config import ConfigError, OperatorConfig, parse_config
from gomemlimit_operator.runtime.dev import DevProbe, DevWebhookRegistration
from gomemlimit_operator.runtime.health import HealthServer, Readiness, metrics_server
from gomemlimit_operator.runtime.leader import (
    LEASE_NAME,
    ElectionTiming,
    KubernetesLeaseClient,
    LeaderElector,
)
from gomemlimit_operator.runtime.loop_monitor import LoopMonitor, freeze_when
from gomemlimit_operator.runtime.status_writer import PolicyStatusWriter, kubernetes_status_patcher

__all__ = [
    "Components",
    "WatchOnlyDiffBaseStorage",
    "assert_pods_read_only",
    "assert_watch_only",
    "build_components",
    "build_settings",
    "main",
    "run",
]

logger = logging.getLogger("gomemlimit_operator")

READY_WEBHOOK = "webhook"
READY_POLICIES = "policy-index"
READY_DEV = "dev-webhook-configuration"


# -------------------------------------------------------------------------------------------
# Kubernetes credentials
# -------------------------------------------------------------------------------------------


def load_kube_configuration(kubeconfig: Path | None) -> Any:
    """A kubernetes.client.Configuration: --kubeconfig, else in-cluster, else $KUBECONFIG."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    if kubeconfig is not None:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=configuration
        )
        return configuration
    try:
        kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
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


def build_settings(config: OperatorConfig, server: kopf.WebhookServer) -> kopf.OperatorSettings:
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
    settings.admission.server = server
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
            "(@kopf.on.event, @kopf.index, @kopf.on.mutate)"
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


@dataclass
class Components:
    """Everything the operator process is made of; later parts hook in here."""

    config: OperatorConfig
    api_client: Any
    registry: PolicyView
    kopf_registry: kopf.OperatorRegistry
    readiness: Readiness
    index: policies.PolicyReconciler
    lister: policies.KubernetesLister
    status_writer: PolicyStatusWriter
    metrics: AdmissionMetrics
    pod_webhook: webhook.PodWebhook
    cert_file: Path
    key_file: Path
    ca_bundle: bytes | None
    probe: DevProbe | None
    background: list[BackgroundTask] = field(default_factory=list)
    serving: asyncio.Event = field(default_factory=asyncio.Event)
    elector: LeaderElector | None = None
    """The Lease campaign; None with --no-leader-election (this replica always leads)."""
    compliance: pods.PodCompliance | None = None

    def is_leader(self) -> bool:
        """Whether this replica exports the pod series and (once synced) writes status."""
        return self.elector is None or self.elector.is_leader()


def build_components(config: OperatorConfig, kube_configuration: Any, cert_dir: Path) -> Components:
    import kubernetes

    api_client = kubernetes.client.ApiClient(kube_configuration)
    registry = PolicyView()
    kopf_registry = kopf.OperatorRegistry()
    readiness = Readiness()
    readiness.add(READY_WEBHOOK)
    readiness.add(READY_POLICIES)

    @kopf.on.login(registry=kopf_registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kube_configuration)

    status_writer = PolicyStatusWriter(
        kubernetes_status_patcher(api_client), interval=config.status_interval_seconds
    )
    index = policies.PolicyReconciler(registry, status_writer, watches=config.watches)
    lister = policies.KubernetesLister(api_client, config.watch_namespaces)
    policies.register(kopf_registry, index)

    if config.dev:
        host = _reachable(config.bind_host)
        bundle = certs.generate([*certs.default_hosts(config.namespace), host, config.bind_host])
        files = certs.write_files(bundle, cert_dir)
        cert_file, key_file, ca_bundle = files.cert_file, files.key_file, bundle.ca_pem
        probe: DevProbe | None = DevProbe()
        readiness.add(READY_DEV)
    else:
        assert config.tls_cert_file is not None
        assert config.tls_key_file is not None
        cert_file, key_file, ca_bundle, probe = (
            config.tls_cert_file,
            config.tls_key_file,
            None,
            None,
        )

    metrics = default_metrics()
    pod_webhook = webhook.PodWebhook(
        registry,
        exempt=config.exempt,
        metrics=metrics,
        ensure_namespace=policies.namespace_ensurer(index, lister),
        probe=probe,
    )
    webhook.register(kopf_registry, pod_webhook)

    components = Components(
        config=config,
        api_client=api_client,
        registry=registry,
        kopf_registry=kopf_registry,
        readiness=readiness,
        index=index,
        lister=lister,
        status_writer=status_writer,
        metrics=metrics,
        pod_webhook=pod_webhook,
        cert_file=cert_file,
        key_file=key_file,
        ca_bundle=ca_bundle,
        probe=probe,
    )
    components.background.append(
        lambda: policies.load_and_resync(
            index, lister, on_loaded=lambda: readiness.set(READY_POLICIES)
        )
    )
    components.background.append(status_writer.run)
    # High availability: every replica serves the webhook with a current policy index (kopf
    # runs standalone everywhere; kopf peering would pause every watch on the followers). A
    # Lease elects the one replica that writes status and exports the pod series.
    if config.leader_election:
        timing = ElectionTiming.for_lease(config.leader_election_lease_duration)
        components.elector = LeaderElector(
            KubernetesLeaseClient(
                api_client,
                config.leader_election_namespace,
                LEASE_NAME,
                timeout=timing.request_timeout,
            ),
            config.leader_election_identity or default_identity(),
            timing=timing,
            on_change=lambda leading: status_writer.wake(),
            description=f"lease {config.leader_election_namespace}/{LEASE_NAME}",
        )
        components.background.append(components.elector.run)
    # The pod compliance watcher, its metrics and the status counts (issue 5). Every replica
    # watches and keeps its records current; only the leader exports them and writes status,
    # and only once its records are synced (a new leader never publishes partial counts).
    compliance = pods.register(
        components,
        is_active=components.is_leader,
        list_uids=pods.pod_uid_lister(api_client, config.watch_namespaces),
    )
    components.compliance = compliance
    status_writer.is_leader = lambda: components.is_leader() and compliance.store.synced
    assert_pods_read_only(kopf_registry)
    assert_watch_only(kopf_registry)
    return components


def default_identity() -> str:
    """$POD_NAME (else the host name) and a random suffix, like controller-runtime's.

    The suffix makes a restarted process a new candidate: it waits for its predecessor's
    lease to expire instead of acting as if it had held it all along.
    """
    base = os.environ.get("POD_NAME") or socket.gethostname() or "gomemlimit-operator"
    return f"{base}_{secrets.token_hex(4)}"


def _reachable(bind_host: str) -> str:
    """The address the API server should use to reach a server bound to ``bind_host``."""
    return (
        "127.0.0.1"
        if bind_host in ("0.0.0.0", "", "*")
        else "::1"
        if bind_host == "::"
        else bind_host
    )


# -------------------------------------------------------------------------------------------
# --dev: the webhook configuration and its probe
# -------------------------------------------------------------------------------------------


def _probe_namespace(config: OperatorConfig) -> str | None:
    candidates = ["default", *config.watch_namespaces]
    for namespace in candidates:
        if not config.exempt(namespace):
            return namespace
    return None


async def _register_dev_webhook(
    components: Components, registration_box: list[DevWebhookRegistration]
) -> None:
    import kubernetes

    config = components.config
    await components.serving.wait()
    assert components.ca_bundle is not None
    assert components.probe is not None
    url = f"https://{_reachable(config.bind_host)}:{config.webhook_port}{WEBHOOK_PATH}"
    body = build_webhook_configuration(
        name=config.dev_webhook_name,
        client_config=url_client_config(url, components.ca_bundle),
        exempt_namespaces=config.exempt_namespaces,
        only_namespaces=config.watch_namespaces,
        timeout_seconds=config.webhook_timeout_seconds,
        labels={"app.kubernetes.io/managed-by": "gomemlimit-operator-dev"},
    )
    registration = DevWebhookRegistration(
        kubernetes.client.AdmissionregistrationV1Api(components.api_client), body
    )
    registration_box.append(registration)
    attempt = 0
    while not registration.registered:
        try:
            await asyncio.to_thread(registration.register)
        except Exception as exc:
            attempt += 1
            logger.warning("Could not register the dev webhook configuration: %s", exc)
            await asyncio.sleep(min(5.0, 0.5 * attempt))
    logger.info("Dev webhook configuration %s points at %s.", registration.name, url)

    probe_namespace = _probe_namespace(config)
    if probe_namespace is None:
        logger.warning("No namespace to probe the webhook from; not waiting for the API server.")
        components.readiness.set(READY_DEV)
        return
    core = kubernetes.client.CoreV1Api(components.api_client)
    started = asyncio.get_running_loop().time()
    warned = 0.0
    while not components.probe.confirmed:
        try:
            await asyncio.to_thread(components.probe.send, core, probe_namespace)
        except Exception as exc:
            logger.debug("Dev webhook probe failed: %s", exc)
        if components.probe.confirmed:
            break
        waited = asyncio.get_running_loop().time() - started
        if waited - warned > 10:
            warned = waited
            logger.warning("The API server has not called the webhook yet (%.0fs).", waited)
        await asyncio.sleep(0.2 if waited < 10 else 2.0)
    logger.info("The API server calls the webhook; ready.")
    components.readiness.set(READY_DEV)


# -------------------------------------------------------------------------------------------
# Running
# -------------------------------------------------------------------------------------------


async def run(config: OperatorConfig) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit status."""
    loop = asyncio.get_running_loop()
    # Until kopf installs its own signal handlers, remember a signal and re-send it from a
    # startup handler (kopf's stop_flag= would leave a task behind that delays the exit by 5s).
    early_signals: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, early_signals.append, signum)

    try:
        kube_configuration = await asyncio.to_thread(load_kube_configuration, config.kubeconfig)
    except Exception as exc:
        logger.error("No Kubernetes credentials: %s", exc)
        return 1

    with tempfile.TemporaryDirectory(prefix="gomemlimit-operator-") as temp:
        components = build_components(config, kube_configuration, Path(temp))

        @kopf.on.startup(registry=components.kopf_registry)
        async def resend_early_signals(**_: Any) -> None:
            for signum in early_signals:
                os.kill(os.getpid(), signum)

        def on_serving(client_config: Mapping[str, Any]) -> None:
            logger.info("Webhook serving on %s:%d.", config.bind_host, config.webhook_port)
            components.readiness.set(READY_WEBHOOK)
            components.serving.set()

        server = webhook.ServingWebhookServer(
            on_serving=on_serving,
            lean=components.pod_webhook.review,
            addr=config.bind_host,
            port=config.webhook_port,
            host=_reachable(config.bind_host),
            certfile=str(components.cert_file),
            pkeyfile=str(components.key_file),
            cadata=components.ca_bundle,
            file_check_interval=10.0,
        )
        settings = build_settings(config, server)
        registrations: list[DevWebhookRegistration] = []
        health = HealthServer(components.readiness, config.bind_host, config.health_port)
        tasks: list[asyncio.Task[None]] = []
        try:
            with metrics_server(config.bind_host, config.metrics_port):
                await health.start()
                tasks = [asyncio.create_task(factory()) for factory in components.background]
                tasks.append(asyncio.create_task(LoopMonitor(REGISTRY).run()))
                tasks.append(asyncio.create_task(freeze_when(lambda: components.readiness.ready)))
                if config.dev:
                    tasks.append(
                        asyncio.create_task(_register_dev_webhook(components, registrations))
                    )
                logger.info(
                    "gomemlimit-operator %s: webhook :%d, metrics :%d, health :%d on %s%s.",
                    __version__,
                    config.webhook_port,
                    config.metrics_port,
                    config.health_port,
                    config.bind_host,
                    " (dev)" if config.dev else "",
                )
                if components.elector is not None:
                    logger.info(
                        "Leader election: %s as %s (lease duration %ds).",
                        components.elector.description,
                        components.elector.identity,
                        config.leader_election_lease_duration,
                    )
                await kopf.operator(
                    registry=components.kopf_registry,
                    settings=settings,
                    standalone=True,
                    clusterwide=config.clusterwide,
                    namespaces=list(config.watch_namespaces),
                    memo=kopf.Memo(components=components),
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
            if components.elector is not None:  # status writing has stopped: hand over now
                await components.elector.stop()
            for registration in registrations:
                try:
                    await asyncio.wait_for(asyncio.to_thread(registration.remove), timeout=15)
                except Exception as exc:
                    logger.error("Could not delete %s: %s", registration.name, exc)
            await health.stop()
            components.api_client.close()
    logger.info("Stopped.")
    return 0


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
