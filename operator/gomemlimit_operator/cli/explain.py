"""``gomemlimit explain``: one pod's evaluation, step by step, and the next step to take.

A thin adapter like the rest of the CLI: :func:`gomemlimit_operator.core.engine.explain_pod`
runs the engine's own evaluation and records its steps; this module only finds the pod
(in manifests with ``-f``, or in a cluster through the kubeconfig), renders the steps as text
or JSON, and turns the state into a command to run.

A cluster is read through ``cli.cluster.Api``, as for ``audit --cluster``: the Kubernetes
client is imported only then, so the offline commands never pay for it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final, Protocol, TextIO

from gomemlimit_operator.cli.cluster import (
    Api,
    ClusterError,
    controller_of,
    read_namespaces,
    read_policies,
)
from gomemlimit_operator.cli.manifests import ManifestError, ManifestSet
from gomemlimit_operator.core.api import Mode, Policy
from gomemlimit_operator.core.engine import (
    ANNOTATION_SKIP,
    ContainerExplanation,
    Explanation,
    LimitSource,
    SpecError,
    State,
    explain_pod,
)
from gomemlimit_operator.core.goruntime import GOMEMLIMIT, parse_byte_count
from gomemlimit_operator.core.quantity import MIB
from gomemlimit_operator.core.selectors import namespace_labels

__all__ = ["PodSubject", "add_parser", "explanation_json", "render_text"]

RESTARTABLE: Final = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
"""Workloads that ``kubectl rollout restart`` recreates pods of."""
SETTABLE: Final = RESTARTABLE | {"CronJob"}
"""Workloads whose pod template ``kubectl set env`` may change (a Job's is immutable)."""

_DESCRIPTION: Final = """\
Explain, container by container, how the engine decides: the governing policy and
why it wins (scope, priority, name); the memory limit and where it comes from (the
container, a LimitRange default, or the pod level); the ratio; the headroom and its
clamps (minHeadroom, maxHeadroom); the rounding to a whole MiB; the expected and the
current GOMEMLIMIT and its source; the state, and the next step as a command.

From a cluster (the kubeconfig's current context, or --context):
  explain pod/NAME [-n NAMESPACE]
reads the pod, the GoMemPolicies of its namespace, the ClusterGoMemPolicies, the
namespace's labels and the pod's owners (ReplicaSet -> Deployment, Job -> CronJob).

Offline, like `audit -f` (same policies: --policy files and any among the manifests,
else the implicit ClusterGoMemPolicy/default):
  explain -f PATH [--policy PATH] [KIND/NAME] [-n NAMESPACE]
explains every pod spec in the manifests, or only KIND/NAME.

Exit status 0 once explained (whatever the states: `audit` is the gate), 2 for bad
input, a pod that is not found, or a cluster that refuses or cannot be reached.
"""


class OfflineInputs(Protocol):
    """What ``audit -f`` reads (cli/main.py ``_inputs``): the manifests and the policies."""

    @property
    def manifests(self) -> ManifestSet: ...

    @property
    def policies(self) -> list[Policy]: ...


LoadInputs = Callable[[argparse.Namespace], OfflineInputs]


@dataclass(frozen=True)
class PodSubject:
    """One pod spec to explain, and enough about where it lives to say what to run."""

    namespace: str
    kind: str
    """``Pod`` for a live pod; the manifest's kind offline (``Deployment``, ...)."""
    name: str
    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]
    prefix: str
    workload: tuple[str, str] | None
    """(kind, name) of the object that manages the pod's template, None for a bare pod."""
    file: str | None = None
    """The manifest, offline; None for a pod read from a cluster."""
    fix_args: tuple[str, ...] = ()
    """Offline: the ``-f``/``--policy`` arguments that reproduce the input (for ``mutate``)."""

    @property
    def live(self) -> bool:
        return self.file is None


@dataclass(frozen=True)
class NextStep:
    """What to do about one container: a note, and a command when one does it."""

    note: str
    command: str | None = None


@dataclass(frozen=True)
class Explained:
    subject: PodSubject
    explanation: Explanation
    policies: Mapping[str, Policy] = field(default_factory=dict)
    """Every policy considered, by reference (for ``mode`` and the edit command)."""


def add_parser(
    commands: Any, formatter: type[argparse.HelpFormatter], load_inputs: LoadInputs
) -> argparse.ArgumentParser:
    """Register ``explain`` on the CLI's subparsers; ``load_inputs`` is how ``audit -f``
    reads its manifests and policies, reused as is."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "explain",
        help="explain step by step how one pod's GOMEMLIMIT is decided, and what to do",
        description=_DESCRIPTION,
        formatter_class=formatter,
    )
    parser.add_argument(
        "target",
        nargs="?",
        metavar="pod/NAME",
        help="the pod to read from the cluster; with -f, a KIND/NAME among the manifests",
    )
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        default=[],
        metavar="PATH",
        help="explain the pod specs of these manifests offline (as for audit); repeat for more",
    )
    parser.add_argument(
        "--policy",
        dest="policies",
        action="append",
        default=[],
        metavar="PATH",
        help="with -f: a file or directory of policies, as for audit; repeat for more",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        help="the pod's namespace (default: the context's, else default); with -f, a filter",
    )
    parser.add_argument("--context", help="the kubeconfig context to use")
    parser.add_argument(
        "--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)"
    )
    parser.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="text (default) or json"
    )
    parser.set_defaults(run=lambda options: run(options, load_inputs))
    return parser


def run(options: argparse.Namespace, load_inputs: LoadInputs) -> int:
    """``gomemlimit explain``; returns the exit status (0, or ManifestError for main's 2)."""
    if options.files:
        if options.context or options.kubeconfig:
            raise ManifestError("explain: --context and --kubeconfig need a cluster, not -f")
        explained = list(_offline(options, load_inputs(options)))
    else:
        if not options.target:
            raise ManifestError("explain: name a pod (explain pod/NAME) or manifests (-f PATH)")
        if options.policies:
            raise ManifestError("explain: --policy works with -f; a cluster has its own policies")
        explained = [_live(options)]
    if options.output == "json":
        json.dump([explanation_json(item) for item in explained], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not explained:
        print("No pod specs found.")
    else:
        render_text(explained, sys.stdout)
    sys.stdout.flush()
    return 0


# --- finding the pod: manifests -------------------------------------------------------------


def _offline(options: argparse.Namespace, inputs: OfflineInputs) -> Iterator[Explained]:
    wanted = _parse_target(options.target) if options.target else None
    fix_args = tuple(
        arg
        for flag, paths in (("-f", options.files), ("--policy", options.policies))
        for path in paths
        for arg in (flag, path)
    )
    found = False
    for pod in inputs.manifests.pods:
        if wanted is not None and not (
            _kind_matches(wanted[0], pod.kind) and wanted[1] == pod.name
        ):
            continue
        if options.namespace and pod.namespace != options.namespace:
            continue
        found = True
        labels = namespace_labels(pod.namespace, inputs.manifests.namespaces.get(pod.namespace))
        subject = PodSubject(
            pod.namespace,
            pod.kind,
            pod.name,
            pod.metadata,
            pod.spec,
            pod.prefix,
            None if pod.kind == "Pod" else (pod.kind, pod.name),
            pod.file,
            fix_args,
        )
        yield _explain(subject, labels, inputs.policies, where=pod.location)
    if wanted is not None and not found:
        where = f" in namespace {options.namespace}" if options.namespace else ""
        raise ManifestError(f"explain: no pod spec {options.target}{where} in the manifests")


def _explain(
    subject: PodSubject, ns_labels: Mapping[str, str], policies: list[Policy], where: str
) -> Explained:
    try:
        explanation = explain_pod(
            subject.metadata, subject.spec, subject.namespace, ns_labels, policies, subject.prefix
        )
    except SpecError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    return Explained(subject, explanation, {policy.ref: policy for policy in policies})


def _parse_target(target: str) -> tuple[str, str]:
    kind, sep, name = target.partition("/")
    if not sep:
        kind, name = "pod", target
    if not kind or not name or "/" in name:
        raise ManifestError(f"explain: {target!r}: expected KIND/NAME, e.g. pod/api-7d4b9")
    return kind, name


def _kind_matches(written: str, kind: str) -> bool:
    lowered = written.lower()
    return lowered in (kind.lower(), f"{kind.lower()}s") or (kind == "Pod" and lowered == "po")


# --- finding the pod: a cluster -------------------------------------------------------------


def _live(options: argparse.Namespace) -> Explained:
    kind, name = _parse_target(options.target)
    if not _kind_matches(kind, "Pod"):
        raise ManifestError(
            f"explain: {options.target!r}: only pods are read from a cluster "
            "(explain pod/NAME); use -f for workload manifests"
        )
    warnings: list[str] = []
    api = Api(options.context, options.kubeconfig, forbidden_hint=_FORBIDDEN_HINT)
    try:
        namespace = options.namespace or api.default_namespace
        where = f"pod/{name} in namespace {namespace}"
        pod = api.get(f"get {where}", api.core.read_namespaced_pod, name, namespace)
        if pod is None:
            raise ClusterError(f"explain: {where} not found")
        metadata = pod.get("metadata") or {}
        spec = pod.get("spec")
        if not isinstance(spec, Mapping):
            raise ClusterError(f"explain: {where} has no spec")
        workload = _workload(api, namespace, metadata)
        labels = read_namespaces(api, namespace).get(namespace, {})
        policies = read_policies(api, namespace, warnings.append)
    finally:
        api.close()
        for warning in warnings:
            print(warning, file=sys.stderr)
    subject = PodSubject(namespace, "Pod", name, metadata, spec, "spec", workload)
    return _explain(subject, namespace_labels(namespace, labels), policies, where=where)


_FORBIDDEN_HINT: Final = (
    "explain reads the pod, its ReplicaSet or Job, its namespace, and the policies "
    "(get pods, replicasets, jobs, namespaces; list gomempolicies, clustergomempolicies)"
)


def _workload(api: Api, namespace: str, metadata: Mapping[str, Any]) -> tuple[str, str] | None:
    """The object whose template the pod comes from: its controller, and the controller's
    controller for a ReplicaSet (a Deployment) or a Job (a CronJob), when the cluster says."""
    owner = controller_of(metadata)
    if owner is None or owner[0] not in ("ReplicaSet", "Job"):
        return owner
    kind, name = owner
    read = (
        api.apps.read_namespaced_replica_set
        if kind == "ReplicaSet"
        else api.batch.read_namespaced_job
    )
    parent = api.get(f"get {kind} {name} in namespace {namespace}", read, name, namespace)
    grandparent = None if parent is None else controller_of(parent.get("metadata") or {})
    return grandparent or owner


# --- next steps ------------------------------------------------------------------------------


def next_step(item: Explained, container: ContainerExplanation) -> NextStep:
    """The README's "What to do" for the container's state, as a command for this pod."""
    report, subject = container.report, item.subject
    state, name = report.state, report.container
    policy = item.policies.get(report.policy or "")
    if state is State.COMPLIANT:
        return NextStep("nothing to do")
    if state is State.UNMANAGED:
        return NextStep("nothing to do; add a policy if this is a Go program")
    if state is State.OPTED_OUT:
        return NextStep(f"nothing to do, unless the {ANNOTATION_SKIP} annotation is a mistake")
    if state is State.UNVERIFIABLE:
        note = f"the value comes from {report.source}: check what the container really gets"
        if subject.live:
            command = _kubectl(
                "exec", subject.name, "-n", subject.namespace, "-c", name, "--", "printenv"
            )
            return NextStep(note, f"{command} {GOMEMLIMIT}")
        return NextStep(note + ", or write a literal value")
    if state is State.NO_MEMORY_LIMIT:
        note = "set a memory limit (choose <LIMIT>), or exclude the container from the policy"
        if not subject.live:
            note += "; a LimitRange default is applied at creation and is not visible offline"
        return NextStep(note, _set(subject, name, "resources", "--limits=memory=<LIMIT>"))
    if state is State.UNSATISFIABLE:
        note = (
            f"{container.problem}; lower the policy's minHeadroom or ratio, raise the limit, "
            "or exclude the container"
        )
        if policy is None:
            return NextStep(note)
        edit = ["edit", policy.kind.lower(), policy.name]
        return NextStep(
            note, _kubectl(*edit, *(["-n", policy.namespace] if policy.namespace else []))
        )
    if state in (State.INVALID, State.EXCEEDS_LIMIT):
        if report.expected is None:
            note = "remove the entry (Go then has no limit); a policy would give a value"
            return NextStep(note, _set(subject, name, "env", f"{GOMEMLIMIT}-"))
        note = f"write the value the policy expects, {report.expected}"
        if container.env_path:
            note += f" ({container.env_path})"
        return NextStep(note, _set(subject, name, "env", f"{GOMEMLIMIT}={report.expected}"))
    # MISSING and STALE: new pods get the current value from the webhook.
    if policy is not None and policy.spec.mode is Mode.AUDIT:
        note = f"{policy.ref} is in audit mode: nothing injects it; set it yourself"
        return NextStep(note, _set(subject, name, "env", f"{GOMEMLIMIT}={report.expected}"))
    if not subject.live:
        mutate = shlex.join(["gomemlimit", "mutate", *subject.fix_args])
        return NextStep("inject it offline and apply", f"{mutate} | kubectl apply -f -")
    return _recreate(subject)


def _kubectl(*args: str) -> str:
    return shlex.join(["kubectl", *args])


def _set(subject: PodSubject, container: str, what: str, value: str) -> str | None:
    """``kubectl set env|resources`` for the pod's workload (or its manifest, offline)."""
    args = ["set", what]
    if not subject.live:
        assert subject.file is not None
        return _kubectl(*args, "--local", "-f", subject.file, "-c", container, value, "-o", "yaml")
    workload = subject.workload
    if workload is not None and workload[0] in SETTABLE:
        target = f"{workload[0].lower()}/{workload[1]}"
        return _kubectl(*args, target, "-c", container, value, "-n", subject.namespace)
    if workload is None:  # a bare pod: its spec is immutable, so recreate it changed
        get = _kubectl("get", "pod", subject.name, "-n", subject.namespace, "-o", "yaml")
        change = _kubectl(*args, "--local", "-f", "-", "-c", container, value, "-o", "yaml")
        return f"{get} | {change} | kubectl replace --force -f -"
    return None


def _recreate(subject: PodSubject) -> NextStep:
    workload = subject.workload
    namespace = subject.namespace
    if workload is not None and workload[0] in RESTARTABLE:
        target = f"{workload[0].lower()}/{workload[1]}"
        return NextStep(
            "recreate the pods: the webhook injects the current value at creation",
            _kubectl("rollout", "restart", target, "-n", namespace),
        )
    if workload is None:
        get = _kubectl("get", "pod", subject.name, "-n", namespace, "-o", "yaml")
        return NextStep(
            "recreate the pod: the webhook injects the current value at creation",
            f"{get} | kubectl replace --force -f -",
        )
    if workload[0] in ("ReplicaSet", "ReplicationController"):
        return NextStep(
            f"delete the pod: {workload[0]}/{workload[1]} recreates it, with the value",
            _kubectl("delete", "pod", subject.name, "-n", namespace),
        )
    return NextStep(f"the next pod of {workload[0]}/{workload[1]} gets the current value")


# --- rendering -------------------------------------------------------------------------------


def _size(count: int) -> str:
    """Exact bytes, and MiB to one decimal for the eye."""
    mib = Fraction(count, MIB)
    shown = f"{mib.numerator}" if mib.denominator == 1 else f"{float(mib):.1f}"
    return f"{count} bytes ({shown} MiB)"


def _clamps(container: ContainerExplanation) -> list[dict[str, Any]]:
    """Each clamp as the engine recorded it: whether it changed the headroom, and how."""
    steps = container.steps
    if steps is None:
        return []
    clamps = []
    for name, bound, before, after in (
        ("minHeadroom", steps.min_headroom, steps.raw_headroom, steps.after_min),
        ("maxHeadroom", steps.max_headroom, steps.after_min, steps.headroom),
    ):
        if bound is not None:
            clamps.append({"clamp": name, "bytes": bound, "applied": before != after, "to": after})
    return clamps


def _current(container: ContainerExplanation) -> str:
    report = container.report
    if report.source is None:
        text = "not set"
        if container.env_from:
            text += " in env (the container has envFrom, which the spec cannot show; "
            text += "an injected env entry would take precedence over it)"
        return text
    where = f" at {container.env_path}" if container.env_path else ""
    if report.source == "value":
        whose = "injected by this project" if report.injected else "a literal env value"
        return f"{report.gomemlimit!r}, {whose}{where}"
    if report.gomemlimit is None:
        return f"from valueFrom.{report.source}{where}: unknowable from the spec"
    return f"{report.gomemlimit!r}, from valueFrom.{report.source}{where} (what the kubelet writes)"


def _limit_line(container: ContainerExplanation) -> str:
    limit = container.report.memory_limit_bytes
    if limit is None:
        return "none on the container or the pod"
    origins = {
        LimitSource.CONTAINER: "the container",
        LimitSource.LIMIT_RANGE: (
            "a LimitRange default, set at creation (annotation kubernetes.io/limit-ranger)"
        ),
        LimitSource.POD: "the pod level",
    }
    origin = origins[container.limit_source] if container.limit_source else "?"
    return f"{_size(limit)}, from {origin}: {container.limit_path}"


def render_text(items: Sequence[Explained], out: TextIO) -> None:
    for index, item in enumerate(items):
        if index:
            print(file=out)
        _render_pod(item, out)


def _render_pod(item: Explained, out: TextIO) -> None:
    subject, explanation = item.subject, item.explanation
    choice = explanation.choice
    where = f" ({subject.file})" if subject.file else ""
    owner = ""
    if subject.live and subject.workload:
        owner = f", owned by {subject.workload[0]}/{subject.workload[1]}"
    print(f"{subject.kind}/{subject.name} in namespace {subject.namespace}{owner}{where}", file=out)
    if choice.winner is None:
        print("Policy: none governs the pod", file=out)
    else:
        print(f"Policy: {choice.winner.ref} governs the pod", file=out)
        print(f"  why: {choice.why(choice.winner)}", file=out)
    for scope, candidates in (("namespaced", choice.namespaced), ("cluster", choice.cluster)):
        for policy in candidates:
            if policy is choice.winner:
                continue
            print(
                f"  loses: {policy.ref} ({scope}, priority {policy.spec.priority}): "
                f"{choice.why(policy)}",
                file=out,
            )
    for policy, why in choice.passed_over:
        print(f"  does not select the pod: {policy.ref}: {why}", file=out)
    if explanation.opted_out:
        print(f"Opt-out: the pod has {ANNOTATION_SKIP}=true", file=out)
    for container in explanation.containers:
        print(file=out)
        _render_container(item, container, out)


def _render_container(item: Explained, container: ContainerExplanation, out: TextIO) -> None:
    report = container.report
    kind = "init container" if report.init else "container"
    print(f"{kind} {report.container} ({container.path})", file=out)
    lines: list[tuple[str, str]] = [("policy", container.coverage)]
    lines.append(("limit", _limit_line(container)))
    steps = container.steps
    policy = item.policies.get(report.policy or "")
    if steps is not None and policy is not None:
        limit = steps.limit_bytes
        lines.append(("ratio", f"{policy.spec.ratio} (from {policy.ref})"))
        lines.append(
            (
                "headroom",
                f"L - floor(L x {policy.spec.ratio}) = {limit} - {steps.kept} = "
                f"{_size(steps.raw_headroom)}",
            )
        )
        for clamp in _clamps(container):
            did = "raises it to" if clamp["clamp"] == "minHeadroom" else "lowers it to"
            effect = f"{did} {clamp['to']}" if clamp["applied"] else "leaves it as it is"
            lines.append(("", f"{clamp['clamp']} {_size(clamp['bytes'])} {effect}"))
        if steps.min_headroom is None and steps.max_headroom is None:
            lines.append(("", "no minHeadroom or maxHeadroom: no clamp"))
        rounding = f"L - headroom = {limit} - {steps.headroom} = {limit - steps.headroom} bytes"
        if report.expected is not None:
            count = parse_byte_count(report.expected)
            rounding += (
                f", down to a whole MiB: {report.expected} = {count} bytes "
                "(Go reads it back as exactly that, below the limit)"
            )
        lines.append(("rounding", rounding))
    elif report.policy is not None and report.memory_limit_bytes is not None and policy:
        lines.append(("ratio", f"{policy.spec.ratio} (from {policy.ref})"))
    if container.problem:
        lines.append(("expected", f"none: {container.problem}"))
    else:
        lines.append(("expected", report.expected or "none (no policy computes one)"))
    lines.append(("current", _current(container)))
    lines.append(("state", f"{report.state.value}: {report.reason}"))
    step = next_step(item, container)
    lines.append(("next", step.note))
    if step.command:
        lines.append(("", f"$ {step.command}"))
    width = max(len(label) for label, _ in lines) + 1
    for label, text in lines:
        print(f"  {(label + ':') if label else '':<{width}} {text}", file=out)


def explanation_json(item: Explained) -> dict[str, Any]:
    subject, explanation = item.subject, item.explanation
    choice = explanation.choice
    candidates = [
        {
            "policy": policy.ref,
            "scope": scope,
            "priority": policy.spec.priority,
            "wins": policy is choice.winner,
            "reason": choice.why(policy),
        }
        for scope, group in (("namespaced", choice.namespaced), ("cluster", choice.cluster))
        for policy in group
    ]
    return {
        "namespace": subject.namespace,
        "kind": subject.kind,
        "name": subject.name,
        "workload": None if subject.workload is None else "/".join(subject.workload),
        "file": subject.file,
        "policy": {
            "governing": None if choice.winner is None else choice.winner.ref,
            "scope": choice.scope,
            "candidates": candidates,
            "passedOver": [{"policy": p.ref, "reason": why} for p, why in choice.passed_over],
        },
        "optedOut": explanation.opted_out,
        "containers": [_container_json(item, c) for c in explanation.containers],
    }


def _container_json(item: Explained, container: ContainerExplanation) -> dict[str, Any]:
    report, steps = container.report, container.steps
    policy = item.policies.get(report.policy or "")
    step = next_step(item, container)
    return {
        "container": report.container,
        "init": report.init,
        "path": container.path,
        "policy": report.policy,
        "coverage": container.coverage,
        "limit": {
            "bytes": report.memory_limit_bytes,
            "source": None if container.limit_source is None else container.limit_source.value,
            "field": container.limit_path,
        },
        "ratio": None if policy is None else str(policy.spec.ratio),
        "headroom": None
        if steps is None
        else {
            "kept": steps.kept,
            "raw": steps.raw_headroom,
            "clamps": _clamps(container),
            "final": steps.headroom,
        },
        "rounding": None
        if steps is None
        else {
            "unrounded": steps.limit_bytes - steps.headroom,
            "value": report.expected,
            "bytes": None if report.expected is None else parse_byte_count(report.expected),
        },
        "expected": report.expected,
        "problem": container.problem,
        "current": {
            "gomemlimit": report.gomemlimit,
            "source": report.source,
            "field": container.env_path,
            "injected": report.injected,
            "envFrom": container.env_from,
        },
        "state": report.state.value,
        "reason": report.reason,
        "next": {"note": step.note, "command": step.command},
    }
