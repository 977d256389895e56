"""OperatorConfig: flags, GOMEMLIMIT_OPERATOR_* variables, defaults and clear errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gomemlimit_operator.runtime.config import (
    ConfigError,
    OperatorConfig,
    _settings,
    build_parser,
    parse_config,
)


@pytest.fixture
def tls(tmp_path: Path) -> list[str]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("cert")
    key.write_text("key")
    return ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]


def test_defaults_with_dev() -> None:
    config = parse_config(["--dev"], env={})
    assert (config.webhook_port, config.metrics_port, config.health_port) == (9443, 8080, 8081)
    assert config.bind_host == "127.0.0.1"
    assert config.namespace == "gomemlimit-system"
    assert config.exempt_namespaces == {"kube-system", "gomemlimit-system"}
    assert config.clusterwide
    assert config.dev
    assert config.status_interval_seconds == 5.0
    assert config.webhook_timeout_seconds == 2
    assert config.webhook_idle_timeout_seconds == 120.0
    assert config.webhook_drain_seconds == 3.0
    assert config.webhook_header_timeout_seconds == 10.0
    assert config.webhook_max_connections == 1000
    assert config.noncompliant_info is True
    assert config.log_level == "info"


def test_flags_beat_environment(tls: list[str]) -> None:
    env = {
        "GOMEMLIMIT_OPERATOR_WEBHOOK_PORT": "10443",
        "GOMEMLIMIT_OPERATOR_METRICS_PORT": "18080",
        "POD_NAMESPACE": "ops",
    }
    config = parse_config([*tls, "--webhook-port", "11443"], env=env)
    assert config.webhook_port == 11443
    assert config.metrics_port == 18080
    assert config.namespace == "ops"
    assert "ops" in config.exempt_namespaces


def test_own_namespace_variable_beats_pod_namespace() -> None:
    env = {"POD_NAMESPACE": "from-downward-api", "GOMEMLIMIT_OPERATOR_NAMESPACE": "explicit"}
    assert parse_config(["--dev"], env=env).namespace == "explicit"
    assert parse_config(["--dev", "--namespace", "flag"], env=env).namespace == "flag"


def test_namespace_lists_from_flags_and_environment() -> None:
    config = parse_config(
        ["--dev", "--exempt-namespace", "a,b", "--exempt-namespace", "c", "--watch-namespace=x"],
        env={},
    )
    assert config.exempt_namespaces == {"kube-system", "gomemlimit-system", "a", "b", "c"}
    assert config.watch_namespaces == ("x",)
    assert not config.clusterwide
    assert config.exempt("y")  # not watched
    assert not config.exempt("x")
    env = {
        "GOMEMLIMIT_OPERATOR_WATCH_NAMESPACES": "p, q",
        "GOMEMLIMIT_OPERATOR_EXEMPT_NAMESPACES": "r",
    }
    config = parse_config(["--dev"], env=env)
    assert config.watch_namespaces == ("p", "q")
    assert "r" in config.exempt_namespaces


def test_serving_limits_from_flags_and_environment() -> None:
    env = {
        "GOMEMLIMIT_OPERATOR_WEBHOOK_IDLE_TIMEOUT": "90",
        "GOMEMLIMIT_OPERATOR_WEBHOOK_HEADER_TIMEOUT": "2.5",
        "GOMEMLIMIT_OPERATOR_WEBHOOK_MAX_CONNECTIONS": "200",
        "GOMEMLIMIT_OPERATOR_WEBHOOK_DRAIN": "0",
    }
    config = parse_config(["--dev"], env=env)
    assert config.webhook_drain_seconds == 0.0
    assert parse_config(["--dev", "--webhook-drain", "1.5"], env=env).webhook_drain_seconds == 1.5
    assert config.webhook_idle_timeout_seconds == 90.0
    assert config.webhook_header_timeout_seconds == 2.5
    assert config.webhook_max_connections == 200
    config = parse_config(["--dev", "--webhook-max-connections", "5"], env=env)
    assert config.webhook_max_connections == 5


def test_noncompliant_info_switch() -> None:
    assert parse_config(["--dev", "--no-noncompliant-info"], env={}).noncompliant_info is False
    env = {"GOMEMLIMIT_OPERATOR_NONCOMPLIANT_INFO": "false"}
    assert parse_config(["--dev"], env=env).noncompliant_info is False
    assert parse_config(["--dev", "--noncompliant-info"], env=env).noncompliant_info is True


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--webhook-port", "0"], {}, "--webhook-port"),
        (["--webhook-port", "http"], {}, "--webhook-port"),
        ([], {"GOMEMLIMIT_OPERATOR_HEALTH_PORT": "70000"}, "GOMEMLIMIT_OPERATOR_HEALTH_PORT"),
        (["--metrics-port", "9443"], {}, "--metrics-port and --webhook-port"),
        (["--status-interval", "0"], {}, "--status-interval"),
        (["--status-interval", "nan"], {}, "--status-interval"),
        (["--webhook-timeout", "31"], {}, "--webhook-timeout"),
        (["--webhook-idle-timeout", "0"], {}, "--webhook-idle-timeout: '0' must be a positive"),
        (["--webhook-idle-timeout", "3601"], {}, "'3601' is outside 0.1..3600 seconds"),
        (["--webhook-header-timeout", "soon"], {}, "--webhook-header-timeout"),
        (["--webhook-header-timeout", "inf"], {}, "--webhook-header-timeout"),
        (["--webhook-max-connections", "0"], {}, "--webhook-max-connections: 0 is outside"),
        (["--webhook-drain", "-1"], {}, "--webhook-drain: '-1' must be a positive"),
        (["--webhook-drain", "61"], {}, "--webhook-drain: '61' is outside 0..60 seconds"),
        (["--webhook-max-connections", "1.5"], {}, "--webhook-max-connections"),
        (["--log-level", "chatty"], {}, "--log-level"),
        (["--watch-namespace", "Bad_Name"], {}, "--watch-namespace"),
        ([], {"GOMEMLIMIT_OPERATOR_DEV": "maybe"}, "GOMEMLIMIT_OPERATOR_DEV"),
        ([], {"POD_NAMESPACE": "UPPER"}, "POD_NAMESPACE"),
        (["--no-such-flag"], {}, "--no-such-flag"),
    ],
)
def test_bad_values_name_their_source(argv: list[str], env: dict[str, str], names: str) -> None:
    dev = [] if "GOMEMLIMIT_OPERATOR_DEV" in env else ["--dev"]
    with pytest.raises(ConfigError, match=names):
        parse_config([*dev, *argv], env=env)


def test_certificate_rules(tls: list[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a certificate"):
        parse_config([], env={})
    with pytest.raises(ConfigError, match="go together"):
        parse_config(tls[:2], env={})
    with pytest.raises(ConfigError, match="--dev generates"):
        parse_config(["--dev", *tls], env={})
    with pytest.raises(ConfigError, match="not a readable file"):
        parse_config(["--tls-cert-file", str(tmp_path / "nope"), *tls[2:]], env={})
    config = parse_config(tls, env={})
    assert config.tls_cert_file == Path(tls[1])
    assert not config.dev


def test_components(tls: list[str]) -> None:
    assert parse_config(tls, env={}).components == "all"
    webhook = parse_config(["--components", "webhook", *tls], env={})
    assert (webhook.serves_webhook, webhook.watches_pods) == (True, False)
    watcher = parse_config([], env={"GOMEMLIMIT_OPERATOR_COMPONENTS": "Watcher"})
    assert (watcher.serves_webhook, watcher.watches_pods) == (False, True)
    with pytest.raises(ConfigError, match="needs a certificate"):
        parse_config(["--components", "webhook"], env={})
    with pytest.raises(ConfigError, match=r"--components: 'pods' is not one of all, webhook"):
        parse_config(["--components", "pods", *tls], env={})
    for given in (["--dev"], ["--manage-certificates"], tls):
        with pytest.raises(ConfigError, match=f"serves no webhook; drop {given[0]}"):
            parse_config(["--components", "watcher", *given], env={})
    with pytest.raises(ConfigError, match="--service-name needs --manage-certificates"):
        parse_config(["--components", "watcher", "--service-name", "svc"], env={})


def test_kubeconfig_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--kubeconfig"):
        parse_config(["--dev", "--kubeconfig", str(tmp_path / "missing")], env={})


def test_config_is_frozen() -> None:
    config = OperatorConfig()
    with pytest.raises(AttributeError):
        config.webhook_port = 1  # type: ignore[misc]


def test_leader_election_defaults(tls: list[str]) -> None:
    dev = parse_config(["--dev"], env={})
    assert dev.leader_election
    assert dev.leader_election_namespace == "default"  # every cluster has it
    assert dev.leader_election_identity is None  # chosen at start
    assert dev.leader_election_lease_duration == 15
    installed = parse_config(tls, env={"POD_NAMESPACE": "ops"})
    assert installed.leader_election_namespace == "ops"  # the operator's own namespace


def test_leader_election_flags_and_environment() -> None:
    config = parse_config(
        [
            "--dev",
            "--no-leader-election",
            "--leader-election-namespace",
            "locks",
            "--leader-election-identity",
            "replica-a",
            "--leader-election-lease-duration",
            "4",
        ],
        env={},
    )
    assert not config.leader_election
    assert config.leader_election_namespace == "locks"
    assert config.leader_election_identity == "replica-a"
    assert config.leader_election_lease_duration == 4
    env = {
        "GOMEMLIMIT_OPERATOR_LEADER_ELECTION": "false",
        "GOMEMLIMIT_OPERATOR_LEADER_ELECTION_NAMESPACE": "env-locks",
        "GOMEMLIMIT_OPERATOR_LEADER_ELECTION_IDENTITY": "pod-1",
        "GOMEMLIMIT_OPERATOR_LEADER_ELECTION_LEASE_DURATION": "30",
    }
    config = parse_config(["--dev"], env=env)
    assert not config.leader_election
    assert config.leader_election_namespace == "env-locks"
    assert config.leader_election_identity == "pod-1"
    assert config.leader_election_lease_duration == 30
    assert parse_config(["--dev", "--leader-election"], env=env).leader_election


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--leader-election-lease-duration", "1"], "--leader-election-lease-duration"),
        (["--leader-election-lease-duration", "2.5"], "--leader-election-lease-duration"),
        (["--leader-election-namespace", "No"], "--leader-election-namespace"),
        (["--leader-election-identity", "a b"], "--leader-election-identity"),
        (["--leader-election-identity", "x" * 129], "--leader-election-identity"),
    ],
)
def test_bad_leader_election_values(argv: list[str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        parse_config(["--dev", *argv], env={})


# One declaration per setting: the defaults, the help and the variables all come from the
# fields of OperatorConfig.


def test_parsed_defaults_are_the_declared_ones(tls: list[str]) -> None:
    config = parse_config(tls, env={})
    declared = dataclasses.replace(
        OperatorConfig(), tls_cert_file=Path(tls[1]), tls_key_file=Path(tls[3])
    )
    assert config == declared


def test_help_shows_the_declared_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping, at gomemlimit-operator-dev either
    text = " ".join(build_parser().format_help().split())
    for shown in (
        "HTTPS port of the admission webhook (default 9443)",
        "HTTP port of /metrics (default 8080)",
        "(default $POD_NAMESPACE, else gomemlimit-system)",
        "name of that configuration (default gomemlimit-operator-dev)",
        "1..30 (default 2)",
        "--webhook-idle-timeout SECONDS",
        "idle for this long between requests, 0.1..3600 (default 120: longer than the API",
        "take longer than this, 0.1..300 (default 10)",
        "--webhook-max-connections N",
        "more are closed at once, 1..100000 (default 1000)",
        "one of debug, info, warning, error (default info)",
        "--noncompliant-info, --no-noncompliant-info",
        "per noncompliant container (default on)",
        "of one policy (default 5)",
        "--leader-election, --no-leader-election",
        "2..300 (default 15)",
        "--exempt-namespace NAMESPACE[,NAMESPACE...]",
        "--webhook-timeout SECONDS",
    ):
        assert shown in text
    assert "--no-dev" not in text


def _documented_table() -> tuple[set[str], set[str]]:
    """The flags and variables of the table in docs/operator.md."""
    doc = (Path(__file__).parents[3] / "docs" / "operator.md").read_text()
    section = doc.split("## Flags and environment variables", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    flags = {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)", row[1])}
    variables = {
        "GOMEMLIMIT_OPERATOR_" + name for row in rows for name in re.findall(r"…_([A-Z_]+)", row[2])
    }
    variables |= {
        name for row in rows for name in re.findall(r"`(GOMEMLIMIT_OPERATOR_\w+)`", row[2])
    }
    variables |= {name for row in rows for name in re.findall(r"then `(POD_NAMESPACE)`", row[2])}
    return flags, variables


def test_flags_and_variables_are_the_documented_ones() -> None:
    flags, variables = _documented_table()
    options = {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    }
    assert options == flags
    assert {name for read in _settings() for name in read.env} == variables


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GOMEMLIMIT_OPERATOR_WEBHOOK_TIMEOUT", "0"),
        ("GOMEMLIMIT_OPERATOR_WEBHOOK_IDLE_TIMEOUT", "-1"),
        ("GOMEMLIMIT_OPERATOR_WEBHOOK_HEADER_TIMEOUT", "0.01"),
        ("GOMEMLIMIT_OPERATOR_WEBHOOK_MAX_CONNECTIONS", "many"),
        ("GOMEMLIMIT_OPERATOR_STATUS_INTERVAL", "soon"),
        ("GOMEMLIMIT_OPERATOR_LOG_LEVEL", "chatty"),
        ("GOMEMLIMIT_OPERATOR_BIND_HOST", "a b"),
        ("GOMEMLIMIT_OPERATOR_DEV_WEBHOOK_NAME", "Bad!"),
        ("GOMEMLIMIT_OPERATOR_NAMESPACE", "Bad"),
        ("GOMEMLIMIT_OPERATOR_WATCH_NAMESPACES", "ok,Bad"),
        ("GOMEMLIMIT_OPERATOR_LEADER_ELECTION_LEASE_DURATION", "301"),
    ],
)
def test_bad_variables_name_themselves(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        parse_config(["--dev"], env={variable: value})


MANAGED = [
    "--manage-certificates",
    "--certificate-secret",
    "gomemlimit-operator-certs",
    "--webhook-configuration-name",
    "gomemlimit-operator",
    "--service-name",
    "gomemlimit-operator",
]


def test_managed_certificates_defaults_and_flags(tmp_path: Path) -> None:
    config = parse_config(MANAGED, env={"POD_NAMESPACE": "ops"})
    assert config.manage_certificates
    assert not config.dev
    assert config.tls_cert_file is None
    assert config.certificate_secret == "gomemlimit-operator-certs"
    assert config.webhook_configuration_name == "gomemlimit-operator"
    assert config.service_name == "gomemlimit-operator"
    assert config.cert_dir is None
    assert config.ca_validity_days == 3650
    assert config.certificate_validity_hours == 8760
    assert config.certificate_validity.days == 365
    assert config.certificate_extra_sans == ()
    config = parse_config(
        [
            *MANAGED,
            "--cert-dir",
            str(tmp_path),
            "--certificate-validity-seconds",
            "20",
            "--certificate-extra-san",
            "127.0.0.1,localhost",
            "--certificate-extra-san",
            "localhost",
        ],
        env={"GOMEMLIMIT_OPERATOR_CA_VALIDITY_DAYS": "1"},
    )
    assert config.cert_dir == tmp_path
    assert config.certificate_validity.total_seconds() == 20
    assert config.ca_validity.days == 1
    assert config.certificate_extra_sans == ("127.0.0.1", "localhost")
    env = {
        "GOMEMLIMIT_OPERATOR_MANAGE_CERTIFICATES": "true",
        "GOMEMLIMIT_OPERATOR_CERTIFICATE_SECRET": "s",
        "GOMEMLIMIT_OPERATOR_WEBHOOK_CONFIGURATION_NAME": "w",
        "GOMEMLIMIT_OPERATOR_SERVICE_NAME": "svc",
        "GOMEMLIMIT_OPERATOR_CERTIFICATE_EXTRA_SANS": "a.example,10.0.0.1",
    }
    config = parse_config([], env=env)
    assert (config.certificate_secret, config.service_name) == ("s", "svc")
    assert config.certificate_extra_sans == ("a.example", "10.0.0.1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dev"], "--manage-certificates and --dev exclude each other"),
        ([], None),  # filled with --tls-* below
        (["--certificate-validity-hours", "100000"], "--ca-validity-days"),
        (["--certificate-validity-seconds", "5"], "--certificate-validity-seconds"),
        (["--ca-validity-days", "0"], "--ca-validity-days"),
        (["--certificate-extra-san", "a b"], "--certificate-extra-san"),
    ],
)
def test_managed_certificate_rules(argv: list[str], message: str | None, tls: list[str]) -> None:
    if message is None:
        argv, message = tls, "drop --tls-cert-file"
    with pytest.raises(ConfigError, match=message):
        parse_config([*MANAGED, *argv], env={})


@pytest.mark.parametrize(
    "missing", ["--certificate-secret", "--webhook-configuration-name", "--service-name"]
)
def test_managed_certificates_need_their_names(missing: str) -> None:
    argv = list(MANAGED)
    index = argv.index(missing)
    del argv[index : index + 2]
    with pytest.raises(ConfigError, match=f"needs {missing}"):
        parse_config(argv, env={})


def test_certificate_flags_need_the_mode(tls: list[str]) -> None:
    with pytest.raises(ConfigError, match="--certificate-secret needs --manage-certificates"):
        parse_config([*tls, "--certificate-secret", "s"], env={})
    with pytest.raises(ConfigError, match="--certificate-extra-san needs"):
        parse_config(["--dev", "--certificate-extra-san", "localhost"], env={})
