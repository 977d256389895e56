"""The offline CLI: ``gomemlimit audit``, ``gomemlimit mutate`` and friends.

Most tests run ``main()`` in-process; a few run the installed console scripts
as real subprocesses, exactly as a CI pipeline would.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gomemlimit_operator.cli import main as cli
from gomemlimit_operator.core.engine import ANNOTATION_INJECTED, ANNOTATION_POLICY, State

TESTDATA = Path(__file__).parents[1] / "testdata"
MANIFESTS = TESTDATA / "manifests"
BAD = TESTDATA / "bad"
BIN = Path(sys.executable).parent
MIB = 1 << 20


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def audit_json(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, list[Any]]:
    code, out, err = run(capsys, "audit", "-o", "json", *argv)
    assert err == ""
    rows = json.loads(out)
    assert isinstance(rows, list)
    return code, rows


def load_all(text: str) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
    - name: app
      image: example/app:1
      resources:
        limits:
          memory: {limit}
"""


# --- audit -----------------------------------------------------------------------------------

# (namespace, kind, name, container, init, limit bytes, gomemlimit, source, expected, state,
#  policy) for every container in testdata/manifests, in file, document and spec order.
EXPECTED_ROWS = [
    ("team", "Deployment", "api", "app", False, 1 << 30, None, None, "819MiB",
     "missing", "ClusterGoMemPolicy/prod-strict"),
    ("team", "Deployment", "api", "proxy", False, 128 * MIB, None, None, "64MiB",
     "missing", "ClusterGoMemPolicy/prod-strict"),
    ("jobs", "CronJob", "nightly", "report", False, 256 * MIB, "100MiB", "value", "192MiB",
     "stale", "GoMemPolicy/jobs/batch"),
    ("default", "Pod", "web", "app", False, 512 * MIB, "512Mi", "value", "460MiB",
     "invalid", "ClusterGoMemPolicy/go-default"),
    ("default", "StatefulSet", "db", "db-go", False, 2 << 30, str(2 << 30), "resourceFieldRef",
     "1843MiB", "exceeds_limit", "ClusterGoMemPolicy/go-default"),
    ("default", "StatefulSet", "db", "exporter", False, 64 * MIB, None, None, None,
     "unmanaged", None),
    ("default", "DaemonSet", "agent", "app", False, None, None, None, None,
     "no_memory_limit", "ClusterGoMemPolicy/go-default"),
    ("default", "ReplicaSet", "legacy", "app", False, 256 * MIB, None, None, "230MiB",
     "opted_out", "ClusterGoMemPolicy/go-default"),
    ("default", "ReplicationController", "old", "app", False, 256 * MIB, None, None, None,
     "unmanaged", None),
    ("default", "Job", "once", "setup", True, 64 * MIB, None, None, None, "unmanaged", None),
    ("default", "Job", "once", "app", False, 300 * MIB, "200MiB", "value", "270MiB",
     "compliant", "ClusterGoMemPolicy/go-default"),
    ("default", "Pod", "json-pod", "app", False, 64 * MIB, None, "configMapKeyRef", "57MiB",
     "unverifiable", "ClusterGoMemPolicy/go-default"),
    ("default", "Pod", "tiny", "app", False, MIB, None, None, None,
     "unsatisfiable", "ClusterGoMemPolicy/go-default"),
]  # fmt: skip
FIELDS = (
    "namespace", "kind", "name", "container", "init", "memoryLimitBytes", "gomemlimit",
    "source", "expected", "state", "policy",
)  # fmt: skip


def test_audit_json_reports_every_container_with_every_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, rows = audit_json(capsys, "-f", MANIFESTS)
    assert code == 1
    assert [tuple(row[f] for f in FIELDS) for row in rows] == EXPECTED_ROWS
    for row in rows:
        assert {*FIELDS, "injected", "reason", "file"} == set(row)
        assert isinstance(row["reason"], str)
        assert row["reason"]
        assert Path(row["file"]).is_relative_to(MANIFESTS)
    assert {row["state"] for row in rows} == {state.value for state in State}


def test_audit_json_reason_explains_the_state(capsys: pytest.CaptureFixture[str]) -> None:
    _, rows = audit_json(capsys, "-f", MANIFESTS)
    reasons = {(row["name"], row["container"]): row["reason"] for row in rows}
    assert "Go rejects GOMEMLIMIT='512Mi'" in reasons["web", "app"]
    assert "rollout restart" in reasons["nightly", "report"]
    assert "gomemlimit.io/skip" in reasons["legacy", "app"]


def test_audit_exit_0_when_nothing_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, rows = audit_json(capsys, "-f", TESTDATA / "compliant")
    assert code == 0
    assert [(row["container"], row["state"]) for row in rows] == [
        ("app", "compliant"),
        ("sidecar", "unmanaged"),
    ]


@pytest.mark.parametrize(
    ("limit", "extra_env", "code"),
    [
        ("512Mi", "", 1),  # missing
        ("512Mi", "GOMEMLIMIT=460MiB", 0),
        ("512Mi", "GOMEMLIMIT=512Mi", 1),  # invalid
        ("512Mi", "GOMEMLIMIT=512MiB", 1),  # exceeds_limit
        ("512Mi", "GOMEMLIMIT=300MiB", 0),  # a user's own valid value
    ],
)
def test_audit_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str, extra_env: str, code: int
) -> None:
    text = POD.format(name="p", limit=limit)
    if extra_env:
        name, value = extra_env.split("=")
        text += f"      env:\n        - name: {name}\n          value: {value}\n"
    path = write(tmp_path / "pod.yaml", text)
    assert audit_json(capsys, "-f", path)[0] == code


def test_no_policy_at_all_means_the_implicit_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "pod.yaml", POD.format(name="p", limit="512Mi"))
    _, [row] = audit_json(capsys, "-f", path)
    assert row["policy"] == "ClusterGoMemPolicy/default"
    assert row["expected"] == "460MiB"
    assert row["namespace"] == "default"


def test_policies_from_files_and_from_manifests_combine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pods = write(tmp_path / "pods.yaml", POD.format(name="a", limit="1Gi"))
    in_manifests = write(
        tmp_path / "in-manifests.yaml",
        "apiVersion: gomemlimit.io/v1alpha1\nkind: ClusterGoMemPolicy\n"
        "metadata: {name: low}\nspec: {ratio: 0.5}\n",
    )
    policy_file = write(
        tmp_path / "policy" / "high.yaml",
        "apiVersion: gomemlimit.io/v1alpha1\nkind: ClusterGoMemPolicy\n"
        "metadata: {name: high}\nspec: {ratio: 0.75, priority: 1}\n",
    )
    _, [row] = audit_json(capsys, "-f", pods, "-f", in_manifests)
    assert (row["policy"], row["expected"]) == ("ClusterGoMemPolicy/low", "512MiB")
    _, [row] = audit_json(capsys, "-f", pods, "-f", in_manifests, "--policy", policy_file.parent)
    assert (row["policy"], row["expected"]) == ("ClusterGoMemPolicy/high", "768MiB")


def test_namespace_labels_come_from_namespace_documents_or_the_name_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(
        tmp_path / "policy.yaml",
        "apiVersion: gomemlimit.io/v1alpha1\nkind: ClusterGoMemPolicy\nmetadata: {name: p}\n"
        "spec:\n  namespaceSelector:\n    matchExpressions:\n"
        "      - {key: tier, operator: In, values: [gold]}\n"
        "      - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system]}\n",
    )
    docs = []
    for ns, tier in (("gold-ns", "gold"), ("kube-system", "gold"), ("plain", None)):
        labels = f"  labels: {{tier: {tier}}}\n" if tier else ""
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n{labels}")
        pod = POD.format(name="p", limit="1Gi")
        docs.append(pod.replace("name: p\n", f"name: p\n  namespace: {ns}\n"))
    manifests = write(tmp_path / "all.yaml", "---\n".join(docs))
    _, rows = audit_json(capsys, "-f", manifests, "--policy", policy)
    assert [(row["namespace"], row["state"]) for row in rows] == [
        ("gold-ns", "missing"),
        ("kube-system", "unmanaged"),
        ("plain", "unmanaged"),
    ]


def test_audit_table_is_aligned_with_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "audit", "-f", MANIFESTS)
    assert code == 1
    assert err == ""
    assert "\033[" not in out  # not a terminal: no colour
    lines = out.splitlines()
    header = lines[0].split()
    assert header == [
        "NAMESPACE", "WORKLOAD", "CONTAINER", "LIMIT", "GOMEMLIMIT", "EXPECTED", "STATE", "POLICY",
    ]  # fmt: skip
    table = lines[1 : 1 + len(EXPECTED_ROWS)]
    state_column = lines[0].index("STATE")
    for line, row in zip(table, EXPECTED_ROWS, strict=True):
        assert line[state_column:].split()[0] == row[9]
        assert line.startswith(row[0])
    assert "Deployment/api" in table[0]
    assert "setup (init)" in table[9]
    assert "1Gi" in table[0]
    assert "<configMapKeyRef>" in table[11]
    summary = (
        "13 containers in 10 pod specs: 1 compliant, 2 missing, 1 invalid, 1 exceeds_limit, "
        "1 no_memory_limit, 1 unsatisfiable, 1 stale, 1 opted_out, 1 unverifiable, 3 unmanaged "
        "(6 failing)"
    )
    assert summary in lines
    attention = lines[lines.index("Needs attention:") + 1 :]
    assert len(attention) == 7  # the six failing containers and the stale one
    assert attention[0].strip().startswith("team/Deployment/api app: missing:")


def test_audit_table_with_nothing_to_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n")
    assert run(capsys, "audit", "-f", path) == (0, "No pod specs found.\n", "")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_on_a_terminal_only_and_never_with_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def table() -> str:
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stdout", terminal)
        assert cli.main(["audit", "-f", str(MANIFESTS)]) == 1
        monkeypatch.setattr(sys, "stdout", sys.__stdout__)
        return terminal.getvalue()

    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = table()
    assert "\033[1;31mmissing" in coloured
    assert "\033[32mcompliant" in coloured
    monkeypatch.setenv("NO_COLOR", "1")
    plain = table()
    assert "\033[" not in plain
    # Colour codes never break the alignment: stripped, both tables are identical.
    assert _strip_ansi(coloured) == plain


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\033\[[0-9;]*m", "", text)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-f", BAD / "quantity.yaml"],
            f"{BAD / 'quantity.yaml'}: Deployment/default/api: "
            "spec.template.spec.containers[0].resources.limits.memory: "
            "'12xyz' is not a valid quantity",
        ),
        (["-f", BAD / "syntax.yaml"], f"{BAD / 'syntax.yaml'}: line 6, column 5: invalid YAML"),
        (
            ["-f", MANIFESTS, "--policy", BAD / "ratio.yaml"],
            f"{BAD / 'ratio.yaml'}: ClusterGoMemPolicy/too-generous: spec.ratio: ",
        ),
        (
            ["-f", BAD / "headroom.yaml"],
            f"{BAD / 'headroom.yaml'}: GoMemPolicy/team/upside-down: spec.maxHeadroom: "
            "minHeadroom (1Gi) must not be greater than maxHeadroom (64Mi)",
        ),
        (
            ["-f", BAD / "env-value.yaml"],
            f"{BAD / 'env-value.yaml'}: Pod/web/unquoted: spec.containers[0].env[0].value: "
            "must be a string, got False",
        ),
        (["-f", TESTDATA / "nope.yaml"], f"{TESTDATA / 'nope.yaml'}: no such file or directory"),
        (
            ["-f", MANIFESTS, "--policy", MANIFESTS / "app.yaml"],
            f"{MANIFESTS / 'app.yaml'}: Namespace/team: kind: expected GoMemPolicy or "
            "ClusterGoMemPolicy in a policy file, got 'Namespace'",
        ),
    ],
)
@pytest.mark.parametrize("command", ["audit", "mutate"])
def test_bad_input_exits_2_with_one_clear_message(
    capsys: pytest.CaptureFixture[str], command: str, args: list[str | Path], message: str
) -> None:
    code, out, err = run(capsys, command, *args)
    assert code == 2
    assert out == ""
    assert err.startswith("gomemlimit: error: ")
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just\n- a list\n", "bad.yaml: document 1: expected a Kubernetes object (a mapping)"),
        ("a: 1\n---\n42\n", "bad.yaml: document 2: expected a Kubernetes object"),
        (
            "apiVersion: gomemlimit.io/v1alpha1\nkind: GoMemPolicy\nmetadata: {name: x}\n"
            "spec: {ratio: '0.9'}\n",
            "bad.yaml: GoMemPolicy/default/x: spec.ratio: ratio must be a number such as 0.9",
        ),
        (
            "apiVersion: gomemlimit.io/v1\nkind: ClusterGoMemPolicy\nmetadata: {name: x}\n",
            "bad.yaml: ClusterGoMemPolicy/x: apiVersion: expected gomemlimit.io/v1alpha1",
        ),
        (
            "apiVersion: gomemlimit.io/v1alpha1\nkind: ClusterGoMemPolicy\nmetadata: {name: x}\n"
            "spec: {minHeadroom: lots}\n",
            "bad.yaml: ClusterGoMemPolicy/x: spec.minHeadroom: 'lots' is not a valid quantity",
        ),
        (
            "apiVersion: gomemlimit.io/v1alpha1\nkind: ClusterGoMemPolicy\nmetadata: {name: x}\n"
            "spec: {gogc: '50%'}\n",
            "bad.yaml: ClusterGoMemPolicy/x: spec.gogc: ",
        ),
        (
            "apiVersion: gomemlimit.io/v1alpha1\nkind: ClusterGoMemPolicy\nmetadata: {name: x}\n"
            "spec: {raito: 0.9}\n",
            "bad.yaml: ClusterGoMemPolicy/x: spec.raito: ",
        ),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n",
            "bad.yaml: Deployment/default/d: spec.template: is required",
        ),
        (
            "kind: CronJob\nmetadata: {name: c, namespace: n}\nspec:\n  jobTemplate:\n"
            "    spec:\n      template:\n        spec:\n          containers:\n"
            "            - name: app\n              resources: {limits: {memory: 1.5.1}}\n",
            "bad.yaml: CronJob/n/c: spec.jobTemplate.spec.template.spec.containers[0]"
            ".resources.limits.memory: '1.5.1' is not a valid quantity",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec:\n  resources: {limits: {memory: 1GB}}\n"
            "  containers: []\n",
            "bad.yaml: Pod/default/p: spec.resources.limits.memory: '1GB' is not a valid quantity",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - image: x\n",
            "bad.yaml: Pod/default/p: spec.containers[0].name: is required",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: a\n"
            "      env: {GOMEMLIMIT: 1GiB}\n",
            "bad.yaml: Pod/default/p: spec.containers[0].env: must be a list",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: a\n"
            "      env:\n        - name: GOMEMLIMIT\n          valueFrom:\n"
            "            resourceFieldRef: {resource: limits.memory, divisor: 1Mb}\n",
            "bad.yaml: Pod/default/p: spec.containers[0].env[0].valueFrom.resourceFieldRef"
            ".divisor: '1Mb' is not a valid quantity",
        ),
        (
            "kind: Pod\nmetadata: {name: p, labels: {version: 1.0}}\nspec: {containers: []}\n",
            "bad.yaml: Pod/default/p: metadata.labels.version: must be a string, got 1.0",
        ),
        (
            "kind: Pod\nmetadata: {namespace: x}\nspec: {containers: []}\n",
            "bad.yaml: document 1: metadata.name: is required",
        ),
        (
            "kind: List\nitems:\n  - kind: Pod\n    metadata: {name: ok}\n    spec: {}\n  - 7\n",
            "bad.yaml: document 1: items[1]: expected a Kubernetes object",
        ),
    ],
)
def test_more_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    monkey_cwd = os.getcwd()
    os.chdir(tmp_path)  # so that the file is named plainly, as a user would pass it
    try:
        write(tmp_path / "bad.yaml", text)
        code, out, err = run(capsys, "audit", "-f", "bad.yaml")
    finally:
        os.chdir(monkey_cwd)
    assert (code, out) == (2, "")
    assert err.startswith(f"gomemlimit: error: {message}")
    assert err.count("\n") == 1


def test_bad_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "pod.json", '{"kind": "Pod",\n "metadata": }')
    code, _, err = run(capsys, "audit", "-f", path)
    assert code == 2
    assert f"{path}: line 2, column 14: invalid JSON" in err


def test_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert run(capsys, "audit", "-f", path)[2] == f"gomemlimit: error: {path}: not UTF-8 text\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "big.yaml",
            POD.format(name="p", limit="512Mi") + "  x: " + "1" * 5000 + "\n",
            "invalid YAML: Exceeds the limit (4300 digits) for integer string conversion",
        ),
        (
            "date.yaml",
            POD.format(name="p", limit="512Mi") + "  x: !!timestamp 2001-13-45\n",
            "invalid YAML: month must be in 1..12",
        ),
        ("big.json", '{"a": ' + "1" * 5000 + "}", "invalid JSON: Exceeds the limit (4300 digits)"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "invalid JSON: the nesting is too deep"),
    ],
)
@pytest.mark.parametrize("command", ["audit", "mutate"])
def test_hostile_files_exit_2_not_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, name: str, text: str,
    message: str,
) -> None:  # fmt: skip
    """Found by tests/unit/cli/test_fuzz_manifests.py: each was an internal error (exit 3)."""
    path = write(tmp_path / name, text)
    code, out, err = run(capsys, command, "-f", path)
    assert (code, out) == (2, "")
    assert err.startswith(f"gomemlimit: error: {path}: {message}")
    assert err.count("\n") == 1


def test_a_document_too_deep_to_print_is_bad_input_for_mutate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by tests/unit/cli/test_fuzz_manifests.py: PyYAML's representer recurses, and
    gives up a few hundred levels before the parser does (exit 3 with a traceback)."""
    nested = "[" * 360 + "]" * 360
    path = write(tmp_path / "deep.yaml", POD.format(name="p", limit="512Mi") + f"  x: {nested}\n")
    assert run(capsys, "audit", "-f", path)[0] == 1  # read and judged: missing
    code, out, err = run(capsys, "mutate", "-f", path)
    assert (code, out) == (2, "")
    assert err.endswith(
        f"gomemlimit: error: {path}: document 1: nested too deeply to print as YAML\n"
    )


def test_an_exponent_of_thousands_of_digits_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by tests/e2e/test_fuzz.py: parse_bytes raised a plain ValueError (exit 3)."""
    path = write(tmp_path / "pod.yaml", POD.format(name="p", limit="1e" + "0" * 5000 + "3"))
    code, rows = audit_json(capsys, "-f", path)
    assert code == 1
    assert [(row["memoryLimitBytes"], row["state"]) for row in rows] == [(1000, "unsatisfiable")]


def test_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "README.md", "not a manifest")
    code, _, err = run(capsys, "audit", "-f", tmp_path)
    assert code == 2
    assert "no .yaml, .yml, .json files in directory" in err


def test_conflicting_policy_definitions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = "apiVersion: gomemlimit.io/v1alpha1\nkind: ClusterGoMemPolicy\nmetadata: {name: p}\n"
    one = write(tmp_path / "one.yaml", head + "spec: {ratio: 0.8}\n")
    same = write(tmp_path / "same.yaml", head + "spec: {ratio: 0.8}\n")
    other = write(tmp_path / "other.yaml", head + "spec: {ratio: 0.7}\n")
    pod = write(tmp_path / "pod.yaml", POD.format(name="a", limit="1Gi"))
    assert audit_json(capsys, "-f", pod, "--policy", one, "--policy", same)[0] == 1
    code, _, err = run(capsys, "audit", "-f", pod, "--policy", one, "--policy", other)
    assert code == 2
    assert "ClusterGoMemPolicy/p: defined twice, with different specs" in err


@pytest.mark.parametrize(
    "argv",
    [[], ["audit"], ["audit", "-o", "yaml", "-f", "x"], ["frobnicate"], ["mutate", "--bogus"]],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "usage: gomemlimit" in err


# --- mutate ----------------------------------------------------------------------------------


def differences(before: Any, after: Any, path: str = "") -> Iterator[str]:
    """Paths where two parsed documents differ (added, removed or changed)."""
    if isinstance(before, dict) and isinstance(after, dict):
        assert list(after)[: len(before)] == list(before) or path.endswith("template"), path
        for key in before.keys() | after.keys():
            sub = f"{path}.{key}" if path else str(key)
            if key not in before or key not in after:
                yield sub
            else:
                yield from differences(before[key], after[key], sub)
    elif isinstance(before, list) and isinstance(after, list):
        for index in range(max(len(before), len(after))):
            sub = f"{path}[{index}]"
            if index >= len(before) or index >= len(after):
                yield sub
            else:
                yield from differences(before[index], after[index], sub)
    elif before != after or type(before) is not type(after):
        yield path


def mutate(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[str, str]:
    code, out, err = run(capsys, "mutate", *argv)
    assert code == 0, err
    return out, err


def test_mutate_changes_only_env_and_annotations(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = mutate(capsys, "-f", MANIFESTS)
    files = sorted(p for p in MANIFESTS.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    # BaseLoader reads every scalar as the text written: a quoting or type change shows.
    before = [doc for path in files for doc in yaml.load_all(path.read_text(), yaml.BaseLoader)]
    after = list(yaml.load_all(out, yaml.BaseLoader))
    assert len(after) == len(before) == 14
    changed = {
        (doc_index, path)
        for doc_index, (old, new) in enumerate(zip(before, after, strict=True))
        for path in differences(old, new)
    }
    template = "spec.template"
    assert changed == {
        # app.yaml: the Deployment governed by prod-strict (GOGC too), both containers.
        (1, f"{template}.metadata.annotations"),
        (1, f"{template}.spec.containers[0].env[2]"),
        (1, f"{template}.spec.containers[0].env[3]"),
        (1, f"{template}.spec.containers[1].env"),
        # cronjob.yaml: override replaced the user's value in place; metadata was added.
        (3, "spec.jobTemplate.spec.template.metadata"),
        (3, "spec.jobTemplate.spec.template.spec.containers[0].env[0].value"),
        # list.yaml: nothing for the invalid own value (respect); nothing for the
        # resourceFieldRef (respect). nested/workloads.yml and pod.json: nothing either.
    }
    deployment = after[1]["spec"]["template"]
    assert deployment["spec"]["containers"][0]["env"][2:] == [
        {"name": "GOMEMLIMIT", "value": "819MiB"},
        {"name": "GOGC", "value": "100"},
    ]
    assert deployment["spec"]["containers"][1]["env"] == [
        {"name": "GOMEMLIMIT", "value": "64MiB"},
        {"name": "GOGC", "value": "100"},
    ]
    assert json.loads(deployment["metadata"]["annotations"][ANNOTATION_INJECTED]) == {
        "app": {"GOGC": "100", "GOMEMLIMIT": "819MiB"},
        "proxy": {"GOGC": "100", "GOMEMLIMIT": "64MiB"},
    }
    assert deployment["metadata"]["annotations"][ANNOTATION_POLICY] == (
        "ClusterGoMemPolicy/prod-strict"
    )


def test_mutate_keeps_key_order_strings_and_timestamps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, _ = mutate(capsys, "-f", MANIFESTS / "app.yaml")
    docs = out.split("---\n")[1:]
    assert len(docs) == 3
    assert docs[1].startswith("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n")
    deployment = yaml.safe_load(docs[1])
    assert list(deployment["metadata"]) == ["name", "namespace", "creationTimestamp", "annotations"]
    assert deployment["metadata"]["creationTimestamp"] == "2024-05-01T10:00:00Z"  # a string
    assert "creationTimestamp: '2024-05-01T10:00:00Z'" in out
    assert "description: |\n      The team's API server.\n      Written in Go.\n" in out
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[1] == {"name": "ENABLED", "value": "on"}  # still a string, not True
    # The template's new annotations come after its labels; metadata stays first.
    assert list(deployment["spec"]["template"]) == ["metadata", "spec"]
    assert list(deployment["spec"]["template"]["metadata"]) == ["labels", "annotations"]


def test_mutate_cronjob_and_added_template_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = mutate(capsys, "-f", MANIFESTS / "cronjob.yaml", "-f", MANIFESTS / "policies.yaml")
    cronjob = load_all(out)[0]
    template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    assert list(template) == ["metadata", "spec"]  # added metadata goes first
    assert template["metadata"]["annotations"][ANNOTATION_POLICY] == "GoMemPolicy/jobs/batch"
    assert template["spec"]["containers"][0]["env"] == [{"name": "GOMEMLIMIT", "value": "192MiB"}]


def test_mutate_prints_kind_list_as_a_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = mutate(capsys, "-f", MANIFESTS / "list.yaml")  # no policies: the default governs
    [doc] = load_all(out)
    assert doc["kind"] == "List"
    pod, statefulset = doc["items"]
    assert pod["spec"]["containers"][0]["env"] == [{"name": "GOMEMLIMIT", "value": "512Mi"}]
    exporter = statefulset["spec"]["template"]["spec"]["containers"][1]
    assert exporter["env"] == [{"name": "GOMEMLIMIT", "value": "57MiB"}]


def test_mutate_output_is_a_fixed_point_and_audits_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = mutate(capsys, "-f", MANIFESTS)
    # What mutate cannot fix is reported on stderr, once per container.
    assert err.splitlines() == [
        f"warning: {MANIFESTS / 'list.yaml'}: Pod/default/web: container app: invalid: "
        "Go rejects GOMEMLIMIT='512Mi' and exits at start "
        "(use bytes or B, KiB, MiB, GiB, TiB, e.g. 460MiB)",
        f"warning: {MANIFESTS / 'list.yaml'}: StatefulSet/default/db: container db-go: "
        "exceeds_limit: GOMEMLIMIT=2147483648 is not below the memory limit of 2147483648 "
        "bytes: the kernel OOM-kills before the GC reacts",
        f"warning: {MANIFESTS / 'nested/workloads.yml'}: DaemonSet/default/agent: container "
        "app: no_memory_limit: no memory limit on the container or the pod",
        f"warning: {MANIFESTS / 'tiny.yaml'}: Pod/default/tiny: container app: unsatisfiable: "
        "no GOMEMLIMIT can be set: the policy leaves 943718 bytes of a 1048576-byte limit "
        "after 104858 bytes of headroom, under the 1MiB a GOMEMLIMIT needs; raise the memory "
        "limit or lower the policy's minHeadroom",
    ]
    mutated = write(tmp_path / "mutated.yaml", out)
    again, _ = mutate(capsys, "-f", mutated)
    assert again == out
    _, rows = audit_json(capsys, "-f", mutated)
    states = {(row["name"], row["container"]): row["state"] for row in rows}
    assert states["api", "app"] == states["api", "proxy"] == "compliant"
    assert states["nightly", "report"] == "compliant"
    assert states["web", "app"] == "invalid"
    injected = {(row["name"], row["container"]) for row in rows if row["injected"]}
    assert injected == {("api", "app"), ("api", "proxy"), ("nightly", "report")}


def test_mutate_after_a_limit_change_corrects_its_own_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = mutate(capsys, "-f", write(tmp_path / "pod.yaml", POD.format(name="p", limit="512Mi")))
    resized = write(tmp_path / "resized.yaml", out.replace("memory: 512Mi", "memory: 1Gi"))
    _, [row] = audit_json(capsys, "-f", resized)
    assert (row["state"], row["gomemlimit"], row["expected"]) == ("stale", "460MiB", "921MiB")
    out, _ = mutate(capsys, "-f", resized)
    [pod] = load_all(out)
    assert pod["spec"]["containers"][0]["env"] == [{"name": "GOMEMLIMIT", "value": "921MiB"}]


def test_mutate_leaves_unchanged_documents_byte_for_byte_stable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No metadata on the template, nothing to inject (no limit): no "metadata: {}" appears.
    text = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  template:\n"
        "    spec:\n      containers:\n      - name: app\n        image: x\n"
    )
    out, err = mutate(capsys, "-f", write(tmp_path / "d.yaml", text))
    assert out == "---\n" + text
    assert "no_memory_limit" in err


def test_mutate_directory_reads_recursively_in_sorted_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "b" / "two.yml", POD.format(name="two", limit="1Gi"))
    write(tmp_path / "a.yaml", POD.format(name="one", limit="1Gi"))
    write(tmp_path / "c.json", json.dumps(yaml.safe_load(POD.format(name="three", limit="1Gi"))))
    write(tmp_path / "notes.txt", "ignored")
    out, _ = mutate(capsys, "-f", tmp_path)
    assert [doc["metadata"]["name"] for doc in load_all(out)] == ["one", "two", "three"]


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(POD.format(name="p", limit="512Mi")))
    out, _ = mutate(capsys, "-f", "-")
    [pod] = load_all(out)
    assert pod["spec"]["containers"][0]["env"] == [{"name": "GOMEMLIMIT", "value": "460MiB"}]


def test_yaml_anchors_are_copied_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Anchors live inside one document: two items of a List share one containers list.
    text = (
        "kind: List\nitems:\n"
        "  - kind: Pod\n    metadata: {name: a}\n    spec:\n      containers: &shared\n"
        "        - name: app\n          resources: {limits: {memory: 1Gi}}\n"
        "  - kind: Pod\n    metadata: {name: b, annotations: {gomemlimit.io/skip: 'true'}}\n"
        "    spec:\n      containers: *shared\n"
    )
    out, _ = mutate(capsys, "-f", write(tmp_path / "anchors.yaml", text))
    assert "&" not in out
    [doc] = load_all(out)
    first, second = doc["items"]
    assert first["spec"]["containers"][0]["env"] == [{"name": "GOMEMLIMIT", "value": "921MiB"}]
    assert "env" not in second["spec"]["containers"][0]


# --- other commands and the installed scripts ------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "version") == (0, "gomemlimit 0.1.0\n", "")
    assert run(capsys, "--version") == (0, "gomemlimit 0.1.0\n", "")


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for word in ("audit", "mutate", "operator", "version", "exit codes", "460MiB"):
        assert word in out
    code, out, _ = run(capsys, "audit", "--help")
    assert code == 0
    for state in State:
        assert f" {state.value}  " in out


def test_operator_passes_every_argument_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[str]] = []
    fake = types.ModuleType("gomemlimit_operator.runtime.app")

    def fake_main(args: list[str]) -> int:
        calls.append(args)
        return 7

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gomemlimit_operator.runtime.app", fake)
    argv = ["--help", "-f", "x", "--namespace", "a", "--", "--standalone"]
    assert cli.main(["operator", *argv]) == 7
    assert calls == [argv]


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    big = write(
        tmp_path / "many.yaml",
        "---\n".join(POD.format(name=f"p{i}", limit="1Gi") for i in range(600)),
    )
    process = subprocess.Popen(
        [BIN / "gomemlimit", "audit", "-o", "json", "-f", big],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.readline()
    process.stdout.close()  # like `| head -1`
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141  # as if SIGPIPE ended it, like any Unix tool
    assert b"Traceback" not in err
    assert b"Broken pipe" not in err


def script(name: str) -> Path:
    path = BIN / name
    assert path.exists(), f"{name} is not installed: run `make venv`"
    return path


def test_installed_script_audit_json_and_exit_codes() -> None:
    done = subprocess.run(
        [script("gomemlimit"), "audit", "-f", MANIFESTS, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    rows = json.loads(done.stdout)
    assert [tuple(row[f] for f in FIELDS) for row in rows] == EXPECTED_ROWS

    done = subprocess.run(
        [script("gomemlimit"), "audit", "-f", TESTDATA / "compliant"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "\033[" not in done.stdout  # a pipe, not a terminal

    done = subprocess.run(
        [script("gomemlimit"), "mutate", "-f", BAD / "quantity.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"gomemlimit: error: {BAD / 'quantity.yaml'}: Deployment/default/api: "
        "spec.template.spec.containers[0].resources.limits.memory: "
        "'12xyz' is not a valid quantity (examples: 512Mi, 1Gi, 500M)\n"
    )


def test_installed_script_mutate_pipes_into_audit() -> None:
    mutated = subprocess.run(
        [script("gomemlimit"), "mutate", "-f", MANIFESTS / "app.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    audited = subprocess.run(
        [script("gomemlimit"), "audit", "-f", "-", "-o", "json"],
        input=mutated.stdout,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert audited.returncode == 0, audited.stderr
    assert {row["state"] for row in json.loads(audited.stdout)} == {"compliant"}


def test_kubectl_plugin_names_itself_kubectl_gomemlimit() -> None:
    done = subprocess.run(
        [script("kubectl-gomemlimit"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.startswith("usage: kubectl gomemlimit ")
    assert "kubectl gomemlimit audit -f k8s/" in done.stdout
