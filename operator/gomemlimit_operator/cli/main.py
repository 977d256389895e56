"""``gomemlimit``: the offline CLI (``audit``, ``mutate``) and the operator's entry point.

A thin adapter: manifests.py reads the input, engine.py decides everything,
this module only chooses policies, calls the engine and formats the result.
Installed as ``gomemlimit`` and as ``kubectl-gomemlimit`` (a kubectl plugin).

Exit codes: 0 success; 1 ``audit`` found a container in a failing state;
2 bad input or usage (the message names the file, the object and the field);
3 an internal error (a bug: please report it); 141 the reader of stdout went away
(``| head``), as for any tool that SIGPIPE ends.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any, Final, TextIO

from gomemlimit_operator import __version__
from gomemlimit_operator.cli.cluster import LiveResult, Workload, audit_cluster
from gomemlimit_operator.cli.explain import add_parser as add_explain_parser
from gomemlimit_operator.cli.manifests import (
    ManifestError,
    ManifestSet,
    PodTemplate,
    dump_documents,
    load_manifests,
)
from gomemlimit_operator.cli.manifests import load_policies as load_policy_files
from gomemlimit_operator.core.api import DEFAULT_POLICY, Mode, Policy
from gomemlimit_operator.core.engine import (
    FAILING_STATES,
    NONCOMPLIANT_STATES,
    ContainerReport,
    SpecError,
    State,
    evaluate_pod,
    governing_policy,
    mutate_pod,
)
from gomemlimit_operator.core.selectors import namespace_labels

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FAILING: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_INTERNAL: Final = 3
EXIT_BROKEN_PIPE: Final = 128 + 13  # what a shell reports for a tool killed by SIGPIPE

_DESCRIPTION: Final = """\
Set GOMEMLIMIT to a safe fraction of each Go container's memory limit.

Offline commands for CI pipelines and people: `audit` checks manifests,
`mutate` prints them with GOMEMLIMIT injected, exactly as the operator's
admission webhook would do it at pod creation. `explain` shows, step by
step, how one pod's GOMEMLIMIT is decided, offline or from a cluster.
"""

_EPILOG: Final = """\
examples:
  {prog} audit -f k8s/                      check every manifest under k8s/
  {prog} audit -f app.yaml --policy policy.yaml -o json
  {prog} mutate -f app.yaml > app.patched.yaml
  {prog} mutate -f app.yaml | kubectl apply -f -
  {prog} explain pod/api-7d4b9-x2x8q -n shop   why this pod has (or lacks) its value

Without any policy (no --policy and none among the manifests) an implicit
ClusterGoMemPolicy with all defaults governs every container: GOMEMLIMIT is
90% of the memory limit, rounded down to a whole MiB (512Mi -> 460MiB).

exit codes: 0 ok, 1 audit found a failing container, 2 bad input, 3 internal error,
141 stdout closed early (e.g. `| head`)
"""

_AUDIT_DESCRIPTION: Final = """\
Print one row per container of every pod spec (Pod, Deployment, StatefulSet,
DaemonSet, ReplicaSet, ReplicationController, Job, CronJob) with its memory
limit, its GOMEMLIMIT, the value the governing policy expects, and its state.

Exit status 0 when no container is missing, invalid, exceeds_limit,
no_memory_limit or unsatisfiable; 1 when one is; 2 for bad input.
"""

_AUDIT_EPILOG: Final = """\
states (* = exit status 1):
  compliant         GOMEMLIMIT is valid, below the limit and, if injected, current
* missing           governed and a limit is known, but no GOMEMLIMIT
* invalid           Go rejects the value and exits at start (e.g. 512Mi)
* exceeds_limit     valid, but not below the memory limit (e.g. the 100% that
                    valueFrom.resourceFieldRef limits.memory gives)
* no_memory_limit   governed, but neither the container nor the pod has a limit
* unsatisfiable     governed with a limit, but the policy yields no value Go
                    accepts (headroom >= the limit, or under 1MiB, or past 8EiB)
  stale             not what the policy sets now (injected for an older limit
                    or policy, or onExisting: override): restart the workload
  opted_out         the pod has the annotation gomemlimit.io/skip: "true"
  unverifiable      set from a ConfigMap, Secret or fieldRef: unknowable offline
  unmanaged         no policy governs the container and nothing is wrong
"""

_MUTATE_DESCRIPTION: Final = """\
Print every document as YAML on stdout, with GOMEMLIMIT (and the policy's GOGC)
appended to the env of each governed container, and the gomemlimit.io/injected
and gomemlimit.io/policy annotations on the pod template. Nothing else changes
(comments and formatting are not preserved). Running it again on its own output
changes nothing. Warnings about containers it cannot fix go to stderr.
"""

_FILE_HELP: Final = (
    "a manifest file or directory (read recursively: *.yaml, *.yml, *.json), or - for stdin; "
    "repeat for more"
)
_POLICY_HELP: Final = (
    "a file or directory of GoMemPolicy/ClusterGoMemPolicy objects; repeat for more. "
    "Policies among the -f manifests count too"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["operator"]:
        return _run_operator(args[1:])
    parser = _parser()
    try:
        options = parser.parse_args(args)
        if hasattr(options, "check"):
            options.check(options)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        status: int = options.run(options)
        return status
    except ManifestError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception:
        print(f"{parser.prog}: internal error (a bug, please report it):", file=sys.stderr)
        traceback.print_exc()
        return EXIT_INTERNAL


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "gomemlimit"
    return "kubectl gomemlimit" if name.startswith("kubectl-") else "gomemlimit"


def _parser() -> argparse.ArgumentParser:
    prog = _prog()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION,
        epilog=_EPILOG.format(prog=prog),
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"{prog} {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    audit = commands.add_parser(
        "audit",
        help="report GOMEMLIMIT per container; exit 1 if any is unsafe",
        description=_AUDIT_DESCRIPTION,
        epilog=_AUDIT_EPILOG,
        formatter_class=formatter,
    )
    _add_inputs(audit, files_required=False)
    audit.add_argument(
        "-o",
        "--output",
        choices=("table", "wide", "json"),
        default="table",
        help="table (default; coloured on a terminal unless NO_COLOR is set), "
        "wide (with --cluster: one row per pod) or json",
    )
    live = audit.add_argument_group(
        "live audit",
        "read the pods, policies and namespace labels of a cluster; no operator needed",
    )
    live.add_argument(
        "--cluster", action="store_true", help="audit the cluster of the kubeconfig context"
    )
    live.add_argument("--context", help="the kubeconfig context (default: the current one)")
    scope = live.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="only the pods of this namespace")
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace (the default)"
    )
    live.add_argument(
        "-l", "--selector", metavar="SELECTOR", help="only pods with these labels, e.g. app=api"
    )
    audit.set_defaults(run=_audit, check=functools.partial(_check_audit, audit))

    mutate = commands.add_parser(
        "mutate",
        help="print the manifests with GOMEMLIMIT injected",
        description=_MUTATE_DESCRIPTION,
        formatter_class=formatter,
    )
    _add_inputs(mutate)
    mutate.set_defaults(run=_mutate)
    add_explain_parser(commands, formatter, _inputs)

    commands.add_parser(
        "operator",
        help="run the operator (webhook, pod watcher, metrics); see `operator --help`",
        add_help=False,
    )
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(run=lambda options: _print_version(prog))
    return parser


def _add_inputs(parser: argparse.ArgumentParser, *, files_required: bool = True) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=files_required,
        metavar="PATH",
        help=_FILE_HELP,
    )
    parser.add_argument(
        "--policy", dest="policies", action="append", default=[], metavar="PATH", help=_POLICY_HELP
    )


def _check_audit(audit: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """Files or the cluster: --context, -n, -A and -l imply --cluster (`kubectl gomemlimit
    audit -A`). Exits 2 with the usage on a conflict."""
    options.cluster = bool(
        options.cluster
        or options.context
        or options.namespace
        or options.all_namespaces
        or options.selector
    )
    if options.cluster and options.files:
        audit.error("-f reads files, --cluster (-n, -A, -l, --context) the cluster: not both")
    if not options.cluster and not options.files:
        audit.error("one of -f PATH or --cluster is required")


def _version() -> str:
    try:
        return importlib_metadata.version("gomemlimit-operator")
    except importlib_metadata.PackageNotFoundError:
        return __version__


def _print_version(prog: str) -> int:
    print(f"{prog} {_version()}")
    return EXIT_OK


def _run_operator(args: list[str]) -> int:
    """``gomemlimit operator ARGS...``: hand every remaining argument to the operator.

    Imported lazily (kopf is slow to import and the offline commands never need it).
    """
    try:
        module = importlib.import_module("gomemlimit_operator.runtime.app")
    except ModuleNotFoundError as exc:
        if exc.name != "gomemlimit_operator.runtime.app":
            raise
        print("gomemlimit: error: this build has no operator mode", file=sys.stderr)
        return EXIT_INTERNAL
    status: int = module.main(args)
    return status


# --- shared input handling -------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    manifests: ManifestSet
    policies: list[Policy]

    def governing(self, pod: PodTemplate) -> Policy | None:
        labels = namespace_labels(pod.namespace, self.manifests.namespaces.get(pod.namespace))
        return governing_policy(pod.namespace, pod.labels, labels, self.policies)


def _inputs(options: argparse.Namespace) -> _Inputs:
    policies = load_policy_files(options.policies)
    manifests = load_manifests(options.files)
    by_ref: dict[str, Policy] = {}
    for policy in [*policies, *manifests.policies]:
        seen = by_ref.setdefault(policy.ref, policy)
        if seen != policy:
            raise ManifestError(f"{policy.ref}: defined twice, with different specs")
    return _Inputs(manifests, list(by_ref.values()) or [DEFAULT_POLICY])


def _evaluate(pod: PodTemplate, policy: Policy | None) -> list[ContainerReport]:
    try:
        return evaluate_pod(pod.metadata, pod.spec, policy, pod.prefix)
    except SpecError as exc:
        raise ManifestError(f"{pod.location}: {exc}") from None


# --- mutate ----------------------------------------------------------------------------------


def _mutate(options: argparse.Namespace) -> int:
    inputs = _inputs(options)
    for pod in inputs.manifests.pods:
        policy = inputs.governing(pod)
        metadata = pod.writable_metadata()  # mutate_pod reads every field before it writes
        try:
            result = mutate_pod(metadata, pod.spec, policy, pod.prefix)
        except SpecError as exc:
            raise ManifestError(f"{pod.location}: {exc}") from None
        if result.changed:
            pod.attach_metadata(metadata)
        for report in _evaluate(pod, policy):
            if report.state in FAILING_STATES and not (
                report.state is State.MISSING
                and policy is not None
                and policy.spec.mode is Mode.AUDIT
            ):
                print(
                    f"warning: {pod.location}: container {report.container}: "
                    f"{report.state}: {report.reason}",
                    file=sys.stderr,
                )
    sys.stdout.write(dump_documents(inputs.manifests.documents))
    sys.stdout.flush()
    return EXIT_OK


# --- audit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    pod: PodTemplate | Workload
    report: ContainerReport
    count: int = 1
    """Live audit: how many of the workload's pods have this container in this state."""
    pod_name: str | None = None
    """Live audit with -o wide: the pod."""

    def as_json(self) -> dict[str, Any]:
        report = self.report
        fields = {
            "namespace": self.pod.namespace,
            "kind": self.pod.kind,
            "name": self.pod.name,
            "container": report.container,
            "init": report.init,
            "memoryLimitBytes": report.memory_limit_bytes,
            "gomemlimit": report.gomemlimit,
            "source": report.source,
            "expected": report.expected,
            "injected": report.injected,
            "state": report.state.value,
            "policy": report.policy,
            "reason": report.reason,
            "file": self.pod.file,
        }
        if isinstance(self.pod, Workload):  # the live audit's additions
            fields["count"] = self.count
        return fields


def _audit(options: argparse.Namespace) -> int:
    live: LiveResult | None = None
    if options.cluster:
        live = audit_cluster(
            context=options.context,
            namespace=options.namespace,
            selector=options.selector,
            wide=options.output == "wide",
            policies=load_policy_files(options.policies) or None,
        )
        rows = [_Row(row.workload, row.report, row.count, row.pod) for row in live.rows]
    else:
        inputs = _inputs(options)
        rows = [
            _Row(pod, report)
            for pod in inputs.manifests.pods
            for report in _evaluate(pod, inputs.governing(pod))
        ]
    if options.output == "json":
        json.dump([row.as_json() for row in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(rows, sys.stdout, live)
    sys.stdout.flush()
    return EXIT_FAILING if any(row.report.state in FAILING_STATES for row in rows) else EXIT_OK


_HEADERS: Final = (
    "NAMESPACE",
    "WORKLOAD",
    "CONTAINER",
    "LIMIT",
    "GOMEMLIMIT",
    "EXPECTED",
    "STATE",
    "POLICY",
)
_STATE_COLOURS: Final = {
    State.COMPLIANT: "32",  # green
    State.STALE: "33",  # yellow
    State.UNVERIFIABLE: "33",
    State.OPTED_OUT: "2",  # dim
    State.UNMANAGED: "2",
    **{state: "1;31" for state in FAILING_STATES},  # bold red
}


def _use_colour(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def _paint(text: str, code: str, colour: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if colour and code else text


def _print_table(rows: list[_Row], out: TextIO, live: LiveResult | None = None) -> None:
    colour = _use_colour(out)
    if not rows:
        print("No pod specs found." if live is None else "No pods found.", file=out)
        return
    headers = list(_HEADERS)
    if live is not None:  # after WORKLOAD: the pod count, or with -o wide the pod
        headers.insert(2, "POD" if any(row.pod_name for row in rows) else "PODS")
    cells = [_cells(row, live is not None) for row in rows]
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]

    def line(values: Sequence[str], codes: Sequence[str]) -> str:
        padded = [
            _paint(value.ljust(width) if i < len(values) - 1 else value, code, colour)
            for i, (value, width, code) in enumerate(zip(values, widths, codes, strict=True))
        ]
        return "  ".join(padded).rstrip()

    print(line(headers, ["1"] * len(headers)), file=out)
    state_column = headers.index("STATE")
    for row, values in zip(rows, cells, strict=True):
        codes = [""] * len(values)
        codes[state_column] = _STATE_COLOURS.get(row.report.state, "")
        print(line(values, codes), file=out)

    print(file=out)
    print(_summary(rows) if live is None else _live_summary(rows, live), file=out)
    attention = [row for row in rows if row.report.state in NONCOMPLIANT_STATES]
    if attention:
        print(file=out)
        print(_paint("Needs attention:", "1", colour), file=out)
        for row in attention:
            state = _paint(row.report.state.value, _STATE_COLOURS[row.report.state], colour)
            where = f"{row.pod.namespace}/{row.pod.kind}/{row.pod.name}"
            if row.pod_name is not None:
                where += f" pod {row.pod_name}"
            elif live is not None:
                where += f" ({row.count} pod{'s' if row.count != 1 else ''})"
            print(f"  {where} {row.report.container}: {state}: {row.report.reason}", file=out)


def _cells(row: _Row, live: bool = False) -> list[str]:
    report = row.report
    container = f"{report.container} (init)" if report.init else report.container
    if report.source is None:
        current = "-"
    elif report.source == "value":
        current = report.gomemlimit if report.gomemlimit else '""'
    elif report.gomemlimit is None:
        current = f"<{report.source}>"
    else:
        current = f"{report.gomemlimit} ({report.source})"
    pods = [row.pod_name or str(row.count)] if live else []
    return [
        row.pod.namespace,
        f"{row.pod.kind}/{row.pod.name}",
        *pods,
        container,
        _human_bytes(report.memory_limit_bytes),
        current,
        report.expected or "-",
        report.state.value,
        report.policy or "-",
    ]


def _human_bytes(count: int | None) -> str:
    """A memory limit the way people write it: 512Mi, 1Gi, 500M, or plain bytes."""
    if count is None:
        return "-"
    if count == 0:
        return "0"
    for suffix, size in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if count % size == 0:
            return f"{count // size}{suffix}"
    for suffix, size in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if count % size == 0:
            return f"{count // size}{suffix}"
    return str(count)


def _summary(rows: list[_Row]) -> str:
    counts = Counter(row.report.state for row in rows)
    pods = len({id(row.pod) for row in rows})
    parts = [f"{counts[state]} {state.value}" for state in State if counts[state]]
    failing = sum(counts[state] for state in FAILING_STATES)
    noun = "container" if len(rows) == 1 else "containers"
    verdict = f"{failing} failing" if failing else "none failing"
    return (
        f"{len(rows)} {noun} in {pods} pod spec{'s' if pods != 1 else ''}: "
        f"{', '.join(parts)} ({verdict})"
    )


def _live_summary(rows: list[_Row], live: LiveResult) -> str:
    """:func:`_summary` for the live audit: containers counted in every pod they run in."""
    counts: Counter[State] = Counter()
    for row in rows:
        counts[row.report.state] += row.count
    containers = sum(counts.values())
    parts = [f"{counts[state]} {state.value}" for state in State if counts[state]]
    failing = sum(counts[state] for state in FAILING_STATES)
    verdict = f"{failing} failing" if failing else "none failing"
    return (
        f"{containers} container{'s' if containers != 1 else ''} in {live.pods} "
        f"pod{'s' if live.pods != 1 else ''} of {live.workloads} "
        f"workload{'s' if live.workloads != 1 else ''} (context {live.context}): "
        f"{', '.join(parts)} ({verdict})"
    )


if __name__ == "__main__":
    sys.exit(main())
