"""The webhook's own HTTPS server, against real TLS connections on 127.0.0.1: what it answers,
its limits (body size, timeouts, connections), certificate reloads and a shared port."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from unit_helpers import policy

from gomemlimit_operator.core.api import WEBHOOK_PATH
from gomemlimit_operator.core.policy_view import PolicyView
from gomemlimit_operator.runtime.admission_metrics import AdmissionMetrics, ServingMetrics
from gomemlimit_operator.runtime.certs import CertificateBundle, generate, write_files
from gomemlimit_operator.runtime.webhook import PodWebhook
from gomemlimit_operator.runtime.webhook_server import (
    MAX_BODY_BYTES,
    RateLimitedLog,
    ReviewFunction,
    ServingLimits,
    WebhookServer,
)

SERVER_LOGGER = "gomemlimit_operator.runtime.webhook_server"


# --- fixtures and a small HTTP client --------------------------------------------------------


@pytest.fixture(scope="module")
def bundle() -> CertificateBundle:
    return generate(["127.0.0.1", "localhost"])


@pytest.fixture
def files(bundle: CertificateBundle, tmp_path: Path) -> tuple[Path, Path]:
    written = write_files(bundle, tmp_path / "tls")
    return written.cert_file, written.key_file


def pod_webhook() -> tuple[PodWebhook, AdmissionMetrics]:
    registry = PolicyView()
    registry.set_policy(policy())
    metrics = AdmissionMetrics(CollectorRegistry())
    return PodWebhook(registry, exempt=lambda ns: False, metrics=metrics), metrics


def review(operation: str = "CREATE", annotations: dict[str, str] | None = None, **request: Any):  # type: ignore[no-untyped-def]
    pod = {
        "metadata": {"name": "p", "namespace": "team", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "512Mi"}}}]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "operation": operation,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "object": pod,
            **request,
        },
    }


class Served:
    """A started server, its metrics, and a way to reach it."""

    def __init__(
        self, server: WebhookServer, registry: CollectorRegistry, metrics: ServingMetrics, ca: bytes
    ) -> None:
        self.server = server
        self.registry = registry
        self.metrics = metrics
        self.ca = ca

    def open_connections(self) -> float | None:
        return self.registry.get_sample_value("gomemlimit_webhook_connections")

    def rejected(self, reason: str) -> float:
        return self.metrics.rejected_requests.labels(reason=reason)._value.get()

    def closed(self, reason: str) -> float:
        return self.metrics.closed_connections.labels(reason=reason)._value.get()

    async def connect(self, ca: bytes | None = None) -> Connection:
        context = ssl.create_default_context(cadata=(ca or self.ca).decode())
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port, ssl=context)
        return Connection(reader, writer)

    async def call(self, body: bytes, **options: Any) -> tuple[int, dict[str, str], bytes]:
        connection = await self.connect()
        try:
            return await connection.request(body, **options)
        finally:
            connection.close()


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(
        self,
        body: bytes,
        *,
        path: str = WEBHOOK_PATH,
        method: str = "POST",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        head = {"Host": "127.0.0.1", "Content-Type": "application/json"}
        head["Content-Length"] = str(len(body))
        head.update(headers or {})
        lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
        self.writer.write(f"{method} {path} HTTP/1.1\r\n{lines}\r\n".encode() + body)
        await self.writer.drain()
        return await self.response()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        status_line = await asyncio.wait_for(self.reader.readline(), 10)
        if not status_line:
            raise ConnectionError("closed by the server")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def closed_by_server(self, within: float) -> bool:
        """True if the server closes the connection within ``within`` seconds."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), within)
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            return True
        return data == b""

    async def trickle(self, data: bytes, pause: float) -> float | None:
        """Send ``data`` one byte per ``pause``: the seconds until the server cut the
        connection, or None if it never did."""
        started = time.monotonic()
        for byte in data:
            try:
                self.writer.write(bytes([byte]))
                await self.writer.drain()
            except (ConnectionError, ssl.SSLError):
                return time.monotonic() - started
            if self.reader.at_eof():
                return time.monotonic() - started
            await asyncio.sleep(pause)
        return None

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def serving(
    files: tuple[Path, Path],
    ca: bytes,
    review_function: ReviewFunction | None = None,
    **options: Any,
) -> AsyncIterator[Served]:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    if review_function is None:
        review_function = pod_webhook()[0].review
    options.setdefault("drain_timeout", 0)  # stop at once; the drain has its own test
    server = WebhookServer(
        review_function,
        host="127.0.0.1",
        port=options.pop("port", 0),
        path=WEBHOOK_PATH,
        cert_file=files[0],
        key_file=files[1],
        metrics=metrics,
        **options,
    )
    async with server:
        yield Served(server, registry, metrics, ca)


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SERVER_LOGGER and r.levelno >= logging.WARNING]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def patch_of(body: bytes) -> list[dict[str, Any]]:
    response = json.loads(body)["response"]
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    return ops


# --- answers ---------------------------------------------------------------------------------


def test_a_pod_create_gets_the_patch_on_a_kept_alive_connection(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    seen: list[bool] = []

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, on_serving=lambda: seen.append(True)) as s:
            assert seen == [True]
            assert s.server.port > 0
            connection = await s.connect()
            for _ in range(2):
                status, headers, body = await connection.request(json.dumps(review()).encode())
                assert status == 200
                assert headers["content-type"] == "application/json"
                answer = json.loads(body)
                assert answer["kind"] == "AdmissionReview"
                assert answer["response"]["uid"] == "u-1"
                assert answer["response"]["allowed"] is True
                assert patch_of(body)[0]["value"] == [{"name": "GOMEMLIMIT", "value": "460MiB"}]
            connection.close()
            assert s.server.open_connections <= 1

    run(scenario)


def test_only_pod_create_is_decided_the_rest_is_allowed_and_counted_ignored(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    hook, admission = pod_webhook()
    others = [
        review("UPDATE"),
        review("CONNECT"),
        review("DELETE"),
        review(subResource="eviction"),
        review(resource={"group": "apps", "version": "v1", "resource": "deployments"}),
    ]

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, hook.review) as s:
            for body in others:
                status, _, answer = await s.call(json.dumps(body).encode())
                assert status == 200
                assert json.loads(answer)["response"] == {"uid": "u-1", "allowed": True}

    run(scenario)
    count = admission.requests.labels
    assert count(result="ignored")._value.get() == len(others)
    assert sum(count(result=r)._value.get() for r in ("mutated", "unchanged", "skipped")) == 0
    assert admission.duration._sum.get() == 0  # no decision was made


def test_bodies_up_to_the_cap_are_read_and_larger_ones_get_413(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    # A pod of 3.5 MiB (kopf's server refused anything over 1 MiB): answered with its patch.
    big = json.dumps(review(annotations={"big": "x" * (3 * 1024 * 1024 + 512 * 1024)})).encode()
    assert 3 * 1024 * 1024 < len(big) < MAX_BODY_BYTES

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem) as s:
            status, _, body = await s.call(big)
            assert status == 200
            assert any(op["path"].startswith("/spec/containers/0/env") for op in patch_of(body))
            # Refused on its Content-Length, before the body is sent.
            connection = await s.connect()
            connection.writer.write(
                f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
            )
            status, headers, text = await connection.response()
            assert status == 413
            assert b"above 4194304" in text
            assert headers["connection"] == "close"
            connection.close()
            # Chunked, with no length: refused once the cap is passed.
            connection = await s.connect()
            chunk = b"x" * (1024 * 1024)
            head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            connection.writer.write(head.encode())
            for _ in range(5):
                connection.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            connection.writer.write(b"0\r\n\r\n")
            status, _, _ = await connection.response()
            assert status == 413
            connection.close()
            assert s.rejected("too_large") == 2

    run(scenario)


def test_expect_100_continue_is_answered_only_for_a_body_that_fits(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    body = json.dumps(review()).encode()

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem) as s:
            connection = await s.connect()
            for length in (len(body), MAX_BODY_BYTES + 1):
                connection.writer.write(
                    f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                    "Expect: 100-continue\r\n\r\n".encode()
                )
                if length > MAX_BODY_BYTES:
                    assert (await connection.response())[0] == 413  # no 100, no body sent
                    break
                interim = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), 5)
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
                connection.writer.write(body)
                assert (await connection.response())[0] == 200
            connection.close()

    run(scenario)


MALFORMED = [
    (b"not json", b"400 Bad Request: not JSON: invalid literal"),
    (b'{"a": "\xff"}', b"not JSON: str is not valid UTF-8"),
    (b"[" * 1025 + b"]" * 1025, b"not JSON: depth limit exceeded"),
    (b"[1, 2]", b"not an AdmissionReview: not a JSON object"),
    (b'{"request": {"uid": 5}}', b"not an AdmissionReview: not an AdmissionReview request"),
    (b"", b"not JSON: Input is a zero-length, empty document"),
]


def test_malformed_bodies_get_400_with_the_reason_and_one_log_line(
    files: tuple[Path, Path], bundle: CertificateBundle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, log_interval=0.5) as s:
            for body, reason in MALFORMED:
                status, headers, text = await s.call(body)
                assert status == 400, body[:20]
                assert reason in text, text
                assert headers["connection"] == "close"
            # A request aiohttp cannot parse: the same 400, counted and rate-limited.
            connection = await s.connect()
            connection.writer.write(b"POST /x HTTP/1.1\r\nBad Header\r\n\r\n")
            status, _, _ = await connection.response()
            assert status == 400
            connection.close()
            assert s.rejected("malformed") == len(MALFORMED) + 1
            lines = refusals(caplog)
            assert len(lines) == 1  # one line for seven refusals
            await asyncio.sleep(0.6)
            await s.call(b"nope")
            lines = refusals(caplog)
            assert len(lines) == 2
            assert "(6 more like it in the last" in lines[1].getMessage()

    run(scenario)
    assert "Traceback" not in caplog.text
    assert all(record.exc_info is None for record in caplog.records)


def test_other_paths_get_404_and_other_methods_405(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    async def scenario() -> None:
        async with serving(files, bundle.ca_pem) as s:
            body = json.dumps(review()).encode()
            for path in ("/", "/mutate", f"{WEBHOOK_PATH}/x", "/gomemlimit-pod-mutat"):
                status, _, text = await s.call(body, path=path)
                assert status == 404, path
                assert b"no webhook at" in text
            status, _, _ = await s.call(body, path=f"{WEBHOOK_PATH}?timeout=2s")
            assert status == 200  # the API server may add a query; the path is what counts
            status, headers, _ = await s.call(b"", method="GET")
            assert status == 405
            assert headers["allow"] == "POST"
            assert s.rejected("unknown_path") == 4
            assert s.rejected("method") == 1

    run(scenario)


def test_a_client_that_goes_away_mid_body_is_not_an_error(
    files: tuple[Path, Path], bundle: CertificateBundle, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with serving(files, bundle.ca_pem) as s:
            connection = await s.connect()
            head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
            connection.writer.write(head.encode() + b'{"request"')
            await connection.writer.drain()
            await asyncio.sleep(0.1)
            connection.writer.transport.abort()
            for _ in range(50):
                if s.server.open_connections == 0:
                    break
                await asyncio.sleep(0.05)
            assert s.server.open_connections == 0
            assert all(s.rejected(reason) == 0 for reason in ("error", "malformed"))
            assert (await s.call(json.dumps(review()).encode()))[0] == 200  # still serving

    run(scenario)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_failing_review_function_gets_500_logged_once_with_its_traceback(
    files: tuple[Path, Path], bundle: CertificateBundle, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(review: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("a bug")

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, broken) as s:
            for _ in range(3):
                status, _, text = await s.call(b"{}")
                assert status == 500
                assert b"the webhook failed" in text
            assert s.rejected("error") == 3

    run(scenario)
    failures = [r for r in caplog.records if r.name == SERVER_LOGGER and r.exc_info]
    assert len(failures) == 1
    assert "a bug" in caplog.text


# --- connections -----------------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_the_idle_timeout(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    limits = ServingLimits(idle_timeout=0.6, header_timeout=5)

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, limits=limits) as s:
            connection = await s.connect()
            assert (await connection.request(json.dumps(review()).encode()))[0] == 200
            await asyncio.sleep(0.3)  # idle, but not for long: still served
            assert (await connection.request(json.dumps(review()).encode()))[0] == 200
            started = time.monotonic()
            assert await connection.closed_by_server(within=3)
            assert 0.4 < time.monotonic() - started < 2.0
            connection.close()  # the client's close_notify ends the TLS shutdown
            for _ in range(50):
                if s.server.open_connections == 0:
                    break
                await asyncio.sleep(0.05)
            assert s.server.open_connections == 0

    run(scenario)


def test_a_slowloris_client_is_cut_off_after_the_header_timeout(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    limits = ServingLimits(idle_timeout=30, header_timeout=1.0)

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, limits=limits) as s:
            connection = await s.connect()
            head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nX-Slow: {'y' * 80}".encode()
            cut = await connection.trickle(head, pause=0.1)  # ten header bytes a second
            assert cut is not None, "never cut off"
            assert 0.9 < cut < 2.5, cut
            assert s.closed("header_timeout") == 1
            # A client that sends nothing at all after its handshake is cut off as well.
            silent = await s.connect()
            assert await silent.closed_by_server(within=3)
            assert s.closed("header_timeout") == 2

    run(scenario)


def test_the_header_timeout_spares_idle_connections_and_bounds_the_body(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    limits = ServingLimits(idle_timeout=30, header_timeout=0.8)
    body = json.dumps(review()).encode()

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, limits=limits) as s:
            connection = await s.connect()
            assert (await connection.request(body))[0] == 200
            # Idle between requests for longer than the header timeout: that is the idle
            # timeout's business, so the connection is still served.
            assert not await connection.closed_by_server(within=1.6)
            assert (await connection.request(body))[0] == 200
            # Headers complete, then a body that trickles in: cut off as well.
            connection.writer.write(
                f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                "\r\n".encode()
            )
            cut = await connection.trickle(body, pause=0.05)
            assert cut is not None, "never cut off"
            assert 0.6 < cut < 2.5, cut
            assert s.closed("header_timeout") == 1
            assert s.rejected("error") == 0  # counted once, as the cut it was

    run(scenario)


def test_connections_beyond_the_cap_are_closed_at_once(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    limits = ServingLimits(max_connections=2)

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, limits=limits) as s:
            first, second = await s.connect(), await s.connect()
            assert (await first.request(json.dumps(review()).encode()))[0] == 200
            assert s.open_connections() == 2  # the gauge
            started = time.monotonic()
            with pytest.raises((ConnectionError, ssl.SSLError)):
                await s.call(b"{}")  # closed before the TLS handshake
            assert time.monotonic() - started < 1.0
            assert s.closed("over_limit") == 1
            # The two open ones are still served, and a freed slot is taken again.
            assert (await second.request(json.dumps(review()).encode()))[0] == 200
            first.close()
            for _ in range(50):
                if s.server.open_connections < 2:
                    break
                await asyncio.sleep(0.05)
            third = await s.connect()
            assert (await third.request(json.dumps(review()).encode()))[0] == 200
            assert s.closed("over_limit") == 1

    run(scenario)


def test_failed_and_slow_tls_handshakes_are_counted(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    limits = ServingLimits(header_timeout=0.5)

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, limits=limits) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.server.port)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to a TLS port
            assert await asyncio.wait_for(reader.read(), 3) == b""
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", s.server.port)
            assert await asyncio.wait_for(reader.read(), 3) == b""  # no ClientHello at all
            writer.close()
            assert s.closed("tls_handshake") == 2
            assert s.server.open_connections == 0

    run(scenario)


# --- certificates and the port ---------------------------------------------------------------


def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(
    files: tuple[Path, Path], bundle: CertificateBundle, caplog: pytest.LogCaptureFixture
) -> None:
    renewed = generate(["127.0.0.1", "localhost"])  # another CA

    def replace(path: Path, data: bytes) -> None:
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, file_check_interval=0.1) as s:
            port = s.server.port
            old = await s.connect()
            assert (await old.request(json.dumps(review()).encode()))[0] == 200
            replace(files[1], renewed.key_pem)
            replace(files[0], renewed.cert_pem)
            for _ in range(50):
                try:
                    fresh = await s.connect(renewed.ca_pem)
                    break
                except ssl.SSLError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the renewed certificate was never served")
            assert (await fresh.request(json.dumps(review()).encode()))[0] == 200
            assert (await old.request(json.dumps(review()).encode()))[0] == 200  # not dropped
            assert s.server.port == port
            with pytest.raises(ssl.SSLError):
                await s.connect(bundle.ca_pem)  # the old certificate is gone
            # Files that do not load (a key of another certificate): the renewed one stays.
            replace(files[1], bundle.key_pem)
            assert not s.server.check_certificate()
            assert "do not load" in caplog.text
            again = await s.connect(renewed.ca_pem)
            assert (await again.request(json.dumps(review()).encode()))[0] == 200

    run(scenario)


def test_two_servers_share_one_port(files: tuple[Path, Path], bundle: CertificateBundle) -> None:
    async def scenario() -> None:
        async with serving(files, bundle.ca_pem) as first:
            async with serving(files, bundle.ca_pem, port=first.server.port) as second:
                assert second.server.port == first.server.port
                for _ in range(6):
                    status, _, _ = await first.call(json.dumps(review()).encode())
                    assert status == 200
            status, _, _ = await first.call(json.dumps(review()).encode())
            assert status == 200  # the first still listens after the second stopped

    run(scenario)


def test_stop_closes_the_listener_and_the_connections(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    async def scenario() -> None:
        async with serving(files, bundle.ca_pem) as s:
            connection = await s.connect()
            assert (await connection.request(json.dumps(review()).encode()))[0] == 200
            await s.server.stop()
            assert await connection.closed_by_server(within=3)
            with pytest.raises(ConnectionRefusedError):
                await s.connect()

    run(scenario)


def test_stop_drains_before_closing(files: tuple[Path, Path], bundle: CertificateBundle) -> None:
    """A rolling update: while the API server learns that the old pod is going, it still
    sends reviews there, on connections it holds and on new ones. They are answered (with
    Connection: close), not dropped: the API server does not retry a webhook POST, and a lost
    one fails open. After the drain, the listener is closed."""

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, drain_timeout=1.5) as s:
            held = await s.connect()
            assert (await held.request(json.dumps(review()).encode()))[0] == 200
            stopping = asyncio.ensure_future(s.server.stop())
            await asyncio.sleep(0.3)  # draining
            for connection in (held, await s.connect()):
                status, headers, body = await connection.request(json.dumps(review()).encode())
                assert status == 200
                assert patch_of(body)
                assert headers.get("connection", "").lower() == "close"
                assert await connection.closed_by_server(within=1)
            await asyncio.wait_for(stopping, 5)
            with pytest.raises(ConnectionRefusedError):
                await s.connect()

    run(scenario)


def test_stop_lets_handshakes_finish_and_closes_stalled_ones(
    files: tuple[Path, Path], bundle: CertificateBundle
) -> None:
    """A connection accepted just before the listener closes is answered, not dropped; one
    that never finishes its handshake is closed at the end of the grace, never left open (the
    API server would wait on it until its timeout). A second stop() waits for the first."""

    async def scenario() -> None:
        async with serving(files, bundle.ca_pem, shutdown_timeout=1.0) as s:
            stalled_reader, stalled_writer = await asyncio.open_connection(
                "127.0.0.1", s.server.port
            )  # TCP only: no ClientHello ever
            late = asyncio.ensure_future(s.connect())  # its handshake overlaps the stop
            await asyncio.sleep(0.05)
            stopping = [asyncio.ensure_future(s.server.stop()) for _ in range(2)]
            connection = await late
            status, _, body = await connection.request(json.dumps(review()).encode())
            assert status == 200
            assert patch_of(body)
            started = time.monotonic()
            assert await asyncio.wait_for(stalled_reader.read(1), 5) == b""  # closed
            assert time.monotonic() - started < 3
            await asyncio.wait_for(asyncio.gather(*stopping), 5)
            assert s.server.open_connections == 0
            stalled_writer.close()

    run(scenario)


def test_a_certificate_that_does_not_load_stops_the_start(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    server = WebhookServer(
        pod_webhook()[0].review,
        host="127.0.0.1",
        port=0,
        path=WEBHOOK_PATH,
        cert_file=cert,
        key_file=key,
        metrics=ServingMetrics(CollectorRegistry()),
    )
    with pytest.raises(ssl.SSLError):
        asyncio.run(server.start())
    assert not server.serving


def test_the_rate_limited_log_counts_what_it_suppresses(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.ratelimit"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.ratelimit"):
        assert log.log(logging.WARNING, "refused %s", "a")
        now[0] = 5.0
        assert not log.log(logging.WARNING, "refused %s", "b")
        assert not log.log(logging.WARNING, "refused %s", "c")
        now[0] = 10.0
        assert log.log(logging.WARNING, "refused %s", "d")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a",
        "refused d (2 more like it in the last 10s, not logged)",
    ]
