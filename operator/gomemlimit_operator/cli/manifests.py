"""Kubernetes manifests on disk: documents, the pod specs inside them, and policies.

The offline CLI's input layer. It reads files and directories the way ``kubectl
apply -f`` does (multi-document YAML, JSON, ``kind: List``), finds every pod
template, collects GoMemPolicy/ClusterGoMemPolicy and Namespace objects, and
checks the fields the engine reads, so that bad input becomes one
:class:`ManifestError` naming the file, the object and the field instead of a
traceback. Documents are kept as parsed so they can be printed back unchanged
apart from what the engine injects.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from gomemlimit_operator.core.api import (
    CLUSTER_KIND,
    POLICY_KINDS,
    Policy,
    PolicyError,
    object_ref,
    parse_policy,
)
from gomemlimit_operator.core.goruntime import GOGC, GOMEMLIMIT
from gomemlimit_operator.core.quantity import QuantityError, QuantityTooLarge, parse_bytes

__all__ = [
    "MANIFEST_SUFFIXES",
    "POD_SPEC_PATHS",
    "Document",
    "ManifestError",
    "ManifestSet",
    "PodTemplate",
    "dump_documents",
    "load_manifests",
    "load_policies",
]

MANIFEST_SUFFIXES: Final = (".yaml", ".yml", ".json")
STDIN: Final = "-"

POD_SPEC_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
"""Where each workload kind keeps the object holding the pod's ``metadata`` and ``spec``."""


class ManifestError(ValueError):
    """Input the CLI cannot use. The message names the file, the object and the field."""


# libyaml's parser (CSafeLoader) when PyYAML was built with it, about 10x faster than the
# pure-Python one; the same resolvers and constructors either way.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_STR: Final = "tag:yaml.org,2002:str"
_SEQ: Final = "tag:yaml.org,2002:seq"
_MAP: Final = "tag:yaml.org,2002:map"
_MAX_FAST_DEPTH: Final = 100


class _Unusual(Exception):
    """A node the fast builder leaves to PyYAML's constructor."""


def _build(loader: yaml.SafeLoader, node: yaml.Node, depth: int) -> Any:
    """A node as SafeConstructor builds it, for the nodes manifests are made of: plain
    strings, mappings and sequences directly, other scalars (numbers, booleans, nulls) with
    the constructor itself. Each alias becomes a copy of its anchor. Raises :class:`_Unusual`
    for the rest: merge keys, non-scalar keys, explicit collection tags, deep nesting
    (recursive aliases too)."""
    kind = type(node)
    if kind is yaml.ScalarNode:
        return node.value if node.tag == _STR else loader.construct_object(node, deep=True)
    if depth > _MAX_FAST_DEPTH:
        raise _Unusual
    if kind is yaml.SequenceNode and node.tag == _SEQ:
        return [_build(loader, item, depth + 1) for item in node.value]
    if kind is yaml.MappingNode and node.tag == _MAP:
        built: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is not yaml.ScalarNode or key_node.tag == "tag:yaml.org,2002:merge":
                raise _Unusual
            built[_build(loader, key_node, depth + 1)] = _build(loader, value_node, depth + 1)
        return built
    raise _Unusual


def _construct_document(self: yaml.SafeLoader, node: yaml.Node) -> Any:
    """SafeConstructor.construct_document, about twice as fast on manifests (no per-node
    bookkeeping for strings and collections), with aliases copied apart (see _unshare)."""
    try:
        document = _build(self, node, 0)
    except _Unusual:
        return _unshare(yaml.constructor.BaseConstructor.construct_document(self, node))
    self.constructed_objects = {}
    self.recursive_objects = {}
    self.deep_construct = False
    return document


def _kubernetes_loader(base: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    """YAML as Kubernetes reads it: timestamps stay strings (they round-trip unchanged).
    Documents come out with no shared parts: editing one place never edits another."""
    implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    wildcard = implicit_resolvers.get(None, [])
    tags: dict[str, str] = {}  # plain scalar -> its tag: keys and values repeat a lot

    def resolve(self: yaml.SafeLoader, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        """Resolver.resolve without path resolvers (SafeLoader has none), memoised for plain
        scalars, whose tag depends on their text alone: the parser asks for every node."""
        if kind is yaml.ScalarNode:
            if not implicit[0]:
                return _STR
            tag = tags.get(value)
            if tag is None:
                tag = next(
                    (
                        tag
                        for tag, regexp in implicit_resolvers.get(value[:1], []) + wildcard
                        if regexp.match(value)
                    ),
                    _STR,
                )
                if len(tags) < 100_000:
                    tags[value] = tag
            return tag
        return _SEQ if kind is yaml.SequenceNode else _MAP

    loader: type[yaml.SafeLoader] = type(
        "_Loader", (base,), {"construct_document": _construct_document, "resolve": resolve}
    )
    loader.yaml_implicit_resolvers = implicit_resolvers
    return loader


_Loader = _kubernetes_loader(_BaseLoader)


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings, and no anchors/aliases in the output."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_OTHER_BREAKS: Final = "\x85\u2028\u2029"
"""YAML 1.1 line breaks besides CR and LF. Written raw (plain, quoted or block style), a
reader folds or normalises them: "\x85" came back as " ". Double quotes escape them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style: str | None = None
    if any(c in value for c in _OTHER_BREAKS):
        style = '"'
    elif "\n" in value and not any(c in value for c in "\r\t"):
        style = "|"
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


@dataclass
class Document:
    """One non-empty document of one file. ``body`` is edited in place by ``mutate``."""

    file: str
    index: int
    """0-based position among the file's documents (empty ones included)."""
    body: Any


@dataclass(frozen=True)
class PodTemplate:
    """A pod spec found in a document: a Pod, or a workload's pod template."""

    file: str
    document: int
    """0-based document index in ``file``."""
    item: int | None
    """Index in ``items`` when the object came from a ``kind: List``."""
    kind: str
    namespace: str
    name: str
    holder: MutableMapping[str, Any]
    """The mapping that holds the pod's ``metadata`` and ``spec`` (the Pod or the template)."""
    prefix: str
    """Path of the pod spec inside the object, e.g. ``spec.template.spec``."""

    @property
    def ref(self) -> str:
        """``Kind/namespace/name``."""
        return object_ref(self.kind, self.name, self.namespace)

    @property
    def location(self) -> str:
        """``file: Kind/namespace/name``, the start of every message about this object."""
        return f"{self.file}: {self.ref}"

    @property
    def spec(self) -> MutableMapping[str, Any]:
        spec: MutableMapping[str, Any] = self.holder["spec"]
        return spec

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The pod-level metadata (labels and annotations come from here); may be empty."""
        metadata: Mapping[str, Any] = self.holder.get("metadata") or {}
        return metadata

    @property
    def labels(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.metadata.get("labels") or {}).items()}

    def writable_metadata(self) -> MutableMapping[str, Any]:
        """The pod-level metadata as a mapping the engine may edit.

        A template without ``metadata`` gets a detached empty mapping; call
        :meth:`attach_metadata` with it once something was written, so that
        unchanged objects print exactly as they were read.
        """
        metadata = self.holder.get("metadata")
        return metadata if isinstance(metadata, MutableMapping) else {}

    def attach_metadata(self, metadata: MutableMapping[str, Any]) -> None:
        if self.holder.get("metadata") is metadata:
            return
        rest = [(key, value) for key, value in self.holder.items() if key != "metadata"]
        self.holder.clear()
        self.holder["metadata"] = metadata  # first, where people expect it
        self.holder.update(rest)


@dataclass
class ManifestSet:
    """Everything found in a set of manifest paths."""

    documents: list[Document] = field(default_factory=list)
    pods: list[PodTemplate] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    """Labels of the Namespace objects among the manifests, by name."""


def load_manifests(paths: Iterable[str]) -> ManifestSet:
    """Read manifest files and directories (recursively), in the order given.

    Raises :class:`ManifestError` for a missing file, unparseable YAML or JSON,
    an invalid policy, or a pod spec field the engine cannot read.
    """
    found = ManifestSet()
    for file, documents in _read_paths(paths):
        for index, body in documents:
            found.documents.append(Document(file, index, body))
            _collect(found, file, index, body)
    return found


def load_policies(paths: Iterable[str]) -> list[Policy]:
    """Read ``--policy`` files: every object in them must be a policy."""
    policies: list[Policy] = []
    for file, documents in _read_paths(paths):
        for index, body in documents:
            for item, obj in _objects(file, index, body):
                kind = obj.get("kind")
                if kind not in POLICY_KINDS:
                    where = _object_location(file, index, item, obj)
                    raise ManifestError(
                        f"{where}: kind: expected {' or '.join(POLICY_KINDS)} in a policy file, "
                        f"got {kind!r}"
                    )
                policies.append(_policy(file, index, item, obj))
    return policies


def dump_documents(documents: Iterable[Document]) -> str:
    """Every document as YAML, ``---`` separated, keys in their original order.

    Raises :class:`ManifestError` for a document nested too deeply for the representer's
    recursion (a few hundred levels: fewer than the parser takes).
    """
    documents = list(documents)
    try:
        return _dump(document.body for document in documents)
    except RecursionError:
        pass
    for document in documents:  # which one: named in the error
        try:
            _dump([document.body])
        except RecursionError:
            raise ManifestError(
                f"{document.file}: document {document.index + 1}: nested too deeply to print "
                "as YAML"
            ) from None
    raise ManifestError("a document is nested too deeply to print as YAML")


def _dump(bodies: Iterable[Any]) -> str:
    return yaml.dump_all(
        bodies,
        Dumper=_Dumper,
        sort_keys=False,
        explicit_start=True,
        allow_unicode=True,
        width=1 << 16,
    )


# --- reading files ---------------------------------------------------------------------------


def _read_paths(paths: Iterable[str]) -> Iterator[tuple[str, list[tuple[int, Any]]]]:
    for raw in paths:
        if raw == STDIN:
            yield "<stdin>", _parse("<stdin>", sys.stdin.read(), json_file=False)
            continue
        path = Path(raw)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file()
            )
            if not files:
                raise ManifestError(f"{raw}: no {', '.join(MANIFEST_SUFFIXES)} files in directory")
        else:
            files = [path]
        for file in files:
            name = str(file)
            try:
                text = file.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise ManifestError(f"{name}: no such file or directory") from None
            except UnicodeDecodeError:
                raise ManifestError(f"{name}: not UTF-8 text") from None
            except OSError as exc:
                raise ManifestError(f"{name}: cannot read: {exc.strerror or exc}") from None
            yield name, _parse(name, text, json_file=file.suffix == ".json")


def _parse(file: str, text: str, *, json_file: bool) -> list[tuple[int, Any]]:
    """The non-empty documents of a file, with their indexes."""
    if json_file:
        try:
            return [(0, json.loads(text))]
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"{file}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
            ) from None
        except RecursionError:
            raise ManifestError(f"{file}: invalid JSON: the nesting is too deep") from None
        except ValueError as exc:  # a number of more than 4,300 digits
            raise ManifestError(f"{file}: invalid JSON: {exc}") from None
    documents: list[tuple[int, Any]] = []
    try:
        for index, body in enumerate(yaml.load_all(text, Loader=_Loader)):
            if body is not None:
                documents.append((index, body))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ManifestError(f"{file}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{file}: invalid YAML: {exc}") from None
    except RecursionError:  # an alias inside its own anchor, or nesting thousands deep
        raise ManifestError(
            f"{file}: invalid YAML: an alias refers to itself, or the nesting is too deep"
        ) from None
    except ValueError as exc:  # from a constructor: a 5,000-digit integer, !!timestamp 2001-13-45
        raise ManifestError(f"{file}: invalid YAML: {exc}") from None
    return documents


def _unshare(node: Any) -> Any:
    """Copy YAML anchors/aliases apart, so editing one place never edits another."""
    if isinstance(node, dict):
        return {key: _unshare(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshare(value) for value in node]
    return node


# --- finding objects -------------------------------------------------------------------------


def _objects(file: str, index: int, body: Any) -> Iterator[tuple[int | None, dict[str, Any]]]:
    """The Kubernetes objects in one document: itself, or the items of a ``kind: List``."""
    if not isinstance(body, dict):
        raise ManifestError(
            f"{file}: document {index + 1}: expected a Kubernetes object (a mapping), "
            f"got {type(body).__name__}"
        )
    kind = body.get("kind")
    if not (isinstance(kind, str) and kind.endswith("List") and "items" in body):
        yield None, body
        return
    items = body.get("items") or []
    if not isinstance(items, list):
        raise ManifestError(f"{file}: document {index + 1}: items: must be a list")
    for item, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise ManifestError(
                f"{file}: document {index + 1}: items[{item}]: expected a Kubernetes object "
                f"(a mapping), got {type(obj).__name__}"
            )
        yield item, obj


def _object_location(file: str, index: int, item: int | None, obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    kind = obj.get("kind")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if isinstance(kind, str) and kind and isinstance(name, str) and name:
        namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
        if kind in (CLUSTER_KIND, "Namespace"):
            return f"{file}: {object_ref(kind, name, None)}"
        return f"{file}: {object_ref(kind, name, str(namespace or 'default'))}"
    where = f"{file}: document {index + 1}"
    return where if item is None else f"{where}, items[{item}]"


def _collect(found: ManifestSet, file: str, index: int, body: Any) -> None:
    for item, obj in _objects(file, index, body):
        kind = obj.get("kind")
        if kind in POLICY_KINDS:
            found.policies.append(_policy(file, index, item, obj))
        elif kind == "Namespace":
            name, labels = _namespace(file, index, item, obj)
            found.namespaces[name] = labels
        elif isinstance(kind, str) and kind in POD_SPEC_PATHS:
            found.pods.append(_pod_template(file, index, item, kind, obj))


def _policy(file: str, index: int, item: int | None, obj: Mapping[str, Any]) -> Policy:
    try:
        return parse_policy(obj)
    except PolicyError as exc:
        raise ManifestError(f"{file}: {exc}") from None


def _namespace(
    file: str, index: int, item: int | None, obj: Mapping[str, Any]
) -> tuple[str, dict[str, str]]:
    where = _object_location(file, index, item, obj)
    metadata = _mapping(obj.get("metadata"), where, "metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: metadata.name: is required")
    labels = _labels(metadata.get("labels"), where, "metadata.labels")
    return name, labels


def _pod_template(
    file: str, index: int, item: int | None, kind: str, obj: dict[str, Any]
) -> PodTemplate:
    where = _object_location(file, index, item, obj)
    metadata = _mapping(obj.get("metadata"), where, "metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: metadata.name: is required")
    namespace = metadata.get("namespace") or "default"
    if not isinstance(namespace, str):
        raise ManifestError(f"{where}: metadata.namespace: must be a string")
    where = f"{file}: {object_ref(kind, name, namespace)}"

    holder: dict[str, Any] = obj
    path: list[str] = []
    for key in POD_SPEC_PATHS[kind]:
        path.append(key)
        value = holder.get(key)
        if not isinstance(value, dict):
            problem = "is required" if value is None else "must be an object"
            raise ManifestError(f"{where}: {'.'.join(path)}: {problem}")
        holder = value
    prefix = ".".join([*path, "spec"])
    pod_metadata = _mapping(holder.get("metadata"), where, prefix.removesuffix("spec") + "metadata")
    _labels(pod_metadata.get("labels"), where, prefix.removesuffix("spec") + "metadata.labels")
    _mapping(
        pod_metadata.get("annotations"), where, prefix.removesuffix("spec") + "metadata.annotations"
    )
    spec = holder.get("spec")
    if not isinstance(spec, dict):
        raise ManifestError(
            f"{where}: {prefix}: {'is required' if spec is None else 'must be an object'}"
        )
    _check_pod_spec(spec, where, prefix)
    return PodTemplate(file, index, item, kind, namespace, name, holder, prefix)


# --- checking the fields the engine reads ----------------------------------------------------


def _mapping(value: Any, where: str, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where}: {path}: must be an object, got {type(value).__name__}")
    return value


def _labels(value: Any, where: str, path: str) -> dict[str, str]:
    labels = _mapping(value, where, path)
    for key, label in labels.items():
        if not isinstance(label, str):
            raise ManifestError(
                f"{where}: {path}.{key}: must be a string, got {label!r} (quote it in YAML)"
            )
    return {str(k): v for k, v in labels.items()}


def _check_quantity(resources: Mapping[str, Any], where: str, path: str) -> None:
    for group in ("limits", "requests"):
        amounts = _mapping(resources.get(group), where, f"{path}.{group}")
        if amounts.get("memory") is None:
            continue
        try:
            parse_bytes(amounts["memory"])
        except QuantityTooLarge:
            pass  # valid: the API server stores it, and the engine reports it unsatisfiable
        except QuantityError as exc:
            raise ManifestError(f"{where}: {path}.{group}.memory: {exc}") from None


def _check_pod_spec(spec: Mapping[str, Any], where: str, prefix: str) -> None:
    _check_quantity(
        _mapping(spec.get("resources"), where, f"{prefix}.resources"), where, f"{prefix}.resources"
    )
    for key in ("initContainers", "containers"):
        containers = spec.get(key)
        if containers is None:
            continue
        if not isinstance(containers, list):
            raise ManifestError(f"{where}: {prefix}.{key}: must be a list")
        for number, container in enumerate(containers):
            _check_container(container, where, f"{prefix}.{key}[{number}]")


def _check_container(container: Any, where: str, path: str) -> None:
    if not isinstance(container, Mapping):
        raise ManifestError(f"{where}: {path}: must be an object")
    name = container.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: {path}.name: is required")
    resources = _mapping(container.get("resources"), where, f"{path}.resources")
    _check_quantity(resources, where, f"{path}.resources")
    env = container.get("env")
    if env is None:
        return
    if not isinstance(env, list):
        raise ManifestError(f"{where}: {path}.env: must be a list")
    for number, entry in enumerate(env):
        _check_env(entry, where, f"{path}.env[{number}]")


def _check_env(entry: Any, where: str, path: str) -> None:
    if not isinstance(entry, Mapping):
        raise ManifestError(f"{where}: {path}: must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: {path}.name: is required")
    value = entry.get("value")
    if value is not None and not isinstance(value, str):
        hint = " (quote it: YAML reads off as false)" if value is False else " (quote it)"
        raise ManifestError(f"{where}: {path}.value: must be a string, got {value!r}{hint}")
    source = _mapping(entry.get("valueFrom"), where, f"{path}.valueFrom")
    if name not in (GOMEMLIMIT, GOGC) or not source:
        return
    ref = _mapping(source.get("resourceFieldRef"), where, f"{path}.valueFrom.resourceFieldRef")
    if ref.get("divisor") is not None:
        try:
            divisor = parse_bytes(ref["divisor"])
        except QuantityError as exc:
            raise ManifestError(
                f"{where}: {path}.valueFrom.resourceFieldRef.divisor: {exc}"
            ) from None
        if divisor < 1:
            raise ManifestError(
                f"{where}: {path}.valueFrom.resourceFieldRef.divisor: must be at least 1 byte"
            )
