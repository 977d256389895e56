"""Every GOMEMLIMIT this project writes or judges, checked against the real Go runtime.

tests/goruntime/main.go is built once per session with the machine's ``go`` and run
once per distinct value with GOMEMLIMIT set: Go either prints the limit it read (in
bytes; MaxInt64 means none) or dies at start with "malformed GOMEMLIMIT" and exit 2,
as a container would. goruntime.parse_byte_count must agree with it on every value,
except the documented leading-sign divergence.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from unit_helpers import VALUE_CONTRACT_CASES, container, env_value, policy

from gomemlimit_operator.cli import main as cli
from gomemlimit_operator.core.api import DEFAULT_POLICY
from gomemlimit_operator.core.engine import State, evaluate_pod, expected_gomemlimit
from gomemlimit_operator.core.goruntime import MAX_INT64, is_no_limit, parse_byte_count
from gomemlimit_operator.core.quantity import parse_bytes

ROOT = Path(__file__).resolve().parents[3]
PROGRAM = ROOT / "tests" / "goruntime"
TESTDATA = Path(__file__).parents[1] / "testdata"
MIB = 1 << 20

KNOWN_BAD = [
    "512Mi",  # the Kubernetes spelling: the classic CrashLoopBackOff
    "1GB",
    "1G",
    "1.5GiB",
    "1 GiB",
    "1gib",
    "1PiB",
    "-1",
    "9223372036854775808",  # MaxInt64 + 1
    "8388608TiB",  # MaxInt64 + 1 after the shift
    "9007199254740992KiB",
    "1KB",
    "1kiB",
    "MiB",
    "1MiBB",
    " 1",
    "1 ",
    "1_000",
    "0x10",
    "OFF",
    "\uff11",  # a full-width digit one
]
KNOWN_GOOD = [
    "0",
    "1",
    "1B",
    "1KiB",
    "460MiB",
    "0460MiB",
    "1GiB",
    "1TiB",
    "9223372036854775807",
    "9223372036854775807B",
    "8388607TiB",
    "9007199254740991KiB",
]
NO_LIMIT = ["", "off"]
SIGNED = {"+1GiB": 1 << 30, "+0": 0, "-0": 0, "-0B": 0, "+1": 1}  # what Go 1.21+ reads


@dataclass(frozen=True)
class GoVerdict:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def limit(self) -> int | None:
        """The bytes Go read, or None when it refused to start."""
        if self.exit_code == 2 and "malformed GOMEMLIMIT" in self.stderr:
            return None
        assert self.exit_code == 0, f"unexpected result: {self}"
        return int(self.stdout)


@dataclass(frozen=True)
class GoProbe:
    binary: Path
    version: tuple[int, int]

    def read(self, values: Iterable[str]) -> dict[str, GoVerdict]:
        """Run the program once per distinct value (a few at a time)."""
        distinct = sorted(set(values))
        with ThreadPoolExecutor(max_workers=4) as pool:
            return dict(zip(distinct, pool.map(self._run, distinct), strict=True))

    def _run(self, value: str) -> GoVerdict:
        env = {"PATH": os.environ.get("PATH", ""), "GOMEMLIMIT": value}
        done = subprocess.run(
            [self.binary], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        return GoVerdict(done.returncode, done.stdout.strip(), done.stderr)


@pytest.fixture(scope="session")
def go(tmp_path_factory: pytest.TempPathFactory) -> GoProbe:
    """tests/goruntime built with the machine's Go. Missing Go is a failure, not a skip."""
    toolchain = shutil.which("go")
    if toolchain is None:
        pytest.fail(
            "the `go` command is not on PATH: install Go (https://go.dev/dl/) to check "
            "GOMEMLIMIT values against the real Go runtime",
            pytrace=False,
        )
    env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": ""}
    if not any(env.get(name) for name in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):
        env["GOCACHE"] = str(tmp_path_factory.mktemp("gocache"))
    binary = tmp_path_factory.mktemp("goruntime") / "goruntime"
    built = subprocess.run(
        [toolchain, "build", "-o", str(binary), "."],
        cwd=PROGRAM,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"building {PROGRAM} failed:\n{built.stderr}", pytrace=False)
    goversion = subprocess.run(
        [toolchain, "env", "GOVERSION"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    match = re.match(r"go(\d+)\.(\d+)", goversion)
    assert match, goversion
    return GoProbe(binary, (int(match[1]), int(match[2])))


def ours(value: str) -> int | None:
    """What this project believes Go reads: bytes, MaxInt64 for no limit, None if fatal."""
    return MAX_INT64 if is_no_limit(value) else parse_byte_count(value)


def assert_agree(go: GoProbe, values: Iterable[str]) -> dict[str, GoVerdict]:
    verdicts = go.read(values)
    disagreements = {
        value: (verdict.limit, ours(value))
        for value, verdict in verdicts.items()
        if verdict.limit != ours(value)
    }
    assert disagreements == {}, "value: (Go, goruntime.parse_byte_count)"
    return verdicts


# --- the grammar -----------------------------------------------------------------------------


def test_known_bad_values_kill_go_at_start(go: GoProbe) -> None:
    verdicts = assert_agree(go, KNOWN_BAD)
    for value, verdict in verdicts.items():
        assert verdict.exit_code == 2, value
        assert "fatal error: malformed GOMEMLIMIT" in verdict.stderr, value
        assert parse_byte_count(value) is None
        # ... and the audit calls each of them invalid, governed or not.
        for governing in (DEFAULT_POLICY, None):
            spec = {"containers": [container(env=[env_value("GOMEMLIMIT", value)])]}
            [report] = evaluate_pod({}, spec, governing)
            assert report.state is State.INVALID, value


def test_known_good_values_give_exact_byte_counts(go: GoProbe) -> None:
    verdicts = assert_agree(go, KNOWN_GOOD + NO_LIMIT)
    assert verdicts["460MiB"].limit == 460 * MIB
    assert verdicts["9223372036854775807"].limit == MAX_INT64
    assert verdicts["8388607TiB"].limit == 8388607 << 40
    assert verdicts["off"].limit == MAX_INT64  # no limit
    assert verdicts[""].limit == MAX_INT64


def test_leading_sign_is_a_deliberate_divergence(go: GoProbe) -> None:
    """Go 1.21+ reads the digits with strconv.ParseInt, so "+1GiB" and "-0" start
    fine; Go 1.19 and 1.20 die on them. An image may carry any Go release, so the
    project calls them invalid and never writes them."""
    verdicts = go.read(SIGNED)
    for value, verdict in verdicts.items():
        assert parse_byte_count(value) is None, value
        if go.version >= (1, 21):
            assert verdict.limit == SIGNED[value], value
        else:
            assert verdict.limit is None, value


# --- the values the project produces --------------------------------------------------------


def contract_values() -> set[str]:
    """A large, fixed sample of what the value contract yields: many limits and
    ratios, with and without headroom bounds, plus every case test_engine checks."""
    rng = random.Random(20240501)
    specs = [
        {"ratio": ratio}
        for ratio in (0.9, 0.7, 0.75, 0.5, 0.95, 0.99, 0.333, 0.999999, 0.1, 0.8125)
    ] + [
        {"minHeadroom": "64Mi"},
        {"maxHeadroom": "1Gi", "ratio": 0.8},
        {"minHeadroom": "100M", "maxHeadroom": "2Gi", "ratio": 0.95},
    ]
    policies = [policy(**spec).spec for spec in specs]
    limits = [1 << 20, 2 << 20, 90 << 20, 512 << 20, 1 << 30, 1 << 40, (1 << 63) - 1]
    limits += [rng.randrange(1, 1 << 45) for _ in range(60)]
    limits += [rng.randrange(1, 1 << 15) * MIB for _ in range(60)]
    limits += [rng.randrange(1, 1 << 15) * 10**6 for _ in range(30)]
    values = set()
    for limit in limits:
        spec = rng.choice(policies)
        value = expected_gomemlimit(limit, spec)
        if value is not None:
            values.add(value)
    # Past MaxInt64 (the API server stores 12E uncapped): the gate lets through only what
    # Go reads, up to the largest whole MiB at or below MaxInt64.
    edges = [policy(maxHeadroom=high).spec for high in ("1", "1Gi", "4E", "1e24")]
    for limit in (MAX_INT64, 1 << 63, 12 * 10**18, 10**20, 10**24):
        for spec in edges:
            value = expected_gomemlimit(limit, spec)
            if value is not None:
                values.add(value)
    assert "8796093022207MiB" in values  # 2^63 - 1MiB: the largest value ever written
    for limit, fields, expected in VALUE_CONTRACT_CASES:
        assert expected_gomemlimit(parse_bytes(limit), policy(**fields).spec) == expected
        if expected is not None:
            values.add(expected)
    return values


def test_every_value_the_contract_produces_is_read_exactly(go: GoProbe) -> None:
    values = contract_values()
    assert len(values) > 100
    verdicts = assert_agree(go, values)
    for value, verdict in verdicts.items():
        assert verdict.exit_code == 0, value
        assert verdict.limit == int(value.removesuffix("MiB")) * MIB, value


def cli_values(capsys: pytest.CaptureFixture[str]) -> tuple[set[str], set[str]]:
    """(values the CLI writes or expects, values it reads from manifests as written)."""
    written: set[str] = set()
    seen: set[str] = set()
    app, example_policy = ROOT / "examples" / "app.yaml", ROOT / "examples" / "policy.yaml"
    inputs = [
        ["-f", str(TESTDATA / "manifests")],
        ["-f", str(TESTDATA / "compliant")],
        ["-f", str(app)],
        ["-f", str(app), "--policy", str(example_policy)],
    ]
    for args in inputs:
        assert cli.main(["audit", "-o", "json", *args]) in (0, 1)
        for row in json.loads(capsys.readouterr().out):
            if row["expected"] is not None:
                written.add(row["expected"])
            if row["source"] == "value" and row["gomemlimit"] is not None:
                seen.add(row["gomemlimit"])
        assert cli.main(["mutate", *args]) == 0
        written.update(_injected_values(capsys.readouterr().out))
    return written, seen


def _injected_values(text: str) -> Iterable[str]:
    for doc in yaml.safe_load_all(text):
        for found in _find_key(doc, "annotations"):
            record = found.get("gomemlimit.io/injected")
            if record:
                for env in json.loads(record).values():
                    if "GOMEMLIMIT" in env:
                        yield env["GOMEMLIMIT"]


def _find_key(node: object, key: str) -> Iterable[dict[str, str]]:
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key and isinstance(value, dict):
                yield value
            else:
                yield from _find_key(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from _find_key(item, key)


def test_every_value_the_cli_writes_starts_go(
    go: GoProbe, capsys: pytest.CaptureFixture[str]
) -> None:
    written, seen = cli_values(capsys)
    assert {"460MiB", "819MiB", "192MiB", "64MiB"} <= written
    verdicts = assert_agree(go, written | seen)
    for value in written:
        assert verdicts[value].limit == int(value.removesuffix("MiB")) * MIB, value
    assert verdicts["512Mi"].limit is None  # the invalid value in testdata/manifests/list.yaml
