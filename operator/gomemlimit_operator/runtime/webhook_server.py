"""The admission webhook's HTTPS server: AdmissionReviews over TLS, with limits.

One job: accept TLS connections on one port and hand each ``POST`` of the webhook path to a
review function (``webhook.PodWebhook.review``), within the limits a webhook in front of
every pod of a cluster needs. Neither kopf's ``WebhookServer`` nor aiohttp's own runner has
them:

* **Connections.** The listening socket has ``SO_REUSEPORT``: the ``--components webhook``
  processes of one network namespace share the port, and the kernel spreads connections
  over them. A connection takes a slot when it is accepted, before its TLS handshake, and
  keeps it until it is closed. Beyond ``max_connections`` a new connection is closed at once,
  before any TLS work, and counted (``over_limit``).
* **Timeouts.** The TLS handshake must finish within ``header_timeout``. Then each request's
  headers and body must arrive within ``header_timeout`` of the first byte of the request (of
  the connection's start, for the first request): a deadline armed by the protocol, checked
  by one sweep task, and disarmed once the body is read. A slowloris client that sends one
  byte a second is cut off (``header_timeout``). A keep-alive connection idle for
  ``idle_timeout`` is closed (aiohttp's keep-alive timer).
* **Requests.** Only ``POST`` of the webhook path is answered: another path gets 404, another
  method 405. A body above ``max_body_bytes`` (4 MiB by default, above the 3 MiB the API
  server accepts for an object) gets 413, on its Content-Length before anything is read. A
  body that is not JSON or not an AdmissionReview request (bad UTF-8, nesting past orjson's
  1,024 levels, a JSON array, no ``request.uid``) gets 400 with the reason, as does a request
  aiohttp cannot parse. Each is counted in ``gomemlimit_admission_rejected_requests_total``
  and logged at most once per ``log_interval`` seconds, with the number of lines suppressed:
  never a traceback per request. The connection is closed after such an answer.
* **Certificates.** Each new connection gets the current ``ssl.SSLContext``. The certificate
  and key files are read every ``file_check_interval`` seconds; when they changed, they are
  loaded into a fresh context, which new connections get from then on. The listener and the
  open connections are not touched. Files that do not load (written halfway, a key that does
  not match) leave the previous certificate in use and are tried again at the next check.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http
import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import orjson
from aiohttp import StreamReader, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11, RawRequestMessage

from gomemlimit_operator.runtime.admission_metrics import (
    CloseReason,
    RejectReason,
    ServingMetrics,
)

__all__ = [
    "MAX_BODY_BYTES",
    "RateLimitedLog",
    "ReviewFunction",
    "ServingLimits",
    "WebhookServer",
]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
"""The largest request body read: above the API server's own 3 MiB limit for an object, so
that every pod it accepts reaches the webhook."""

ReviewFunction = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""An AdmissionReview (a parsed JSON object) in, the AdmissionReview to answer out. Raises
ValueError for a body that is not an AdmissionReview request (answered 400)."""


@dataclass(frozen=True)
class ServingLimits:
    """The server's limits (``--webhook-idle-timeout``, ``--webhook-header-timeout``,
    ``--webhook-max-connections``)."""

    idle_timeout: float = 120.0
    header_timeout: float = 10.0
    max_connections: int = 1000
    max_body_bytes: int = MAX_BODY_BYTES


class RateLimitedLog:
    """At most one line per ``interval`` seconds; the next line says how many were
    suppressed in between."""

    def __init__(
        self,
        log: logging.Logger,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = log
        self.interval = interval
        self._clock = clock
        self._last = -math.inf
        self.suppressed = 0

    def log(self, level: int, message: str, *args: object, exc_info: Any = None) -> bool:
        """Log the line (True), or count it as suppressed (False)."""
        now = self._clock()
        if now - self._last < self.interval:
            self.suppressed += 1
            return False
        if self.suppressed:
            message += " (%d more like it in the last %.0fs, not logged)"
            args = (*args, self.suppressed, now - self._last)
            self.suppressed = 0
        self._last = now
        self._logger.log(level, message, *args, exc_info=exc_info)
        return True


def _short(text: object, limit: int = 200) -> str:
    shown = str(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class _Connection(web.RequestHandler):
    """aiohttp's HTTP protocol, with the per-request read deadline of :class:`WebhookServer`.

    ``deadline`` (event-loop time) is set when the connection is made and at the first byte
    of each later request, and cleared once the request's body has been read; the server's
    sweep cuts a connection whose deadline has passed. ``in_request`` is true while the
    handler runs: bytes that arrive then belong to that request.
    """

    __slots__ = ("_server", "deadline", "in_request")

    def __init__(self, manager: web.Server, server: WebhookServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = server
        self.deadline: float | None = None
        self.in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.deadline = self._server.read_deadline()
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.deadline is None and not self.in_request:  # the first byte of a request
            self.deadline = self._server.read_deadline()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.connections.discard(self)
        super().connection_lost(exc)

    def cut(self) -> None:
        """Abort the connection: its request did not arrive in time."""
        transport = self.transport
        if transport is not None:
            peer = transport.get_extra_info("peername")
            self._server.dropped(
                "header_timeout",
                "cut a connection from %s: no complete request within %gs",
                peer,
                self._server.limits.header_timeout,
            )
            transport.abort()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (400) or to an exception of ours
        (500): counted and rate-limited, instead of a traceback per request."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response was partly sent; the connection is broken")
        phrase = _phrase(status)
        if status >= 500:
            text = f"{status} {phrase}: the webhook failed; see the operator's log"
            self._server.refuse_logged("error", logging.ERROR, text, request, exc_info=exc)
        else:
            text = f"{status} {phrase}: {_short(message or exc or 'malformed request')}"
            self._server.refuse_logged("malformed", logging.WARNING, text, request)
        response = web.Response(status=status, text=text + "\n")
        response.force_close()
        return response


class WebhookServer:
    """Serves ``POST path`` over TLS with ``review``, within ``limits`` (module docstring).

    ``start()`` binds, listens and calls ``on_serving()``. ``stop()`` first drains: for
    ``drain_timeout`` seconds it keeps listening and answering, every answer with
    ``Connection: close``, while the API server learns that this pod's endpoint is gone (in a
    rolling update it still sends new connections here for a moment, and a review on a
    connection it holds must be answered, not lost in a close: the API server does not retry a
    webhook POST, and a lost one fails open). Then it closes the listener and what is left,
    letting requests in progress finish for up to ``shutdown_timeout``.
    ``port`` is the bound port (useful with port 0).
    """

    def __init__(
        self,
        review: ReviewFunction,
        *,
        host: str,
        port: int,
        path: str,
        cert_file: Path,
        key_file: Path,
        metrics: ServingMetrics,
        limits: ServingLimits = ServingLimits(),
        file_check_interval: float = 10.0,
        log_interval: float = 10.0,
        on_serving: Callable[[], None] | None = None,
        shutdown_timeout: float = 5.0,
        drain_timeout: float = 5.0,
    ) -> None:
        self._review = review
        self.host = host
        self.port = port
        self.path = path
        self.cert_file = cert_file
        self.key_file = key_file
        self.metrics = metrics
        self.limits = limits
        self.file_check_interval = file_check_interval
        self._on_serving = on_serving
        self.shutdown_timeout = shutdown_timeout
        self.drain_timeout = drain_timeout
        self._draining = False
        self._refusals = RateLimitedLog(logger, log_interval)
        self._errors = RateLimitedLog(logger, log_interval)
        self._drops = RateLimitedLog(logger, log_interval)
        self._reloads = RateLimitedLog(logger, log_interval)
        self.connections: set[_Connection] = set()
        """Connections past their TLS handshake, until they are closed."""
        self._handshaking = 0
        self._context: ssl.SSLContext | None = None
        self._digest = b""
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        """Accepting, sweeping and watching the certificate files."""
        self._handshakes: set[asyncio.Task[None]] = set()
        self._stopped: asyncio.Future[None] | None = None
        self._manager: web.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        metrics.track_connections(lambda: self.open_connections)

    # --- state --------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Accepted connections that are not closed yet, TLS handshakes included."""
        return self._handshaking + len(self.connections)

    @property
    def serving(self) -> bool:
        return bool(self._listeners)

    def read_deadline(self) -> float:
        assert self._loop is not None
        return self._loop.time() + self.limits.header_timeout

    # --- start and stop -----------------------------------------------------------------

    async def start(self) -> None:
        """Load the certificate, listen, and start accepting. Raises OSError (ssl.SSLError
        included) when the certificate does not load or the address cannot be bound."""
        self._loop = asyncio.get_running_loop()
        self._digest = self._files_digest()
        self._context = self._new_context()
        self._manager = web.Server(self._handle, request_factory=self._make_request)
        self._listeners = listen(self.host, self.port)
        self.port = int(self._listeners[0].getsockname()[1])
        for listener in self._listeners:
            self._spawn(self._accept(listener))
        self._spawn(self._sweep())
        self._spawn(self._watch_certificate())
        logger.info("Webhook serving on https://%s:%d%s.", self.host, self.port, self.path)
        if self._on_serving is not None:
            self._on_serving()

    async def stop(self) -> None:
        """Drain, stop accepting, let handshakes and requests in progress finish, close the
        rest. Idempotent: a second call waits for the first."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopped)

    async def _stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._listeners and self.drain_timeout > 0:
            self._draining = True  # still accepting and answering, with Connection: close
            logger.info(
                "Webhook: draining for %gs (answers close their connections).", self.drain_timeout
            )
            await asyncio.sleep(self.drain_timeout)
        for task in list(self._tasks):  # accepting, sweeping, watching the certificate
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        # A connection past accept() is answered, not dropped: its handshake finishes (or
        # times out) before the connections are closed.
        deadline = loop.time() + self.shutdown_timeout
        while self._handshakes and loop.time() < deadline:
            await asyncio.wait(set(self._handshakes), timeout=deadline - loop.time())
        for task in list(self._handshakes):
            task.cancel()
        if self._manager is not None:
            self._manager.pre_shutdown()  # closes the idle keep-alive connections
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._manager.shutdown(self.shutdown_timeout), self.shutdown_timeout + 1
                )
        for connection in list(self.connections):  # anything still open after the grace
            if connection.transport is not None:
                connection.transport.abort()

    async def __aenter__(self) -> WebhookServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _spawn(self, work: Awaitable[None], tasks: set[asyncio.Task[None]] | None = None) -> None:
        task = asyncio.ensure_future(work)
        owner = self._tasks if tasks is None else tasks
        owner.add(task)
        task.add_done_callback(lambda done: self._finished(done, owner))

    def _finished(self, task: asyncio.Task[None], owner: set[asyncio.Task[None]]) -> None:
        owner.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("A task of the webhook server failed.", exc_info=exc)

    # --- connections --------------------------------------------------------------------

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and the like: retry, without spinning
                self._drops.log(logging.WARNING, "Cannot accept a webhook connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                self._take(sock)
            except Exception:  # never stop accepting
                sock.close()
                logger.exception("Could not take a webhook connection.")

    def _take(self, sock: socket.socket) -> None:
        """Close a connection beyond the cap at once; hand any other to its TLS handshake."""
        if self.open_connections >= self.limits.max_connections:
            peer = _peer(sock)
            sock.close()
            self.dropped(
                "over_limit",
                "refused a connection from %s: already %d open (--webhook-max-connections)",
                peer,
                self.open_connections,
            )
            return
        self._handshaking += 1
        self._spawn(self._establish(sock), self._handshakes)

    async def _establish(self, sock: socket.socket) -> None:
        """The TLS handshake, then the HTTP protocol takes over (its connection_made)."""
        loop = asyncio.get_running_loop()
        peer = _peer(sock)
        try:
            await loop.connect_accepted_socket(
                self._protocol,
                sock,
                ssl=self._context,
                ssl_handshake_timeout=self.limits.header_timeout,
                ssl_shutdown_timeout=self.limits.header_timeout,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError, ConnectionAbortedError, ...
            sock.close()
            self.dropped("tls_handshake", "TLS handshake with %s failed: %s", peer, _short(exc))
        except asyncio.CancelledError:  # stopped past its grace: close, never leave it hanging
            sock.close()
            raise
        finally:
            self._handshaking -= 1

    def _protocol(self) -> _Connection:
        assert self._manager is not None
        assert self._loop is not None
        return _Connection(
            self._manager,
            self,
            loop=self._loop,
            keepalive_timeout=self.limits.idle_timeout,
            access_log=None,
            auto_decompress=False,  # the API server never compresses; no decompression bombs
            lingering_time=2.0,
        )

    async def _sweep(self) -> None:
        """Cut the connections whose request is late (see :class:`_Connection`)."""
        interval = min(1.0, self.limits.header_timeout / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            late = [c for c in self.connections if c.deadline is not None and c.deadline <= now]
            for connection in late:
                try:
                    connection.cut()
                except Exception:  # never stop sweeping
                    logger.exception("Could not cut a late webhook connection.")

    def dropped(self, reason: CloseReason, message: str, *args: object) -> None:
        self.metrics.dropped(reason)
        self._drops.log(logging.WARNING, "Webhook: " + message + ".", *args)

    # --- requests -----------------------------------------------------------------------

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        assert self._loop is not None
        return web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            self._loop,
            client_max_size=self.limits.max_body_bytes,
        )

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = cast(_Connection, request.protocol)
        connection.in_request = True
        try:
            path = request.raw_path
            if path != self.path and path.partition("?")[0] != self.path:
                return self.refuse(
                    404, "unknown_path", f"no webhook at {_short(path, 100)}", request
                )
            if request.method != hdrs.METH_POST:
                return self.refuse(
                    405, "method", f"{_short(request.method, 20)} is not POST", request
                )
            limit = self.limits.max_body_bytes
            length = request.content_length
            if length is not None and length > limit:
                return self.refuse(
                    413, "too_large", f"a body of {length} bytes, above {limit}", request
                )
            if (
                request.version >= HttpVersion11
                and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue"
            ):
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self.refuse(413, "too_large", f"a body above {limit} bytes", request)
            except web.RequestPayloadError as exc:
                return self.refuse(400, "malformed", f"unreadable body: {exc}", request)
            except ConnectionError:  # the client went away, or was cut off (counted then)
                response = web.Response(status=400)
                response.force_close()
                return response
            connection.deadline = None
            try:
                # orjson: several times faster than json on large pods; bad UTF-8 and nesting
                # past 1,024 levels are JSONDecodeErrors (ValueErrors), never a RecursionError.
                review = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return self.refuse(400, "malformed", f"not JSON: {exc}", request)
            try:
                if not isinstance(review, dict):
                    raise ValueError("not a JSON object")
                answer = await self._review(review)
            except ValueError as exc:
                return self.refuse(400, "malformed", f"not an AdmissionReview: {exc}", request)
            response = web.Response(body=orjson.dumps(answer), content_type="application/json")
            if self._draining:
                response.force_close()  # Connection: close, after this answer
            return response
        finally:
            connection.in_request = False

    def refuse(
        self,
        status: int,
        reason: RejectReason,
        message: str,
        request: web.BaseRequest,
    ) -> web.Response:
        """An error answer with its reason in the body; counted, logged (rate-limited), and
        the connection closed after it."""
        text = f"{status} {_phrase(status)}: {_short(message)}"
        self.refuse_logged(reason, logging.WARNING, text, request)
        response = web.Response(status=status, text=text + "\n")
        if status == 405:
            response.headers[hdrs.ALLOW] = hdrs.METH_POST
        response.force_close()
        return response

    def refuse_logged(
        self,
        reason: RejectReason,
        level: int,
        text: str,
        request: web.BaseRequest,
        exc_info: BaseException | None = None,
    ) -> None:
        self.metrics.rejected(reason)
        log = self._errors if reason == "error" else self._refusals
        log.log(
            level, "Webhook request from %s refused: %s", request.remote, text, exc_info=exc_info
        )

    # --- the certificate ----------------------------------------------------------------

    def _files_digest(self) -> bytes:
        hasher = hashlib.sha256()
        for path in (self.cert_file, self.key_file):
            hasher.update(path.read_bytes())
            hasher.update(b"\0")
        return hasher.digest()

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    async def _watch_certificate(self) -> None:
        while True:
            await asyncio.sleep(self.file_check_interval)
            self.check_certificate()

    def check_certificate(self) -> bool:
        """Load the certificate files if they changed. True when a new one is in use."""
        try:
            digest = self._files_digest()
            if digest == self._digest:
                return False
            context = self._new_context()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._reloads.log(
                logging.WARNING,
                "The webhook's certificate files %s and %s do not load (%s); still serving "
                "the previous certificate.",
                self.cert_file,
                self.key_file,
                _short(exc),
            )
            return False
        self._context, self._digest = context, digest
        logger.info("Webhook: new connections get the renewed certificate %s.", self.cert_file)
        return True


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _peer(sock: socket.socket) -> object:
    try:
        return sock.getpeername()
    except OSError:
        return "?"


def listen(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Non-blocking listening sockets for every address of ``host``, with SO_REUSEADDR and
    SO_REUSEPORT (so that several processes can share the port)."""
    infos: Iterable[Any] = dict.fromkeys(
        (family, kind, proto, address)
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in infos:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(f"no address to listen on for {host!r}")
    return sockets
