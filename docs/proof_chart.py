#!/usr/bin/env python3
"""Draw docs/proof-memory.png: memory over time of the three proof pods, from recorded samples.

The samples come from tests/e2e/test_real_node.py (each pod's memory cgroup, every 100 ms):

    GOMEMLIMIT_PROOF_OUT=docs/proof-samples.json \\
        .venv/bin/python -m pytest tests/e2e/test_real_node.py -k proof
    .venv/bin/python docs/proof_chart.py docs/proof-samples.json docs/proof-memory.png

(``make proof-chart`` runs the second line.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

MiB = 1 << 20
STYLE = {
    "governed": ("#1b7f3b", "GOMEMLIMIT=460MiB (injected)"),
    "opted-out": ("#c0392b", "no GOMEMLIMIT (opted out)"),
    "downward-api": ("#d68910", "GOMEMLIMIT=536870912 (resourceFieldRef, 100%)"),
}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    record = json.loads(Path(argv[1]).read_text())
    limit_mib = record["limit_bytes"] / MiB
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    start = min(s[0][0] for s in record["samples"].values() if s)
    for name, samples in record["samples"].items():
        color, label = STYLE.get(name, ("#555555", name))
        outcome = record["outcome"][name]
        result = f"{outcome['reason']}, exit {outcome['exitCode']}"
        peak = outcome["peak_bytes"] / MiB
        xs = [t - start for t, _ in samples]
        ys = [usage / MiB for _, usage in samples]
        ax.plot(xs, ys, color=color, linewidth=1.6, label=f"{label}: {result}, peak {peak:.0f} MiB")
        if outcome["reason"] == "OOMKilled" and ys:
            top = max(range(len(ys)), key=ys.__getitem__)  # the last sample before the kill
            ax.plot(xs[top], ys[top], marker="x", color=color, markersize=9, mew=2)
    ax.axhline(limit_mib, color="black", linestyle="--", linewidth=1)
    ax.text(0.3, limit_mib + 6, f"memory limit {limit_mib:.0f} Mi", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("pod memory (cgroup usage), MiB")
    ax.set_ylim(0, limit_mib * 1.15)
    ax.set_title(
        f"Same Go program, limit 512Mi: {record['live_mib']} MiB live heap, "
        f"{record['offheap_mib']} MiB off-heap, garbage at {record['churn_mib_per_sec']} MiB/s",
        fontsize=9,
    )
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(argv[2])
    print(f"wrote {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
