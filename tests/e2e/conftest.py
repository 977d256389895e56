"""Fixtures for the end-to-end tests: a real local control plane (see tests/cluster/).

* ``cluster`` (session): a fresh :class:`controlplane.ControlPlane` in a temp dir, stopped at
  the end. With ``GOMEMLIMIT_E2E_KUBECONFIG=<path>`` set, that running cluster is used instead
  (for example ``make cluster-up`` then ``GOMEMLIMIT_E2E_KUBECONFIG=.cluster/kubeconfig``).
* ``k8s_api`` (session): a ``kubernetes.client.ApiClient`` for that cluster.
* ``namespace`` (per test): a fresh namespace whose ``default`` ServiceAccount exists; deleted
  afterwards. ``new_namespace`` makes more of them.

Every test under tests/e2e gets the ``e2e`` marker. If the control plane cannot be built or
started, the tests ERROR with the reason; they are never skipped.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.cluster.controlplane import (
    Binaries,
    ControlPlane,
    ControlPlaneError,
    ensure_built,
)
from tests.cluster.images import BuiltImage
from tests.cluster.realnode import RealNode, ci_requires_real_node

E2E_DIR = Path(__file__).resolve().parent

REUSE_KUBECONFIG_ENV = "GOMEMLIMIT_E2E_KUBECONFIG"
_BUILD_RESULT = pytest.StashKey[Binaries | BaseException]()


def _is_e2e(item: pytest.Item) -> bool:
    return E2E_DIR in Path(str(item.path)).resolve().parents


@pytest.hookimpl(tryfirst=True)  # before `-m` selection runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_e2e(item):
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane once, before any test runs, if e2e tests were selected.

    A cold build takes many minutes; doing it here keeps it out of the per-test timeout. A
    failure is remembered and reported by the ``cluster`` fixture, so those tests ERROR.
    """
    if session.config.option.collectonly or not any(_is_e2e(i) for i in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("e2e: checking the local control plane build (tests/cluster/build.sh)")
    t0 = time.monotonic()
    try:
        result: Binaries | BaseException = ensure_built()
    except Exception as exc:
        result = exc
    session.config.stash[_BUILD_RESULT] = result
    if reporter is not None and isinstance(result, Binaries):
        reporter.write_line(f"e2e: control plane binaries ready in {time.monotonic() - t0:.1f}s")


def _binaries(pytestconfig: pytest.Config) -> Binaries:
    result = pytestconfig.stash.get(_BUILD_RESULT, None)
    if result is None:  # collection hook skipped (e.g. run through another entry point)
        try:
            result = ensure_built()
        except Exception as exc:
            result = exc
        pytestconfig.stash[_BUILD_RESULT] = result
    if isinstance(result, BaseException):
        pytest.fail(f"cannot build the local control plane:\n{result}", pytrace=False)
    return result


@pytest.fixture(scope="session")
def cluster(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """A running control plane: fresh per session, or the one in $GOMEMLIMIT_E2E_KUBECONFIG."""
    binaries = _binaries(pytestconfig)
    reuse = os.environ.get(REUSE_KUBECONFIG_ENV)
    if reuse:
        cp = ControlPlane.attach(reuse, binaries=binaries)
        probe = cp.kubectl("get", "--raw", "/readyz", check=False, timeout=15)
        if probe.returncode != 0:
            pytest.fail(
                f"${REUSE_KUBECONFIG_ENV}={reuse}: the cluster is not ready:\n"
                f"{probe.stdout}{probe.stderr}",
                pytrace=False,
            )
        yield cp
        return

    # The real node (kubelet + containerd) comes up when the machine allows it; tests that
    # need it use the `real_node` fixture, which fails in CI and skips elsewhere without it.
    cp = ControlPlane(tmp_path_factory.mktemp("cluster"), binaries=binaries, real_node="auto")
    try:
        cp.start()
    except ControlPlaneError as exc:
        pytest.fail(f"cannot start the local control plane:\n{exc}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop(keep_logs=True)  # pytest keeps the last few temp dirs: logs stay for debugging


@pytest.fixture(scope="session")
def k8s_api(cluster: ControlPlane) -> Iterator[client.ApiClient]:
    """A kubernetes.client.ApiClient for the cluster (admin credentials)."""
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield api
    finally:
        api.close()


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"e2e-{slug}-{secrets.token_hex(3)}"


def _wait_for_default_sa(core: client.CoreV1Api, name: str, timeout: float = 30.0) -> None:
    # Pods are rejected until the ServiceAccount admission finds `default` in the namespace.
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            return
        except client.ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@pytest.fixture
def new_namespace(
    request: pytest.FixtureRequest, k8s_api: client.ApiClient
) -> Iterator[Callable[[], str]]:
    """A factory: each call creates a unique namespace, all deleted after the test."""
    core = client.CoreV1Api(k8s_api)
    created: list[str] = []

    def make() -> str:
        name = _namespace_name(request.node.name)
        body = client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"gomemlimit.io/e2e": "true"})
        )
        core.create_namespace(body)
        created.append(name)
        _wait_for_default_sa(core, name)
        return name

    yield make
    for name in created:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def namespace(new_namespace: Callable[[], str]) -> str:
    """A fresh namespace for this test (its `default` ServiceAccount exists); deleted after."""
    return new_namespace()


@pytest.fixture(scope="session")
def real_node(cluster: ControlPlane) -> RealNode:
    """The cluster's real node (kubelet + containerd + runc). Without one the test FAILS in CI
    (``CI`` set) and is skipped elsewhere, with the reason."""
    node = cluster.real_node
    if node is None:
        reason = cluster.real_node_reason or "the cluster was started without one"
        if ci_requires_real_node():
            pytest.fail(f"CI needs the real node, and there is none: {reason}", pytrace=False)
        pytest.skip(f"no real node: {reason}")
    return node


@pytest.fixture(scope="session")
def goworkload_image(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """tests/goworkload built static, packed by tests/cluster/images.py and imported into the
    real node's containerd; pods use ``image.ref`` with ``imagePullPolicy: Never``."""
    from tests.cluster.goworkload import build_goworkload_image

    image = build_goworkload_image(tmp_path_factory.mktemp("goworkload"))
    real_node.import_image(image.path)
    return image
