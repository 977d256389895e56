"""Hypothesis strategies and checks shared by the fuzz tests.

Used by tests/e2e/test_fuzz.py (AdmissionReviews and policies, against the running operator)
and tests/unit/cli/test_fuzz_manifests.py (manifests through ``gomemlimit audit``/``mutate``).

* Strategies: pod shapes with odd quantities and odd GOMEMLIMIT values (:func:`pods`),
  wrong types anywhere (:func:`corrupted`), deep nesting (:func:`deep`), and policy specs
  that the CRD schema may or may not accept (:func:`policy_specs`).
* Checks: every GOMEMLIMIT we write is in Go's grammar, at most MaxInt64 bytes and below the
  limit (:func:`check_gomemlimit`, written independently of the engine), an env list only
  ever gains GOMEMLIMIT/GOGC entries or has such an entry corrected (:func:`env_changes`),
  and a container changes only so, as its policy says (:func:`check_container`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from hypothesis import strategies as st

from gomemlimit_operator.core.api import OnExisting, Policy
from gomemlimit_operator.core.engine import (
    ANNOTATION_INJECTED,
    ANNOTATION_POLICY,
    ANNOTATION_SKIP,
    expected_gomemlimit,
    governs,
)
from gomemlimit_operator.core.quantity import parse_bytes

__all__ = [
    "DEPTHS",
    "GO_GRAMMAR",
    "MAX_INT64",
    "ODD_QUANTITIES",
    "OURS",
    "check_container",
    "check_gomemlimit",
    "check_replacement",
    "containers",
    "corrupted",
    "deep",
    "env_changes",
    "env_lists",
    "go_byte_count",
    "hostile_scalars",
    "label_keys",
    "label_values",
    "memory_limit",
    "pods",
    "policy_specs",
    "quantities",
    "recorded",
    "short",
]

GO_GRAMMAR: Final = re.compile(r"([0-9]+)((?:[KMGT]i)?B)?")
"""Go's GOMEMLIMIT grammar (``^[0-9]+(([KMGT]i)?B)?$``), ASCII digits only."""
MAX_INT64: Final = (1 << 63) - 1
_SHIFT: Final = {None: 0, "B": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}
OURS: Final = frozenset({"GOMEMLIMIT", "GOGC"})
"""The only env entries this project ever adds or corrects."""

ODD_QUANTITIES: Final[list[Any]] = [
    "1e3", "0.5Gi", "9223372036854775808", "9223372036854775807", "-1", "1Ei", "8Ei", "7Ei",
    "  ", "", "1e999999", "1e-999999", "1e99999999999999999999", "1e-99999999999999999999",
    "1e" + "0" * 5000 + "3", "0e99999999999999999999", "0", "0.0001", "1m", "100n", "+512Mi",
    "512mi", "512MiB", "1.5", ".5Gi", "5.", "1E", "1e1.5", "12E", "1e24", "1e25", "1e18",
    "123456789012345678901234567890", "1" * 5000, "512Mi\n", " 512Mi", "NaN", "Infinity",
    "0x10", "1_000", "\uff15\uff11\uff12Mi", "\u0665\u0661\u0662Mi", "\u00b9Gi", "1Gi\u0000",
    "3Mi", "2Mi", "1Mi", "1048577", "64Mi", "512Mi", "1Gi", "100M", "8Ti", "1Pi", "1P",
]  # fmt: skip
"""Memory amounts: real ones, odd spellings, past MaxInt64 and the ceiling, and garbage."""

GOMEMLIMIT_VALUES: Final[list[Any]] = [
    "460MiB", "1GiB", "123", "0", "off", "", "512Mi", "1e9", "9223372036854775807",
    "9223372036854775808", "8EiB", "1TiB", "+1GiB", "-0", " 1GiB", "\uff11GiB", "100MB",
    "1KiB", "99999999999999999999999", "1B", "1PiB",
]  # fmt: skip

_NAMES: Final = ["app", "app-go", "worker", "proxy", "api", "w0rker", "sidecar-go", "x"]


def short(value: object, limit: int = 300) -> str:
    """A bounded repr for assertion messages (some inputs are megabytes)."""
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def go_byte_count(value: str) -> int | None:
    """The bytes Go reads from a GOMEMLIMIT, or None when Go refuses to start."""
    match = GO_GRAMMAR.fullmatch(value)
    if match is None:
        return None
    count = int(match[1]) << _SHIFT[match[2]]
    return count if count <= MAX_INT64 else None


def check_gomemlimit(value: object, limit_bytes: int | None, where: str) -> None:
    """A GOMEMLIMIT this project wrote: Go's grammar, at most MaxInt64, below the limit."""
    assert isinstance(value, str), f"{where}: GOMEMLIMIT {short(value)} is not a string"
    count = go_byte_count(value)
    assert count is not None, f"{where}: Go rejects GOMEMLIMIT={value!r}"
    assert count > 0, f"{where}: GOMEMLIMIT={value!r} is zero"
    if limit_bytes is not None:
        assert count < limit_bytes, f"{where}: GOMEMLIMIT={value} is not below {limit_bytes}"


def env_changes(before: Any, after: Any, where: str) -> list[tuple[int, dict[str, Any]]]:
    """The (index, entry) pairs of ``after`` that are new or differ from ``before``.

    Asserts the only changes an injection may make: a new env list of our entries where
    there was none, our entries appended, or the entry Kubernetes uses (the last of its name)
    of GOMEMLIMIT or GOGC replaced by one of the same name. Nothing removed, nothing else
    touched.
    """
    if after == before:
        return []
    assert before is None or isinstance(before, list), (
        f"{where}: env {short(before)} (not a list) was changed to {short(after)}"
    )
    assert isinstance(after, list), f"{where}: env became {short(after)}"
    old = before or []
    assert len(after) >= len(old), f"{where}: env entries were removed"
    changed = []
    for index, entry in enumerate(after):
        if index < len(old) and entry == old[index]:
            continue
        assert isinstance(entry, dict), f"{where}: env[{index}] became {short(entry)}"
        assert set(entry) == {"name", "value"}, f"{where}: env[{index}] = {short(entry)}"
        assert entry["name"] in OURS, f"{where}: env[{index}] {short(entry)} is not ours"
        if index < len(old):
            was = old[index]
            assert isinstance(was, Mapping), f"{where}: env[{index}] {short(was)} replaced"
            assert was.get("name") == entry["name"], (
                f"{where}: env[{index}] {short(was)} replaced by {short(entry)}"
            )
            later = [e for e in old[index + 1 :] if isinstance(e, Mapping)]
            assert all(e.get("name") != entry["name"] for e in later), (
                f"{where}: env[{index}] replaced, but Kubernetes uses a later {entry['name']}"
            )
        changed.append((index, entry))
    return changed


def recorded(annotations: Any, container: str, var: str) -> str | None:
    """What the ``gomemlimit.io/injected`` record in a pod's annotations says we wrote for
    ``var`` in ``container`` (a damaged record says nothing)."""
    text = annotations.get(ANNOTATION_INJECTED) if isinstance(annotations, Mapping) else None
    try:
        record = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        return None
    values = record.get(container) if isinstance(record, dict) else None
    value = values.get(var) if isinstance(values, dict) else None
    return None if value is None else str(value)


def check_replacement(
    was: Mapping[str, Any], container: str, annotations: Any, policy: Policy, where: str
) -> None:
    """A replaced GOMEMLIMIT/GOGC entry was ours (recorded in the pod's ``annotations`` before,
    and unchanged since), or the policy says ``onExisting: override``."""
    value = was.get("value")
    ours = (
        "valueFrom" not in was
        and value is not None
        and value == recorded(annotations, container, str(was.get("name")))
    )
    assert ours or policy.spec.on_existing is OnExisting.OVERRIDE, (
        f"{where}: the user's own {short(dict(was))} was replaced under {policy.ref}"
    )


def memory_limit(container: Mapping[str, Any], spec: Any) -> int | None:
    """The container's memory limit in bytes, else the pod's, as the engine reads them."""
    for holder in (container, spec):
        resources = holder.get("resources") if isinstance(holder, Mapping) else None
        limits = resources.get("limits") if isinstance(resources, Mapping) else None
        amount = limits.get("memory") if isinstance(limits, Mapping) else None
        if amount is not None:
            return parse_bytes(amount)
    return None


def check_container(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    init: bool,
    spec: Any,
    annotations: tuple[Any, Any],
    policies: Mapping[str, Policy],
    where: str,
) -> int:
    """One container (of ``spec``) before and after an injection: only our env entries added
    or corrected (a user's own only under ``onExisting: override``), by the policy the pod's
    annotations (before, after) name, which governs the container; each GOMEMLIMIT valid,
    below the limit, the value contract's and recorded. Returns the GOMEMLIMIT values written.
    """
    changes = env_changes(old.get("env"), new.get("env"), where)
    if not changes:
        return 0
    before, after = annotations
    ref = after.get(ANNOTATION_POLICY) if isinstance(after, Mapping) else None
    assert isinstance(ref, str), f"{where}: injected, without the {ANNOTATION_POLICY} annotation"
    assert ref in policies, f"{where}: injected, but the policy annotation says {ref!r}"
    policy = policies[ref]
    name = str(old.get("name", ""))
    assert governs(policy, name, init), f"{where}: injected, but {ref} does not govern it"
    old_env = old.get("env") or []
    limit = memory_limit(old, spec)
    written = 0
    for index, entry in changes:
        if index < len(old_env):
            check_replacement(old_env[index], name, before, policy, where)
        value = entry["value"]
        if entry["name"] == "GOMEMLIMIT":
            check_gomemlimit(value, limit, where)
            assert limit is not None
            assert value == expected_gomemlimit(limit, policy.spec), where
            written += 1
        else:
            assert value == policy.spec.gogc, f"{where}: GOGC={value!r}"
        assert recorded(after, name, entry["name"]) == value, (
            f"{where}: {entry['name']}={value} is not in the {ANNOTATION_INJECTED} record"
        )
    return written


def env_lists(tree: Any) -> Iterator[tuple[tuple[Any, ...], Mapping[str, Any]]]:
    """Every mapping with an ``env`` key in a JSON/YAML tree, with its path (iterative: the
    fuzz inputs nest deeply)."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), tree)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, Mapping):
            if "env" in node:
                yield path, node
            stack.extend(((*path, key), value) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, index), value) for index, value in enumerate(node))


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


def hostile_scalars() -> st.SearchStrategy[Any]:
    """Wrong-typed JSON values: what a field may hold when a client ignores the schema."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


READABLE_QUANTITIES: Final[list[Any]] = [
    "1e3", "0.5Gi", "9223372036854775808", "1Ei", "8Ei", "1e999999", "1e-999999", "0",
    "0.0001", "1m", "+512Mi", ".5Gi", "5.", "12E", "1e24", "1e25", "1" * 100, "1048577",
    "1e" + "0" * 5000 + "3", "1e99999999999999999999",
]  # fmt: skip
"""Odd amounts that are still quantities (some past MaxInt64 or the ceiling)."""


def quantities(numbers: bool = False, valid: bool = False) -> st.SearchStrategy[Any]:
    """Memory amounts as strings (what the API server sends); with ``numbers``, also the
    integers and floats a YAML manifest may hold; with ``valid``, only quantities."""
    suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "m", "e3"]
    real = st.sampled_from(["512Mi", "1Gi", "64Mi", "3Mi", "100M", "8Ti", "1.5Gi", "2e9"])
    built = st.builds(
        lambda n, s: f"{n}{s}",
        st.integers(min_value=0, max_value=10**20),
        st.sampled_from(suffixes),
    )
    if valid:
        strings = st.one_of(real, real, st.sampled_from(READABLE_QUANTITIES), built)
        figures = st.one_of(
            st.integers(min_value=0, max_value=2**66), st.floats(min_value=0, max_value=1e30)
        )
    else:  # most pods have readable limits, or they are left alone with a warning
        strings = st.one_of(
            real,
            real,
            real,
            st.sampled_from(ODD_QUANTITIES),
            built,
            st.text(alphabet="0123456789.+-eEKMGTPiunm ", max_size=12),
        )
        figures = st.one_of(
            st.integers(min_value=-(2**66), max_value=2**66),
            st.floats(min_value=-1e30, max_value=1e30),
        )
    return st.one_of(strings, figures) if numbers else strings


def _env_entry(numbers: bool, valid: bool) -> st.SearchStrategy[dict[str, Any]]:
    names = st.sampled_from(["GOMEMLIMIT", "GOMEMLIMIT", "GOGC", "OTHER", "gomemlimit"])
    values = st.one_of(st.sampled_from(GOMEMLIMIT_VALUES), st.text(max_size=12))
    field_ref = st.fixed_dictionaries(
        {"resource": st.sampled_from(["limits.memory", "requests.memory", "limits.cpu", "x"])},
        optional={
            "containerName": st.sampled_from([*_NAMES, "missing", ""]),
            "divisor": (
                st.sampled_from(["1", "1Ki", "1Mi", "1M", 1]) if valid else quantities(numbers)
            ),
        },
    )
    sources = st.one_of(
        st.builds(lambda ref: {"resourceFieldRef": ref}, field_ref),
        st.just({"configMapKeyRef": {"name": "cm", "key": "limit"}}),
        st.just({"secretKeyRef": {"name": "s", "key": "limit"}}),
        st.just({"fieldRef": {"fieldPath": "metadata.name"}}),
        st.just({}),
    )
    return st.one_of(
        st.builds(lambda n, v: {"name": n, "value": v}, names, values),
        st.builds(lambda n, s: {"name": n, "valueFrom": s}, names, sources),
        st.builds(lambda n: {"name": n}, names),
    )


@st.composite
def containers(draw: st.DrawFn, numbers: bool = False, valid: bool = False) -> dict[str, Any]:
    """One container: a name from a small set (so that globs and containerName refs match),
    memory limits and requests, and an env list of GOMEMLIMIT/GOGC/other entries. With
    ``valid``, every quantity parses (the CLI refuses a manifest with one that does not)."""
    result: dict[str, Any] = {
        "name": draw(st.sampled_from(_NAMES) | st.text(min_size=1, max_size=10)),
        "image": "registry.invalid/app:1",
    }
    resources: dict[str, Any] = {}
    if draw(st.integers(min_value=0, max_value=3)):  # most containers have a limit
        resources["limits"] = {"memory": draw(quantities(numbers, valid))}
    if draw(st.booleans()):
        resources["requests"] = {"memory": draw(quantities(numbers, valid))}
    empty_resources: bool = draw(st.booleans())
    if resources or empty_resources:
        result["resources"] = resources
    shape = draw(st.sampled_from(["list", "list", "absent", "null"]))
    if shape == "list":
        result["env"] = draw(st.lists(_env_entry(numbers, valid), max_size=5))
    elif shape == "null":
        result["env"] = None
    return result


def label_keys() -> st.SearchStrategy[str]:
    return st.sampled_from(["app", "tier", "runtime", "team", "a/b", "x.io/k"])


def label_values() -> st.SearchStrategy[str]:
    return st.sampled_from(["go", "db", "skip", "x", "", "v" * 63])


def _annotations() -> st.SearchStrategy[dict[str, Any]]:
    injected = st.one_of(
        st.builds(
            lambda names, value: json.dumps({n: {"GOMEMLIMIT": value} for n in names}),
            st.lists(st.sampled_from(_NAMES), max_size=3),
            st.sampled_from(GOMEMLIMIT_VALUES),
        ),
        st.sampled_from(["{", "null", "[]", "5", '{"app": "460MiB"}', "[" * 5000 + "]" * 5000]),
    )
    rare = st.sampled_from(
        [
            {ANNOTATION_SKIP: "true"},
            {ANNOTATION_SKIP: "TRUE"},
            {"kubernetes.io/config.mirror": "mirror"},
            {ANNOTATION_SKIP: "false"},
            {ANNOTATION_SKIP: "yes"},
        ]
    )
    rare = st.one_of(st.just({}), st.just({}), st.just({}), rare)
    common = st.fixed_dictionaries(
        {},
        optional={
            ANNOTATION_INJECTED: injected,
            ANNOTATION_POLICY: st.sampled_from(["ClusterGoMemPolicy/x", ""]),
            "team": st.text(max_size=20),
            "a~b/c": st.just("pointer escapes"),
        },
    )
    return st.builds(lambda a, b: {**a, **b}, common, rare)


@st.composite
def pods(
    draw: st.DrawFn,
    namespaces: st.SearchStrategy[str] | None = None,
    numbers: bool = False,
    valid: bool = False,
) -> dict[str, Any]:
    """A Pod: random containers, init and ephemeral containers, pod-level limits, labels
    and annotations (opt-out, injected records good and damaged, mirror pods)."""
    metadata: dict[str, Any] = {
        "name": draw(st.sampled_from(["p", "pod-0", "ünï-côdé", "x" * 253])),
        "labels": draw(st.dictionaries(label_keys(), label_values(), max_size=3)),
    }
    if namespaces is not None:
        metadata["namespace"] = draw(namespaces)
    if draw(st.booleans()):
        metadata["annotations"] = draw(_annotations())
    elif draw(st.booleans()):
        metadata["annotations"] = None
    spec: dict[str, Any] = {
        "containers": draw(st.lists(containers(numbers, valid), min_size=1, max_size=5)),
    }
    if draw(st.booleans()):
        spec["initContainers"] = draw(st.lists(containers(numbers, valid), max_size=3))
    if draw(st.integers(min_value=0, max_value=3)):  # mostly unique names, as Kubernetes needs
        seen: set[str] = set()
        for item in [*spec.get("initContainers", []), *spec["containers"]]:
            while item["name"] in seen:
                item["name"] += "-2"
            seen.add(item["name"])
    if draw(st.booleans()):
        spec["ephemeralContainers"] = draw(st.lists(containers(numbers, valid), max_size=2))
    if draw(st.booleans()):
        spec["resources"] = {"limits": {"memory": draw(quantities(numbers, valid))}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _paths(tree: Any) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), tree)]
    while stack:
        path, node = stack.pop()
        found.append(path)
        if isinstance(node, dict):
            stack.extend(((*path, key), value) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, index), value) for index, value in enumerate(node))
    return sorted(found, key=lambda path: (len(path), repr(path)))


def _replace(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, head: _replace(tree[head], rest, value)}
    copied = list(tree)
    copied[head] = _replace(tree[head], rest, value)
    return copied


@st.composite
def corrupted(draw: st.DrawFn, tree: Any, keep: int = 0, most: int = 4) -> Any:
    """``tree`` with one to ``most`` of its nodes replaced by wrong-typed values (lists where
    mappings are expected, numbers for strings, null ...); paths shorter than ``keep`` stay."""
    for _ in range(draw(st.integers(min_value=1, max_value=most))):
        paths = [path for path in _paths(tree) if len(path) >= keep]
        if not paths:
            break
        tree = _replace(tree, draw(st.sampled_from(paths)), draw(hostile_scalars()))
    return tree


DEPTHS: Final = [10, 100, 300, 500, 1100, 2000, 5000]
"""Nesting depths to try besides those around orjson's limit of 1,024 levels."""


def deep(depth: int, kind: str) -> str:
    """JSON text of a value nested ``depth`` levels (lists or mappings): built as text, since
    the standard encoders refuse such depths."""
    if kind == "list":
        return "[" * depth + "0" + "]" * depth
    return '{"a":' * depth + "0" + "}" * depth


_RATIOS: Final[list[Any]] = [
    0.9, 0.5, 0.75, 0.999999, 1e-300, 5e-324, 0.9999999999999999, 0, 1, 1.5, -0.1,
    "0.9", True, None, 0.1 + 0.2,
]  # fmt: skip
_GOGC: Final[list[Any]] = [
    "off", "0", "100", "75", "2147483647", "2147483648", "-1", "", "\uff11\uff12", "50\n",
    50, None, "OFF", "0100",
]  # fmt: skip
_GLOBS: Final = st.text(alphabet="apw*?[]!-^\\go", min_size=0, max_size=10)


def _selectors() -> st.SearchStrategy[dict[str, Any]]:
    expression = st.fixed_dictionaries(
        {
            "key": st.one_of(label_keys(), st.just(""), st.just("k" * 400)),
            "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Has"]),
        },
        optional={"values": st.lists(label_values(), max_size=3)},
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "matchLabels": st.dictionaries(label_keys(), label_values(), max_size=3),
            "matchExpressions": st.lists(expression, max_size=3),
        },
    )


_VALID_HEADROOM: Final[list[dict[str, Any]]] = [
    {}, {"minHeadroom": "64Mi"}, {"maxHeadroom": "1Gi"}, {"maxHeadroom": "12E"},
    {"minHeadroom": "64Mi", "maxHeadroom": "1Gi"}, {"minHeadroom": 0, "maxHeadroom": "1"},
    {"minHeadroom": "1e24"},
]  # fmt: skip


def _valid_policy_specs() -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {
        "ratio": st.sampled_from([0.9, 0.5, 0.75, 0.999999, 0.1, 0.95]),
        "containers": st.lists(
            st.sampled_from(["app*", "*-go", "w?rker", "[!p]*", "*"]), min_size=1, max_size=3
        ),
        "includeInitContainers": st.booleans(),
        "onExisting": st.sampled_from(["respect", "override"]),
        "mode": st.sampled_from(["enforce", "audit", "enforce"]),
        "priority": st.integers(min_value=-5, max_value=5),
        "gogc": st.sampled_from(["off", "50", "100", "0", "2147483647"]),
        "selector": st.fixed_dictionaries(
            {}, optional={"matchLabels": st.dictionaries(label_keys(), label_values(), max_size=2)}
        ),
    }
    return st.builds(
        lambda spec, headroom: {**spec, **headroom},
        st.fixed_dictionaries({}, optional=fields),
        st.sampled_from(_VALID_HEADROOM),
    )


def policy_specs(
    namespace_selector: Mapping[str, Any] | None = None, valid: bool = False
) -> st.SearchStrategy[Any]:
    """GoMemPolicy specs, valid and not: odd ratios, quantities, globs, selectors, gogc and
    priorities (with ``valid``, only specs the models accept). With ``namespace_selector``
    (a ClusterGoMemPolicy), its ``matchLabels`` are always kept, so the policy can never reach
    beyond them; only expressions are added."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "ratio": st.one_of(st.sampled_from(_RATIOS), st.floats(min_value=-0.5, max_value=1.5)),
        "minHeadroom": quantities(numbers=True),
        "maxHeadroom": quantities(numbers=True),
        "containers": st.one_of(st.lists(_GLOBS, max_size=4), st.just(["a" * 129])),
        "includeInitContainers": st.sampled_from([True, False, "yes", None]),
        "onExisting": st.sampled_from(["respect", "override", "keep", None]),
        "mode": st.sampled_from(["enforce", "audit", "dry"]),
        "priority": st.one_of(
            st.integers(min_value=-(2**32), max_value=2**32), st.sampled_from(["5", True])
        ),
        "gogc": st.sampled_from(_GOGC),
        "selector": _selectors(),
        "unknownField": hostile_scalars(),
    }
    specs = _valid_policy_specs() if valid else st.fixed_dictionaries({}, optional=fields)
    if namespace_selector is None:
        return specs
    pinned = dict(namespace_selector)
    extra = st.lists(
        st.fixed_dictionaries(
            {
                "key": label_keys(),
                "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
            },
            optional={"values": st.lists(label_values(), max_size=2)},
        ),
        max_size=0 if valid else 2,
    )
    return st.builds(
        lambda spec, expressions: {
            **spec,
            "namespaceSelector": {
                **pinned,
                **({"matchExpressions": expressions} if expressions else {}),
            },
        },
        specs,
        extra,
    )
