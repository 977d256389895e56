"""The Prometheus alert rules: promtool validates them and runs their unit tests.

promtool comes from Debian's ``prometheus`` package (.ci/run installs it). A missing promtool
fails these tests instead of skipping them, so the rules cannot silently go unchecked.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yaml"
RULE_TESTS = RULES_DIR / "alerts_test.yaml"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: apt-get install -y --no-install-recommends prometheus"
        )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=RULES_DIR, capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 17 rules found" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_rule_has_a_unit_test_and_docs() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    records = {rule["record"] for rule in _rules() if "record" in rule}
    assert len(alerts) + len(records) == len(_rules())
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert alerts == fired
    assert alerts <= quiet  # and a case where it must not fire
    # A recording rule is tested by a promql_expr_test that queries it and expects samples.
    evaluated = {
        case["expr"]
        for test in tests
        for case in test.get("promql_expr_test", [])
        if case.get("exp_samples")
    }
    assert records == evaluated
    docs = (RULES_DIR.parents[1] / "docs" / "metrics.md").read_text()
    assert {name for name in alerts | records if f"`{name}`" not in docs} == set()


def test_cluster_state_rules_never_sum_over_replicas() -> None:
    for rule in _rules():
        name, expr = rule.get("alert") or rule["record"], rule["expr"]
        if "gomemlimit_containers" in expr or "gomemlimit_last_evaluation" in expr:
            assert "max" in expr, name
            assert "sum" not in expr, name
        assert "instance" not in expr, name


def test_go_runtime_rules_keep_exactly_the_join_labels() -> None:
    """Every Go runtime and cAdvisor series is reduced to (namespace, pod, container) before
    a join, so a second scrape of one container (another job, instance or cAdvisor id) can
    neither double it nor break the join."""
    for rule in _rules():
        expr = " ".join(rule["expr"].split())
        if not any(series in expr for series in ("go_", "container_spec_", "gomemlimit:")):
            continue
        for clause in ("max by (", " on ("):
            for index in range(expr.count(clause)):
                start = expr.split(clause, index + 1)[index + 1]
                assert start.startswith("namespace, pod, container)"), (rule, start)
