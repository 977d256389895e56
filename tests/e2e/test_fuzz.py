"""Fuzzing against the running operator (issue "Fuzzing, against the running server").

Hypothesis generates the inputs; the target is the real operator process of the session
(``--dev``, its HTTPS webhook on 127.0.0.1, the local API server behind it).

* **AdmissionReviews**, POSTed as raw bytes over TLS to the webhook port (trusting the dev CA
  from the caBundle the operator registered), so that bad UTF-8 and deep nesting really
  reach the server. Seven categories, each its own Hypothesis run: well-typed Pod CREATEs
  with odd values in governed namespaces (``shaped``) and in others (``elsewhere``), wrong
  types anywhere (``wrong_types``), other operations, kinds and subresources
  (``operations``), bad bytes and non-JSON (``bytes``), nesting up to orjson's limit of 1,024
  levels and past it (``deep``) and huge bodies up to 3.5 MiB (``huge``). Each answer must be
  what the documented content rule says (200, or 400 with the reason in its body; never a
  5xx, never a dropped connection) within 2 s; a 200 must echo the uid, allow the pod, and
  carry only a patch that adds or corrects GOMEMLIMIT/GOGC entries of governed containers,
  with values in Go's grammar, at most MaxInt64, below the limit and equal to the value
  contract, and that patch applied must need no second one. Over the whole run: RSS growth
  under 150 MiB, no event-loop stall over 1 s, under 1 MiB of operator log; afterwards the
  operator is alive and a real pod created through the API server still gets its value.
* **Policies**: generated GoMemPolicy and ClusterGoMemPolicy specs (cluster ones pinned to the
  test's namespace) created through the API server. The CRD schema may refuse them; an
  accepted one must get Ready True exactly when the models accept it (False otherwise), the
  operator must stay alive, and a pod created afterwards (a server-side dry run) gets the
  value contract's value from the policy it names, or none. Where the CRD schema and the
  models disagree, the test prints it ("drift").

The CLI manifests part is tests/unit/cli/test_fuzz_manifests.py (in-process, no cluster).
Run with ``-s`` to see the numbers each test prints.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import re
import ssl
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import jsonpatch
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from gomemlimit_operator.core.api import (
    API_VERSION,
    CLUSTER_KIND,
    NAMESPACED_KIND,
    PLURALS,
    POLICY_KINDS,
    WEBHOOK_PATH,
    Policy,
    PolicyError,
    parse_policy,
)
from gomemlimit_operator.core.engine import (
    ANNOTATION_INJECTED,
    ANNOTATION_POLICY,
)
from tests.cluster.controlplane import ControlPlane
from tests.e2e.fuzz_strategies import (
    DEPTHS,
    check_container,
    corrupted,
    deep,
    label_keys,
    label_values,
    pods,
    policy_specs,
    short,
)
from tests.e2e.operator_harness import (
    OperatorProcess,
    apply,
    cluster_policies,
    crds,
    get,
    operator_process,
    operator_service,
    pod_review,
    policy_yaml,
    wait_ready,
)

__all__ = ["cluster_policies", "crds", "operator_process", "operator_service"]

LATENCY_BOUND: Final = 2.0  # seconds per request
RSS_GROWTH_BOUND: Final = 150 * 1024 * 1024
LOG_GROWTH_BOUND: Final = 1024 * 1024  # bytes of operator log for the whole run
STALL_BOUND: Final = 1.0  # seconds: a bucket bound of gomemlimit_event_loop_stall_seconds
BODY_LIMIT: Final = 3_670_016  # 3.5 MiB: under the server's 4 MiB cap and the API server's 3
IMAGE: Final = "registry.invalid/app:1"
_PATCH_PATH: Final = re.compile(
    r"/spec/(?:containers|initContainers)/[0-9]+/env(?:/-|/[0-9]+)?"
    r"|/metadata/annotations(?:/gomemlimit\.io~1(?:injected|policy))?"
)
_OUR_ANNOTATIONS: Final = frozenset({ANNOTATION_INJECTED, ANNOTATION_POLICY})


def _fuzz_settings(examples: int) -> settings:
    """Deterministic runs (the same inputs every time), no deadline, no example database."""
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# ---------------------------------------------------------------------------------------------
# The client and the measurements
# ---------------------------------------------------------------------------------------------


class WebhookClient:
    """POSTs raw bytes to the webhook over verified TLS, on one keep-alive connection that
    is opened again after the server closes it (it does after every error answer)."""

    def __init__(self, port: int, ca_pem: bytes) -> None:
        self.port = port
        self.context = ssl.create_default_context(cadata=ca_pem.decode())
        self._connection: http.client.HTTPSConnection | None = None

    def post(self, body: bytes) -> tuple[int, bytes, float]:
        """(status, body, seconds from the first byte sent to the last byte read)."""
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=self.context, timeout=30
            )
            self._connection.connect()  # the handshake is not part of the request's time
        connection = self._connection
        started = time.perf_counter()
        try:
            connection.request(
                "POST", WEBHOOK_PATH, body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise AssertionError(f"the connection failed: {exc!r}") from exc
        elapsed = time.perf_counter() - started
        if response.will_close:
            self.close()
        return response.status, data, elapsed

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@contextlib.contextmanager
def recursion_limit(limit: int) -> Iterator[None]:
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def stall_counts(operator: OperatorProcess) -> dict[float, float]:
    """Event-loop stalls so far per histogram bucket: upper bound -> cumulative count."""
    return {
        float(dict(labels)["le"]): value
        for labels, value in operator.samples("gomemlimit_event_loop_stall_seconds_bucket").items()
    }


def longest_stall_between(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the highest bucket that gained a stall (0 when none did)."""
    grown = [bound for bound in after if after[bound] > before.get(bound, 0)]
    if not grown:
        return 0.0
    # Buckets are cumulative: the lowest bound that gained as many as +Inf bounds them all.
    total = after[float("inf")] - before.get(float("inf"), 0)
    return min(bound for bound in grown if after[bound] - before.get(bound, 0) == total)


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------


def expected_status(body: bytes) -> int:
    """The server's documented content rule (docs/operator.md, "Serving and its limits"):
    JSON (valid UTF-8, at most 1,024 levels) holding an object whose ``request`` is an
    object with a string ``uid``: 200; anything else: 400."""
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 400
    if not isinstance(review, dict):
        return 400
    request = review.get("request")
    return 200 if isinstance(request, dict) and isinstance(request.get("uid"), str) else 400


def decided(request: Mapping[str, Any]) -> bool:
    """Whether the webhook decides (may patch) the request: a Pod CREATE, no subresource."""
    resource = request.get("resource")
    return (
        request.get("operation") == "CREATE"
        and isinstance(resource, Mapping)
        and resource.get("resource") == "pods"
        and resource.get("group") == ""
        and not request.get("subResource")
        and isinstance(request.get("object"), Mapping)
    )


def check_injection(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    policies: Mapping[str, Policy],
    *,
    defaulted: bool = False,
) -> int:
    """``after`` is ``before`` with at most our injection; returns the values injected.

    Only the env lists of governed containers and init containers gain or correct
    GOMEMLIMIT/GOGC entries (a user's own entry only under ``onExisting: override``), each
    GOMEMLIMIT is valid, below the limit and the value contract's, and the annotations say
    which policy did it. ``policies``: the ones that may govern, by reference.
    ``defaulted``: ``after`` comes from the API server, which also sets container defaults.
    """
    spec, new_spec = before.get("spec") or {}, after.get("spec") or {}
    old_annotations = (before.get("metadata") or {}).get("annotations")
    annotations = (after.get("metadata") or {}).get("annotations") or {}
    injected = 0
    for key in ("initContainers", "containers"):
        if not isinstance(spec.get(key), list):
            continue
        for index, (old, new) in enumerate(zip(spec[key], new_spec[key], strict=True)):
            where = f"spec.{key}[{index}]"
            if not isinstance(old, Mapping):
                assert new == old, where
                continue
            if not defaulted:
                assert {k: v for k, v in new.items() if k != "env"} == {
                    k: v for k, v in old.items() if k != "env"
                }, f"{where}: more than env changed"
            injected += check_container(
                old,
                new,
                init=key == "initContainers",
                spec=spec,
                annotations=(old_annotations, annotations),
                policies=policies,
                where=where,
            )
    if isinstance(old_annotations, Mapping):
        theirs = {k: v for k, v in old_annotations.items() if k not in _OUR_ANNOTATIONS}
        assert {k: v for k, v in annotations.items() if k not in _OUR_ANNOTATIONS} == theirs
    return injected


@dataclass
class Category:
    """What one category of inputs did."""

    name: str
    inputs: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    results: dict[str, float] = field(default_factory=dict)
    slowest: float = 0.0
    injected: int = 0
    predicted_ignored: int = 0
    largest_body: int = 0

    def line(self) -> str:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        results = ", ".join(f"{k}: {v:g}" for k, v in sorted(self.results.items()) if v)
        return (
            f"{self.name:<12} {self.inputs:>4} inputs (HTTP {statuses}; results {results}); "
            f"{self.injected} values checked; slowest {self.slowest * 1000:.0f} ms; "
            f"largest body {self.largest_body / 1024:.0f} KiB"
        )


class Fuzzer:
    """Sends inputs to the running webhook and checks every answer."""

    RESULTS: Final = ("mutated", "unchanged", "skipped", "too_large", "error", "ignored")

    def __init__(self, operator: OperatorProcess, targets: Targets) -> None:
        self.operator = operator
        self.client = WebhookClient(operator.webhook_port, targets.ca_pem)
        self.policies = targets.policies
        self.namespace_of = targets.namespace_of
        self.categories: list[Category] = []

    def results(self) -> dict[str, float]:
        return {
            result: self.operator.metric("gomemlimit_admission_requests_total", result=result)
            for result in self.RESULTS
        }

    def run(self, name: str, strategy: st.SearchStrategy[bytes], examples: int) -> Category:
        category = Category(name)
        before = self.results()

        @_fuzz_settings(examples)
        @given(body=strategy)
        def one(body: bytes) -> None:
            assert len(body) <= BODY_LIMIT, len(body)
            category.inputs += 1
            category.largest_body = max(category.largest_body, len(body))
            self.send(category, body, idempotent=name == "shaped")

        one()
        after = self.results()
        category.results = {k: after[k] - before[k] for k in self.RESULTS}
        self.categories.append(category)
        return category

    def send(self, category: Category, body: bytes, *, idempotent: bool) -> None:
        status, answer, elapsed = self.client.post(body)
        category.statuses[status] += 1
        category.slowest = max(category.slowest, elapsed)
        assert elapsed < LATENCY_BOUND, f"{elapsed:.2f}s for {short(body)}"
        expected = expected_status(body)
        assert status == expected, f"HTTP {status} {short(answer)} for {short(body)}"
        if status != 200:
            text = answer.decode(errors="replace").strip()
            assert text.startswith(f"{status} "), text
            assert len(text) > len("400 Bad Request: "), f"no reason given: {text!r}"
            return
        review = orjson.loads(body)
        if not decided(review["request"]):
            category.predicted_ignored += 1
        patched = self.check(review, orjson.loads(body), orjson.loads(answer), category)
        if patched is not None and idempotent:
            again = pod_review(str(patched["metadata"].get("namespace")), patched)
            status, second, _ = self.client.post(encode(again))
            assert status == 200, second
            assert "patch" not in orjson.loads(second)["response"], "a second patch"

    def check(
        self,
        review: Mapping[str, Any],
        copy: dict[str, Any],
        answer: Mapping[str, Any],
        category: Category,
    ) -> dict[str, Any] | None:
        """The answer to a review: allowed, its uid, and a patch only of our injection. The
        patched pod (None without a patch): ``copy`` (another parse of the same body) with
        the patch applied in place, since jsonpatch's deep copy fails on 1,000 levels."""
        request = review["request"]
        api_version = review.get("apiVersion")
        assert answer["apiVersion"] == (
            api_version if isinstance(api_version, str) else "admission.k8s.io/v1"
        )
        assert answer["kind"] == "AdmissionReview"
        response = answer["response"]
        assert response["uid"] == request["uid"]
        assert response["allowed"] is True
        assert set(response) <= {"uid", "allowed", "warnings", "patchType", "patch"}, response
        warnings = response.get("warnings", [])
        assert isinstance(warnings, list)
        assert all(isinstance(w, str) and w.startswith("gomemlimit: ") for w in warnings)
        if "patch" not in response:
            assert "patchType" not in response
            return None
        assert decided(request), "a patch for a request that is not a Pod CREATE"
        assert response["patchType"] == "JSONPatch"
        operations = json.loads(base64.b64decode(response["patch"], validate=True))
        pod = request["object"]
        for operation in operations:
            assert operation["op"] in ("add", "replace"), operation
            assert _PATCH_PATH.fullmatch(operation["path"]), operation
            if operation["path"] == "/metadata/annotations":
                assert (pod.get("metadata") or {}).get("annotations") is None
                assert set(operation["value"]) <= _OUR_ANNOTATIONS
        patched: dict[str, Any] = jsonpatch.apply_patch(
            copy["request"]["object"], operations, in_place=True
        )
        ref = patched["metadata"]["annotations"][ANNOTATION_POLICY]
        namespace = pod["metadata"].get("namespace")
        assert namespace == self.namespace_of[ref], f"{ref} injected into a pod in {namespace!r}"
        category.injected += check_injection(pod, patched, self.policies)
        return patched

    def summary(self) -> str:
        return "\n".join(category.line() for category in self.categories)


# ---------------------------------------------------------------------------------------------
# The inputs
# ---------------------------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    """JSON bytes of a generated value: the standard encoder, which writes integers of any
    size (orjson refuses those past 64 bits; the server reads them as floats)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def review_bytes(namespaces: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """``shaped`` (and ``elsewhere``, in namespaces no policy governs): well-typed Pod CREATE
    reviews with odd values, as JSON bytes."""

    def review(pod: dict[str, Any], dry_run: bool) -> bytes:
        review = pod_review(pod["metadata"]["namespace"], pod)
        review["request"]["dryRun"] = dry_run
        return encode(review)

    return st.builds(review, pods(namespaces), st.booleans())


def wrong_type_bytes(namespaces: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """``wrong_types``: the same reviews with nodes anywhere replaced by wrong-typed values
    (the root and ``request`` included, sometimes)."""
    return (
        pods(namespaces)
        .flatmap(lambda pod: corrupted(pod_review(pod["metadata"]["namespace"], pod)))
        .map(encode)
    )


@st.composite
def operation_bytes(draw: st.DrawFn, namespaces: st.SearchStrategy[str]) -> bytes:
    """``operations``: other operations, resources, kinds and subresources, and objects
    that are not mappings."""
    pod = draw(pods(namespaces))
    review = pod_review(pod["metadata"]["namespace"], pod)
    request = review["request"]
    change = draw(st.sampled_from(["operation", "resource", "subresource", "object", "kind"]))
    if change == "operation":
        request["operation"] = draw(
            st.sampled_from(["UPDATE", "DELETE", "CONNECT", "create", "Create", "", None, 0])
        )
        request["oldObject"] = pod
    elif change == "resource":
        request["resource"] = draw(
            st.sampled_from(
                [
                    {"group": "apps", "version": "v1", "resource": "deployments"},
                    {"group": "", "version": "v1", "resource": "Pods"},
                    {"group": "example.io", "version": "v1", "resource": "pods"},
                    {"version": "v1", "resource": "pods"},
                    "pods",
                    None,
                    ["pods"],
                ]
            )
        )
    elif change == "subresource":
        request["subResource"] = draw(
            st.sampled_from(["eviction", "binding", "status", "ephemeralcontainers", "", None])
        )
    elif change == "object":
        request["object"] = draw(st.sampled_from([None, [], "pod", 5, [pod]]))
    else:
        request["kind"] = {
            "group": "",
            "version": "v1",
            "kind": draw(st.sampled_from(["Pod", "X"])),
        }
        review["apiVersion"] = draw(st.sampled_from(["admission.k8s.io/v1beta1", 7, None, "x"]))
    return encode(review)


_BAD_UTF8: Final = [
    b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\x28",
    b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"abc\xe2\x82", b"\xf8\x88\x80",
]  # fmt: skip
_ODD_BUT_VALID: Final = [
    "\u00e9".encode(), "\U0001f600".encode(), b"\\u0000", b"\\ud83d\\ude00", b"\\u2028",
]  # fmt: skip
_ODD_ESCAPES: Final = [b"\\ud800", b"\\udc00\\ud800", b"\\x41", b"\\u12", b'\\"\\']
_WHOLE_BODIES: Final = [
    b"", b" ", b"null", b"[]", b"[{}]", b"123", b'"x"', b"{", b"{}", b"true",
    b'{"request": null}', b'{"request": {}}', b'{"request": {"uid": 5}}', b'{"request": []}',
    b'{"request": {"uid": null}}', b'{"request": {"uid": "u"}}', b'{"request": {"uid": ""}}',
    b'{"request": {"uid": "a", "uid": 5}}', b'{"request": {"uid": 5, "uid": "a"}}',
    b'{"request": {"uid": "u", "x": NaN}}', b'{"request": {"uid": "u", "x": Infinity}}',
    b'{"request": {"uid": "u", "x": 1e400}}', b'{"request": {"uid": "u"}} trailing',
    b"\xef\xbb\xbf{}", b'{"request": {"uid": "u"}}\x00', b"{'request': {'uid': 'u'}}",
]  # fmt: skip
_MARK: Final = "FUZZMARK"


@st.composite
def byte_bodies(draw: st.DrawFn, namespaces: st.SearchStrategy[str]) -> bytes:
    """``bytes``: bad UTF-8 and odd escapes inside a string of a valid review, truncated or
    prefixed bodies, non-JSON, JSON that is not an AdmissionReview request, random bytes."""
    pod = draw(pods(namespaces))
    pod["metadata"]["name"] = _MARK
    valid = encode(pod_review(pod["metadata"]["namespace"], pod))
    how = draw(st.sampled_from(["inside", "inside", "whole", "cut", "prefix", "random"]))
    if how == "inside":
        piece = draw(st.sampled_from([*_BAD_UTF8, *_ODD_BUT_VALID, *_ODD_ESCAPES]))
        return valid.replace(_MARK.encode(), b"p" + piece + b"q")
    if how == "whole":
        return draw(st.sampled_from(_WHOLE_BODIES))
    if how == "cut":
        return valid[: draw(st.integers(min_value=0, max_value=len(valid) - 1))]
    if how == "prefix":
        return draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff", b" \n\t", b"\x00"])) + valid
    return draw(st.binary(max_size=300))


_DEEP_PLACES: Final = [
    "metadata.namespace", "metadata.name", "container.name", "metadata.labels",
    "annotation.value", "env.value", "env.valueFrom", "limits.memory", "container.env",
    "metadata.annotations", "spec.containers", "object.spec.extra", "request.extra",
    "root.extra", "request.uid", "request.operation", "request.dryRun",
]  # fmt: skip
"""Where a deep value goes; Hypothesis draws the first entries most often, so the fields
the handler reads and formats come first."""


@st.composite
def deep_bodies(draw: st.DrawFn, namespaces: st.SearchStrategy[str]) -> bytes:
    """``deep``: a value nested up to 5,000 levels, at one of many places in a review; up to
    1,024 levels in all orjson parses it (and the handler must cope), beyond that it is 400."""
    pod = draw(pods(namespaces))
    review = pod_review(pod["metadata"]["namespace"], pod)
    request, metadata = review["request"], review["request"]["object"]["metadata"]
    container = review["request"]["object"]["spec"]["containers"][0]
    place = draw(st.sampled_from(_DEEP_PLACES))
    where, _, key = place.partition(".")
    holder = {
        "root": review,
        "request": request,
        "object": request["object"]["spec"],
        "metadata": metadata,
        "container": container,
        "env": container,
        "limits": container,
        "spec": request["object"]["spec"],
    }.get(where)
    value: Any = _MARK
    if place == "annotation.value":
        if not isinstance(metadata.get("annotations"), dict):
            metadata["annotations"] = {}
        holder, key = metadata["annotations"], "a"
    elif place == "object.spec.extra":
        key = "extra"
    elif where == "env":
        key, value = "env", [{"name": "GOMEMLIMIT", key: _MARK}]
    elif place == "limits.memory":
        key, value = "resources", {"limits": {"memory": _MARK}}
    assert holder is not None, place
    holder[key] = value
    text = encode(review)
    marker = f'"{_MARK}"'.encode()
    # Levels open where the marker stands: the nesting then ends within 100 levels below
    # orjson's limit of 1,024 (where the handler must cope) or up to 8 past it (400).
    above = _open_levels(text[: text.index(marker)])
    near = st.integers(min_value=-100, max_value=8).map(lambda offset: 1024 - above + offset)
    depth = draw(st.one_of(near, near, near, st.sampled_from(DEPTHS)))
    kind = draw(st.sampled_from(["list", "map"]))
    return text.replace(marker, deep(depth, kind).encode())


def _open_levels(prefix: bytes) -> int:
    """How many JSON arrays and objects are open at the end of ``prefix`` (valid JSON text
    cut anywhere outside a string)."""
    level, in_string, escaped = 0, False, False
    for byte in prefix:
        if in_string:
            escaped = not escaped and byte == 0x5C  # backslash
            in_string = escaped or byte != 0x22  # quote
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            level += 1
        elif byte in b"]}":
            level -= 1
    return level


def _fit(count: int, largest: Any) -> int:
    """How many list items, none larger than ``largest``, fit in the body limit, with room
    for the rest of the review."""
    return min(count, (BODY_LIMIT - 64 * 1024) // (len(encode(largest)) + 1))


@st.composite
def huge_bodies(draw: st.DrawFn, namespaces: st.SearchStrategy[str]) -> bytes:
    """``huge``: thousands of containers or env entries, megabyte strings, tens of thousands
    of labels, annotations or list items; every body under 3.5 MiB."""
    namespace = draw(namespaces)
    ref = {"resourceFieldRef": {"resource": "limits.memory", "containerName": "c0"}}
    shape = draw(
        st.sampled_from(
            ["containers", "env", "at_bounds", "string", "labels", "annotations", "list"]
        )
    )
    spec: dict[str, Any] = {}
    metadata: dict[str, Any] = {"name": "huge", "labels": {"app": "x"}}
    one = {"name": "app", "image": IMAGE, "resources": {"limits": {"memory": "512Mi"}}}
    if shape == "containers":

        def item(i: int) -> dict[str, Any]:
            return {**one, "name": f"c{i}", "env": [{"name": "GOMEMLIMIT", "valueFrom": ref}]}

        count = _fit(draw(st.sampled_from([257, 1000, 5000, 20000])), item(99999))
        init = draw(st.booleans())
        items = [item(i) for i in range(count)]
        spec["initContainers" if init else "containers"] = items
        if init:
            spec["containers"] = [one]
    elif shape == "env":
        count = _fit(draw(st.sampled_from([8193, 20000, 100000])), {"name": "V99999", "value": "x"})
        spec["containers"] = [
            {**one, "env": [{"name": f"V{i}", "value": "x"} for i in range(count)]}
        ]
    elif shape == "at_bounds":  # 256 containers, 8,192 env entries: all evaluated
        spec["containers"] = [
            {**one, "name": f"c{i}", "env": [
                *({"name": f"V{j}", "value": "x"} for j in range(31)),
                {"name": "GOMEMLIMIT", "valueFrom": ref},
            ]}
            for i in range(256)
        ]  # fmt: skip
    elif shape == "string":
        where = draw(st.sampled_from(["env", "name", "annotation", "label", "namespace"]))
        letter = draw(st.sampled_from(["x", "\u00e9", "9"]))
        copies = 2 if where == "namespace" else 1  # in the request and in the object
        size = draw(st.sampled_from([1 << 20, 3 << 20])) // copies
        text = letter * (size // len(letter.encode()))
        spec["containers"] = [dict(one)]
        if where == "env":
            spec["containers"][0]["env"] = [{"name": "PAYLOAD", "value": text}]
        elif where == "name":
            spec["containers"][0]["name"] = text
        elif where == "annotation":
            metadata["annotations"] = {"big": text}
        elif where == "label":
            metadata["labels"] = {"app": text}
        else:
            namespace = text
    elif shape in ("labels", "annotations"):
        count = _fit(draw(st.sampled_from([10000, 60000])), {"k99999.example/key": "v99999"})
        metadata[shape] = {f"k{i}.example/key": f"v{i}" for i in range(count)}
        spec["containers"] = [one]
    else:
        count = _fit(draw(st.sampled_from([100000, 400000])), {"n": 999999})
        spec["containers"] = [one]
        spec["volumes"] = [{"n": i} for i in range(count)]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    body = encode(pod_review(namespace, pod))
    assert len(body) <= BODY_LIMIT, (shape, len(body))
    return body


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """Two governed namespaces, their policies (as the operator read them) and the dev CA."""

    cluster_ns: str
    namespaced_ns: str
    policies: dict[str, Policy]
    namespace_of: dict[str, str]
    """Policy reference -> the one namespace it may govern."""
    ca_pem: bytes


@pytest.fixture
def targets(
    cluster: ControlPlane,
    new_namespace: Callable[[], str],
    operator_process: OperatorProcess,
    cluster_policies: Callable[..., dict[str, Any]],
) -> Targets:
    """A namespace under a ClusterGoMemPolicy (override, GOGC, init containers, maxHeadroom)
    and one under a GoMemPolicy (ratio 0.75, minHeadroom, container globs, a selector)."""
    cluster_ns, namespaced_ns = new_namespace(), new_namespace()
    cluster_policy = cluster_policies(
        "fuzz-reviews",
        {
            "onExisting": "override",
            "gogc": "75",
            "includeInitContainers": True,
            "maxHeadroom": "1Gi",
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cluster_ns}},
        },
    )
    spec = {
        "ratio": 0.75,
        "minHeadroom": "64Mi",
        "containers": ["app*", "w?rker", "[!p]*-go"],
        "selector": {
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["skip"]}]
        },
    }
    cluster.kubectl(
        "apply", "-f", "-", input=policy_yaml(NAMESPACED_KIND, "fuzz-reviews", spec, namespaced_ns)
    )
    namespaced = wait_ready(cluster, NAMESPACED_KIND, "fuzz-reviews", namespaced_ns)
    governing = [
        (parse_policy(cluster_policy), cluster_ns),
        (parse_policy(namespaced), namespaced_ns),
    ]
    dev = get(cluster, "mutatingwebhookconfiguration", operator_process.webhook_name)
    ca_pem = base64.b64decode(dev["webhooks"][0]["clientConfig"]["caBundle"])
    return Targets(
        cluster_ns,
        namespaced_ns,
        {policy.ref: policy for policy, _ in governing},
        {policy.ref: ns for policy, ns in governing},
        ca_pem,
    )


def test_fuzzed_admission_reviews_get_valid_answers_in_bounded_time_and_memory(
    cluster: ControlPlane, operator_process: OperatorProcess, targets: Targets
) -> None:
    started = time.monotonic()
    governed = st.sampled_from([targets.cluster_ns, targets.namespaced_ns])
    elsewhere = st.sampled_from(
        [
            "kube-system",
            "gomemlimit-system",
            "fuzz-no-such-namespace",
            "",
            "%2F..%2Fsecrets",
            "a/../../b",
            "ns\r\nX-Injected: 1",
            "x" * 300,
        ]
    )
    anywhere = st.one_of(governed, elsewhere)
    fuzzer = Fuzzer(operator_process, targets)
    assert operator_process.process is not None
    pid = operator_process.process.pid
    log_before = operator_process.log_size()
    rss_before, peak_before = memory(pid)
    stalls_before = stall_counts(operator_process)
    longest_before = operator_process.metric("gomemlimit_event_loop_longest_stall_seconds")

    # Comparing and printing inputs nested 1,024 levels takes more than Python's default
    # recursion limit of 1,000 in this process (the server's parser is iterative).
    with recursion_limit(20_000):
        shaped = fuzzer.run("shaped", review_bytes(governed), 250)
        ungoverned = fuzzer.run("elsewhere", review_bytes(elsewhere), 30)
        wrong = fuzzer.run("wrong_types", wrong_type_bytes(anywhere), 100)
        operations = fuzzer.run("operations", operation_bytes(anywhere), 40)
        fuzzer.run("bytes", byte_bodies(anywhere), 80)
        fuzzer.run("deep", deep_bodies(governed), 120)
        fuzzer.run("huge", huge_bodies(governed), 16)
    fuzzer.client.close()

    rss_after, peak_after = memory(pid)
    stalls_after = stall_counts(operator_process)
    window_stall = longest_stall_between(stalls_before, stalls_after)
    longest = operator_process.metric("gomemlimit_event_loop_longest_stall_seconds")
    log_growth = operator_process.log_size() - log_before
    print(
        f"\n{fuzzer.summary()}\n"
        f"RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB "
        f"(+{(rss_after - rss_before) / 2**20:.1f}), peak {peak_before / 2**20:.1f} -> "
        f"{peak_after / 2**20:.1f} MiB; longest event-loop stall: at most {window_stall:g} s "
        f"during the run (histogram), {longest * 1000:.1f} ms since the start (gauge, "
        f"{longest_before * 1000:.1f} ms before); operator log +{log_growth / 1024:.0f} KiB; "
        f"{time.monotonic() - started:.1f} s"
    )
    # Each category did what it is for.
    assert shaped.results["error"] == 0, "well-typed pods made the handler fail"
    assert shaped.results["mutated"] > 0
    assert shaped.injected > 0
    assert ungoverned.results["mutated"] == ungoverned.results["error"] == 0
    assert wrong.statuses[400] > 0
    assert wrong.statuses[200] > 0
    assert operations.results["ignored"] == operations.predicted_ignored > 0
    for category in fuzzer.categories:
        assert not [s for s in category.statuses if s >= 500], category.line()
    # Bounded memory and stalls.
    assert rss_after - rss_before < RSS_GROWTH_BOUND
    assert window_stall <= STALL_BOUND, stalls_after
    assert longest == longest_before or longest < STALL_BOUND
    # Bounded logging: rate-limited refusals and errors, and lines of bounded length (some
    # inputs carry megabyte names).
    assert log_growth < LOG_GROWTH_BOUND, operator_process.log_tail(20)[-3000:]
    # Still alive, still serving through the API server.
    assert operator_process.running
    assert operator_process.healthz()[0] == 200
    assert operator_process.readyz()[0] == 200
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "after-the-fuzz"},
        "spec": {
            "containers": [
                {"name": "app", "image": IMAGE, "resources": {"limits": {"memory": "512Mi"}}}
            ]
        },
    }
    apply(cluster, pod, namespace=targets.cluster_ns)
    live = get(cluster, "pod", "after-the-fuzz", "-n", targets.cluster_ns)
    env = {e["name"]: e.get("value") for e in live["spec"]["containers"][0].get("env") or []}
    assert env == {"GOMEMLIMIT": "460MiB", "GOGC": "75"}


def _custom(kind: str, namespace: str) -> dict[str, Any]:
    """The keyword arguments that address one policy kind."""
    plural = PLURALS[kind]
    group, version = API_VERSION.split("/")
    arguments = {"group": group, "version": version, "plural": plural}
    if kind == NAMESPACED_KIND:
        arguments["namespace"] = namespace
    return arguments


def test_fuzzed_policies_get_the_right_ready_status_and_never_an_invalid_value(
    cluster: ControlPlane,
    k8s_api: client.ApiClient,
    namespace: str,
    operator_process: OperatorProcess,
) -> None:
    started = time.monotonic()
    custom = client.CustomObjectsApi(k8s_api)
    core = client.CoreV1Api(k8s_api)
    pin = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    names = itertools.count()
    outcome: Counter[str] = Counter()
    drift: list[str] = []
    cluster_names: list[str] = []
    policies: dict[str, Policy] = {}
    containers = st.lists(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(["app", "worker", "api-go", "proxy"]),
                "limit": st.sampled_from(["512Mi", "1Gi", "64Mi", "3Mi", "100M", "12E", None]),
                "env": st.sampled_from([None, "512Mi", "100MiB", "off"]),
            }
        ),
        min_size=1,
        max_size=3,
        unique_by=lambda c: c["name"],
    )

    @_fuzz_settings(60)
    @given(
        kind=st.sampled_from(POLICY_KINDS),
        data=st.data(),
        pod_containers=containers,
        labels=st.dictionaries(label_keys(), label_values(), max_size=3),
    )
    def one(
        kind: str,
        data: st.DataObject,
        pod_containers: list[dict[str, Any]],
        labels: dict[str, str],
    ) -> None:
        spec = data.draw(policy_specs(pin if kind == CLUSTER_KIND else None), label="spec")
        name = f"fuzz-{next(names)}-{uuid.uuid4().hex[:6]}"
        metadata = {"name": name, **({"namespace": namespace} if kind == NAMESPACED_KIND else {})}
        body = {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}
        address = _custom(kind, namespace)
        try:
            local: Policy | PolicyError = parse_policy(body)
        except PolicyError as exc:
            local = exc
        refused: client.ApiException | None = None
        try:
            if kind == NAMESPACED_KIND:
                custom.create_namespaced_custom_object(body=body, **address)
            else:
                custom.create_cluster_custom_object(body=body, **address)
        except client.ApiException as exc:
            refused = exc
        if refused is not None:
            assert refused.status in (400, 422), f"HTTP {refused.status}: {refused.body}"
            outcome["rejected by the API server"] += 1
            if isinstance(local, Policy):
                drift.append(f"refused by the CRD, valid for the models: {short(spec)}")
            return
        if kind == CLUSTER_KIND:
            cluster_names.append(name)
        try:
            live = cast(
                dict[str, Any],
                custom.get_namespaced_custom_object(name=name, **address)
                if kind == NAMESPACED_KIND
                else custom.get_cluster_custom_object(name=name, **address),
            )
            try:
                policy: Policy | None = parse_policy(live)
            except PolicyError:
                policy = None
                drift.append(f"accepted by the CRD, invalid for the models: {short(spec)}")
            ready = "True" if policy is not None else "False"
            wait_ready(cluster, kind, name, namespace if kind == NAMESPACED_KIND else None, ready)
            outcome[f"accepted, Ready={ready}"] += 1
            if policy is not None:
                policies[policy.ref] = policy
            template = _policy_pod(name, labels, pod_containers)
            response: Any = core.create_namespaced_pod(
                namespace,
                cast(Any, template),  # a dict: the client sends it as it is
                dry_run="All",
                _preload_content=False,
            )
            created = json.loads(response.data)
            before = {**template, "metadata": {**template["metadata"], "namespace": namespace}}
            injected = check_injection(before, created, policies, defaulted=True)
            governing = (created["metadata"].get("annotations") or {}).get(ANNOTATION_POLICY)
            outcome["pods with values"] += bool(injected)
            assert governing is None or governing in policies, governing  # never an invalid one
        finally:
            if kind == NAMESPACED_KIND:
                custom.delete_namespaced_custom_object(name=name, **address)
            else:
                custom.delete_cluster_custom_object(name=name, **address)
        assert operator_process.running, operator_process.log_tail()

    errors = operator_process.metric("gomemlimit_admission_requests_total", result="error")
    try:
        one()
    finally:
        if cluster_names:
            cluster.kubectl(
                "delete", "clustergomempolicies", *cluster_names, "--ignore-not-found",
                "--wait=false",
            )  # fmt: skip
    print(
        f"\npolicies: {sum(outcome[k] for k in outcome if not k.startswith('pods'))} specs, "
        f"{dict(outcome)}; {time.monotonic() - started:.1f} s"
    )
    for line in drift:
        print(f"  drift: {line}")
    assert operator_process.metric("gomemlimit_admission_requests_total", result="error") == errors
    assert outcome["rejected by the API server"] > 0
    assert outcome["accepted, Ready=True"] > 0
    assert outcome["pods with values"] > 0
    assert operator_process.running


def _policy_pod(
    name: str, labels: Mapping[str, str], containers: list[dict[str, Any]]
) -> dict[str, Any]:
    """A pod for the policy test: containers with limits, some with a GOMEMLIMIT of their own."""
    specs = []
    for item in containers:
        container: dict[str, Any] = {"name": item["name"], "image": IMAGE}
        if item["limit"] is not None:
            container["resources"] = {"limits": {"memory": item["limit"]}}
        if item["env"] is not None:
            container["env"] = [{"name": "GOMEMLIMIT", "value": item["env"]}]
        specs.append(container)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-pod", "labels": dict(labels)},
        "spec": {"containers": specs},
    }
