"""The engine: for one pod spec and its governing policy, decide values and states.

Pure and synchronous: plain dicts in, plain data out, no I/O and no kopf. The
admission webhook, the pod watcher, the metrics and the CLI are thin adapters
around the functions here, so they can never disagree.

Three guarantees hold for any pod the API server accepts, however hostile:

* **Bounded, linear work.** A pod is read through one index (:class:`_Pod`) built once, and
  a pod with more containers or env entries than :class:`Bounds` allows is refused with
  :class:`PodTooLarge` before any per-container work. Memory amounts above
  ``quantity.CEILING`` are never turned into big integers.
* **Never a value Go rejects.** :func:`gomemlimit_for` is the only producer of a
  GOMEMLIMIT. It parses its own output back with Go's rules and returns a value only when Go
  reads it as the intended bytes, at most MaxInt64, and below the limit.
* **No false "compliant".** A governed container whose policy yields no value for its limit
  is ``unsatisfiable``, a failing state, with the reason and the fix.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

from gomemlimit_operator.core.api import (
    CLUSTER_KIND,
    NAMESPACED_KIND,
    GoMemPolicySpec,
    Mode,
    OnExisting,
    Policy,
)
from gomemlimit_operator.core.goruntime import (
    GOGC,
    GOMEMLIMIT,
    MAX_INT64,
    format_mib,
    is_no_limit,
    parse_byte_count,
)
from gomemlimit_operator.core.quantity import (
    CEILING,
    CEILING_TEXT,
    MIB,
    QuantityError,
    QuantityTooLarge,
    parse_bytes,
)
from gomemlimit_operator.core.selectors import matches_selector

__all__ = [
    "ANNOTATION_INJECTED",
    "ANNOTATION_POLICY",
    "ANNOTATION_SKIP",
    "DEFAULT_BOUNDS",
    "FAILING_STATES",
    "NONCOMPLIANT_STATES",
    "Bounds",
    "ContainerExplanation",
    "ContainerFacts",
    "ContainerReport",
    "Expectation",
    "Explanation",
    "LimitSource",
    "MutationPlan",
    "MutationResult",
    "PodFacts",
    "PodTooLarge",
    "PolicyChoice",
    "SpecError",
    "State",
    "ValueSteps",
    "check_bounds",
    "container_state",
    "evaluate_container",
    "evaluate_facts",
    "evaluate_pod",
    "expected_gomemlimit",
    "explain_pod",
    "gomemlimit_for",
    "governing_policy",
    "governs",
    "mutate_pod",
    "plan_mutation",
    "pod_facts",
    "precedence",
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
    UNSATISFIABLE = "unsatisfiable"
    STALE = "stale"
    OPTED_OUT = "opted_out"
    UNVERIFIABLE = "unverifiable"
    UNMANAGED = "unmanaged"


FAILING_STATES: Final = frozenset(
    {
        State.MISSING,
        State.INVALID,
        State.EXCEEDS_LIMIT,
        State.NO_MEMORY_LIMIT,
        State.UNSATISFIABLE,
    }
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


class PodTooLarge(SpecError):
    """A pod beyond :class:`Bounds`: the engine refuses it before doing per-container work."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """Where the engine stops. A pod beyond these is left unchanged, with a warning.

    Kubernetes sets no such limits (a 3 MiB request can hold thousands of containers), so
    without them the work per request is whatever a tenant sends. Real pods stay far below.
    """

    max_containers: int = 256
    """Containers plus init containers."""
    max_env_entries: int = 8192
    """``env`` entries, summed over all containers."""


DEFAULT_BOUNDS: Final = Bounds()

BEYOND_CEILING: Final = CEILING + 1
"""The byte count recorded for a memory amount above ``quantity.CEILING``."""


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a policy asks of one container's limit: a value, or why there is none."""

    value: str | None
    problem: str | None = None
    """Why there is no value, and how to fix it; None when there is one."""


@dataclass(frozen=True, slots=True)
class ValueSteps:
    """The intermediate numbers of one run of :func:`gomemlimit_for`, recorded by it when a
    ``trace`` list is passed (``gomemlimit explain``); exact integers and a Fraction."""

    limit_bytes: int
    ratio: Fraction
    kept: int
    """floor(L * ratio)."""
    raw_headroom: int
    """L - kept."""
    min_headroom: int | None
    after_min: int
    """The headroom after ``minHeadroom`` raised it (the raw headroom when it did not)."""
    max_headroom: int | None
    headroom: int
    """The headroom after both clamps: the value before rounding is L - headroom."""


def gomemlimit_for(
    limit_bytes: int, spec: GoMemPolicySpec, trace: list[ValueSteps] | None = None
) -> Expectation:
    """The value contract, and the one gate every GOMEMLIMIT this project writes passes.

    headroom = L - floor(L * ratio), clamped to [minHeadroom, maxHeadroom];
    value = L - headroom, rounded down to a whole MiB.

    The value is then read back with Go's own rules (``parse_byte_count``). It is returned
    only when Go reads it as exactly the intended bytes, at most MaxInt64, and below the
    limit; otherwise there is no value, and ``problem`` says why. With ``trace``, the
    intermediate numbers are appended to it as one :class:`ValueSteps` (not for a limit
    beyond the ceiling, where nothing is computed).
    """
    if limit_bytes > CEILING:
        return Expectation(
            None,
            f"the memory limit is more than {CEILING_TEXT} bytes, beyond anything a "
            "GOMEMLIMIT can express (Go's maximum is 8EiB); set a real memory limit",
        )
    ratio = Fraction(spec.ratio)  # exact: Decimal -> Fraction, no binary float
    kept = math.floor(limit_bytes * ratio)
    headroom = raw = limit_bytes - kept
    low, high = spec.min_headroom_bytes, spec.max_headroom_bytes
    if low is not None:
        headroom = max(headroom, low)
    after_min = headroom
    if high is not None:
        headroom = min(headroom, high)
    if trace is not None:
        trace.append(ValueSteps(limit_bytes, ratio, kept, raw, low, after_min, high, headroom))
    mebibytes = (limit_bytes - headroom) // MIB
    if mebibytes < 1:
        left = max(limit_bytes - headroom, 0)
        return Expectation(
            None,
            f"the policy leaves {left} bytes of a {limit_bytes}-byte limit after {headroom} "
            "bytes of headroom, under the 1MiB a GOMEMLIMIT needs; raise the memory limit "
            "or lower the policy's minHeadroom",
        )
    value = format_mib(mebibytes)
    count = parse_byte_count(value)  # Go's grammar and range, on our own output
    if count is None or count > MAX_INT64:
        return Expectation(
            None,
            f"the policy gives {value}, which Go rejects as above its maximum of "
            f"{MAX_INT64} bytes; lower the memory limit (a limit this large is no limit)",
        )
    if count != mebibytes * MIB or count >= limit_bytes:
        return Expectation(None, f"the policy gives {value}, which is not below the limit")
    return Expectation(value)


def expected_gomemlimit(limit_bytes: int, spec: GoMemPolicySpec) -> str | None:
    """The value of :func:`gomemlimit_for`, or None."""
    return gomemlimit_for(limit_bytes, spec).value


def governing_policy(
    namespace: str,
    pod_labels: Mapping[str, str],
    namespace_labels: Mapping[str, str],
    policies: Iterable[Policy],
    scopes: list[list[Policy]] | None = None,
) -> Policy | None:
    """Exactly one policy, or none, governs a pod.

    A GoMemPolicy in the pod's namespace that selects it beats every
    ClusterGoMemPolicy; within a scope the highest priority wins, then the
    lexically smallest name (:func:`precedence`). With ``scopes``, the candidates are
    appended to it: the namespaced ones that select the pod, then the cluster ones.
    """
    namespaced: list[Policy] = []
    cluster: list[Policy] = []
    for policy in policies:  # scope first: another namespace's policy costs one comparison
        if policy.kind == NAMESPACED_KIND:
            if policy.namespace == namespace and matches_selector(policy.spec.selector, pod_labels):
                namespaced.append(policy)
        elif (
            policy.kind == CLUSTER_KIND
            and matches_selector(policy.namespace_selector, namespace_labels)
            and matches_selector(policy.spec.selector, pod_labels)
        ):
            cluster.append(policy)
    if scopes is not None:
        scopes += (namespaced, cluster)
    for candidates in (namespaced, cluster):
        if candidates:
            return min(candidates, key=precedence)
    return None


def precedence(policy: Policy) -> tuple[int, str]:
    """The order within one scope: the smallest key governs (highest priority, then name)."""
    return -policy.spec.priority, policy.name


@dataclass(frozen=True, slots=True)
class _Slot:
    path: str  # "spec.containers[0]"
    init: bool
    container: MutableMapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.container.get("name", ""))

    @property
    def env(self) -> list[Any]:
        entries = self.container.get("env")
        return entries if isinstance(entries, list) else []


@dataclass(frozen=True, slots=True)
class _Env:
    index: int
    source: str
    text: str | None  # None when only the cluster can know (ConfigMap, Secret, fieldRef)


def _container_lists(spec: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    groups = [(key, spec.get(key)) for key in ("initContainers", "containers")]
    return [(key, items) for key, items in groups if isinstance(items, list)]


def check_bounds(
    spec: Mapping[str, Any], prefix: str = "spec", bounds: Bounds = DEFAULT_BOUNDS
) -> None:
    """Raise :class:`PodTooLarge` for a pod beyond ``bounds``; O(containers), no copying."""
    lists = _container_lists(spec)
    count = sum(len(items) for _, items in lists)
    if count > bounds.max_containers:
        raise PodTooLarge(
            prefix,
            f"the pod has {count} containers and init containers; "
            f"gomemlimit evaluates at most {bounds.max_containers}",
        )
    entries = 0
    for _, items in lists:
        for item in items:
            env = item.get("env") if isinstance(item, Mapping) else None
            entries += len(env) if isinstance(env, list) else 0
    if entries > bounds.max_env_entries:
        raise PodTooLarge(
            prefix,
            f"the pod's containers have {entries} env entries; "
            f"gomemlimit evaluates at most {bounds.max_env_entries}",
        )


@dataclass(frozen=True, slots=True)
class _Pod:
    """One pod spec, indexed once: every lookup below is O(1) or linear in one container."""

    spec: Mapping[str, Any]
    prefix: str
    slots: tuple[_Slot, ...]
    by_name: Mapping[str, _Slot]
    """The first container of each name, init containers first (resourceFieldRef lookups)."""

    @classmethod
    def of(cls, spec: Mapping[str, Any], prefix: str, bounds: Bounds) -> _Pod:
        check_bounds(spec, prefix, bounds)
        slots = tuple(
            _Slot(f"{prefix}.{key}[{index}]", key == "initContainers", item)
            for key, items in _container_lists(spec)
            for index, item in enumerate(items)
            if isinstance(item, MutableMapping)
        )
        by_name: dict[str, _Slot] = {}
        for slot in slots:
            by_name.setdefault(slot.name, slot)
        return cls(spec, prefix, slots, by_name)


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
    except QuantityTooLarge:
        return BEYOND_CEILING  # valid, and more than any GOMEMLIMIT can mean
    except QuantityError as exc:
        raise SpecError(f"{path}.{'.'.join(keys)}", str(exc)) from None


def _limit(slot: _Slot, pod: _Pod) -> int | None:
    own = _quantity_at(slot.container, ("resources", "limits", "memory"), slot.path)
    if own is not None:
        return own
    return _quantity_at(pod.spec, ("resources", "limits", "memory"), pod.prefix)


def _env(slot: _Slot, var: str, pod: _Pod) -> _Env | None:
    """The entry Kubernetes uses for ``var``: the last one with that name."""
    entries = slot.env
    for index in range(len(entries) - 1, -1, -1):
        entry = entries[index]
        if not isinstance(entry, Mapping) or entry.get("name") != var:
            continue
        source = entry.get("valueFrom")
        if not isinstance(source, Mapping) or not source:
            return _Env(index, "value", str(entry.get("value") or ""))
        kind = next(iter(source))
        text = None
        if kind == "resourceFieldRef" and isinstance(source[kind], Mapping):
            text = _resource_field(slot, source[kind], pod, f"{slot.path}.env[{index}]")
        return _Env(index, str(kind), text)
    return None


def _resource_field(slot: _Slot, ref: Mapping[str, Any], pod: _Pod, path: str) -> str | None:
    """What the kubelet writes for a resourceFieldRef on memory: ceil(bytes / divisor)."""
    resource = ref.get("resource")
    if resource not in ("limits.memory", "requests.memory"):
        return None
    target = slot
    if ref.get("containerName"):
        named = pod.by_name.get(str(ref["containerName"]))
        if named is None:
            return None
        target = named
    limit = _limit(target, pod)
    amount = limit
    if resource == "requests.memory":
        request = _quantity_at(target.container, ("resources", "requests", "memory"), target.path)
        amount = request if request is not None else limit  # requests default to limits
    if amount is None:
        return None  # the kubelet would use node allocatable: unknowable from the spec
    divisor = _quantity_at(ref, ("divisor",), f"{path}.valueFrom.resourceFieldRef") or 1
    return str(-(-amount // divisor))


def _bytes(count: int) -> str:
    return f"more than {CEILING_TEXT} bytes" if count > CEILING else f"{count} bytes"


def _injected(annotations: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The record of values this project wrote; a damaged record counts as none."""
    try:
        record = json.loads(str(annotations.get(ANNOTATION_INJECTED) or "{}"))
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
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
    """Exact bytes; :data:`BEYOND_CEILING` for any amount above ``quantity.CEILING``."""
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
    metadata: Mapping[str, Any],
    spec: Mapping[str, Any],
    prefix: str = "spec",
    bounds: Bounds = DEFAULT_BOUNDS,
) -> PodFacts:
    """Read every field the evaluation needs, in time linear in the size of the pod.

    Raises :class:`SpecError` on a bad quantity, :class:`PodTooLarge` beyond ``bounds``.
    """
    annotations = metadata.get("annotations") or {}
    injected = _injected(annotations)
    pod = _Pod.of(spec, prefix, bounds)
    return PodFacts(
        _opted_out(annotations),
        tuple(_container_facts(slot, pod, injected) for slot in pod.slots),
    )


def _container_facts(
    slot: _Slot, pod: _Pod, injected: Mapping[str, Mapping[str, str]]
) -> ContainerFacts:
    limit = _limit(slot, pod)
    env = _env(slot, GOMEMLIMIT, pod)
    if env is None:
        return ContainerFacts(slot.name, slot.init, limit, None, None, False)
    ours = env.source == "value" and injected.get(slot.name, {}).get(GOMEMLIMIT) == env.text
    return ContainerFacts(slot.name, slot.init, limit, env.text, env.source, ours)


def evaluate_pod(
    metadata: Mapping[str, Any],
    spec: Mapping[str, Any],
    policy: Policy | None,
    prefix: str = "spec",
    bounds: Bounds = DEFAULT_BOUNDS,
) -> list[ContainerReport]:
    """One report per container (init containers first, in spec order)."""
    return evaluate_facts(pod_facts(metadata, spec, prefix, bounds), policy)


def evaluate_facts(facts: PodFacts, policy: Policy | None) -> list[ContainerReport]:
    """:func:`evaluate_pod` from facts read earlier by :func:`pod_facts`."""
    return [
        evaluate_container(container, policy, facts.opted_out) for container in facts.containers
    ]


def governs(policy: Policy | None, name: str, init: bool) -> bool:
    """Whether the pod's governing policy applies to this container."""
    if policy is None or (init and not policy.spec.include_init_containers):
        return False
    return policy.globs.matches(name)


@dataclass(frozen=True)
class ContainerReport:
    """The audit of one container: its facts, what it should have, and its state."""

    facts: ContainerFacts
    expected: str | None
    state: State
    policy: str | None
    """The governing policy's reference, or None when no policy governs the container."""
    reason: str

    @property
    def container(self) -> str:
        return self.facts.name

    @property
    def init(self) -> bool:
        return self.facts.init

    @property
    def memory_limit_bytes(self) -> int | None:
        return self.facts.memory_limit_bytes

    @property
    def gomemlimit(self) -> str | None:
        """The GOMEMLIMIT Go will read: as written, or resolved from valueFrom when knowable."""
        return self.facts.gomemlimit

    @property
    def source(self) -> str | None:
        """``value``, or the valueFrom kind (``resourceFieldRef``, ``configMapKeyRef``, ...)."""
        return self.facts.source

    @property
    def injected(self) -> bool:
        return self.facts.injected


def evaluate_container(
    facts: ContainerFacts, pod_policy: Policy | None, opted_out: bool
) -> ContainerReport:
    """The state of one container under the policy that governs its pod (or None)."""
    return _report(facts, _judge(facts, pod_policy, opted_out))


def _report(
    facts: ContainerFacts,
    judged: tuple[Policy | None, Expectation, State, Callable[[], str]],
) -> ContainerReport:
    policy, expectation, state, reason = judged
    return ContainerReport(
        facts, expectation.value, state, None if policy is None else policy.ref, reason()
    )


def container_state(
    facts: ContainerFacts, pod_policy: Policy | None, opted_out: bool
) -> tuple[State, bool]:
    """(state, whether a policy governs the container): :func:`evaluate_container` without
    formatting a reason, for the pod watcher's records."""
    policy, _, state, _ = _judge(facts, pod_policy, opted_out)
    return state, policy is not None


def _judge(
    facts: ContainerFacts,
    pod_policy: Policy | None,
    opted_out: bool,
    trace: list[ValueSteps] | None = None,
) -> tuple[Policy | None, Expectation, State, Callable[[], str]]:
    """The one decision behind every state; the reason is formatted only when asked for.
    ``trace`` is handed to :func:`gomemlimit_for` (``explain_pod``)."""
    policy = pod_policy if governs(pod_policy, facts.name, facts.init) else None
    limit = facts.memory_limit_bytes
    value, source, ours = facts.gomemlimit, facts.source, facts.injected
    expectation = Expectation(None)
    if policy is not None and limit is not None:
        expectation = gomemlimit_for(limit, policy.spec, trace)
    expected = expectation.value

    def verdict(
        state: State, reason: Callable[[], str]
    ) -> tuple[Policy | None, Expectation, State, Callable[[], str]]:
        return policy, expectation, state, reason

    if value is not None and not is_no_limit(value):
        count = parse_byte_count(value)
        if count is None:
            return verdict(
                State.INVALID,
                lambda: (
                    f"Go rejects GOMEMLIMIT={value!r} and exits at start "
                    "(use bytes or B, KiB, MiB, GiB, TiB, e.g. 460MiB)"
                ),
            )
        if limit is not None and count >= limit:
            return verdict(
                State.EXCEEDS_LIMIT,
                lambda: (
                    f"GOMEMLIMIT={value} is not below the memory limit of "
                    f"{_bytes(limit)}: the kernel OOM-kills before the GC reacts"
                ),
            )
    if policy is None:
        return verdict(State.UNMANAGED, lambda: "no policy governs this container")
    if opted_out:
        return verdict(State.OPTED_OUT, lambda: f"the pod has {ANNOTATION_SKIP}=true")
    if limit is None:
        return verdict(State.NO_MEMORY_LIMIT, lambda: "no memory limit on the container or the pod")
    if source is None or (value is not None and is_no_limit(value)):
        if expected is None:
            return verdict(
                State.UNSATISFIABLE, lambda: f"no GOMEMLIMIT can be set: {expectation.problem}"
            )
        how = "is not set" if source is None else f"is {value!r}, which means no limit"
        return verdict(State.MISSING, lambda: f"GOMEMLIMIT {how}; expected {expected}")
    if value is None:
        return verdict(State.UNVERIFIABLE, lambda: f"GOMEMLIMIT comes from {source}")
    if expected is None:  # a valid value below the limit, which the policy could not give
        return verdict(
            State.COMPLIANT,
            lambda: (
                "GOMEMLIMIT is valid and below the limit (the policy yields no value "
                f"here: {expectation.problem})"
            ),
        )
    if (ours or policy.spec.on_existing is OnExisting.OVERRIDE) and value != expected:
        whose = "injected" if ours else "set"
        return verdict(
            State.STALE,
            lambda: (
                f"GOMEMLIMIT={value} was {whose} before the current limit or policy; "
                f"expected {expected} (a rollout restart applies it)"
            ),
        )
    return verdict(State.COMPLIANT, lambda: "GOMEMLIMIT is valid and below the limit")


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
    bounds: Bounds = DEFAULT_BOUNDS,
) -> MutationResult:
    """Inject GOMEMLIMIT (and GOGC) into the governed containers, in place.

    Appends new env entries after the existing ones and never reorders or
    rewrites other entries. Idempotent: a second call changes nothing, and a
    call after the memory limit changed corrects only values this project wrote
    (recorded in the ``gomemlimit.io/injected`` annotation). A user's own value
    is replaced only when the policy says ``onExisting: override``. GOGC is written
    only beside a GOMEMLIMIT: ``GOGC=off`` with no limit would let the heap grow unbounded.
    Raises :class:`PodTooLarge` beyond ``bounds``, and :class:`SpecError` for two
    containers of one name, before changing anything.
    """
    if policy is None:
        return MutationResult(False, "no policy governs the pod")
    skip = mutation_skip_reason(metadata, policy)
    if skip is not None:
        return MutationResult(False, skip)

    before = _injected(metadata.get("annotations") or {})
    record: dict[str, dict[str, str]] = {}
    changed = False
    pod = _Pod.of(spec, prefix, bounds)
    _check_unique_names(pod)
    # Every quantity is read before anything is written: a SpecError leaves the pod as it was.
    limits = [
        (slot, _limit(slot, pod)) for slot in pod.slots if governs(policy, slot.name, slot.init)
    ]
    for slot, limit in limits:
        gomemlimit = None if limit is None else gomemlimit_for(limit, policy.spec).value
        if gomemlimit is None:
            continue
        for var, value in ((GOMEMLIMIT, gomemlimit), (GOGC, policy.spec.gogc)):
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


def _check_unique_names(pod: _Pod) -> None:
    """Raise :class:`SpecError` for a container named like an earlier one. Kubernetes refuses
    such a pod (after the webhooks), and the injected record, which is by name, would mix
    them up: a user's own value taken for ours and replaced on the next call."""
    if len(pod.by_name) == len(pod.slots):
        return
    seen: set[str] = set()
    for slot in pod.slots:
        if slot.name in seen:
            raise SpecError(
                f"{slot.path}.name",
                "the same name as an earlier container; Kubernetes requires unique names",
            )
        seen.add(slot.name)


def _write_env(slot: _Slot, var: str, value: str, ours: str | None, policy: Policy) -> bool | None:
    """Set ``var`` on a container. True: changed; False: already right; None: left alone."""
    entries = slot.container.get("env")
    if entries is None:  # absent, or `env: null` in YAML
        entries = slot.container["env"] = []
    elif not isinstance(entries, list):
        return None  # not an env list: not ours to repair
    index = None
    for position, entry in enumerate(entries):
        if isinstance(entry, Mapping) and entry.get("name") == var:
            index = position
    wanted = {"name": var, "value": value}
    if index is None:
        entries.append(wanted)
        return True
    current = entries[index]
    is_ours = ours is not None and "valueFrom" not in current and current.get("value") == ours
    if not is_ours and policy.spec.on_existing is not OnExisting.OVERRIDE:
        return None
    if dict(current) == wanted:
        return False
    entries[index] = wanted
    return True


@dataclass(frozen=True)
class MutationPlan:
    """:func:`mutate_pod` applied to shallow copies, and the RFC 6902 operations that do the
    same to the original pod. The original is never modified."""

    result: MutationResult
    metadata: dict[str, Any]
    """The pod's metadata after the mutation (shares unchanged values with the original)."""
    spec: dict[str, Any]
    """The pod's spec after the mutation (shares unchanged values with the original)."""
    operations: list[dict[str, Any]]


def plan_mutation(
    metadata: Mapping[str, Any],
    spec: Mapping[str, Any],
    policy: Policy | None,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> MutationPlan:
    """What :func:`mutate_pod` would do to a pod, as JSON Patch operations on the pod object.

    The mutation only ever appends or replaces ``env`` entries and sets annotations, so only
    the annotation map, the container lists, the containers and their ``env`` lists are
    copied (references, not values), and the operations come from comparing exactly those:
    the work is linear in the pod's containers and env entries, never a whole-object diff.
    """
    check_bounds(spec, "spec", bounds)  # before copying anything
    new_metadata = dict(metadata)
    if isinstance(metadata.get("annotations"), Mapping):
        new_metadata["annotations"] = dict(metadata["annotations"])
    new_spec = dict(spec)
    for key, items in _container_lists(spec):
        new_spec[key] = [_writable_container(item) for item in items]
    result = mutate_pod(new_metadata, new_spec, policy, "spec", bounds)
    operations: list[dict[str, Any]] = []
    if result.changed:
        for key, items in _container_lists(spec):
            for index, (old, new) in enumerate(zip(items, new_spec[key], strict=True)):
                if isinstance(old, Mapping):
                    operations += _env_operations(f"/spec/{key}/{index}/env", old, new)
        operations += _map_operations(
            "/metadata/annotations", metadata.get("annotations"), new_metadata.get("annotations")
        )
    return MutationPlan(result, new_metadata, new_spec, operations)


def _writable_container(item: Any) -> Any:
    if not isinstance(item, Mapping):
        return item
    copied = dict(item)
    if isinstance(item.get("env"), list):
        copied["env"] = list(item["env"])
    return copied


def _env_operations(
    path: str, old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[dict[str, Any]]:
    before, after = old.get("env"), new.get("env")
    if not isinstance(before, list):  # absent or null: mutate_pod made a new list
        return [] if after is before else [{"op": "add", "path": path, "value": after}]
    assert isinstance(after, list)
    operations = [
        {"op": "replace", "path": f"{path}/{index}", "value": entry}
        for index, (was, entry) in enumerate(zip(before, after, strict=False))
        if entry is not was
    ]
    operations += [{"op": "add", "path": f"{path}/-", "value": e} for e in after[len(before) :]]
    return operations


def _map_operations(path: str, old: Any, new: Any) -> list[dict[str, Any]]:
    if not isinstance(old, Mapping):
        return [] if new is old else [{"op": "add", "path": path, "value": new}]
    return [
        {
            "op": "add" if key not in old else "replace",
            "path": f"{path}/{_pointer(key)}",
            "value": v,
        }
        for key, v in new.items()
        if key not in old or old[key] != v
    ]


def _pointer(key: str) -> str:
    """One JSON Pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


# --- explain: the same evaluation, with its steps recorded -----------------------------------

ANNOTATION_LIMIT_RANGER: Final = "kubernetes.io/limit-ranger"
"""Set by the API server's LimitRanger admission plugin on a pod whose defaults it filled in:
``LimitRanger plugin set: memory limit for container app; ...``."""


class LimitSource(enum.StrEnum):
    """Where a container's memory limit comes from."""

    CONTAINER = "container"
    """The container's own ``resources.limits.memory``."""
    LIMIT_RANGE = "limitRange"
    """The container's ``resources.limits.memory``, filled in at creation from a LimitRange
    default (the pod's ``kubernetes.io/limit-ranger`` annotation says so). The engine reads
    the pod as admitted; it never applies LimitRanges itself."""
    POD = "pod"
    """The pod-level ``spec.resources.limits.memory``, for a container without its own."""


@dataclass(frozen=True, slots=True)
class PolicyChoice:
    """Which policy governs a pod, chosen by :func:`governing_policy`, and from what."""

    winner: Policy | None
    namespaced: tuple[Policy, ...]
    """GoMemPolicies of the pod's namespace that select the pod, in :func:`precedence` order."""
    cluster: tuple[Policy, ...]
    """ClusterGoMemPolicies that select the pod and its namespace, in precedence order."""
    passed_over: tuple[tuple[Policy, str], ...]
    """Every other policy, with why it does not select the pod."""

    @property
    def scope(self) -> str | None:
        """``namespaced``, ``cluster``, or None when no policy governs the pod."""
        if self.winner is None:
            return None
        return "namespaced" if self.namespaced else "cluster"

    def why(self, policy: Policy) -> str:
        """Why a candidate wins, or loses to the winner."""
        winner = self.winner
        assert winner is not None
        scope = self.namespaced or self.cluster
        if policy is winner:
            parts = []
            if self.namespaced:
                parts.append("a GoMemPolicy in the pod's namespace selects the pod")
                if self.cluster:
                    parts.append(
                        "it beats every ClusterGoMemPolicy "
                        f"({len(self.cluster)} of them select the pod too)"
                    )
            else:
                parts.append("no GoMemPolicy in the pod's namespace selects the pod")
            if len(scope) == 1:
                parts.append("the only candidate in its scope")
            else:
                runner_up = scope[1]
                if runner_up.spec.priority < winner.spec.priority:
                    parts.append(
                        f"the highest priority: {winner.spec.priority} > "
                        f"{runner_up.spec.priority} ({runner_up.ref})"
                    )
                else:
                    tied = sum(p.spec.priority == winner.spec.priority for p in scope)
                    parts.append(
                        f"{tied} candidates tie at priority {winner.spec.priority}; "
                        "the lexically smallest name wins"
                    )
            return "; ".join(parts)
        if policy not in scope:
            return "a GoMemPolicy in the pod's namespace selects the pod: namespaced beats cluster"
        if policy.spec.priority < winner.spec.priority:
            return f"lower priority: {policy.spec.priority} < {winner.spec.priority}"
        return (
            f"the same priority, {policy.spec.priority}, and {winner.name!r} sorts "
            f"before {policy.name!r}"
        )


@dataclass(frozen=True, slots=True)
class ContainerExplanation:
    """One container's evaluation, step by step. ``report`` is exactly what
    :func:`evaluate_pod` gives for it; the other fields say how it came about."""

    report: ContainerReport
    path: str
    """``spec.containers[0]``."""
    coverage: str
    """Why the pod's policy governs this container, or why not."""
    limit_source: LimitSource | None
    limit_path: str | None
    """The field the limit was read from, e.g. ``spec.containers[0].resources.limits.memory``."""
    steps: ValueSteps | None
    """The value contract's numbers, when a governing policy computed a value from a limit."""
    problem: str | None
    """Why the governing policy yields no value for this limit, when it yields none."""
    env_path: str | None
    """The env entry Kubernetes uses for GOMEMLIMIT (the last of that name), when there is one."""
    env_from: bool
    """The container has ``envFrom``, whose GOMEMLIMIT, if any, the spec cannot show."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """A whole pod: the policy choice, the opt-out, and each container in spec order."""

    choice: PolicyChoice
    opted_out: bool
    containers: tuple[ContainerExplanation, ...]


def explain_pod(
    metadata: Mapping[str, Any],
    spec: Mapping[str, Any],
    namespace: str,
    namespace_labels: Mapping[str, str],
    policies: Iterable[Policy],
    prefix: str = "spec",
    bounds: Bounds = DEFAULT_BOUNDS,
) -> Explanation:
    """:func:`governing_policy` and :func:`evaluate_pod` for one pod, with their steps.

    Not a second implementation: it runs the same functions (``governing_policy``,
    ``pod_facts``' readers, ``_judge`` and ``gomemlimit_for``), asking them to record what
    they did. Raises what :func:`evaluate_pod` raises.
    """
    policies = list(policies)
    annotations = metadata.get("annotations") or {}
    labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    scopes: list[list[Policy]] = []
    winner = governing_policy(namespace, labels, namespace_labels, policies, scopes)
    namespaced, cluster = (tuple(sorted(scope, key=precedence)) for scope in scopes)
    chosen = {id(p) for p in (*namespaced, *cluster)}
    passed_over = tuple(
        (p, _why_not_selected(p, namespace, labels, namespace_labels))
        for p in policies
        if id(p) not in chosen
    )
    choice = PolicyChoice(winner, namespaced, cluster, passed_over)

    injected = _injected(annotations)
    opted_out = _opted_out(annotations)
    pod = _Pod.of(spec, prefix, bounds)
    defaulted = _limit_range_defaults(annotations)
    containers = []
    for slot in pod.slots:
        facts = _container_facts(slot, pod, injected)
        trace: list[ValueSteps] = []
        judged = _judge(facts, winner, opted_out, trace)
        report = _report(facts, judged)
        source, path = _limit_source(slot, pod, defaulted)
        env = _env(slot, GOMEMLIMIT, pod)
        governed = judged[0] is not None and facts.memory_limit_bytes is not None
        problem = judged[1].problem if governed else None
        containers.append(
            ContainerExplanation(
                report,
                slot.path,
                _coverage(winner, slot),
                source,
                path,
                trace[0] if trace else None,
                problem,
                None if env is None else f"{slot.path}.env[{env.index}]",
                bool(slot.container.get("envFrom")),
            )
        )
    return Explanation(choice, opted_out, tuple(containers))


def _why_not_selected(
    policy: Policy, namespace: str, pod_labels: Mapping[str, str], ns_labels: Mapping[str, str]
) -> str:
    if policy.kind == NAMESPACED_KIND and policy.namespace != namespace:
        return f"a GoMemPolicy of namespace {policy.namespace}, not of the pod's ({namespace})"
    if policy.kind == CLUSTER_KIND and not matches_selector(policy.namespace_selector, ns_labels):
        return f"its namespaceSelector does not match namespace {namespace}'s labels"
    if not matches_selector(policy.spec.selector, pod_labels):
        return "its selector does not match the pod's labels"
    return f"not a policy kind the engine knows ({policy.kind})"


def _coverage(policy: Policy | None, slot: _Slot) -> str:
    if policy is None:
        return "no policy governs the pod"
    patterns = policy.spec.containers
    globs = "every container" if patterns is None else f"containers {json.dumps(patterns)}"
    if slot.init and not policy.spec.include_init_containers:
        return "an init container, and the policy does not set includeInitContainers"
    if not governs(policy, slot.name, slot.init):
        return f"the name {slot.name!r} does not match the policy's {globs}"
    return f"governed: the policy covers {globs}"


def _limit_range_defaults(annotations: Mapping[str, Any]) -> frozenset[str]:
    """``container NAME`` / ``init container NAME`` whose memory limit LimitRanger set.

    The annotation lists ``<resources> <request|limit> for <container|init container>
    <name>`` items, ``; `` separated, after ``LimitRanger plugin set: ``.
    """
    text = str(annotations.get(ANNOTATION_LIMIT_RANGER) or "")
    _, _, items = text.partition(": ")
    found = set()
    for item in items.split("; "):
        resources, sep, target = item.partition(" limit for ")
        if sep and "memory" in (r.strip() for r in resources.split(",")):
            found.add(target.strip())
    return frozenset(found)


def _limit_source(
    slot: _Slot, pod: _Pod, defaulted: frozenset[str]
) -> tuple[LimitSource | None, str | None]:
    """Which field :func:`_limit` read (it reads the container's, then the pod's)."""
    keys = ("resources", "limits", "memory")
    if _quantity_at(slot.container, keys, slot.path) is not None:
        kind = "init container" if slot.init else "container"
        source = (
            LimitSource.LIMIT_RANGE if f"{kind} {slot.name}" in defaulted else LimitSource.CONTAINER
        )
        return source, f"{slot.path}.resources.limits.memory"
    if _quantity_at(pod.spec, keys, pod.prefix) is not None:
        return LimitSource.POD, f"{pod.prefix}.resources.limits.memory"
    return None, None
