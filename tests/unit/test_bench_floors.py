"""The benchmark's floor webhooks (bench/floors.py) answer what our webhook answers: the Go
and aiohttp floors, over verified HTTPS, return our engine's patch for a Pod CREATE and no
patch for anything else."""

from __future__ import annotations

import asyncio
import base64
import copy
import http.client
import json
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from bench.bench_webhook import admitted_pod
from bench.floors import FLOOR_PATH, FloorServer, build_go_tools, expected_patch
from bench.shared import ServingCertificate, serving_certificate
from prometheus_client import CollectorRegistry
from tests.e2e.operator_harness import free_port, pod_review

from gomemlimit_operator.core.api import parse_policy
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.runtime.admission_metrics import AdmissionMetrics
from gomemlimit_operator.runtime.webhook import PodWebhook

NAMESPACE = "bench-floor-test"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> ServingCertificate:
    return serving_certificate(tmp_path_factory.mktemp("floor-tls"))


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    return admitted_pod(NAMESPACE)


def post(port: int, ca_pem: bytes, body: bytes) -> tuple[int, dict[str, Any] | None]:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request(
            "POST", FLOOR_PATH, body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    return response.status, (json.loads(data) if response.status == 200 else None)


def test_expected_patch_is_our_engines(pod: dict[str, Any]) -> None:
    ops = expected_patch(pod)
    assert ops[0] == {
        "op": "add",
        "path": "/spec/containers/0/env/-",
        "value": {"name": "GOMEMLIMIT", "value": "460MiB"},
    }
    assert expected_patch(pod) == ops  # no state carried between calls
    assert pod == admitted_pod(NAMESPACE)  # the pod is not modified


def our_answer(review: dict[str, Any]) -> dict[str, Any]:
    """Our lean webhook path's response to ``review``, in process, under the same policy."""
    from bench.bench_webhook import BENCH_LABEL, policy_manifest

    registry = PolicyView()
    registry.set_policy(parse_policy(policy_manifest()))
    registry.set_namespace(NAMESPACE, {BENCH_LABEL: "true"})
    webhook = PodWebhook(
        registry, exempt=lambda ns: False, metrics=AdmissionMetrics(CollectorRegistry())
    )
    answer: dict[str, Any] = asyncio.run(webhook.review(review))["response"]
    return answer


@pytest.fixture(params=["go", "aiohttp"])
def floor(
    request: pytest.FixtureRequest, certificate: ServingCertificate, pod: dict[str, Any]
) -> Iterator[FloorServer]:
    kind: Literal["go", "aiohttp"] = request.param
    if kind == "go":
        if shutil.which("go") is None:
            pytest.skip("no `go` on PATH")
        build_go_tools()
    server = FloorServer(
        kind,
        cert=certificate.cert_file,
        key=certificate.key_file,
        patch=expected_patch(pod),
        port=free_port(),
    )
    with server:
        assert server.url.startswith(f"https://127.0.0.1:{server.port}/")
        assert server.pid > 0
        yield server
    assert not server.running


def test_floor_answers_as_we_do(
    floor: FloorServer, certificate: ServingCertificate, pod: dict[str, Any]
) -> None:
    review = pod_review(NAMESPACE, pod)
    status, answer = post(floor.port, certificate.ca_pem, json.dumps(review).encode())
    assert status == 200
    assert answer is not None
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == expected_patch(pod)
    assert response["patch"] == our_answer(review)["patch"]  # byte for byte

    update = copy.deepcopy(review)
    update["request"]["operation"] = "UPDATE"
    update["request"]["oldObject"] = pod
    status, answer = post(floor.port, certificate.ca_pem, json.dumps(update).encode())
    assert status == 200
    assert answer is not None
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]
    assert answer["response"]["uid"] == update["request"]["uid"]

    status, _ = post(floor.port, certificate.ca_pem, b'{"request": ')
    assert status == 400


def test_go_tools_are_cached() -> None:
    if shutil.which("go") is None:
        pytest.skip("no `go` on PATH")
    first = build_go_tools()
    mtimes = [Path(p).stat().st_mtime_ns for p in first]
    assert build_go_tools() == first
    assert [Path(p).stat().st_mtime_ns for p in first] == mtimes
