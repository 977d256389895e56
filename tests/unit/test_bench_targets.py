"""The targets table of ``python -m bench``: met, missed and missing measurements."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import bench.__main__ as runner
import pytest
from bench.__main__ import TARGETS, dig, evaluate, key, print_targets, selected, targets_table
from bench.shared import BenchRun


def results(**overrides: Any) -> dict[str, Any]:
    """Every target met."""
    base: dict[str, Any] = {
        "webhook": {
            "operator_cpu_ms_per_admitted_pod": 0.8,
            "ratios": {"B/A": 0.95, "G/A": 1.0},
            "fail_open_500": {"pods": 4000, "fail_opens": 0},
        },
        "service": {"ours_p99_ms_at_200": 1.5, "saturation_vs_aiohttp": 0.8},
        "records": {
            "sizes": {
                "large": {
                    "pods": 150_000,
                    "unique": {
                        "store_bytes_per_pod": 480,
                        "initial_sync_seconds": 21.0,
                        "scrape_ms": 60.0,
                    },
                }
            }
        },
        "cli": {"sizes": {"small": {"seconds": 0.9}}},
    }
    base.update(overrides)
    return base


def by_label(rows: list[list[str]]) -> dict[str, list[str]]:
    return {row[0]: row for row in rows[1:]}


def test_every_target_met() -> None:
    rows = targets_table(results())
    assert rows[0] == ["target", "now", "target", "measured", "met?"]
    assert len(rows) == len(TARGETS) + 1 == 10
    assert [row[4] for row in rows[1:]] == ["yes"] * len(TARGETS)
    table = by_label(rows)
    assert table["initial sync of 150k pods"][3] == "21.0 s (150,000 pods)"
    assert table["fail-open, 500 concurrent creates, 2 workers"][3] == "0 of 4,000 pods"
    assert table["B/A throughput, 32 clients"][3] == "B/A 0.95, G/A 1.00"
    assert table["`audit -f` of 5,000 Deployments"][1:4] == ["6.6 s", "<= 1 s", "0.90 s"]


def test_every_target_missed() -> None:
    missed = results(
        webhook={
            "operator_cpu_ms_per_admitted_pod": 4.2,
            "ratios": {"B/A": 0.32, "G/A": 0.9},
            "fail_open_500": {"pods": 4000, "fail_opens": 259},
        },
        service={"ours_p99_ms_at_200": 2.5, "saturation_vs_aiohttp": 0.5},
        records={
            "sizes": {
                "large": {
                    "pods": 50_000,
                    "unique": {
                        "store_bytes_per_pod": 1029,
                        "initial_sync_seconds": 31.0,
                        "scrape_ms": 101.0,
                    },
                }
            }
        },
        cli={"sizes": {"small": {"seconds": 6.6}}},
    )
    assert [row[4] for row in targets_table(missed)[1:]] == ["no"] * len(TARGETS)


def test_bounds_are_inclusive() -> None:
    edge = results(
        cli={"sizes": {"small": {"seconds": 1.0}}},
        webhook={
            "operator_cpu_ms_per_admitted_pod": 1.0,
            "ratios": {"B/A": 0.9, "G/A": 1.0},
            "fail_open_500": {"pods": 10, "fail_opens": 0},
        },
    )
    table = by_label(targets_table(edge))
    assert table["`audit -f` of 5,000 Deployments"][4] == "yes"
    assert table["operator CPU per admitted pod"][4] == "yes"
    assert table["B/A throughput, 32 clients"][4] == "yes"


@pytest.mark.parametrize(
    "fake",
    [
        {},
        {"webhook": {"error": "RuntimeError: boom"}, "cli": {"error": "x"}},
        {"webhook": {"ratios": {"B/A": 0.9}}, "records": {"sizes": {"large": None}}},
        {"webhook": {"ratios": "nope", "operator_cpu_ms_per_admitted_pod": "fast"}},
        {"cli": {"sizes": {"small": {"seconds": None}}}, "service": []},
        {"webhook": {"fail_open_500": {"pods": 10}, "operator_cpu_ms_per_admitted_pod": True}},
    ],
)
def test_missing_keys_are_na(fake: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rows = targets_table(fake)
    assert all(row[3:] == ["n/a", "n/a"] for row in rows[1:])
    print_targets(fake)
    assert "n/a" in capsys.readouterr().out


def test_partial_results() -> None:
    partial = {"cli": {"sizes": {"small": {"seconds": 1.7}}}}
    table = by_label(targets_table(partial))
    assert table["`audit -f` of 5,000 Deployments"][3:] == ["1.70 s", "no"]
    assert table["operator CPU per admitted pod"][3:] == ["n/a", "n/a"]
    # The sync time without its pod count still shows.
    sync = {"records": {"sizes": {"large": {"unique": {"initial_sync_seconds": 5.0}}}}}
    assert by_label(targets_table(sync))["initial sync of 150k pods"][3:] == ["5.0 s", "yes"]


def test_a_broken_predicate_is_na() -> None:
    target = TARGETS[0]
    broken = type(target)(
        target.label, target.now, target.target, lambda r: "x", lambda v: v < 1, str
    )
    assert evaluate(broken, {}) == ("n/a", "n/a")


def test_dig() -> None:
    assert dig({"a": {"b": 1}}, "a", "b") == 1
    assert dig({"a": {"b": 1}}, "a", "c") is None
    assert dig({"a": [1]}, "a", "b") is None


def test_module_selection() -> None:
    present = ["bench_cli", "bench_records", "bench_webhook"]
    assert selected(None, present) == present
    assert selected("webhook,bench_cli", present) == ["bench_cli", "bench_webhook"]
    assert key("bench_records") == "records"
    with pytest.raises(ValueError, match="bench_nope"):
        selected("nope", present)


def test_a_failing_module_is_reported_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[bool] = []

    def ok(run: BenchRun) -> dict[str, Any]:
        seen.append(run.quick)
        return {"sizes": {"small": {"seconds": 0.5}}}

    def boom(run: BenchRun) -> dict[str, Any]:
        raise RuntimeError("no cluster")

    for name, collect in (("bench_cli", ok), ("bench_zz_boom", boom), ("bench_zz_after", ok)):
        module = types.ModuleType(f"bench.{name}")
        module.collect = collect  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, f"bench.{name}", module)
    monkeypatch.setattr(
        runner, "available", lambda: ["bench_cli", "bench_zz_boom", "bench_zz_after"]
    )
    output = tmp_path / "out.json"
    assert runner.main(["--quick", "--output", str(output)]) == 1
    document = json.loads(output.read_text())
    assert document["quick"] is True
    assert set(document["machine"]) >= {"cpus", "model", "memory", "python", "platform"}
    assert document["results"]["zz_boom"] == {"error": "RuntimeError: no cluster"}
    assert document["results"]["zz_after"] == document["results"]["cli"]
    assert seen == [True, True]
    assert "0.50 s" in capsys.readouterr().out  # the targets table

    assert runner.main(["--only", "cli", "--output", str(output)]) == 0
    assert list(json.loads(output.read_text())["results"]) == ["cli"]
