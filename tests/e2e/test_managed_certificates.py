"""--manage-certificates end to end: the real API server calls an operator whose certificate
lives in a Secret it fills itself, and rotates under load with no failed admission.

The operator runs as an installed replica would (no --dev): the test creates what the chart
creates, an empty Secret and a MutatingWebhookConfiguration with no caBundle, here by URL
(https://127.0.0.1:<port>/...), so the certificate also carries 127.0.0.1 and localhost. The
configuration fails closed (failurePolicy Fail): a TLS failure during a rotation would make a
pod creation fail, not pass silently.

Timing: the serving certificate lives 30 s and is renewed with 10 s left (a third), checked
every 3 s; the webhook server re-reads its files every 1.5 s. The first rotation comes about
20 s after start; pods are created continuously until 5 s after the served certificate
changed. The test takes about 40 s.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client

from gomemlimit_operator.core.api import WEBHOOK_PATH
from gomemlimit_operator.install.webhook_configuration import build_webhook_configuration
from gomemlimit_operator.runtime.certs import san_strings
from tests.cluster.controlplane import ControlPlane
from tests.e2e.operator_harness import (
    OperatorProcess,
    apply,
    crds,
    free_ports,
    get,
    wait_ready,
    wait_until,
)

__all__ = ["crds"]

SECRET = "gomemlimit-operator-certs"
SERVICE = "gomemlimit-operator"
VALIDITY = 30
IMAGE = "registry.invalid/app:1"


def served_certificate(port: int) -> bytes:
    """The DER certificate the webhook serves (not verified: we compare it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def verified_handshake(port: int, ca_pem: bytes) -> None:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


def pod(name: str) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {"name": "app", "image": IMAGE, "resources": {"limits": {"memory": "512Mi"}}}
            ]
        },
    }


def gomemlimit(created: Any) -> str | None:
    for entry in created.spec.containers[0].env or ():
        if entry.name == "GOMEMLIMIT":
            return str(entry.value)
    return None


def test_managed_certificates_rotate_with_no_failed_admission(
    cluster: ControlPlane,
    crds: None,
    k8s_api: client.ApiClient,
    new_namespace: Callable[[], str],
    tmp_path: Path,
) -> None:
    own, workloads = new_namespace(), new_namespace()
    webhook_port, metrics_port, health_port = free_ports(3)
    hook = f"gomemlimit-managed-{own}"[:63]
    configuration = build_webhook_configuration(
        name=hook,
        client_config={"url": f"https://127.0.0.1:{webhook_port}{WEBHOOK_PATH}"},
        exempt_namespaces={"kube-system", own},
        only_namespaces=[workloads],
        timeout_seconds=5,
        failure_policy="Fail",
    )
    apply(
        cluster,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "type": "Opaque"},
        namespace=own,
    )
    apply(cluster, configuration)
    apply(
        cluster,
        {
            "apiVersion": "gomemlimit.io/v1alpha1",
            "kind": "GoMemPolicy",
            "metadata": {"name": "all"},
            "spec": {},
        },
        namespace=workloads,
    )
    operator = OperatorProcess(
        Path(cluster.kubeconfig),
        tmp_path / "operator.log",
        mode=[
            "--manage-certificates",
            "--namespace",
            own,
            "--certificate-secret",
            SECRET,
            "--webhook-configuration-name",
            hook,
            "--service-name",
            SERVICE,
            "--certificate-extra-san",
            "127.0.0.1,localhost",
            "--certificate-validity-seconds",
            str(VALIDITY),
            "--ca-validity-days",
            "1",
            "--watch-namespace",
            workloads,
        ],
        identity=f"managed-{own}",
    )
    core = client.CoreV1Api(k8s_api)
    try:
        operator.launch((webhook_port, metrics_port, health_port))
        operator.wait_ready(timeout=90)
        wait_ready(cluster, "GoMemPolicy", "all", workloads)
        assert "[+]certificates ok" in operator.readyz()[1]

        # The Secret and the caBundle are filled; the served certificate is the Secret's.
        secret = get(cluster, "secret", SECRET, "-n", own)
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
        webhooks = get(cluster, "mutatingwebhookconfiguration", hook)["webhooks"]
        assert [base64.b64decode(w["clientConfig"]["caBundle"]) for w in webhooks] == [
            data["ca.crt"]
        ]
        first = served_certificate(webhook_port)
        first_cert = x509.load_der_x509_certificate(first)
        assert first == x509.load_pem_x509_certificate(data["tls.crt"]).public_bytes(
            serialization.Encoding.DER
        )
        assert {"127.0.0.1", "localhost", f"{SERVICE}.{own}.svc"} <= san_strings(first_cert)
        verified_handshake(webhook_port, data["ca.crt"])
        # Mutated through the managed certificate.
        created = core.create_namespaced_pod(workloads, pod("first"))
        assert gomemlimit(created) == "460MiB"

        # Pods all the way through a rotation: each must be created, and get its value.
        results: list[tuple[str, str | None]] = []
        failures: list[str] = []
        stop = threading.Event()

        def create_pods() -> None:
            number = 0
            while not stop.is_set():
                number += 1
                name = f"during-{number}"
                try:
                    made = core.create_namespaced_pod(workloads, pod(name), _request_timeout=15)
                except Exception as exc:
                    failures.append(f"{name}: {exc}")
                else:
                    results.append((name, gomemlimit(made)))
                time.sleep(0.05)

        def rotated(der: bytes) -> bytes | None:
            return der if der != first else None

        creator = threading.Thread(target=create_pods, daemon=True)
        creator.start()
        try:
            second: bytes = wait_until(
                lambda: rotated(served_certificate(webhook_port)),
                "the served certificate to rotate",
                timeout=VALIDITY + 15,
                interval=0.5,
            )
            time.sleep(5)
        finally:
            stop.set()
            creator.join(30)
        assert failures == []
        assert len(results) > 50, len(results)
        assert [name for name, value in results if value != "460MiB"] == []

        # The new certificate is from the same CA, and the caBundle did not change.
        data_after = {
            k: base64.b64decode(v)
            for k, v in get(cluster, "secret", SECRET, "-n", own)["data"].items()
        }
        assert data_after["ca.crt"] == data["ca.crt"]
        assert data_after["tls.crt"] != data["tls.crt"]
        second_cert = x509.load_der_x509_certificate(second)
        assert second_cert.not_valid_after_utc > first_cert.not_valid_after_utc
        verified_handshake(webhook_port, data["ca.crt"])
        webhooks = get(cluster, "mutatingwebhookconfiguration", hook)["webhooks"]
        assert [base64.b64decode(w["clientConfig"]["caBundle"]) for w in webhooks] == [
            data["ca.crt"]
        ]
        assert operator.metric("gomemlimit_certificate_rotations_total", certificate="serving") >= 2
        expiry = operator.metric(
            "gomemlimit_certificate_expiry_timestamp_seconds", certificate="serving"
        )
        assert expiry >= second_cert.not_valid_after_utc.timestamp() - 1
        log = operator.log_text()
        assert "Rotated the serving certificate" in log
        assert "PRIVATE KEY" not in log
    finally:
        operator.stop()
        cluster.kubectl("delete", "mutatingwebhookconfiguration", hook, "--ignore-not-found")
        print(operator.log_tail(200))
