"""``gomemlimit audit -f`` at repository scale: wall time and peak RSS of the real CLI.

Generates N Deployments (two containers each: a Go ``app`` that the policy governs and a
``proxy`` sidecar it does not; env, requests and memory limits; about 750 bytes of YAML
each) into one multi-document file, plus a policy file, and runs the installed CLI on them as
a subprocess, the way a pre-merge check would: ``gomemlimit audit -f deployments.yaml
--policy policy.yaml``, table output to a file.

States of the ``app`` containers, by index: 7 in 10 carry the value the policy expects
(compliant), 1 in 10 ``GOMEMLIMIT=512Mi`` (invalid: Go wants ``MiB``), 1 in 10 none
(missing), and 1 in 10 are not labelled ``runtime: go`` (unmanaged). Missing and invalid
containers must make the CLI exit 1.

Each size is run with libyaml's parser (the CLI's default when PyYAML has it) and with the
pure-Python parser. The CLI has no switch for the parser, so the fallback run puts a
``sitecustomize.py`` on ``PYTHONPATH`` that deletes ``yaml.CSafeLoader`` before the CLI
imports it; the benchmark checks that the CLI then really uses ``yaml.SafeLoader``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

from bench.shared import REPO, BenchRun

FULL_SIZES: Final = {"small": 5_000, "large": 50_000}
QUICK_SIZES: Final = {"small": 500, "large": 1_000}
SAMPLE: Final = 100
"""Deployments checked with ``-o json`` before the timed runs: the states must be the mix."""
EXIT_FAILING: Final = 1

LIMITS_MI: Final = (512, 768, 1024, 2048)
POLICY: Final = """\
apiVersion: gomemlimit.io/v1alpha1
kind: ClusterGoMemPolicy
metadata:
  name: go-services
spec:
  selector:
    matchLabels:
      runtime: go
  containers: ["app"]
  ratio: 0.9
  minHeadroom: 32Mi
  maxHeadroom: 1Gi
  onExisting: respect
  mode: enforce
"""

_DEPLOYMENT: Final = """\
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: team-{team}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
        runtime: {runtime}
    spec:
      containers:
        - name: app
          image: registry.example.com/team-{team}/{name}:1.{minor}.0
          env:
            - name: LOG_LEVEL
              value: info
{gomemlimit}          resources:
            requests:
              cpu: 100m
              memory: {request}Mi
            limits:
              memory: {limit}Mi
        - name: proxy
          image: envoyproxy/envoy:v1.31.0
          resources:
            limits:
              memory: 128Mi
"""

_HIDE_LIBYAML: Final = """\
# Written by bench/bench_cli.py: makes the CLI fall back to PyYAML's pure-Python parser.
import yaml

del yaml.CSafeLoader
"""


def expected_mib(limit_mi: int) -> int:
    """What the policy above sets for a limit: 90%, headroom within [32Mi, 1Gi], whole MiB."""
    headroom = min(max(limit_mi * 0.1, 32), 1024)
    return int(limit_mi - headroom)


def state_of(index: int) -> str:
    """The state the ``app`` container of Deployment ``index`` is generated in."""
    return {7: "invalid", 8: "missing", 9: "unmanaged"}.get(index % 10, "compliant")


def deployment(index: int) -> str:
    state = state_of(index)
    limit = LIMITS_MI[index % len(LIMITS_MI)]
    value = {"compliant": f"{expected_mib(limit)}MiB", "invalid": "512Mi"}.get(state)
    gomemlimit = (
        "" if value is None else f"            - name: GOMEMLIMIT\n              value: {value}\n"
    )
    return _DEPLOYMENT.format(
        name=f"service-{index:05d}",
        team=index % 40,
        replicas=1 + index % 5,
        runtime="python" if state == "unmanaged" else "go",
        minor=index % 17,
        gomemlimit=gomemlimit,
        request=limit // 2,
        limit=limit,
    )


def write_manifests(path: Path, count: int) -> int:
    """``count`` Deployments in one multi-document file; returns its size in bytes."""
    with path.open("w", encoding="utf-8") as out:
        for index in range(count):
            out.write(deployment(index))
    return path.stat().st_size


def cli_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "gomemlimit"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "gomemlimit_operator.cli.main"]


def environment(pure_python: bool, hide_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO / "operator")]
    if pure_python:
        paths.insert(0, str(hide_dir))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["NO_COLOR"] = "1"
    return env


def loader_used(pure_python: bool, hide_dir: Path) -> str:
    """The base class of the CLI's YAML loader in a child with this environment."""
    code = (
        "from gomemlimit_operator.cli import manifests; "
        "print(manifests._Loader.__mro__[1].__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=environment(pure_python, hide_dir),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def run_cli(
    args: list[str], *, pure_python: bool, hide_dir: Path, stdout: Path
) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and exit code of one CLI run (``wait4``'s rusage)."""
    with stdout.open("wb") as out, open(os.devnull, "wb") as err:
        start = time.perf_counter()
        child = subprocess.Popen(
            [*cli_command(), *args],
            stdout=out,
            stderr=err,
            env=environment(pure_python, hide_dir),
        )
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    return seconds, usage.ru_maxrss / 1024, child.returncode  # ru_maxrss is KiB on Linux


def check_sample(work: Path, policy: Path, hide_dir: Path) -> dict[str, int]:
    """Audit a few Deployments with ``-o json``: the generated states must come out."""
    sample = work / "sample.yaml"
    write_manifests(sample, SAMPLE)
    out = work / "sample.json"
    _, _, code = run_cli(
        ["audit", "-f", str(sample), "--policy", str(policy), "-o", "json"],
        pure_python=False,
        hide_dir=hide_dir,
        stdout=out,
    )
    rows = json.loads(out.read_text())
    got = Counter(row["state"] for row in rows if row["container"] == "app")
    want = Counter(state_of(index) for index in range(SAMPLE))
    if got != want or code != EXIT_FAILING:
        raise RuntimeError(f"sample audit: states {dict(got)} (want {dict(want)}), exit {code}")
    return dict(sorted(got.items()))


def collect(run: BenchRun) -> dict[str, Any]:
    import yaml

    work = run.directory("cli")
    hide_dir = work / "no-libyaml"
    hide_dir.mkdir(exist_ok=True)
    (hide_dir / "sitecustomize.py").write_text(_HIDE_LIBYAML)
    policy = work / "policy.yaml"
    policy.write_text(POLICY)

    libyaml = hasattr(yaml, "CSafeLoader")
    default_loader = loader_used(False, hide_dir)
    fallback_loader = loader_used(True, hide_dir)
    if fallback_loader != "SafeLoader":
        raise RuntimeError(f"hiding libyaml failed: the CLI still uses {fallback_loader}")
    print(f"CLI: {' '.join(cli_command())}; parser {default_loader}, fallback {fallback_loader}")
    states = check_sample(work, policy, hide_dir)
    print(f"sample of {SAMPLE} Deployments, app containers: {states}")

    sizes: dict[str, dict[str, Any]] = {}
    print(
        f"{'size':<6} {'deployments':>11} {'MB':>7} {'libyaml s':>10} {'peak RSS':>10} "
        f"{'pure-Python s':>14} {'its RSS':>9} {'exit':>5}"
    )
    for label, count in (QUICK_SIZES if run.quick else FULL_SIZES).items():
        manifests = work / f"deployments-{count}.yaml"
        size = write_manifests(manifests, count)
        args = ["audit", "-f", str(manifests), "--policy", str(policy)]
        seconds, rss, code = run_cli(
            args, pure_python=False, hide_dir=hide_dir, stdout=work / f"audit-{count}.txt"
        )
        pure_seconds: float | None = None
        pure_rss: float | None = None
        if not (run.quick and label == "large"):
            pure_seconds, pure_rss, pure_code = run_cli(
                args, pure_python=True, hide_dir=hide_dir, stdout=work / f"audit-{count}-py.txt"
            )
            if pure_code != code:
                raise RuntimeError(f"{count}: exit {pure_code} without libyaml, {code} with it")
        if code != EXIT_FAILING:
            raise RuntimeError(f"audit of {count} Deployments exited {code}, want {EXIT_FAILING}")
        sizes[label] = {
            "deployments": count,
            "bytes": size,
            "seconds": round(seconds, 3),
            "peak_rss_mib": round(rss, 1),
            "pure_python_seconds": None if pure_seconds is None else round(pure_seconds, 3),
            "pure_python_peak_rss_mib": None if pure_rss is None else round(pure_rss, 1),
            "exit_code": code,
        }
        print(
            f"{label:<6} {count:>11,} {size / 1e6:>7.1f} {seconds:>10.2f} {rss:>7.0f} MiB "
            f"{_opt(pure_seconds, '.2f'):>14} {_opt(pure_rss, '.0f', ' MiB'):>9} {code:>5}"
        )
        if not run.keep:
            manifests.unlink()
    return {
        "libyaml": libyaml,
        "loader": default_loader,
        "sample_states": states,
        "sizes": sizes,
    }


def _opt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_cli", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5,000 and 10,000 Deployments")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)
    with BenchRun(quick=args.quick, keep=args.keep) as run:
        result = collect(run)
        if args.keep:
            print(f"files kept in {run.work / 'cli'}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
