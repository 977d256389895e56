"""Liveness and readiness on the health port, and the Prometheus /metrics server.

``/healthz`` answers 200 while the event loop runs. ``/readyz`` answers 200 once every
registered readiness check has passed (the webhook is serving, the policy index is loaded,
and with ``--dev`` the API server has called the webhook), else 503 listing what is missing.
Both paths also accept ``?verbose`` for a line per check, like the API server's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    disable_created_metrics,
    make_wsgi_app,
)

__all__ = ["HealthServer", "Readiness", "metrics_server"]

HEALTHZ: Final = "/healthz"
READYZ: Final = "/readyz"


class Readiness:
    """Named checks; ready when all of them passed. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, bool] = {}

    def add(self, name: str) -> None:
        """Declare a check that starts as not passed."""
        with self._lock:
            self._checks.setdefault(name, False)

    def set(self, name: str, passed: bool = True) -> None:
        with self._lock:
            self._checks[name] = passed

    def checks(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._checks)

    @property
    def ready(self) -> bool:
        checks = self.checks()
        return bool(checks) and all(checks.values())

    def missing(self) -> list[str]:
        return [name for name, passed in self.checks().items() if not passed]


class HealthServer:
    """aiohttp server for /healthz and /readyz."""

    def __init__(self, readiness: Readiness, host: str, port: int) -> None:
        self.readiness = readiness
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get(HEALTHZ, self._healthz), web.get(READYZ, self._readyz)])
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        # reuse_port: a second replica on a hostNetwork node can bind during a rolling
        # update (Linux lets only the same user share the port).
        await web.TCPSite(self._runner, self.host, self.port, reuse_port=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(
            text="[+]ping ok\nhealthz check passed\n" if "verbose" in request.query else "ok"
        )

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = self.readiness.checks()
        ready = bool(checks) and all(checks.values())
        lines = [
            f"[{'+' if ok else '-'}]{name} {'ok' if ok else 'failed'}"
            for name, ok in checks.items()
        ]
        if ready:
            text = (
                "\n".join([*lines, "readyz check passed", ""])
                if "verbose" in request.query
                else "ok"
            )
            return web.Response(text=text)
        return web.Response(status=503, text="\n".join([*lines, "readyz check failed", ""]))


class _ReusePortServer(ThreadingMixIn, WSGIServer):
    """prometheus_client's threading WSGI server, with SO_REUSEPORT like the other two
    servers: a second replica on a hostNetwork node can bind during a rolling update."""

    daemon_threads = True
    allow_reuse_port = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log on stderr for every scrape."""


@contextmanager
def metrics_server(host: str, port: int, registry: CollectorRegistry) -> Iterator[None]:
    """Serve ``registry`` on /metrics in a thread for the duration of the block.

    prometheus_client's ``*_created`` series (one per counter and histogram, the time the
    process created them) are turned off: Prometheus does not need them, and they only add
    series.
    """
    disable_created_metrics()  # type: ignore[no-untyped-call]
    server = make_server(
        host, port, make_wsgi_app(registry), _ReusePortServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
