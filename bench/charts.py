"""Charts of a benchmark run: ``python -m bench.charts [RESULTS.json] [--out-dir DIR]``.

* ``latency.png``: pod create latency p50/p95/p99 per webhook phase (A, B, G, P, ...), from
  ``results.webhook.phases``, with each phase's creates/s.
* ``memory.png``: the pod watcher's memory against the pod count, from
  ``results.records.sizes`` (store and RSS, both populations), plus the kwok run's RSS.

A chart whose data is missing is skipped with a message. Needs matplotlib (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

RESULTS: Final = Path(__file__).resolve().parent / "results"
PHASE_ORDER: Final = ("A", "B", "G", "P")
PERCENTILES: Final = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"))
SIZE_ORDER: Final = ("small", "medium", "large")
POPULATIONS: Final = ("unique", "deployments")
METRICS: Final = (("store_bytes_per_pod", "store", "-"), ("rss_bytes_per_pod", "RSS", "--"))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def latency_data(results: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Phase -> p50/p95/p99 (ms) and creates/s; phases without any percentile are left out.

    A, B, G, P first, then any other phases (e.g. ``W2``) in the order the results give.
    """
    phases = _mapping(_mapping(results.get("webhook")).get("phases"))
    names = [name for name in PHASE_ORDER if name in phases]
    names += [name for name in phases if name not in PHASE_ORDER]
    data: dict[str, dict[str, float | None]] = {}
    for name in names:
        phase = _mapping(phases[name])
        values = {field: _number(phase.get(field)) for field, _ in PERCENTILES}
        if all(value is None for value in values.values()):
            continue
        values["creates_per_second"] = _number(phase.get("creates_per_second"))
        data[str(name)] = values
    return data


def memory_data(results: Mapping[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Series label -> [(pods, total MB)], sorted by pods; only series with data."""
    sizes = _mapping(_mapping(results.get("records")).get("sizes"))
    series: dict[str, list[tuple[float, float]]] = {}
    names = [name for name in SIZE_ORDER if name in sizes]
    names += [name for name in sizes if name not in SIZE_ORDER]
    for population in POPULATIONS:
        for field, what, _ in METRICS:
            points: list[tuple[float, float]] = []
            for name in names:
                size = _mapping(sizes[name])
                pods = _number(size.get("pods"))
                per_pod = _number(_mapping(size.get(population)).get(field))
                if pods is not None and per_pod is not None:
                    points.append((pods, pods * per_pod / 1e6))
            if points:
                series[f"{population}, {what}"] = sorted(points)
    kwok = _mapping(results.get("kwok"))
    pods, rss = _number(kwok.get("pods")), _number(kwok.get("rss_bytes"))
    if pods is not None and rss is not None:
        series["kwok cluster, operator RSS"] = [(pods, rss / 1e6)]
    return series


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_chart(results: Mapping[str, Any], out: Path) -> Path | None:
    data = latency_data(results)
    if not data:
        print("latency chart skipped: no results.webhook.phases with p50_ms/p95_ms/p99_ms")
        return None
    plt = _pyplot()
    phases = list(data)
    width = 0.8 / len(PERCENTILES)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(phases) + 2), 4.5))
    values = [v for phase in data.values() for f, _ in PERCENTILES if (v := phase[f])]
    positive = [v for v in values if v > 0]
    log = bool(positive) and max(positive) / min(positive) > 20
    for number, (field, label) in enumerate(PERCENTILES):
        xs = [i + (number - 1) * width for i in range(len(phases))]
        heights = [data[phase][field] or 0.0 for phase in phases]
        bars = ax.bar(xs, heights, width, label=label)
        ax.bar_label(bars, labels=[_ms(h) for h in heights], fontsize=7, padding=1)
    ax.set_xticks(range(len(phases)))
    ax.set_xticklabels(
        [
            phase if rate is None else f"{phase}\n{rate:,.0f} creates/s"
            for phase, rate in ((p, data[p]["creates_per_second"]) for p in phases)
        ]
    )
    if log:
        ax.set_yscale("log")
    ax.set_ylabel("pod create latency (ms" + (", log scale)" if log else ")"))
    ax.set_title("Pod create latency by phase")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, out / "latency.png")


def memory_chart(results: Mapping[str, Any], out: Path) -> Path | None:
    series = memory_data(results)
    if not series:
        print("memory chart skipped: no results.records.sizes.*.pods with bytes per pod")
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    styles = {what: style for _, what, style in METRICS}
    for label, points in series.items():
        xs, ys = zip(*points, strict=True)
        if label.startswith("kwok"):
            ax.plot(xs, ys, "k*", markersize=12, label=label)
            continue
        what = label.rsplit(", ", 1)[1]
        colour = "C0" if label.startswith("unique") else "C1"
        ax.plot(xs, ys, styles[what], color=colour, marker="o", label=label)
    ax.set_xlabel("pods")
    ax.set_ylabel("total memory (MB)")
    ax.set_title("Pod watcher memory against pod count")
    ax.xaxis.set_major_formatter(_thousands())
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, out / "memory.png")


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:,.0f}")


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def render(document: Mapping[str, Any], out: Path) -> list[Path]:
    """Both charts from a results document (``python -m bench``'s JSON); the files written."""
    results = _mapping(document.get("results"))
    written = [latency_chart(results, out), memory_chart(results, out)]
    return [path for path in written if path is not None]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.charts", description=__doc__)
    parser.add_argument(
        "results", nargs="?", type=Path, default=RESULTS / "latest.json", help="results JSON"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=RESULTS, help="where the PNGs go (bench/results)"
    )
    args = parser.parse_args(argv)
    try:
        document = json.loads(args.results.read_text())
    except (OSError, ValueError) as exc:
        print(f"bench.charts: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(document, Mapping):
        print(f"bench.charts: {args.results}: not a results document", file=sys.stderr)
        return 2
    render(document, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
