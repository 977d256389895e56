"""The operator's settings, read from flags and ``GOMEMLIMIT_OPERATOR_*`` environment variables.

Each setting is declared once, as a field of :class:`OperatorConfig`: its default, its help,
its value parser and, where it differs from the field name, its flag. The argparse parser, the
environment variable names and the defaults shown in ``--help`` are all generated from these
fields. A variable is ``GOMEMLIMIT_OPERATOR_`` plus the flag in upper case with underscores, and
a trailing ``S`` for the repeatable namespace lists (``…_WATCH_NAMESPACES``).

A flag beats its environment variable, which beats the default. Every bad value is reported
with the flag or variable it came from, and ``parse_config`` raises :class:`ConfigError`
(``runtime.app`` turns it into exit status 2, like argparse does).

Why not pydantic-settings: it merges flags and variables before it validates, so its errors
name the field (``webhook_port``), not the flag or variable the value came from, and read as
pydantic's multi-line reports. Its help shows type names as metavars (``int``, ``list[str]``),
and it parses list variables as JSON (``a,b`` fails). The documented behaviour needs all three.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

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
COMPONENTS: Final = ("all", "webhook", "watcher")
"""What one process runs: ``webhook`` serves admission and watches policies and namespaces
(never pods); ``watcher`` keeps the pod records, the policy status and the compliance series
(with leader election); ``all`` is both."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

T = TypeVar("T")


class ConfigError(ValueError):
    """A flag or environment variable with a bad value. The message names it."""


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


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


def _seconds_between(low: float, high: float) -> Callable[[str], float]:
    """A parser of a number of seconds from ``low`` to ``high``."""

    def parse(text: str) -> float:
        value = 0.0 if low == 0 and _is_zero(text) else _positive_seconds(text)
        if not low <= value <= high:
            raise ValueError(f"{text!r} is outside {_shown(low)}..{_shown(high)} seconds")
        return value

    return parse


def _namespace_name(text: str) -> str:
    if not _DNS_LABEL.match(text):
        raise ValueError(f"{text!r} is not a namespace name (a lowercase RFC 1123 label)")
    return text


def _log_level(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return lowered


def _components(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in COMPONENTS:
        raise ValueError(f"{text!r} is not one of {', '.join(COMPONENTS)}")
    return lowered


def _object_name(text: str) -> str:
    if not _DNS_SUBDOMAIN.match(text):
        raise ValueError(f"{text!r} is not an object name (a lowercase RFC 1123 subdomain)")
    return text


def _identity(text: str) -> str:
    if not text or len(text) > 128 or any(not c.isprintable() or c.isspace() for c in text):
        raise ValueError(f"{text!r} is not an identity (1 to 128 printable characters, no spaces)")
    return text


def _san(text: str) -> str:
    if not text or len(text) > 253 or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"{text!r} is not a host name or IP address")
    return text


def _host(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} is not an address")
    return text


# ---------------------------------------------------------------------------------------------
# The declaration of one setting
# ---------------------------------------------------------------------------------------------

_SETTING: Final = "gomemlimit_operator.setting"


@dataclass(frozen=True)
class _Setting:
    """How one field of OperatorConfig is read. ``help`` may show the default as ``{default}``."""

    help: str
    parse: Callable[[str], object]
    flag: str | None = None
    """Default: ``--`` and the field name with dashes."""
    metavar: str | None = None
    action: str | type[argparse.Action] | None = None
    """``append`` makes a repeatable comma list, read from the plural variable."""
    env: bool = True
    """False: no variable of ours (``--kubeconfig``: the client reads $KUBECONFIG)."""
    fallback_env: str | None = None
    """A variable read after ours, before the default (``POD_NAMESPACE``)."""


def _setting(
    default: T,
    help: str,
    parse: Callable[[str], object],
    **how: Any,
) -> T:
    """A dataclass field with its default and the :class:`_Setting` that reads it.

    It returns a ``dataclasses.Field``, evaluated once: RUF009 below is a false positive that
    ruff reports for the fields whose type it does not know to be immutable (``Path | None``).
    """
    spec = _Setting(help=help, parse=parse, **how)
    return dataclasses.field(default=default, metadata={_SETTING: spec})


def _shown(value: object) -> str:
    """A default as the help shows it: on/off, 5 rather than 5.0."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_NAMESPACES: Final = "NAMESPACE[,NAMESPACE...]"


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator process needs to know at start. Immutable."""

    components: str = _setting(
        "all",
        "what this process runs: webhook (admission; watches policies and namespaces, never "
        "pods), watcher (pod records, policy status, compliance series) or all "
        "(default {default})",
        _components,
        metavar="|".join(COMPONENTS),
    )
    webhook_port: int = _setting(
        9443, "HTTPS port of the admission webhook (default {default})", _port
    )
    metrics_port: int = _setting(8080, "HTTP port of /metrics (default {default})", _port)
    health_port: int = _setting(
        8081, "HTTP port of /healthz and /readyz (default {default})", _port
    )
    bind_host: str = _setting(
        "127.0.0.1",
        "address the three servers listen on (default {default}; use 0.0.0.0 in a pod)",
        _host,
    )
    namespace: str = _setting(
        DEFAULT_NAMESPACE,
        "the operator's own namespace (default $POD_NAMESPACE, else {default})",
        _namespace_name,
        fallback_env="POD_NAMESPACE",
    )
    exempt_namespaces: frozenset[str] = _setting(
        frozenset({*ALWAYS_EXEMPT, DEFAULT_NAMESPACE}),
        "never mutate pods here (repeatable); kube-system and --namespace always are",
        _namespace_name,
        flag="--exempt-namespace",
        metavar=_NAMESPACES,
        action="append",
    )
    """Namespaces the webhook never mutates: kube-system, ``namespace`` and the flag's."""
    watch_namespaces: tuple[str, ...] = _setting(
        (),
        "handle only these namespaces (repeatable; default: the whole cluster)",
        _namespace_name,
        flag="--watch-namespace",
        metavar=_NAMESPACES,
        action="append",
    )
    """Namespaces whose GoMemPolicies and pods are handled. Empty means cluster-wide."""
    tls_cert_file: Path | None = _setting(  # noqa: RUF009
        None, "PEM serving certificate of the webhook (reloaded on change)", Path
    )
    tls_key_file: Path | None = _setting(  # noqa: RUF009
        None, "PEM private key of the webhook certificate", Path
    )
    dev: bool = _setting(
        False,
        "local development: generate a self-signed certificate and register a URL webhook "
        "configuration pointing at this process; removed on exit",
        _bool,
        action="store_true",
    )
    dev_webhook_name: str = _setting(
        DEFAULT_DEV_WEBHOOK_NAME, "name of that configuration (default {default})", _object_name
    )
    webhook_timeout_seconds: int = _setting(
        2,
        "timeoutSeconds of the --dev webhook configuration, 1..30 (default {default})",
        _whole_number(
            1, 30, "a whole number of seconds", "outside 1..30 (the API server's limits)"
        ),
        flag="--webhook-timeout",
        metavar="SECONDS",
    )
    webhook_idle_timeout_seconds: float = _setting(
        120.0,
        "close a webhook connection idle for this long between requests, 0.1..3600 "
        "(default {default}: longer than the API server's own 90 s, so that it is the API "
        "server that closes an idle connection, never we while it sends a review on it)",
        _seconds_between(0.1, 3600),
        flag="--webhook-idle-timeout",
        metavar="SECONDS",
    )
    webhook_header_timeout_seconds: float = _setting(
        10.0,
        "cut a webhook connection whose TLS handshake, or a request's headers and body, take "
        "longer than this, 0.1..300 (default {default})",
        _seconds_between(0.1, 300),
        flag="--webhook-header-timeout",
        metavar="SECONDS",
    )
    webhook_drain_seconds: float = _setting(
        3.0,
        "at shutdown, keep serving the webhook this long (answers close their connections) "
        "while the API server stops sending reviews here, 0..60 (default {default})",
        _seconds_between(0, 60),
        flag="--webhook-drain",
        metavar="SECONDS",
    )
    webhook_max_connections: int = _setting(
        1000,
        "open webhook connections at most; more are closed at once, 1..100000 (default {default})",
        _whole_number(1, 100000, "a whole number", "outside 1..100000"),
        metavar="N",
    )
    manage_certificates: bool = _setting(
        False,
        "keep a CA and a serving certificate in --certificate-secret, rotate them before they "
        "expire and keep the caBundle of --webhook-configuration-name equal to the CA",
        _bool,
        action="store_true",
    )
    certificate_secret: str | None = _setting(
        None,
        "with --manage-certificates: the Secret in --namespace that holds ca.crt, ca.key, "
        "tls.crt and tls.key (created empty by the install; never created by the operator)",
        _object_name,
        metavar="NAME",
    )
    webhook_configuration_name: str | None = _setting(
        None,
        "with --manage-certificates: the MutatingWebhookConfiguration whose caBundle is kept "
        "equal to the CA",
        _object_name,
        metavar="NAME",
    )
    service_name: str | None = _setting(
        None,
        "with --manage-certificates: the webhook's Service; the certificate is for "
        "<svc>, <svc>.<ns>, <svc>.<ns>.svc and <svc>.<ns>.svc.cluster.local",
        _namespace_name,
        metavar="NAME",
    )
    certificate_extra_sans: tuple[str, ...] = _setting(
        (),
        "with --manage-certificates: more names or IP addresses for the serving certificate "
        "(repeatable; for URL webhook configurations)",
        _san,
        flag="--certificate-extra-san",
        metavar="HOST[,HOST...]",
        action="append",
    )
    cert_dir: Path | None = _setting(  # noqa: RUF009
        None,
        "with --manage-certificates: where tls.crt and tls.key are written for the webhook "
        "server (default: a private temporary directory)",
        Path,
        metavar="DIR",
    )
    ca_validity_days: int = _setting(
        3650,
        "with --manage-certificates: lifetime of a new CA, 1..36500 days (default {default})",
        _whole_number(1, 36500, "a whole number of days", "outside 1..36500 days"),
        metavar="DAYS",
    )
    certificate_validity_hours: int = _setting(
        8760,
        "with --manage-certificates: lifetime of a serving certificate, 1..876000 hours "
        "(default {default}, one year)",
        _whole_number(1, 876000, "a whole number of hours", "outside 1..876000 hours"),
        metavar="HOURS",
    )
    certificate_validity_seconds: int | None = _setting(
        None,
        "for tests: the serving certificate's lifetime in seconds, 10..31536000; "
        "overrides --certificate-validity-hours",
        _whole_number(10, 31536000, "a whole number of seconds", "outside 10..31536000 seconds"),
        metavar="SECONDS",
    )
    log_level: str = _setting(
        "info", f"one of {', '.join(LOG_LEVELS)} (default {{default}})", _log_level
    )
    noncompliant_info: bool = _setting(
        True,
        "export one info series per noncompliant container (default {default})",
        _bool,
        action=argparse.BooleanOptionalAction,
    )
    status_interval_seconds: float = _setting(
        5.0,
        "least time between two status writes of one policy (default {default})",
        _positive_seconds,
        flag="--status-interval",
        metavar="SECONDS",
    )
    kubeconfig: Path | None = _setting(  # noqa: RUF009
        None, "kubeconfig file (default: in-cluster, then $KUBECONFIG)", Path, env=False
    )
    leader_election: bool = _setting(
        True,
        "elect one replica through a Lease to write policy status and export the pod series; "
        "with --components webhook, none is needed (default {default})",
        _bool,
        action=argparse.BooleanOptionalAction,
    )
    leader_election_namespace: str = _setting(
        DEFAULT_NAMESPACE,
        "namespace of the Lease gomemlimit-operator (default: --namespace; with --dev: "
        f"{DEV_LEASE_NAMESPACE})",
        _namespace_name,
        metavar="NAMESPACE",
    )
    leader_election_identity: str | None = _setting(
        None,
        "this replica's Lease holder identity (default $POD_NAME or the host name, plus a "
        "random suffix)",
        _identity,
        metavar="ID",
    )
    """None: chosen at start, from $POD_NAME (else the host name) and a random suffix."""
    leader_election_lease_duration: int = _setting(
        DEFAULT_LEASE_DURATION,
        "how long a silent leader keeps the Lease, 2..300 (default {default})",
        _whole_number(2, 300, "a whole number of seconds", "outside 2..300 seconds"),
        metavar="SECONDS",
    )

    @property
    def certificate_validity(self) -> datetime.timedelta:
        """The serving certificate's lifetime with --manage-certificates."""
        if self.certificate_validity_seconds is not None:
            return datetime.timedelta(seconds=self.certificate_validity_seconds)
        return datetime.timedelta(hours=self.certificate_validity_hours)

    @property
    def ca_validity(self) -> datetime.timedelta:
        return datetime.timedelta(days=self.ca_validity_days)

    @property
    def serves_webhook(self) -> bool:
        return self.components in ("all", "webhook")

    @property
    def watches_pods(self) -> bool:
        return self.components in ("all", "watcher")

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
# Flags and variables, generated from the fields
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    """One setting with its names resolved: the field, the flag, the variables in order."""

    name: str
    default: object
    flag: str
    env: tuple[str, ...]
    spec: _Setting


def _settings() -> Iterator[_Read]:
    for field in dataclasses.fields(OperatorConfig):
        spec: _Setting = field.metadata[_SETTING]
        flag = spec.flag or "--" + field.name.replace("_", "-")
        plural = "S" if spec.action == "append" else ""
        env = (ENV_PREFIX + flag.removeprefix("--").replace("-", "_").upper() + plural,)
        fallback = (spec.fallback_env,) if spec.fallback_env else ()
        yield _Read(field.name, field.default, flag, (env if spec.env else ()) + fallback, spec)


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
    for read in _settings():
        spec = read.spec
        options: dict[str, Any] = {
            "dest": read.name,
            "default": None,
            "help": spec.help.format(default=_shown(read.default)),
        }
        if spec.action is not None:
            options["action"] = spec.action
        if spec.action in (None, "append"):
            options["metavar"] = (
                spec.metavar or read.flag.removeprefix("--").replace("-", "_").upper()
            )
        parser.add_argument(read.flag, **options)
    return parser


def _pick(read: _Read, given: object, env: Mapping[str, str]) -> tuple[bool, object]:
    """(True, value) from the flag, else from the first variable set; (False, None) from
    neither. A list setting gives the names of all its comma lists. Errors name the source."""
    if given is not None:
        source, texts = read.flag, given if isinstance(given, list) else [given]
    else:
        found = next((name for name in read.env if name in env), None)
        if found is None:
            return False, None
        source, texts = found, [env[found]]
    try:
        if read.spec.action == "append":
            parts = (part.strip() for text in texts for part in str(text).split(","))
            return True, [read.spec.parse(part) for part in parts if part]
        return True, read.spec.parse(str(texts[0]))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Build the configuration from command-line arguments and the environment."""
    env = os.environ if env is None else env
    args = build_parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    given: dict[str, Any] = {}
    for read in _settings():
        found, value = _pick(read, getattr(args, read.name), env)
        if found:
            given[read.name] = value
        values[read.name] = value if found else read.default

    # The settings whose value depends on others.
    namespace = values["namespace"]
    values["exempt_namespaces"] = frozenset(
        {*ALWAYS_EXEMPT, namespace, *given.get("exempt_namespaces", ())}
    )
    values["watch_namespaces"] = tuple(dict.fromkeys(given.get("watch_namespaces", ())))
    values["certificate_extra_sans"] = tuple(dict.fromkeys(given.get("certificate_extra_sans", ())))
    if "leader_election_namespace" not in given:
        values["leader_election_namespace"] = DEV_LEASE_NAMESPACE if values["dev"] else namespace

    config = OperatorConfig(**values)
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
    if config.kubeconfig is not None and not config.kubeconfig.is_file():
        raise ConfigError(f"--kubeconfig: {str(config.kubeconfig)!r} is not a readable file")
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        raise ConfigError("--tls-cert-file and --tls-key-file go together; give both or neither")
    if not config.serves_webhook:
        _check_watcher_only(config)
    if config.manage_certificates:
        _check_managed_certificates(config)
    else:
        for flag, value in (
            ("--certificate-secret", config.certificate_secret),
            ("--webhook-configuration-name", config.webhook_configuration_name),
            ("--service-name", config.service_name),
            ("--cert-dir", config.cert_dir),
        ):
            if value is not None:
                raise ConfigError(f"{flag} needs --manage-certificates")
        if config.certificate_extra_sans:
            raise ConfigError("--certificate-extra-san needs --manage-certificates")
    if config.dev and config.tls_cert_file is not None:
        raise ConfigError(
            "--dev generates its own certificate; drop --tls-cert-file/--tls-key-file"
        )
    if (
        config.serves_webhook
        and not config.dev
        and not config.manage_certificates
        and config.tls_cert_file is None
    ):
        raise ConfigError(
            "the webhook needs a certificate: give --tls-cert-file and --tls-key-file "
            f"(or {ENV_PREFIX}TLS_CERT_FILE/TLS_KEY_FILE), or --manage-certificates, or run "
            "with --dev on a local cluster"
        )
    for flag, path in (
        ("--tls-cert-file", config.tls_cert_file),
        ("--tls-key-file", config.tls_key_file),
    ):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag}: {str(path)!r} is not a readable file")


def _check_watcher_only(config: OperatorConfig) -> None:
    """--components watcher serves no webhook: a certificate flag is a mistake."""
    for flag, given in (
        ("--dev", config.dev),
        ("--manage-certificates", config.manage_certificates),
        ("--tls-cert-file", config.tls_cert_file is not None),
    ):
        if given:
            raise ConfigError(
                f"--components watcher serves no webhook; drop {flag} (it belongs to the "
                "webhook component)"
            )


def _check_managed_certificates(config: OperatorConfig) -> None:
    if config.dev:
        raise ConfigError(
            "--manage-certificates and --dev exclude each other: --dev makes its own "
            "certificate and webhook configuration"
        )
    if config.tls_cert_file is not None:
        raise ConfigError(
            "--manage-certificates makes its own certificate; drop --tls-cert-file/--tls-key-file"
        )
    for flag, value in (
        ("--certificate-secret", config.certificate_secret),
        ("--webhook-configuration-name", config.webhook_configuration_name),
        ("--service-name", config.service_name),
    ):
        if value is None:
            raise ConfigError(f"--manage-certificates needs {flag}")
    if config.ca_validity < config.certificate_validity:
        raise ConfigError(
            f"--ca-validity-days ({config.ca_validity_days}) must be at least the serving "
            "certificate's validity: a certificate never outlives the CA that signs it"
        )
    if config.cert_dir is not None and config.cert_dir.exists() and not config.cert_dir.is_dir():
        raise ConfigError(f"--cert-dir: {str(config.cert_dir)!r} is not a directory")
