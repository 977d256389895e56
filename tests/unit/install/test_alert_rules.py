"""The Prometheus alert rules: promtool validates them and runs their unit tests.

promtool comes from Debian's ``prometheus`` package (.ci/run installs it). A missing promtool
fails these tests instead of skipping them, so the rules cannot silently go unchecked.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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
    assert "SUCCESS: 11 rules found" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_and_docs() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested
    docs = (RULES_DIR.parents[1] / "docs" / "metrics.md").read_text()
    assert {alert for alert in alerts if alert not in docs} == set()


def test_cluster_state_rules_never_sum_over_replicas() -> None:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            if "gomemlimit_containers" in expr or "gomemlimit_last_evaluation" in expr:
                assert "max" in expr, rule["alert"]
                assert "sum" not in expr, rule["alert"]
            assert "instance" not in expr, rule["alert"]
