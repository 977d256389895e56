"""The engine: for one pod spec and its governing policy, decide values and states.

Pure and synchronous: plain dicts in, plain data out, no I/O and no kopf. The
admission webhook, the pod watcher, the metrics and the CLI are thin adapters
around the functions here, so they can never disagree.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

from .api import CLUSTER_KIND, NAMESPACED_KIND, GoMemPolicySpec, Mode, OnExisting, Policy
from .goruntime import GOGC, GOMEMLIMIT, format_mib, is_no_limit, parse_byte_count
from .quantity import MIB, QuantityError, parse_bytes
from .selectors import matches_globs, matches_selector

__all__ = [
    "ANNOTATION_INJECTED",
    "ANNOTATION_POLICY",
    "ANNOTATION_SKIP",
    "FAILING_STATES",
    "NONCOMPLIANT_STATES",
    "ContainerFacts",
    "ContainerReport",
    "MutationResult",
    "PodFacts",
    "SpecError",
    "State",
    "evaluate_container",
    "evaluate_facts",
    "evaluate_pod",
    "expected_gomemlimit",
    "governing_policy",
    "governs",
    "mutate_pod",
    "pod_facts",
]

ANNOTATION_INJECTED: Final = "gomemlimit.io/injected"
"""JSON map ``{container: {VAR: value}}`` of the env entries this project wrote."""
ANNOTATION_POLICY: Final = "gomemlimit.io/policy"
"""The policy that governed the pod when values were injected."""
ANNOTATION_SKIP: Final = "gomemlimit.io/skip"
"""``"true"`` on a pod opts it out of injection."""
ANNOTATION_MIRROR: Final = "kubernetes.io/config.mirror"


class State(enum.StrEnum):
    """Exactly one state per container. Documented in README ("Container states")."""

    COMPLIANT = "compliant"
    MISSING = "missing"
    INVALID = "invalid"
    EXCEEDS_LIMIT = "exceeds_limit"
    NO_MEMORY_LIMIT = "no_memory_limit"
    STALE = "stale"
    OPTED_OUT = "opted_out"
    UNVERIFIABLE = "unverifiable"
    UNMANAGED = "unmanaged"


FAILING_STATES: Final = frozenset(
    {State.MISSING, State.INVALID, State.EXCEEDS_LIMIT, State.NO_MEMORY_LIMIT}
)
"""States that make ``gomemlimit audit`` exit 1."""
NONCOMPLIANT_STATES: Final = FAILING_STATES | {State.STALE}
"""States that need someone to act: the failing ones, plus values a restart would fix."""


class SpecError(ValueError):
    """A pod spec field the engine cannot read. ``field`` is a path such as
    ``spec.containers[0].resources.limits.memory``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def expected_gomemlimit(limit_bytes: int, spec: GoMemPolicySpec) -> str | None:
    """The value contract: GOMEMLIMIT for a memory limit under a policy, or None.

    headroom = L - floor(L * ratio), clamped to [minHeadroom, maxHeadroom];
    value = L - headroom, rounded down to a whole MiB. Under 1 MiB gives None.
    """
    ratio = Fraction(spec.ratio)  # exact: Decimal -> Fraction, no binary float
    headroom = limit_bytes - math.floor(limit_bytes * ratio)
    low, high = spec.min_headroom_bytes, spec.max_headroom_bytes
    if low is not None:
        headroom = max(headroom, low)
    if high is not None:
        headroom = min(headroom, high)
    mebibytes = (limit_bytes - headroom) // MIB
    return format_mib(mebibytes) if mebibytes >= 1 else None


def governing_policy(
    namespace: str,
    pod_labels: Mapping[str, str],
    namespace_labels: Mapping[str, str],
    policies: Iterable[Policy],
) -> Policy | None:
    """Exactly one policy, or none, governs a pod.

    A GoMemPolicy in the pod's namespace that selects it beats every
    ClusterGoMemPolicy; within a scope the highest priority wins, then the
    lexically smallest name.
    """
    namespaced: list[Policy] = []
    cluster: list[Policy] = []
    for policy in policies:
        if not matches_selector(policy.spec.selector, pod_labels):
            continue
        if policy.kind == NAMESPACED_KIND and policy.namespace == namespace:
            namespaced.append(policy)
        elif policy.kind == CLUSTER_KIND and matches_selector(
            policy.namespace_selector, namespace_labels
        ):
            cluster.append(policy)
    for candidates in (namespaced, cluster):
        if candidates:
            return min(candidates, key=lambda p: (-p.spec.priority, p.name))
    return None


@dataclass(frozen=True)
class ContainerReport:
    """The audit of one container: what it has, what it should have, and its state."""

    container: str
    init: bool
    memory_limit_bytes: int | None
    gomemlimit: str | None
    """The GOMEMLIMIT Go will read: as written, or as resolved from valueFrom when knowable."""
    source: str | None
    """``value``, or the valueFrom kind (``resourceFieldRef``, ``configMapKeyRef``, ...)."""
    injected: bool
    expected: str | None
    state: State
    policy: str | None
    reason: str


@dataclass(frozen=True)
class _Slot:
    path: str  # "spec.containers[0]"
    init: bool
    container: MutableMapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.container.get("name", ""))


@dataclass(frozen=True)
class _Env:
    index: int
    source: str
    text: str | None  # None when only the cluster can know (ConfigMap, Secret, fieldRef)


def _slots(spec: Mapping[str, Any], prefix: str) -> Iterator[_Slot]:
    for key, init in (("initContainers", True), ("containers", False)):
        for index, container in enumerate(spec.get(key) or ()):
            if isinstance(container, MutableMapping):
                yield _Slot(f"{prefix}.{key}[{index}]", init, container)


def _governs(policy: Policy | None, slot: _Slot) -> bool:
    return governs(policy, slot.name, slot.init)


def _quantity_at(mapping: Mapping[str, Any], keys: tuple[str, ...], path: str) -> int | None:
    value: Any = mapping
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except QuantityError as exc:
        raise SpecError(f"{path}.{'.'.join(keys)}", str(exc)) from None


def _limit(slot: _Slot, spec: Mapping[str, Any], prefix: str) -> int | None:
    own = _quantity_at(slot.container, ("resources", "limits", "memory"), slot.path)
    if own is not None:
        return own
    return _quantity_at(spec, ("resources", "limits", "memory"), prefix)


def _env(slot: _Slot, var: str, spec: Mapping[str, Any], prefix: str) -> _Env | None:
    """The entry Kubernetes uses for ``var``: the last one with that name."""
    entries = slot.container.get("env") or []
    for index in range(len(entries) - 1, -1, -1):
        entry = entries[index]
        if not isinstance(entry, Mapping) or entry.get("name") != var:
            continue
        source = entry.get("valueFrom")
        if not isinstance(source, Mapping) or not source:
            return _Env(index, "value", str(entry.get("value") or ""))
        kind = next(iter(source))
        text = None
        if kind == "resourceFieldRef":
            text = _resource_field(slot, source[kind], spec, prefix, f"{slot.path}.env[{index}]")
        return _Env(index, str(kind), text)
    return None


def _resource_field(
    slot: _Slot, ref: Mapping[str, Any], spec: Mapping[str, Any], prefix: str, path: str
) -> str | None:
    """What the kubelet writes for a resourceFieldRef on memory: ceil(bytes / divisor)."""
    resource = ref.get("resource")
    if resource not in ("limits.memory", "requests.memory"):
        return None
    target = slot
    if ref.get("containerName"):
        found = [s for s in _slots(spec, prefix) if s.name == ref["containerName"]]
        if not found:
            return None
        target = found[0]
    limit = _limit(target, spec, prefix)
    amount = limit
    if resource == "requests.memory":
        request = _quantity_at(target.container, ("resources", "requests", "memory"), target.path)
        amount = request if request is not None else limit  # requests default to limits
    if amount is None:
        return None  # the kubelet would use node allocatable: unknowable from the spec
    divisor = _quantity_at(ref, ("divisor",), f"{path}.valueFrom.resourceFieldRef") or 1
    return str(-(-amount // divisor))


def _injected(annotations: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The record of values this project wrote; a damaged record counts as none."""
    try:
        record = json.loads(str(annotations.get(ANNOTATION_INJECTED) or "{}"))
    except ValueError:
        return {}
    if not isinstance(record, dict):
        return {}
    return {
        str(name): {str(k): str(v) for k, v in values.items()}
        for name, values in record.items()
        if isinstance(values, dict)
    }


def _opted_out(annotations: Mapping[str, Any]) -> bool:
    return str(annotations.get(ANNOTATION_SKIP, "")).lower() == "true"


@dataclass(frozen=True, slots=True)
class ContainerFacts:
    """What the engine reads from one container, independent of any policy.

    Small, hashable and enough to reproduce :func:`evaluate_pod`'s verdict for
    any policy: the pod watcher keeps these instead of pod objects and
    re-evaluates from them when a policy changes.
    """

    name: str
    init: bool
    memory_limit_bytes: int | None
    gomemlimit: str | None
    """The GOMEMLIMIT Go will read, or None when unset or unknowable (see ``source``)."""
    source: str | None
    """None when GOMEMLIMIT is not set; else ``value`` or the valueFrom kind."""
    injected: bool
    """The value is a literal this project wrote (``gomemlimit.io/injected``)."""


@dataclass(frozen=True, slots=True)
class PodFacts:
    """The facts of a pod's containers (init containers first, in spec order)."""

    opted_out: bool
    containers: tuple[ContainerFacts, ...]


def pod_facts(
    metadata: Mapping[str, Any], spec: Mapping[str, Any], prefix: str = "spec"
) -> PodFacts:
    """Read every field the evaluation needs. Raises :class:`SpecError` on a bad quantity."""
    annotations = metadata.get("annotations") or {}
    injected = _injected(annotations)
    return PodFacts(
        _opted_out(annotations),
        tuple(_container_facts(slot, spec, prefix, injected) for slot in _slots(spec, prefix)),
    )


def _container_facts(
    slot: _Slot,
    spec: Mapping[str, Any],
    prefix: str,
    injected: Mapping[str, Mapping[str, str]],
) -> ContainerFacts:
    limit = _limit(slot, spec, prefix)
    env = _env(slot, GOMEMLIMIT, spec, prefix)
    if env is None:
        return ContainerFacts(slot.name, slot.init, limit, None, None, False)
    ours = env.source == "value" and injected.get(slot.name, {}).get(GOMEMLIMIT) == env.text
    return ContainerFacts(slot.name, slot.init, limit, env.text, env.source, ours)


def evaluate_pod(
    metadata: Mapping[str, Any],
    spec: Mapping[str, Any],
    policy: Policy | None,
    prefix: str = "spec",
) -> list[ContainerReport]:
    """One report per container (init containers first, in spec order)."""
    return evaluate_facts(pod_facts(metadata, spec, prefix), policy)


def evaluate_facts(facts: PodFacts, policy: Policy | None) -> list[ContainerReport]:
    """:func:`evaluate_pod` from facts read earlier by :func:`pod_facts`."""
    return [
        evaluate_container(container, policy, facts.opted_out) for container in facts.containers
    ]


def governs(policy: Policy | None, name: str, init: bool) -> bool:
    """Whether the pod's governing policy applies to this container."""
    if policy is None or (init and not policy.spec.include_init_containers):
        return False
    return matches_globs(policy.spec.containers, name)


def evaluate_container(
    facts: ContainerFacts, pod_policy: Policy | None, opted_out: bool
) -> ContainerReport:
    """The state of one container under the policy that governs its pod (or None)."""
    policy = pod_policy if governs(pod_policy, facts.name, facts.init) else None
    limit = facts.memory_limit_bytes
    value, source, ours = facts.gomemlimit, facts.source, facts.injected
    expected = None
    if policy is not None and limit is not None:
        expected = expected_gomemlimit(limit, policy.spec)

    def report(state: State, reason: str) -> ContainerReport:
        return ContainerReport(
            container=facts.name,
            init=facts.init,
            memory_limit_bytes=limit,
            gomemlimit=value,
            source=source,
            injected=ours,
            expected=expected,
            state=state,
            policy=None if policy is None else policy.ref,
            reason=reason,
        )

    if value is not None and not is_no_limit(value):
        count = parse_byte_count(value)
        if count is None:
            return report(
                State.INVALID,
                f"Go rejects GOMEMLIMIT={value!r} and exits at start "
                "(use bytes or B, KiB, MiB, GiB, TiB, e.g. 460MiB)",
            )
        if limit is not None and count >= limit:
            return report(
                State.EXCEEDS_LIMIT,
                f"GOMEMLIMIT={value} is not below the memory limit of {limit} bytes: "
                "the kernel OOM-kills before the GC reacts",
            )
    if policy is None:
        return report(State.UNMANAGED, "no policy governs this container")
    if opted_out:
        return report(State.OPTED_OUT, f"the pod has {ANNOTATION_SKIP}=true")
    if limit is None:
        return report(State.NO_MEMORY_LIMIT, "no memory limit on the container or the pod")
    if source is None or (value is not None and is_no_limit(value)):
        if expected is None:
            return report(State.COMPLIANT, "the limit is under the 1MiB a GOMEMLIMIT needs")
        how = "is not set" if source is None else f"is {value!r}, which means no limit"
        return report(State.MISSING, f"GOMEMLIMIT {how}; expected {expected}")
    if value is None:
        return report(State.UNVERIFIABLE, f"GOMEMLIMIT comes from {source}")
    if (ours or policy.spec.on_existing is OnExisting.OVERRIDE) and value != expected:
        whose = "injected" if ours else "set"
        return report(
            State.STALE,
            f"GOMEMLIMIT={value} was {whose} before the current limit or policy; "
            f"expected {expected} (a rollout restart applies it)",
        )
    return report(State.COMPLIANT, "GOMEMLIMIT is valid and below the limit")


@dataclass
class MutationResult:
    """What :func:`mutate_pod` did. ``injected`` maps container -> {VAR: value} written now."""

    changed: bool
    reason: str
    injected: dict[str, dict[str, str]] = field(default_factory=dict)


def mutation_skip_reason(metadata: Mapping[str, Any], policy: Policy) -> str | None:
    """Why a pod that ``policy`` governs must not be mutated, or None when it may be."""
    annotations = metadata.get("annotations") or {}
    if policy.spec.mode is not Mode.ENFORCE:
        return f"{policy.ref} is in audit mode"
    if _opted_out(annotations):
        return f"the pod has {ANNOTATION_SKIP}=true"
    if ANNOTATION_MIRROR in annotations:
        return "mirror pods cannot be changed"
    return None


def mutate_pod(
    metadata: MutableMapping[str, Any],
    spec: MutableMapping[str, Any],
    policy: Policy | None,
    prefix: str = "spec",
) -> MutationResult:
    """Inject GOMEMLIMIT (and GOGC) into the governed containers, in place.

    Appends new env entries after the existing ones and never reorders or
    rewrites other entries. Idempotent: a second call changes nothing, and a
    call after the memory limit changed corrects only values this project wrote
    (recorded in the ``gomemlimit.io/injected`` annotation). A user's own value
    is replaced only when the policy says ``onExisting: override``.
    """
    if policy is None:
        return MutationResult(False, "no policy governs the pod")
    skip = mutation_skip_reason(metadata, policy)
    if skip is not None:
        return MutationResult(False, skip)

    before = _injected(metadata.get("annotations") or {})
    record: dict[str, dict[str, str]] = {}
    changed = False
    for slot in _slots(spec, prefix):
        if not _governs(policy, slot):
            continue
        limit = _limit(slot, spec, prefix)
        wanted = {
            GOMEMLIMIT: None if limit is None else expected_gomemlimit(limit, policy.spec),
            GOGC: policy.spec.gogc,
        }
        for var, value in wanted.items():
            if value is None:
                continue
            written = _write_env(slot, var, value, before.get(slot.name, {}).get(var), policy)
            if written is None:
                continue
            record.setdefault(slot.name, {})[var] = value
            changed |= written

    if record and (changed or record != before):
        if metadata.get("annotations") is None:  # absent, or `annotations: null` in YAML
            metadata["annotations"] = {}
        metadata["annotations"][ANNOTATION_INJECTED] = json.dumps(
            record, sort_keys=True, separators=(",", ":")
        )
        metadata["annotations"][ANNOTATION_POLICY] = policy.ref
        changed = True
    if not changed:
        return MutationResult(False, "already up to date" if record else "nothing to inject")
    return MutationResult(True, f"injected by {policy.ref}", record)


def _write_env(slot: _Slot, var: str, value: str, ours: str | None, policy: Policy) -> bool | None:
    """Set ``var`` on a container. True: changed; False: already right; None: left alone."""
    entries = slot.container.get("env")
    index = None
    for position, entry in enumerate(entries or ()):
        if isinstance(entry, Mapping) and entry.get("name") == var:
            index = position
    wanted = {"name": var, "value": value}
    if index is None:
        if slot.container.get("env") is None:  # absent, or `env: null` in YAML
            slot.container["env"] = []
        slot.container["env"].append(wanted)
        return True
    assert entries is not None
    current = entries[index]
    is_ours = ours is not None and "valueFrom" not in current and current.get("value") == ours
    if not is_ours and policy.spec.on_existing is not OnExisting.OVERRIDE:
        return None
    if dict(current) == wanted:
        return False
    entries[index] = wanted
    return True
