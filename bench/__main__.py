"""Run the benchmark modules of this package in one run: ``python -m bench [options]``.

Every ``bench_*`` module's ``collect()`` runs inside one shared :class:`BenchRun` (so one
local control plane serves all of them), in a fixed order. The results go to
``bench/results/latest.json`` (``--quick``: ``bench/results/quick.json``), and a table
compares them with the performance targets (:data:`TARGETS`).

Nothing asserts a speed: the exit status is 1 only when a module failed to run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.shared import REPO, BenchRun

HERE: Final = Path(__file__).resolve().parent
RESULTS: Final = HERE / "results"
ORDER: Final = ("bench_cli", "bench_records", "bench_service", "bench_webhook", "bench_kwok")
"""Cheap and cluster-free first; the modules that need the control plane last."""


def available() -> list[str]:
    """The ``bench_*`` modules present: those of :data:`ORDER` first, then any others."""
    present = {m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_")}
    return [name for name in ORDER if name in present] + sorted(present - set(ORDER))


def key(module: str) -> str:
    """The module's key under ``results``: its name without ``bench_``."""
    return module.removeprefix("bench_")


def selected(only: str | None, present: list[str]) -> list[str]:
    """``--only cli,bench_records`` as module names, in run order; unknown names raise."""
    if not only:
        return present
    wanted = {f"bench_{key(name.strip())}" for name in only.split(",") if name.strip()}
    unknown = sorted(wanted - set(present))
    if unknown:
        raise ValueError(f"no such benchmark: {', '.join(unknown)} (have {', '.join(present)})")
    return [name for name in present if name in wanted]


def machine() -> dict[str, Any]:
    model = ""
    memory: int | None = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError):
        pass
    return {
        "cpus": os.cpu_count(),
        "model": model or platform.processor(),
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def git_dirty() -> bool | None:
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(done.stdout.strip())


def run_module(module: str, run: BenchRun) -> tuple[Any, bool]:
    """One module's results, or ``{"error": ...}``; and whether it ran."""
    started = time.perf_counter()
    try:
        collect = importlib.import_module(f"bench.{module}").collect
        result = collect(run)
    except Exception as exc:
        traceback.print_exc()
        print(f"=== {module} FAILED after {time.perf_counter() - started:.1f} s: {exc!r}")
        return {"error": f"{type(exc).__name__}: {exc}"}, False
    print(f"=== {module} done in {time.perf_counter() - started:.1f} s")
    return result, True


# --- targets -------------------------------------------------------------------------------


def dig(results: Mapping[str, Any], *path: str) -> Any:
    """``results[path[0]][path[1]]...``, or None where a key is missing or not a mapping."""
    node: Any = results
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _at_path(*path: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda results: _number(dig(results, *path))


def _ratios(results: Mapping[str, Any]) -> tuple[float, float] | None:
    ba = _number(dig(results, "webhook", "ratios", "B/A"))
    ga = _number(dig(results, "webhook", "ratios", "G/A"))
    return None if ba is None or ga is None else (ba, ga)


def _fail_open(results: Mapping[str, Any]) -> tuple[int, int] | None:
    pods = _number(dig(results, "webhook", "fail_open_500", "pods"))
    fail_opens = _number(dig(results, "webhook", "fail_open_500", "fail_opens"))
    return None if pods is None or fail_opens is None else (int(pods), int(fail_opens))


def _initial_sync(results: Mapping[str, Any]) -> tuple[float, int | None] | None:
    seconds = _number(dig(results, "records", "sizes", "large", "unique", "initial_sync_seconds"))
    pods = _number(dig(results, "records", "sizes", "large", "pods"))
    return None if seconds is None else (seconds, None if pods is None else int(pods))


def _sync_text(measured: tuple[float, int | None]) -> str:
    seconds, pods = measured
    return f"{seconds:.1f} s" + ("" if pods is None else f" ({pods:,} pods)")


@dataclass(frozen=True)
class Target:
    """One performance target: where its number is in the results and when it is met."""

    label: str
    now: str
    """The value the issue reports before the work."""
    target: str
    extract: Callable[[Mapping[str, Any]], Any]
    """From ``results`` (the modules' results by key) to the measurement, None if missing."""
    met: Callable[[Any], bool]
    show: Callable[[Any], str]


TARGETS: Final[tuple[Target, ...]] = (
    Target(
        "operator CPU per admitted pod",
        "4.2 ms",
        "<= 1.0 ms",
        _at_path("webhook", "operator_cpu_ms_per_admitted_pod"),
        lambda ms: ms <= 1.0,
        lambda ms: f"{ms:.2f} ms",
    ),
    Target(
        "B/A throughput, 32 clients",
        "0.32",
        "within 10% of G/A",
        _ratios,
        lambda r: r[0] >= 0.9 * r[1],
        lambda r: f"B/A {r[0]:.2f}, G/A {r[1]:.2f}",
    ),
    Target(
        "fail-open, 500 concurrent creates, 2 workers",
        "0.2-6.5%",
        "0",
        _fail_open,
        lambda f: f[1] == 0,
        lambda f: f"{f[1]} of {f[0]:,} pods",
    ),
    Target(
        "handler service time p99 at 200 req/s, one core",
        "",
        "<= 2 ms",
        _at_path("service", "ours_p99_ms_at_200"),
        lambda ms: ms <= 2.0,
        lambda ms: f"{ms:.2f} ms",
    ),
    Target(
        "saturation throughput vs the aiohttp floor",
        "",
        ">= 0.7",
        _at_path("service", "saturation_vs_aiohttp"),
        lambda ratio: ratio >= 0.7,
        lambda ratio: f"{ratio:.2f}",
    ),
    Target(
        "watcher memory per pod, unique labels",
        "1,029 B",
        "<= 512 B",
        _at_path("records", "sizes", "large", "unique", "store_bytes_per_pod"),
        lambda size: size <= 512,
        lambda size: f"{size:,.0f} B",
    ),
    Target(
        "initial sync of 150k pods",
        "50k: 6.4 s",
        "<= 30 s",
        _initial_sync,
        lambda s: s[0] <= 30.0,
        _sync_text,
    ),
    Target(
        "scrape at 150k pods, 5% noncompliant",
        "",
        "<= 100 ms",
        _at_path("records", "sizes", "large", "unique", "scrape_ms"),
        lambda ms: ms <= 100.0,
        lambda ms: f"{ms:.0f} ms",
    ),
    Target(
        "`audit -f` of 5,000 Deployments",
        "6.6 s",
        "<= 1 s",
        _at_path("cli", "sizes", "small", "seconds"),
        lambda seconds: seconds <= 1.0,
        lambda seconds: f"{seconds:.2f} s",
    ),
)


def evaluate(target: Target, results: Mapping[str, Any]) -> tuple[str, str]:
    """The measured text and ``yes``/``no``, or ``n/a`` twice when nothing was measured."""
    try:
        measured = target.extract(results)
        if measured is None:
            return "n/a", "n/a"
        return target.show(measured), "yes" if target.met(measured) else "no"
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError):
        return "n/a", "n/a"


def targets_table(results: Mapping[str, Any]) -> list[list[str]]:
    """Header and one row per target: target | now | target | measured | met?"""
    rows = [["target", "now", "target", "measured", "met?"]]
    for target in TARGETS:
        measured, met = evaluate(target, results)
        rows.append([target.label, target.now or "-", target.target, measured, met])
    return rows


def print_targets(results: Mapping[str, Any]) -> None:
    rows = targets_table(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if number == 0:
            print("  ".join("-" * width for width in widths))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (CI); asserts nothing")
    parser.add_argument(
        "--only", metavar="NAME[,NAME]", help="only these modules (bench_cli or cli, ...)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's work directory")
    parser.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="results file (default bench/results/latest.json, --quick: quick.json)",
    )
    args = parser.parse_args(argv)
    present = available()
    try:
        modules = selected(args.only, present)
    except ValueError as exc:
        parser.error(str(exc))
    output: Path = args.output or RESULTS / ("quick.json" if args.quick else "latest.json")

    info = machine()
    memory = f", {info['memory'] / 2**30:.0f} GiB" if info["memory"] else ""
    print(f"python {info['python']} on {info['cpus']} CPUs {info['model']}{memory}")
    started = datetime.datetime.now(datetime.UTC)
    clock = time.perf_counter()
    results: dict[str, Any] = {}
    failed: list[str] = []
    with BenchRun(quick=args.quick, keep=args.keep) as run:
        for module in modules:
            print(f"\n=== {module}{' (quick)' if args.quick else ''}", flush=True)
            results[key(module)], ok = run_module(module, run)
            if not ok:
                failed.append(module)
        if args.keep:
            print(f"\nwork directory kept: {run.work}")

    document = {
        "machine": info,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - clock, 1),
        "quick": args.quick,
        "git": git_commit(),
        "git_dirty": git_dirty(),
        "results": results,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nresults: {output} ({document['seconds']} s)\n")
    print_targets(results)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
