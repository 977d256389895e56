"""``python -m bench.charts``: both charts from a small fake results document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench import charts

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def fake_results() -> dict[str, Any]:
    def phase(p50: float, rate: float) -> dict[str, float]:
        return {"p50_ms": p50, "p95_ms": p50 * 2.2, "p99_ms": p50 * 3, "creates_per_second": rate}

    def size(pods: int, unique: float, deployments: float) -> dict[str, Any]:
        return {
            "pods": pods,
            "unique": {"store_bytes_per_pod": unique, "rss_bytes_per_pod": unique * 1.6},
            "deployments": {"store_bytes_per_pod": deployments, "rss_bytes_per_pod": 700.0},
        }

    return {
        "machine": {"cpus": 2},
        "quick": True,
        "results": {
            "webhook": {
                "phases": {
                    "B": phase(145, 198),
                    "A": phase(46, 614),
                    "W2": phase(120, 230),
                    "G": phase(50, 580),
                    "P": {"p50_ms": 3.0},
                    "broken": "not a phase",
                }
            },
            "records": {
                "sizes": {
                    "small": size(5_000, 1100, 360),
                    "large": size(50_000, 1029, 342),
                    "medium": {"pods": 20_000, "unique": {"store_bytes_per_pod": 1050}},
                }
            },
            "kwok": {"pods": 10_000, "rss_bytes": 180e6},
        },
    }


def test_renders_both_charts(tmp_path: Path) -> None:
    written = charts.render(fake_results(), tmp_path)
    assert written == [tmp_path / "latency.png", tmp_path / "memory.png"]
    for path in written:
        assert path.read_bytes().startswith(PNG)


def test_data_extraction() -> None:
    results = fake_results()["results"]
    assert list(charts.latency_data(results)) == ["A", "B", "G", "P", "W2"]
    assert charts.latency_data(results)["P"]["p99_ms"] is None
    memory = charts.memory_data(results)
    assert memory["unique, store"] == [(5_000, 5.5), (20_000, 21.0), (50_000, 51.45)]
    assert len(memory["deployments, RSS"]) == 2
    assert memory["kwok cluster, operator RSS"] == [(10_000, 180.0)]


def test_missing_data_skips_charts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = {"results": {"webhook": {"error": "boom"}, "records": {"sizes": {}}}}
    assert charts.render(document, tmp_path) == []
    out = capsys.readouterr().out
    assert "latency chart skipped" in out
    assert "memory chart skipped" in out
    assert list(tmp_path.iterdir()) == []


def test_main(tmp_path: Path) -> None:
    source = tmp_path / "latest.json"
    source.write_text(json.dumps(fake_results()))
    assert charts.main([str(source), "--out-dir", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["latency.png", "memory.png"]
    assert charts.main([str(tmp_path / "missing.json")]) == 2
