"""Run every benchmark module of this package: ``python -m bench [options]``.

Options are passed on to each benchmark (e.g. ``--pods 10000`` for a quick run).
"""

from __future__ import annotations

import importlib
import pkgutil
import platform
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    print(f"python {platform.python_version()} on {platform.machine()}, {_cpus()}")
    here = Path(__file__).parent
    for module in sorted(m.name for m in pkgutil.iter_modules([str(here)])):
        if module.startswith("bench_"):
            print(f"\n=== {module}")
            importlib.import_module(f"bench.{module}").main(argv)


def _cpus() -> str:
    import os

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs {model}".strip()


if __name__ == "__main__":
    main(sys.argv[1:])
