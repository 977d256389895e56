"""The gomemlimit.io/v1alpha1 API: GoMemPolicy and ClusterGoMemPolicy.

These pydantic models are the single source of truth. The CRD schemas under
crds/ and the policy reference in docs/ are generated from them (crdgen.py), the
CLI and the operator validate with them, and tests fail when a generated file drifts.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gomemlimit_operator.core.globs import MAX_GLOB_LENGTH, MAX_GLOBS, ContainerGlobs
from gomemlimit_operator.core.goruntime import valid_gogc
from gomemlimit_operator.core.quantity import CEILING_TEXT, QuantityError, parse_bytes

GROUP: Final = "gomemlimit.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
NAMESPACED_KIND: Final = "GoMemPolicy"
CLUSTER_KIND: Final = "ClusterGoMemPolicy"
POLICY_KINDS: Final = (NAMESPACED_KIND, CLUSTER_KIND)
PLURALS: Final = {NAMESPACED_KIND: "gomempolicies", CLUSTER_KIND: "clustergomempolicies"}
SHORT_NAMES: Final = {NAMESPACED_KIND: "gmp", CLUSTER_KIND: "cgmp"}
CATEGORY: Final = "gomemlimit"
"""``kubectl get gomemlimit`` lists both kinds."""

WEBHOOK_ID: Final = "gomemlimit-pod-mutate"
"""The pod webhook's handler id; its HTTPS path is :data:`WEBHOOK_PATH`."""
WEBHOOK_PATH: Final = f"/{WEBHOOK_ID}"

DEFAULT_RATIO: Final = Decimal("0.9")

# apimachinery's Quantity pattern, without the minus sign: a memory amount is never negative.
QUANTITY_PATTERN: Final = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )


class OnExisting(enum.StrEnum):
    """What to do with a GOMEMLIMIT (or GOGC) that a container already sets."""

    RESPECT = "respect"
    OVERRIDE = "override"


class Mode(enum.StrEnum):
    """Whether the admission webhook injects values, or the policy only reports."""

    ENFORCE = "enforce"
    AUDIT = "audit"


MAX_SELECTOR_TERMS: Final = 32
"""The most matchLabels entries, matchExpressions, or values in one expression."""
LABEL_KEY_MAX: Final = 317  # a 253-character DNS prefix, "/", and a 63-character name
LABEL_VALUE_MAX: Final = 63

_VALUES_FIT_OPERATOR: Final[list[JsonValue]] = [
    {
        "rule": (
            "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) "
            ": (!has(self.values) || size(self.values) == 0)"
        ),
        "message": "values must be non-empty for In and NotIn, and empty for Exists and "
        "DoesNotExist",
        "fieldPath": ".values",
    }
]


class LabelSelectorRequirement(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _VALUES_FIT_OPERATOR})

    key: str = Field(
        min_length=1,
        max_length=LABEL_KEY_MAX,
        description="The label key the requirement applies to.",
    )
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[Annotated[str, Field(max_length=LABEL_VALUE_MAX)]] | None = Field(
        default=None,
        max_length=MAX_SELECTOR_TERMS,
        description="Required and non-empty for In and NotIn; must be empty otherwise.",
    )

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"values must be non-empty for operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values must be empty for operator {self.operator}")
        return self


class LabelSelector(_Model):
    """A metav1.LabelSelector. Absent or empty selects everything."""

    match_labels: dict[str, Annotated[str, Field(max_length=LABEL_VALUE_MAX)]] | None = Field(
        default=None,
        max_length=MAX_SELECTOR_TERMS,
        description="Labels that must all be present with these values.",
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=MAX_SELECTOR_TERMS, description="Requirements that must all hold."
    )


def _exact_ratio(value: object) -> object:
    """Read a ratio as the decimal that was written, never as a binary float."""
    if isinstance(value, bool):
        raise ValueError("ratio must be a number, not a boolean")
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        raise ValueError("ratio must be a number such as 0.9, not a string")
    return value


QUANTITY_MAX_LENGTH: Final = 64


def _quantity(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a quantity such as 64Mi")
    if isinstance(value, str) and len(value) > QUANTITY_MAX_LENGTH:
        raise ValueError(f"must be at most {QUANTITY_MAX_LENGTH} characters")
    try:
        parse_bytes(value)
    except QuantityError as exc:
        raise ValueError(str(exc)) from None
    return value


Ratio = Annotated[
    Decimal,
    BeforeValidator(_exact_ratio),
    Field(gt=0, lt=1),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
]
Quantity = Annotated[
    str | int,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            # "minimum" applies to the integer form, "pattern" and "maxLength" to the string form.
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 0,
            "pattern": QUANTITY_PATTERN,
            "maxLength": QUANTITY_MAX_LENGTH,
            "x-kubernetes-int-or-string": True,
        }
    ),
]


def _quantity_rules(*fields: str) -> list[JsonValue]:
    """CEL for what parse_bytes() rejects beyond the pattern: amounts above its ceiling."""
    return [
        {
            "rule": (
                f"!has(self.{name}) || "
                f"!quantity(string(self.{name})).isGreaterThan(quantity('{CEILING_TEXT}'))"
            ),
            "message": f"{name} must be at most {CEILING_TEXT} bytes",
            "fieldPath": f".{name}",
        }
        for name in fields
    ]


_HEADROOM_RULES: Final[list[JsonValue]] = [
    *_quantity_rules("minHeadroom", "maxHeadroom"),
    {
        "rule": (
            "!has(self.maxHeadroom) || "
            "quantity(string(self.maxHeadroom)).isGreaterThan(quantity('0'))"
        ),
        "message": "maxHeadroom must be greater than 0: GOMEMLIMIT must stay below the limit",
        "fieldPath": ".maxHeadroom",
    },
    {
        "rule": (
            "!has(self.minHeadroom) || !has(self.maxHeadroom) || "
            "quantity(string(self.minHeadroom)).compareTo(quantity(string(self.maxHeadroom))) <= 0"
        ),
        "message": "minHeadroom must not be greater than maxHeadroom",
        "fieldPath": ".maxHeadroom",
    },
]


_GOGC_RULES: Final[list[JsonValue]] = [
    {
        "rule": "self == 'off' || (self.matches('^[0-9]+$') && int(self) <= 2147483647)",
        "message": 'gogc must be "off" or an integer from 0 to 2147483647',
    }
]


class GoMemPolicySpec(_Model):
    """Which containers get a GOMEMLIMIT, and how it is computed."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _HEADROOM_RULES})

    selector: LabelSelector | None = Field(
        default=None, description="Pods whose labels match. Absent or empty selects all pods."
    )
    containers: list[Annotated[str, Field(min_length=1, max_length=MAX_GLOB_LENGTH)]] | None = (
        Field(
            default=None,
            min_length=1,
            max_length=MAX_GLOBS,
            description=(
                "Container-name glob patterns (fnmatch: *, ?, [abc]). Absent means every entry "
                f"of spec.containers. At most {MAX_GLOBS} patterns of {MAX_GLOB_LENGTH} "
                "characters."
            ),
        )
    )
    include_init_containers: StrictBool = Field(
        default=False,
        description=(
            "Also govern init containers, including restartable sidecars, "
            "when their names match `containers`."
        ),
    )
    ratio: Ratio = Field(
        default=DEFAULT_RATIO,
        description=(
            "GOMEMLIMIT as a fraction of the memory limit, 0 < ratio < 1. "
            "Computed exactly from the decimal written here."
        ),
    )
    min_headroom: Quantity | None = Field(
        default=None,
        description="Least memory left between GOMEMLIMIT and the limit, e.g. 64Mi.",
    )
    max_headroom: Quantity | None = Field(
        default=None,
        description="Most memory left between GOMEMLIMIT and the limit, e.g. 1Gi.",
    )
    on_existing: OnExisting = Field(
        default=OnExisting.RESPECT,
        description=(
            "respect leaves a container's own GOMEMLIMIT/GOGC alone; override replaces it."
        ),
    )
    mode: Mode = Field(
        default=Mode.ENFORCE,
        description="enforce injects at pod creation; audit only reports.",
    )
    priority: StrictInt = Field(
        default=0,
        ge=-(2**31),
        le=2**31 - 1,
        description=(
            "Among policies of the same scope that select a pod, the highest wins; "
            "ties go to the lexically smallest name."
        ),
    )
    gogc: str | None = Field(
        default=None,
        pattern=r"^(off|[0-9]+)$",
        max_length=10,
        json_schema_extra={"x-kubernetes-validations": _GOGC_RULES},
        description=(
            'Optional GOGC to inject alongside GOMEMLIMIT: "off" or a non-negative integer, '
            "as a string."
        ),
    )

    @field_validator("gogc")
    @classmethod
    def _gogc_in_range(cls, value: str | None) -> str | None:
        if value is not None and not valid_gogc(value):
            raise ValueError('gogc must be "off" or an integer from 0 to 2147483647')
        return value

    @field_validator("max_headroom")
    @classmethod
    def _max_headroom_bounds(
        cls, value: str | int | None, info: ValidationInfo
    ) -> str | int | None:
        """The same two rules the CRD checks with CEL (see _HEADROOM_RULES)."""
        if value is None:
            return value
        high = parse_bytes(value)
        if high == 0:  # no headroom would make GOMEMLIMIT equal to the limit
            raise ValueError(
                "maxHeadroom must be greater than 0: GOMEMLIMIT must stay below the limit"
            )
        low = info.data.get("min_headroom")
        if low is not None and parse_bytes(low) > high:
            raise ValueError(f"minHeadroom ({low}) must not be greater than maxHeadroom ({value})")
        return value

    @property
    def min_headroom_bytes(self) -> int | None:
        return None if self.min_headroom is None else parse_bytes(self.min_headroom)

    @property
    def max_headroom_bytes(self) -> int | None:
        return None if self.max_headroom is None else parse_bytes(self.max_headroom)


class ClusterGoMemPolicySpec(GoMemPolicySpec):
    """A GoMemPolicySpec for the whole cluster, narrowed by namespace labels."""

    namespace_selector: LabelSelector | None = Field(
        default=None,
        description="Namespaces whose labels match. Absent means all namespaces.",
    )


class ContainerCounts(_Model):
    """Governed containers per state: the state names, in camelCase."""

    compliant: int = 0
    missing: int = 0
    invalid: int = 0
    exceeds_limit: int = 0
    no_memory_limit: int = 0
    unsatisfiable: int = 0
    stale: int = 0
    opted_out: int = 0
    unverifiable: int = 0


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class PolicyStatus(_Model):
    """What the operator observed for a policy. Written through the status subresource."""

    model_config = ConfigDict(frozen=False)

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    matched_pods: int = 0
    governed_containers: int = 0
    noncompliant_containers: int = 0
    containers: ContainerCounts = Field(default_factory=ContainerCounts)


SPEC_MODELS: Final[Mapping[str, type[GoMemPolicySpec]]] = {
    NAMESPACED_KIND: GoMemPolicySpec,
    CLUSTER_KIND: ClusterGoMemPolicySpec,
}


class PolicyError(ValueError):
    """A policy object that does not validate. The message names the field."""

    def __init__(self, ref: str, field: str, problem: str) -> None:
        super().__init__(f"{ref}: {field}: {problem}")
        self.ref, self.field, self.problem = ref, field, problem


@dataclass(frozen=True)
class Policy:
    """A validated policy, as the engine sees it."""

    kind: str
    name: str
    namespace: str | None
    spec: GoMemPolicySpec
    generation: int | None = None
    globs: ContainerGlobs = field(init=False, repr=False, compare=False)
    """``spec.containers``, compiled once, when the policy is loaded."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "globs", ContainerGlobs(self.spec.containers))

    @property
    def ref(self) -> str:
        """``ClusterGoMemPolicy/<name>`` or ``GoMemPolicy/<namespace>/<name>``."""
        return object_ref(self.kind, self.name, self.namespace)

    @property
    def namespace_selector(self) -> LabelSelector | None:
        return (
            self.spec.namespace_selector if isinstance(self.spec, ClusterGoMemPolicySpec) else None
        )


def object_ref(kind: str, name: str, namespace: str | None) -> str:
    return f"{kind}/{name}" if namespace is None else f"{kind}/{namespace}/{name}"


def describe_errors(error: ValidationError, prefix: str = "spec") -> list[tuple[str, str]]:
    """(field path, problem) pairs with API field names, e.g. ("spec.ratio", "...")."""
    problems = []
    for item in error.errors(include_url=False):
        path = prefix
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = item["msg"].removeprefix("Value error, ")
        problems.append((path, message))
    return problems


def parse_policy(obj: Mapping[str, Any], default_namespace: str = "default") -> Policy:
    """Validate a GoMemPolicy or ClusterGoMemPolicy object (a dict as from YAML or the API)."""
    kind = str(obj.get("kind", ""))
    metadata = obj.get("metadata") or {}
    name = str(metadata.get("name") or "")
    namespace = (
        None if kind == CLUSTER_KIND else str(metadata.get("namespace") or default_namespace)
    )
    ref = object_ref(kind or "<no kind>", name or "<no name>", namespace)
    if kind not in SPEC_MODELS:
        raise PolicyError(ref, "kind", f"expected one of {', '.join(POLICY_KINDS)}")
    if obj.get("apiVersion") != API_VERSION:
        raise PolicyError(
            ref, "apiVersion", f"expected {API_VERSION}, got {obj.get('apiVersion')!r}"
        )
    if not name:
        raise PolicyError(ref, "metadata.name", "is required")
    raw_spec = obj.get("spec")
    if raw_spec is None:
        raw_spec = {}
    if not isinstance(raw_spec, Mapping):
        raise PolicyError(ref, "spec", "must be an object")
    try:
        spec = SPEC_MODELS[kind].model_validate(raw_spec)
    except ValidationError as exc:
        field, problem = describe_errors(exc)[0]
        raise PolicyError(ref, field, problem) from None
    generation = metadata.get("generation")
    return Policy(kind, name, namespace, spec, generation if isinstance(generation, int) else None)


DEFAULT_POLICY: Final = Policy(CLUSTER_KIND, "default", None, ClusterGoMemPolicySpec())
"""The implicit policy the CLI uses when no policy is supplied at all."""
