"""Fuzzing the offline CLI (issue "Fuzzing, against the running server", the CLI manifests).

Hypothesis writes manifest files, valid and broken: workloads of every kind with random pod
shapes (odd quantities, odd GOMEMLIMIT values, wrong types), policies with random specs,
Namespaces and Lists, as YAML or JSON, damaged as text (truncated, hostile snippets, deep
nesting, numbers of 5,000 digits, anchors that refer to themselves, bad UTF-8). Each file goes
through ``gomemlimit audit -f`` (JSON and table) and ``gomemlimit mutate -f``, in-process, with
the recursion limit a fresh process has (Hypothesis raises it for its own use).

Required: never a traceback and never exit 3 (an internal error); audit exits 0, 1 or 2,
mutate 0 or 2, and 2 comes with one ``gomemlimit: error:`` line and nothing on stdout; audit's
exit status says whether a container is in a failing state, its ``invalid`` state agrees with
Go's grammar, and every value it expects is valid; mutate only adds or corrects GOMEMLIMIT and
GOGC entries of governed containers (a user's own only under ``onExisting: override``), every
GOMEMLIMIT it writes is in Go's grammar, at most MaxInt64, below the limit and the value
contract's, nothing else in the documents changes, and its output is a fixed point.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.e2e.fuzz_strategies import (
    check_container,
    check_gomemlimit,
    corrupted,
    deep,
    env_changes,
    env_lists,
    go_byte_count,
    hostile_scalars,
    label_keys,
    label_values,
    pods,
    policy_specs,
    short,
)

from gomemlimit_operator.cli.main import main
from gomemlimit_operator.cli.manifests import POD_SPEC_PATHS, load_manifests
from gomemlimit_operator.core.api import DEFAULT_POLICY, Policy
from gomemlimit_operator.core.engine import (
    ANNOTATION_INJECTED,
    ANNOTATION_POLICY,
    FAILING_STATES,
)
from gomemlimit_operator.core.goruntime import is_no_limit

AUDIT_EXITS: Final = {0, 1, 2}
MUTATE_EXITS: Final = {0, 2}
FAILING: Final = {state.value for state in FAILING_STATES}
_OURS: Final = frozenset({ANNOTATION_INJECTED, ANNOTATION_POLICY})

# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@st.composite
def workloads(draw: st.DrawFn, valid: bool) -> dict[str, Any]:
    """A Pod or a workload with a pod template, holding a random pod."""
    kind = draw(st.sampled_from(sorted(POD_SPEC_PATHS)))
    pod = draw(pods(numbers=True, valid=valid))
    metadata: dict[str, Any] = {"name": draw(st.sampled_from(["app", "web", "x" * 300]))}
    if draw(st.booleans()):
        metadata["namespace"] = draw(st.sampled_from(["team", "default", "other"]))
    if kind == "Pod":
        body: dict[str, Any] = {**pod, "metadata": {**pod["metadata"], **metadata}}
        return body
    template: dict[str, Any] = {"spec": pod["spec"]}
    if draw(st.booleans()):
        template["metadata"] = {k: v for k, v in pod["metadata"].items() if k != "name"}
    body = {"apiVersion": "apps/v1", "kind": kind, "metadata": metadata}
    holder = body
    for key in POD_SPEC_PATHS[kind][:-1]:
        holder = holder.setdefault(key, {})
    holder[POD_SPEC_PATHS[kind][-1]] = template
    return body


@st.composite
def policies(draw: st.DrawFn, valid: bool) -> dict[str, Any]:
    kind = draw(st.sampled_from(["GoMemPolicy", "ClusterGoMemPolicy"]))
    names = ["p", "q"] if valid else ["p", "q", ""]
    metadata: dict[str, Any] = {"name": draw(st.sampled_from(names))}
    if kind == "GoMemPolicy" and draw(st.booleans()):
        metadata["namespace"] = "team"
    pinned: dict[str, Any] | None = {} if kind == "ClusterGoMemPolicy" else None
    spec = draw(policy_specs(pinned, valid=valid))
    return {
        "apiVersion": "gomemlimit.io/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }


namespaces = st.builds(
    lambda name, labels: {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    },
    st.sampled_from(["team", "default", "other"]),
    st.dictionaries(label_keys(), label_values(), max_size=2),
)


def documents(valid: bool) -> st.SearchStrategy[Any]:
    """Kubernetes objects: workloads, policies, Namespaces, Lists of them; unless ``valid``,
    also objects with wrong types anywhere and documents that are no objects at all."""
    objects = st.one_of(workloads(valid), workloads(valid), policies(valid), namespaces)
    lists = st.builds(
        lambda items: {"apiVersion": "v1", "kind": "List", "items": items},
        st.lists(objects, max_size=3),
    )
    if valid:
        return st.one_of(objects, objects, lists)
    return st.one_of(objects, lists, objects.flatmap(corrupted), hostile_scalars())


_SNIPPETS: Final[list[str]] = [
    "", "---", "---\n---\n", "\t", "a: b: c", "[", "{", "- a\nb: c", "&a [*a]",
    "a: &a [*a, *a]", "!!python/object:os.system", "%YAML 1.1\n---\n", "? [a]\n: b",
    "a: !!binary 'xyz'", "<<: *missing", "x: " + "1" * 5000, "x: 1e" + "0" * 5000 + "3",
    "x: !!omap [a: 1, b: 2]", "x: !!pairs [a: 1]", "x: !!set {a, b}", "x: !!timestamp 2001-13-45",
    "x: !!int abc", "x: !!float abc", "x: .nan", "x: !!str", "key: 'unterminated",
    "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, resources: {limits: "
    "{memory: 1e" + "0" * 5000 + "3}}}]}",
    "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, env: [{name: GOMEMLIMIT, "
    "value: 512Mi}], resources: {limits: {memory: 1Gi}}}]}",
]  # fmt: skip
_DEPTHS: Final = [50, 99, 100, 101, 150, 199, 200, 201, 250, 300, 330, 400, 480, 800, 5000]


@st.composite
def files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file name, contents): documents as YAML or JSON; half of them valid manifests, the
    others with anything in them, or damaged as text."""
    valid = draw(st.booleans())
    docs = draw(st.lists(documents(valid), min_size=1, max_size=4))
    json_file = draw(st.booleans())
    if json_file:
        text = json.dumps(docs[0] if len(docs) == 1 else {"kind": "List", "items": docs})
    else:
        text = yaml.safe_dump_all(docs, default_flow_style=draw(st.sampled_from([False, None])))
    damage = "none" if valid else draw(st.sampled_from(["deep", "cut", "bytes", "snippet"]))
    if damage == "snippet":
        lines = text.splitlines()
        at = draw(st.integers(min_value=0, max_value=len(lines)))
        text = "\n".join([*lines[:at], draw(st.sampled_from(_SNIPPETS)), *lines[at:]])
    elif damage == "cut":
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    elif damage == "deep":
        nested = deep(draw(st.sampled_from(_DEPTHS)), draw(st.sampled_from(["list", "map"])))
        if json_file:
            text = json.dumps(docs[0]).replace('"image"', f'"deep": {nested}, "image"', 1)
            if '"deep"' not in text:
                text = nested
        else:
            text += f"\n---\nkind: Pod\nmetadata: {{name: deep}}\nspec: {{extra: {nested}}}\n"
    yaml_suffixes = [".yaml", ".yml"] if valid else [".yaml", ".yml", ".json"]
    suffix = ".json" if json_file else draw(st.sampled_from(yaml_suffixes))
    data = text.encode()
    if damage == "bytes":
        at = draw(st.integers(min_value=0, max_value=len(data)))
        data = (
            data[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + data[at:]
        )
    return f"manifest{suffix}", data


# ---------------------------------------------------------------------------------------------
# Running the CLI as a fresh process would
# ---------------------------------------------------------------------------------------------


def _stack_depth() -> int:
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back  # type: ignore[assignment]
    return depth


def run(capsys: pytest.CaptureFixture[str], argv: Sequence[str]) -> tuple[int, str, str]:
    """``main(argv)`` with about the 1,000 frames a fresh ``gomemlimit`` process has."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + 1000)
    try:
        code = main(list(argv))
    finally:
        sys.setrecursionlimit(previous)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err[-3000:]
    assert "internal error" not in err, err[-3000:]
    if code == 2:
        assert out == "", "output before an error"
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert last.startswith("gomemlimit: error: "), err[-2000:]
    return code, out, err


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def check_audit_rows(rows: list[dict[str, Any]], code: int) -> None:
    """Exit 1 exactly when a row fails; ``invalid`` exactly when Go rejects the value; every
    expected value valid."""
    assert code == (1 if any(row["state"] in FAILING for row in rows) else 0)
    for row in rows:
        where = f"{row['kind']}/{row['name']} {row['container']}"
        value = row["gomemlimit"]
        if row["source"] == "value" and value is not None and not is_no_limit(value):
            assert (row["state"] == "invalid") == (go_byte_count(value) is None), row
        if row["expected"] is not None:
            check_gomemlimit(row["expected"], row["memoryLimitBytes"], where)


def _at(tree: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def differences(before: Any, after: Any) -> Iterator[tuple[Any, ...]]:
    """Paths where two parsed documents differ (iteratively: they may nest deeply)."""
    stack: list[tuple[tuple[Any, ...], Any, Any]] = [((), before, after)]
    while stack:
        path, old, new = stack.pop()
        if isinstance(old, dict) and isinstance(new, dict):
            for key in old.keys() | new.keys():
                if key in old and key in new:
                    stack.append(((*path, key), old[key], new[key]))
                else:
                    yield (*path, key)
        elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            stack.extend(((*path, i), o, n) for i, (o, n) in enumerate(zip(old, new, strict=True)))
        elif type(old) is not type(new) or not (
            old == new or (isinstance(old, float) and math.isnan(old) and math.isnan(new))
        ):
            yield path


def _templates(document: Any) -> list[tuple[Any, ...]]:
    """Paths of the objects holding the pod metadata and spec in a document (or its items)."""
    objects: list[tuple[tuple[Any, ...], Any]] = [((), document)]
    kind, items = (
        (document.get("kind"), document.get("items"))
        if isinstance(document, dict)
        else (None, None)
    )
    if str(kind).endswith("List") and isinstance(items, list):
        objects = [(("items", index), item) for index, item in enumerate(items)]
    return [
        (*path, *POD_SPEC_PATHS[obj["kind"]])
        for path, obj in objects
        if isinstance(obj, dict)
        and isinstance(obj.get("kind"), str)
        and obj["kind"] in POD_SPEC_PATHS
    ]


def check_mutation(before: Any, after: Any, policies: dict[str, Policy]) -> int:
    """One document before and after ``mutate``: the injection rules; returns the values
    written."""
    written = 0
    templates = _templates(before)
    allowed = [(*template, "metadata") for template in templates]
    for path, new in env_lists(after):  # after: mutate may add an env list
        container = _at(before, path)
        if env_changes(container.get("env"), new.get("env"), str(path)) == []:
            continue
        template = path[:-3]  # .../spec/<containers|initContainers>/<i>
        assert template in templates, f"an env list changed outside a pod spec: {short(path)}"
        assert path[-3:-1] in {("spec", "containers"), ("spec", "initContainers")}, path
        written += check_container(
            container,
            new,
            init=path[-2] == "initContainers",
            spec=_at(before, (*template, "spec")),
            annotations=(
                (_at(before, template).get("metadata") or {}).get("annotations"),
                (_at(after, template).get("metadata") or {}).get("annotations"),
            ),
            policies=policies,
            where=str(path),
        )
        allowed.append((*path, "env"))
    for path in differences(before, after):
        assert any(path[: len(prefix)] == prefix for prefix in allowed), (
            f"mutate changed {short(path)}"
        )
    for template in templates:  # of the metadata, only our two annotations may change
        old = _at(before, template).get("metadata") or {}
        new = _at(after, template).get("metadata") or {}
        assert {k: v for k, v in new.items() if k != "annotations"} == {
            k: v for k, v in old.items() if k != "annotations"
        }
        assert {k: v for k, v in (new.get("annotations") or {}).items() if k not in _OURS} == {
            k: v for k, v in (old.get("annotations") or {}).items() if k not in _OURS
        }
    return written


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------


def test_fuzzed_manifests_never_crash_the_cli_or_get_an_invalid_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exits: Counter[str] = Counter()
    written = Counter[str]()

    @settings(
        max_examples=200,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(file=files(), with_policy=st.booleans(), policy=policies(valid=True))
    def one(file: tuple[str, bytes], with_policy: bool, policy: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as directory:
            path = Path(directory) / file[0]
            path.write_bytes(file[1])
            extra: list[str] = []
            if with_policy:
                policy_file = Path(directory) / "policy.yaml"
                policy_file.write_text(yaml.safe_dump(policy))
                extra = ["--policy", str(policy_file)]
            code, out, _ = run(capsys, ["audit", "-o", "json", "-f", str(path), *extra])
            assert code in AUDIT_EXITS
            exits[f"audit {code}"] += 1
            if code != 2:
                check_audit_rows(json.loads(out), code)
            table_code, _, _ = run(capsys, ["audit", "-f", str(path), *extra])
            assert table_code == code
            code, out, _ = run(capsys, ["mutate", "-f", str(path), *extra])
            assert code in MUTATE_EXITS
            exits[f"mutate {code}"] += 1
            if code != 0:
                return
            output = Path(directory) / "mutated.yaml"
            output.write_text(out)
            before = load_manifests([str(path)])
            after = load_manifests([str(output)])
            known = [*before.policies]
            if with_policy:
                known += load_manifests([str(policy_file)]).policies
            by_ref = {p.ref: p for p in known or [DEFAULT_POLICY]}
            assert len(after.documents) == len(before.documents)
            for old, new in zip(before.documents, after.documents, strict=True):
                written["GOMEMLIMIT"] += check_mutation(old.body, new.body, by_ref)
            again, out_again, _ = run(capsys, ["mutate", "-f", str(output), *extra])
            assert again == 0
            assert out_again == out, "mutate's output is not a fixed point"

    one()
    print(f"\nCLI manifests: {sum(exits.values()) // 2} files; {dict(exits)}; {dict(written)}")
    assert exits["audit 2"] > 0
    assert exits["mutate 0"] > 0
    assert written["GOMEMLIMIT"] > 0
