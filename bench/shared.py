"""What the benchmark modules share: one run's options, its work directory, and one local
control plane started at most once per run.

Every ``bench/bench_*.py`` module exposes

* ``collect(run: BenchRun) -> dict[str, Any]``: runs the benchmark (reduced when
  ``run.quick``), prints its human-readable report as it goes, and returns JSON-serialisable
  results, which ``python -m bench`` writes under the module's key in
  ``bench/results/latest.json``. Quick and full runs return the same keys.
* ``main(argv)``: the module on its own (``python -m bench.bench_x [options]``).

Nothing here asserts a speed: timings depend on the machine and its load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO / "crds"
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; OSError if it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass
class BenchRun:
    """One benchmark run. Use as a context manager: it stops the control plane it started
    and removes its work directory (unless ``keep``)."""

    quick: bool = False
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    keep: bool = False
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _cluster: Any = field(default=None, repr=False)

    def cluster(self) -> Any:
        """The run's local control plane (``tests.cluster.controlplane.ControlPlane``),
        started on first use, with the CRDs applied."""
        if self._cluster is None:
            from tests.cluster.controlplane import ControlPlane, ensure_built

            ensure_built()
            cluster = ControlPlane(self.work / "cluster")
            self._stack.callback(cluster.stop)
            cluster.start()
            cluster.kubectl("apply", "-f", str(CRDS))
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
            self._cluster = cluster
        return self._cluster

    def directory(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __enter__(self) -> BenchRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self._cluster = None
            if not self.keep:
                shutil.rmtree(self.work, ignore_errors=True)


@dataclass(frozen=True)
class ServingCertificate:
    """A CA and a serving certificate for 127.0.0.1, as files (for the servers under test)."""

    ca_pem: bytes
    ca_file: Path
    cert_file: Path
    key_file: Path


def serving_certificate(directory: Path) -> ServingCertificate:
    from gomemlimit_operator.runtime.certs import generate, write_files

    bundle = generate(["127.0.0.1", "localhost"], valid_days=2)
    files = write_files(bundle, directory)
    return ServingCertificate(bundle.ca_pem, files.ca_file, files.cert_file, files.key_file)
