"""The operator's settings, read from flags and ``GOMEMLIMIT_OPERATOR_*`` environment variables.

A flag beats its environment variable, which beats the default. Every bad value is reported
with the flag or variable it came from, and ``parse_config`` raises :class:`ConfigError`
(``operator_main`` turns it into exit status 2, like argparse does).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

__all__ = [
    "DEFAULT_DEV_WEBHOOK_NAME",
    "DEFAULT_LEASE_DURATION",
    "DEFAULT_NAMESPACE",
    "DEV_LEASE_NAMESPACE",
    "ENV_PREFIX",
    "ConfigError",
    "OperatorConfig",
    "build_parser",
    "parse_config",
]

ENV_PREFIX: Final = "GOMEMLIMIT_OPERATOR_"
DEFAULT_NAMESPACE: Final = "gomemlimit-system"
DEFAULT_DEV_WEBHOOK_NAME: Final = "gomemlimit-operator-dev"
ALWAYS_EXEMPT: Final = ("kube-system",)
DEFAULT_LEASE_DURATION: Final = 15
DEV_LEASE_NAMESPACE: Final = "default"
"""With --dev, the Lease lives here unless told otherwise: every cluster has it."""
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

T = TypeVar("T")


class ConfigError(ValueError):
    """A flag or environment variable with a bad value. The message names it."""


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator process needs to know at start. Immutable."""

    webhook_port: int = 9443
    metrics_port: int = 8080
    health_port: int = 8081
    bind_host: str = "127.0.0.1"
    """Address all three servers listen on. In a pod set it to 0.0.0.0 (the chart does)."""
    namespace: str = DEFAULT_NAMESPACE
    """The operator's own namespace (POD_NAMESPACE); always exempt from injection."""
    exempt_namespaces: frozenset[str] = frozenset({*ALWAYS_EXEMPT, DEFAULT_NAMESPACE})
    """Namespaces the webhook never mutates: kube-system, ``namespace`` and the flag's."""
    watch_namespaces: tuple[str, ...] = ()
    """Namespaces whose GoMemPolicies and pods are handled. Empty means cluster-wide."""
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    dev: bool = False
    """Generate a certificate and register a URL webhook configuration for a local cluster."""
    dev_webhook_name: str = DEFAULT_DEV_WEBHOOK_NAME
    webhook_timeout_seconds: int = 2
    """timeoutSeconds of the webhook configuration that --dev registers (1 to 30)."""
    log_level: str = "info"
    noncompliant_info: bool = True
    """Export a per-container info series for each noncompliant container (metrics)."""
    status_interval_seconds: float = 5.0
    """Least time between two status writes of one policy."""
    kubeconfig: Path | None = None
    """Explicit kubeconfig; otherwise in-cluster credentials, then $KUBECONFIG/~/.kube/config."""
    leader_election: bool = True
    """Elect one replica (a Lease) to write policy status and export the pod series."""
    leader_election_namespace: str = DEFAULT_NAMESPACE
    """Namespace of the Lease: --namespace, or ``default`` with --dev."""
    leader_election_identity: str | None = None
    """This replica's holderIdentity; None: $POD_NAME (else the host name) and a random suffix."""
    leader_election_lease_duration: int = DEFAULT_LEASE_DURATION
    """Seconds a follower waits for a silent leader's lease to expire (the failover time)."""

    @property
    def clusterwide(self) -> bool:
        return not self.watch_namespaces

    @property
    def logging_level(self) -> int:
        return int(getattr(logging, self.log_level.upper()))

    def watches(self, namespace: str) -> bool:
        """Whether pods and GoMemPolicies in this namespace are handled at all."""
        return self.clusterwide or namespace in self.watch_namespaces

    def exempt(self, namespace: str) -> bool:
        """Whether the webhook must leave pods in this namespace alone."""
        return namespace in self.exempt_namespaces or not self.watches(namespace)


# ---------------------------------------------------------------------------------------------
# Value parsers: each raises ValueError with a short problem; the caller adds the source.
# ---------------------------------------------------------------------------------------------


def _whole_number(low: int, high: int, what: str, bounds: str) -> Callable[[str], int]:
    """A parser of whole numbers from ``low`` to ``high``: ``{text} is not {what}``, or
    ``{value} is {bounds}``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is {bounds}")
        return value

    return parse


_port = _whole_number(1, 65535, "a port number", "not a port from 1 to 65535")
_timeout = _whole_number(
    1, 30, "a whole number of seconds", "outside 1..30 (the API server's limits)"
)
_lease_duration = _whole_number(2, 300, "a whole number of seconds", "outside 2..300 seconds")


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{text!r} must be a positive number of seconds")
    return value


def _namespace_name(text: str) -> str:
    if not _DNS_LABEL.match(text):
        raise ValueError(f"{text!r} is not a namespace name (a lowercase RFC 1123 label)")
    return text


def _namespace_list(text: str) -> list[str]:
    return [_namespace_name(part.strip()) for part in text.split(",") if part.strip()]


def _log_level(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return lowered


def _object_name(text: str) -> str:
    if not _DNS_SUBDOMAIN.match(text):
        raise ValueError(f"{text!r} is not an object name (a lowercase RFC 1123 subdomain)")
    return text


def _identity(text: str) -> str:
    if not text or len(text) > 128 or any(not c.isprintable() or c.isspace() for c in text):
        raise ValueError(f"{text!r} is not an identity (1 to 128 printable characters, no spaces)")
    return text


def _host(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} is not an address")
    return text


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def build_parser(prog: str = "gomemlimit operator") -> argparse.ArgumentParser:
    """The operator's flags. Defaults are None so that environment variables can fill in."""
    parser = _RaisingParser(
        prog=prog,
        description=(
            "Run the gomemlimit operator: the policy controller and the mutating admission "
            f"webhook. Every flag also reads an environment variable {ENV_PREFIX}<FLAG> "
            "(upper case, dashes as underscores); the flag wins."
        ),
    )
    add = parser.add_argument
    add("--webhook-port", help="HTTPS port of the admission webhook (default 9443)")
    add("--metrics-port", help="HTTP port of /metrics (default 8080)")
    add("--health-port", help="HTTP port of /healthz and /readyz (default 8081)")
    add(
        "--bind-host",
        help="address the three servers listen on (default 127.0.0.1; use 0.0.0.0 in a pod)",
    )
    add(
        "--namespace",
        help=f"the operator's own namespace (default $POD_NAMESPACE, else {DEFAULT_NAMESPACE})",
    )
    add(
        "--exempt-namespace",
        action="append",
        metavar="NAMESPACE[,NAMESPACE...]",
        help="never mutate pods here (repeatable); kube-system and --namespace always are",
    )
    add(
        "--watch-namespace",
        action="append",
        metavar="NAMESPACE[,NAMESPACE...]",
        help="handle only these namespaces (repeatable; default: the whole cluster)",
    )
    add("--tls-cert-file", help="PEM serving certificate of the webhook (reloaded on change)")
    add("--tls-key-file", help="PEM private key of the webhook certificate")
    add(
        "--dev",
        action="store_const",
        const="true",
        help=(
            "local development: generate a self-signed certificate and register a URL "
            "webhook configuration pointing at this process; removed on exit"
        ),
    )
    add(
        "--dev-webhook-name",
        help=f"name of that configuration (default {DEFAULT_DEV_WEBHOOK_NAME})",
    )
    add(
        "--webhook-timeout",
        metavar="SECONDS",
        help="timeoutSeconds of the --dev webhook configuration, 1..30 (default 2)",
    )
    add("--log-level", help=f"one of {', '.join(LOG_LEVELS)} (default info)")
    add(
        "--noncompliant-info",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export one info series per noncompliant container (default on)",
    )
    add(
        "--status-interval",
        metavar="SECONDS",
        help="least time between two status writes of one policy (default 5)",
    )
    add("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    add(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "elect one replica through a Lease to write policy status and export the pod "
            "series; every replica serves the webhook (default on)"
        ),
    )
    add(
        "--leader-election-namespace",
        metavar="NAMESPACE",
        help="namespace of the Lease gomemlimit-operator (default: --namespace; with --dev: "
        "default)",
    )
    add(
        "--leader-election-identity",
        metavar="ID",
        help="this replica's Lease holder identity (default $POD_NAME or the host name, "
        "plus a random suffix)",
    )
    add(
        "--leader-election-lease-duration",
        metavar="SECONDS",
        help=f"how long a silent leader keeps the Lease, 2..300 (default {DEFAULT_LEASE_DURATION})",
    )
    return parser


def _pick(
    value: object,
    flag: str,
    env: Mapping[str, str],
    convert: Callable[[str], T],
    default: T,
    env_name: str | None = None,
) -> T:
    """Flag value, else environment variable, else default; errors name the source."""
    name = env_name or ENV_PREFIX + flag.removeprefix("--").replace("-", "_").upper()
    if value is not None:
        source, text = flag, str(value)
    elif name in env:
        source, text = name, env[name]
    else:
        return default
    try:
        return convert(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _pick_list(values: Sequence[str] | None, flag: str, env: Mapping[str, str]) -> list[str]:
    name = ENV_PREFIX + flag.removeprefix("--").replace("-", "_").upper() + "S"
    if values:
        source, texts = flag, list(values)
    elif name in env:
        source, texts = name, [env[name]]
    else:
        return []
    result: list[str] = []
    try:
        for text in texts:
            result.extend(_namespace_list(text))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return result


def parse_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Build the configuration from command-line arguments and the environment."""
    env = os.environ if env is None else env
    args = build_parser().parse_args(list(argv))

    # --namespace, then GOMEMLIMIT_OPERATOR_NAMESPACE, then the downward API's POD_NAMESPACE.
    namespace = _pick(args.namespace, "--namespace", env, _namespace_name, "")
    if not namespace:
        namespace = _pick(None, "", env, _namespace_name, DEFAULT_NAMESPACE, "POD_NAMESPACE")
    exempt = _pick_list(args.exempt_namespace, "--exempt-namespace", env)
    watch = _pick_list(args.watch_namespace, "--watch-namespace", env)

    cert = _pick(args.tls_cert_file, "--tls-cert-file", env, Path, None)
    key = _pick(args.tls_key_file, "--tls-key-file", env, Path, None)
    dev = _pick(args.dev, "--dev", env, _bool, False)
    noncompliant = args.noncompliant_info
    if noncompliant is None:
        noncompliant = _pick(None, "--noncompliant-info", env, _bool, True)
    election = args.leader_election
    if election is None:
        election = _pick(None, "--leader-election", env, _bool, True)
    lease_namespace = _pick(
        args.leader_election_namespace,
        "--leader-election-namespace",
        env,
        _namespace_name,
        DEV_LEASE_NAMESPACE if dev else namespace,
    )

    config = OperatorConfig(
        webhook_port=_pick(args.webhook_port, "--webhook-port", env, _port, 9443),
        metrics_port=_pick(args.metrics_port, "--metrics-port", env, _port, 8080),
        health_port=_pick(args.health_port, "--health-port", env, _port, 8081),
        bind_host=_pick(args.bind_host, "--bind-host", env, _host, "127.0.0.1"),
        namespace=namespace,
        exempt_namespaces=frozenset({*ALWAYS_EXEMPT, namespace, *exempt}),
        watch_namespaces=tuple(dict.fromkeys(watch)),
        tls_cert_file=cert,
        tls_key_file=key,
        dev=dev,
        dev_webhook_name=_pick(
            args.dev_webhook_name, "--dev-webhook-name", env, _object_name, DEFAULT_DEV_WEBHOOK_NAME
        ),
        webhook_timeout_seconds=_pick(args.webhook_timeout, "--webhook-timeout", env, _timeout, 2),
        log_level=_pick(args.log_level, "--log-level", env, _log_level, "info"),
        noncompliant_info=bool(noncompliant),
        status_interval_seconds=_pick(
            args.status_interval, "--status-interval", env, _positive_seconds, 5.0
        ),
        # $KUBECONFIG needs no variable of ours: the Kubernetes client reads it by itself.
        kubeconfig=None if args.kubeconfig is None else Path(args.kubeconfig),
        leader_election=bool(election),
        leader_election_namespace=lease_namespace,
        leader_election_identity=_pick(
            args.leader_election_identity, "--leader-election-identity", env, _identity, None
        ),
        leader_election_lease_duration=_pick(
            args.leader_election_lease_duration,
            "--leader-election-lease-duration",
            env,
            _lease_duration,
            DEFAULT_LEASE_DURATION,
        ),
    )
    _check(config)
    return config


def _check(config: OperatorConfig) -> None:
    ports = {
        "--webhook-port": config.webhook_port,
        "--metrics-port": config.metrics_port,
        "--health-port": config.health_port,
    }
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise ConfigError(f"{flag} and {seen[port]} are both {port}; each needs its own port")
        seen[port] = flag
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        raise ConfigError("--tls-cert-file and --tls-key-file go together; give both or neither")
    if config.dev and config.tls_cert_file is not None:
        raise ConfigError(
            "--dev generates its own certificate; drop --tls-cert-file/--tls-key-file"
        )
    if not config.dev and config.tls_cert_file is None:
        raise ConfigError(
            "the webhook needs a certificate: give --tls-cert-file and --tls-key-file "
            f"(or {ENV_PREFIX}TLS_CERT_FILE/TLS_KEY_FILE), or run with --dev on a local cluster"
        )
    for flag, path in (
        ("--tls-cert-file", config.tls_cert_file),
        ("--tls-key-file", config.tls_key_file),
    ):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag}: {str(path)!r} is not a readable file")
    if config.kubeconfig is not None and not config.kubeconfig.is_file():
        raise ConfigError(f"--kubeconfig: {str(config.kubeconfig)!r} is not a readable file")
