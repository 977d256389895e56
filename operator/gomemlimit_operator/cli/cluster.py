"""``gomemlimit audit --cluster``: the live audit, read from the current kubeconfig context.

A thin adapter like manifests.py: it reads pods, policies and namespace labels from the API
server, and the engine decides every state, exactly as for files and in the operator.

Bounded memory at any cluster size: pods are listed in pages (``limit``/``continue``), each
page's JSON is dropped once its pods are evaluated, and only one compact aggregate per row
is kept: (namespace, controller, container report) -> pod count. Grouping by workload owner
needs the owners of ReplicaSets (Deployment) and Jobs (CronJob): once the pods are listed,
those are listed too, metadata only, keeping just the ones the pods named.

Needs no operator. The read-only permissions it uses are :data:`AUDIT_READER_RULES`'s
(``deploy/audit-reader/clusterrole.yaml``); a 403 names the one that is missing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from gomemlimit_operator.cli.manifests import ManifestError
from gomemlimit_operator.core.api import (
    API_VERSION,
    CLUSTER_KIND,
    DEFAULT_POLICY,
    GROUP,
    NAMESPACED_KIND,
    PLURALS,
    Policy,
    PolicyError,
    parse_policy,
)
from gomemlimit_operator.core.engine import (
    ContainerReport,
    SpecError,
    evaluate_pod,
    governing_policy,
)
from gomemlimit_operator.core.selectors import namespace_labels

__all__ = [
    "PAGE",
    "Api",
    "ClusterError",
    "LiveAudit",
    "LiveResult",
    "LiveRow",
    "Progress",
    "Workload",
    "audit_cluster",
    "controller_of",
    "read_namespaces",
    "read_policies",
]

PAGE: Final = 500
"""Objects per LIST page."""
NOT_FINISHED: Final = "status.phase!=Succeeded,status.phase!=Failed"
"""Pods that finished run no container; the operator forgets them too."""
PARTIAL_METADATA: Final = (
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)
"""Metadata only, for ReplicaSets and Jobs (plain JSON from a server that cannot)."""
ROLE_FILE: Final = "deploy/audit-reader/clusterrole.yaml"
AUDIT_READER: Final = "gomemlimit-audit-reader"
"""The read-only ClusterRole (install/rbac.py declares its rules)."""
PROGRESS_DELAY: Final = 1.0
"""Seconds of listing before progress appears (on a terminal only)."""
OWNER_KINDS: Final = {"ReplicaSet": ("apps", "replicasets"), "Job": ("batch", "jobs")}
"""Controllers whose own controller is the workload people name (Deployment, CronJob)."""


class ClusterError(ManifestError):
    """Bad kubeconfig or context, an unreachable API server, or a refused request: exit 2."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status of a refused request."""


@dataclass(frozen=True, slots=True)
class Workload:
    """What a row is about: a pod's top controller (Deployment, CronJob, StatefulSet,
    DaemonSet, ...) or, for a pod without one, the pod itself."""

    namespace: str
    kind: str
    name: str
    file: None = None
    """Rows of a live audit come from no file (JSON ``"file": null``)."""


@dataclass(frozen=True, slots=True)
class LiveRow:
    workload: Workload
    report: ContainerReport
    count: int
    """Pods of the workload with this container in exactly this state."""
    pod: str | None = None
    """The pod's name, with ``-o wide`` (then ``count`` is 1)."""


@dataclass(frozen=True)
class LiveResult:
    rows: list[LiveRow]
    pods: int
    workloads: int
    context: str


def controller_of(metadata: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the ownerReference with ``controller: true``, else of the first one."""
    owners = [ref for ref in metadata.get("ownerReferences") or () if isinstance(ref, Mapping)]
    for ref in sorted(owners, key=lambda ref: not ref.get("controller")):
        kind, name = ref.get("kind"), ref.get("name")
        if isinstance(kind, str) and isinstance(name, str) and kind and name:
            return kind, name
    return None


_Key = tuple[str, str, str]  # (namespace, kind, name) of a pod's own controller, or the pod


@dataclass
class LiveAudit:
    """The compact aggregate of a live audit: fed pods one by one, then resolved to rows.

    Keeps, per (pod controller, container report), a pod count (``wide``: per pod), and the
    controllers whose owner must be looked up; never a pod object.
    """

    policies: list[Policy]
    namespaces: Mapping[str, Mapping[str, str]]
    """Labels of every namespace in scope, for ClusterGoMemPolicy namespaceSelectors."""
    wide: bool = False
    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr)
    pods: int = 0
    _counts: Counter[tuple[_Key, str | None, ContainerReport]] = field(default_factory=Counter)
    _pods_by_controller: Counter[_Key] = field(default_factory=Counter)
    _governing: dict[tuple[str, frozenset[tuple[str, str]]], Policy | None] = field(
        default_factory=dict
    )

    def add(self, pod: Mapping[str, Any]) -> None:
        """Evaluate one pod (a dict as the API server returns it) and count its containers."""
        metadata = pod.get("metadata") or {}
        namespace = str(metadata.get("namespace") or "")
        name = str(metadata.get("name") or "")
        labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
        try:
            reports = evaluate_pod(metadata, pod.get("spec") or {}, self._policy(namespace, labels))
        except SpecError as exc:  # the API server validated it: bounds only, in practice
            self.warn(f"warning: Pod/{namespace}/{name}: not evaluated: {exc}")
            return
        controller = controller_of(metadata)
        key: _Key = (namespace, *controller) if controller else (namespace, "Pod", name)
        self.pods += 1
        self._pods_by_controller[key] += 1
        for report in reports:
            self._counts[key, name if self.wide else None, report] += 1

    def _policy(self, namespace: str, labels: dict[str, str]) -> Policy | None:
        cache_key = (namespace, frozenset(labels.items()))
        if cache_key not in self._governing:
            ns_labels = namespace_labels(namespace, self.namespaces.get(namespace))
            self._governing[cache_key] = governing_policy(
                namespace, labels, ns_labels, self.policies
            )
        return self._governing[cache_key]

    def controllers_to_resolve(self) -> dict[str, set[tuple[str, str]]]:
        """{kind: {(namespace, name)}} of the ReplicaSets and Jobs that own pods."""
        wanted: dict[str, set[tuple[str, str]]] = {kind: set() for kind in OWNER_KINDS}
        for namespace, kind, name in self._pods_by_controller:
            if kind in wanted:
                wanted[kind].add((namespace, name))
        return {kind: names for kind, names in wanted.items() if names}

    def rows(self, owners: Mapping[_Key, tuple[str, str]], context: str = "") -> LiveResult:
        """The rows, each controller replaced by its owner (``owners``), merged and sorted."""

        def workload(key: _Key) -> Workload:
            kind, name = owners.get(key, key[1:])
            return Workload(key[0], kind, name)

        merged: Counter[tuple[Workload, str | None, ContainerReport]] = Counter()
        for (key, pod, report), count in self._counts.items():  # insertion: container order
            merged[workload(key), pod, report] += count
        order = sorted(
            merged.items(), key=lambda item: (*_sort_key(item[0][0]), item[0][1] or "")
        )  # stable: a pod's containers stay in spec order
        workloads = {workload(key) for key in self._pods_by_controller}
        return LiveResult(
            [LiveRow(w, report, count, pod) for (w, pod, report), count in order],
            self.pods,
            len(workloads),
            context,
        )


def _sort_key(workload: Workload) -> tuple[str, str, str]:
    return workload.namespace, workload.kind, workload.name


class Progress:
    """``listed 12,500 pods...`` on stderr, overwritten in place: only on a terminal, and
    only once listing has taken more than :data:`PROGRESS_DELAY`. Never in a pipe or CI."""

    def __init__(
        self,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
        delay: float = PROGRESS_DELAY,
    ) -> None:
        self.stream = stream
        self.enabled = _isatty(stream)
        self.clock = clock
        self.start = clock()
        self.delay = delay
        self.shown = False

    def update(self, pods: int) -> None:
        if self.enabled and self.clock() - self.start >= self.delay:
            self.stream.write(f"\rlisted {pods:,} pods...")
            self.stream.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --- the API server ------------------------------------------------------------------------


class Api:
    """The reads of the live audit and of ``explain``: paged LISTs and GETs, each refusal
    turned into a :class:`ClusterError` (exit 2, one line) that names what was refused."""

    def __init__(
        self,
        context: str | None,
        kubeconfig: str | None = None,
        *,
        forbidden_hint: str = f"bind the read-only ClusterRole {AUDIT_READER} ({ROLE_FILE})",
    ) -> None:
        self.forbidden_hint = forbidden_hint
        """What a 403 should tell the user to do."""
        from kubernetes import client
        from kubernetes import config as kube_config
        from kubernetes.config.config_exception import ConfigException

        config: Any = kube_config  # untyped

        # $KUBECONFIG may list several files, with ":"
        path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            contexts, active = config.list_kube_config_contexts(config_file=path)
            chosen = next((c for c in contexts if c["name"] == context), None)
            if context is not None and chosen is None:
                raise ClusterError(f"kubeconfig {path}: no context named {context!r}")
            chosen = chosen or active
            self.context = str(chosen["name"])
            self.default_namespace = str(
                (chosen.get("context") or {}).get("namespace") or "default"
            )
            """The context's namespace, else ``default`` (as kubectl)."""
            self.client = config.new_client_from_config(config_file=path, context=self.context)
        except ClusterError:
            raise
        except (ConfigException, OSError, KeyError, TypeError, ValueError) as exc:
            raise ClusterError(f"kubeconfig {path}: {_first_line(exc)}") from None
        self.core = client.CoreV1Api(self.client)
        self.apps = client.AppsV1Api(self.client)
        self.batch = client.BatchV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)
        self.server = str(self.client.configuration.host)

    def close(self) -> None:
        self.client.close()

    def call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the API; ``what`` (``list pods at the cluster scope``) names it in errors."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = function(*args, _preload_content=False, _request_timeout=60, **kwargs)
        except ApiException as exc:
            raise self._refused(what, exc) from None
        except (HTTPError, OSError) as exc:
            raise ClusterError(
                f"context {self.context}: cannot reach the API server at {self.server}: "
                f"{_first_line(exc)}"
            ) from None
        try:
            return json.loads(response.data)
        except ValueError as exc:
            raise ClusterError(f"{what}: the API server sent invalid JSON: {exc}") from None
        finally:
            response.release_conn()

    def get(self, what: str, function: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        """One object, or None when it does not exist (404)."""
        try:
            found = self.call(what, function, *args)
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise
        return found if isinstance(found, dict) else None

    def _refused(self, what: str, exc: Any) -> ClusterError:
        message = _api_message(exc)
        where = f"context {self.context}"
        status = exc.status if isinstance(exc.status, int) else None
        if status == 401:
            text = f"{where}: the API server rejected the credentials: {message}"
        elif status == 403:
            text = (
                f"{where}: forbidden: {message}. This needs permission to {what}: "
                f"{self.forbidden_hint}"
            )
        else:
            text = f"{where}: cannot {what}: {exc.status} {message}"
        return ClusterError(text, status)

    def pages(
        self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Iterator[list[dict[str, Any]]]:
        """Every page of a LIST, ``PAGE`` objects at a time."""
        token: str | None = None
        while True:
            data = self.call(what, function, *args, limit=PAGE, _continue=token, **kwargs)
            yield [item for item in data.get("items") or () if isinstance(item, dict)]
            token = (data.get("metadata") or {}).get("continue") or None
            if token is None:
                return


def _api_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body)
        return str(body.get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _scope(namespace: str | None) -> str:
    return "at the cluster scope" if namespace is None else f"in namespace {namespace}"


def read_namespaces(api: Api, namespace: str | None) -> dict[str, dict[str, str]]:
    def labels(obj: Mapping[str, Any]) -> dict[str, str]:
        return {
            str(k): str(v) for k, v in ((obj.get("metadata") or {}).get("labels") or {}).items()
        }

    if namespace is not None:
        obj = api.call(f"get namespace {namespace}", api.core.read_namespace, namespace)
        return {namespace: labels(obj)}
    found: dict[str, dict[str, str]] = {}
    for page in api.pages("list namespaces", api.core.list_namespace):
        for obj in page:
            name = (obj.get("metadata") or {}).get("name")
            if isinstance(name, str):
                found[name] = labels(obj)
    return found


def read_policies(api: Api, namespace: str | None, warn: Callable[[str], None]) -> list[Policy]:
    """The cluster's valid policies (the namespaced ones of ``namespace``, or of all); an
    invalid one is ignored, as the operator ignores it."""
    version = API_VERSION.rpartition("/")[2]
    policies: list[Policy] = []
    sources: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
        (
            f"list {PLURALS[CLUSTER_KIND]}.{GROUP} at the cluster scope",
            api.custom.list_cluster_custom_object,
            (GROUP, version, PLURALS[CLUSTER_KIND]),
        ),
        (
            f"list {PLURALS[NAMESPACED_KIND]}.{GROUP} {_scope(namespace)}",
            api.custom.list_cluster_custom_object
            if namespace is None
            else api.custom.list_namespaced_custom_object,
            (
                GROUP,
                version,
                *(() if namespace is None else (namespace,)),
                PLURALS[NAMESPACED_KIND],
            ),
        ),
    ]
    for what, function, args in sources:
        try:
            for page in api.pages(what, function, *args):
                for obj in page:
                    try:
                        policies.append(parse_policy(obj))
                    except PolicyError as exc:
                        warn(f"warning: {exc}: ignored, as the operator ignores it")
        except ClusterError as exc:
            if exc.status != 404:
                raise
            # the CRDs are not installed: no policies of that kind
    return policies


def _owners(
    api: Api, wanted: Mapping[str, set[tuple[str, str]]], namespace: str | None
) -> dict[_Key, tuple[str, str]]:
    """(namespace, ReplicaSet|Job, name) -> the owner's (kind, name), for those ``wanted``."""
    listers = {
        "ReplicaSet": (
            api.apps.list_namespaced_replica_set,
            api.apps.list_replica_set_for_all_namespaces,
        ),
        "Job": (api.batch.list_namespaced_job, api.batch.list_job_for_all_namespaces),
    }
    found: dict[_Key, tuple[str, str]] = {}
    for kind, names in wanted.items():
        group, plural = OWNER_KINDS[kind]
        namespaced, everywhere = listers[kind]
        namespaces = {ns for ns, _ in names}
        scopes: Iterable[str | None] = (
            sorted(namespaces) if namespace is not None or len(namespaces) <= 3 else [None]
        )
        for scope in scopes:
            what = f"list {plural}.{group} {_scope(scope)}"
            function, args = (everywhere, ()) if scope is None else (namespaced, (scope,))
            for page in api.pages(what, function, *args, _headers={"Accept": PARTIAL_METADATA}):
                for obj in page:
                    metadata = obj.get("metadata") or {}
                    key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
                    owner = controller_of(metadata)
                    if owner is not None and key in names:
                        found[key[0], kind, key[1]] = owner
    return found


def audit_cluster(
    *,
    context: str | None,
    namespace: str | None,
    selector: str | None,
    wide: bool,
    policies: list[Policy] | None = None,
    stderr: TextIO | None = None,
) -> LiveResult:
    """List and evaluate the pods in scope (``namespace`` None: every namespace).

    ``policies`` (from --policy files) replace the cluster's. With no policy at all, the
    implicit ClusterGoMemPolicy/default governs every container, as for files.
    """
    err = sys.stderr if stderr is None else stderr

    def warn(message: str) -> None:
        print(message, file=err)

    api = Api(context)
    try:
        namespaces = read_namespaces(api, namespace)
        if policies is None:
            policies = read_policies(api, namespace, warn)
            if not policies:
                warn(
                    f"note: no {NAMESPACED_KIND} or {CLUSTER_KIND} in context {api.context}: "
                    f"auditing against the implicit {DEFAULT_POLICY.ref}"
                )
        audit = LiveAudit(policies or [DEFAULT_POLICY], namespaces, wide=wide, warn=warn)
        progress = Progress(err)
        options: dict[str, Any] = {"field_selector": NOT_FINISHED}
        if selector:
            options["label_selector"] = selector
        what = f"list pods {_scope(namespace)}"
        function: Callable[..., Any] = api.core.list_pod_for_all_namespaces
        args: tuple[Any, ...] = ()
        if namespace is not None:
            function, args = api.core.list_namespaced_pod, (namespace,)
        try:
            for page in api.pages(what, function, *args, **options):
                for pod in page:
                    audit.add(pod)
                del page
                progress.update(audit.pods)
        finally:
            progress.done()
        owners = _owners(api, audit.controllers_to_resolve(), namespace)
        return audit.rows(owners, api.context)
    finally:
        api.close()
