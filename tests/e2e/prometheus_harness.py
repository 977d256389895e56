"""A real Prometheus server for the end-to-end tests, with the shipped rules.

``run_prometheus(binary, tmp, scrape_configs)`` starts the pinned binary (``Binaries.prometheus``)
on a free loopback port with deploy/prometheus/alerts.yaml, every rule group evaluated each
second and every ``for:`` set to 0 (the expressions are exactly the shipped ones), scraping
every second; it yields the base URL and stops the server by PID. ``api`` reads its HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.operator_harness import free_ports, wait_until

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"

__all__ = ["RULES", "api", "firing", "run_prometheus"]


@contextlib.contextmanager
def run_prometheus(binary: Path, tmp: Path, scrape_configs: list[dict[str, Any]]) -> Iterator[str]:
    """The server, ready; its config, rules, data and log (``prometheus.log``) are in ``tmp``."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules))
    (port,) = free_ports(1)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yaml")],
        "scrape_configs": scrape_configs,
    }
    (tmp / "prometheus.yaml").write_text(yaml.safe_dump(config))
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            str(binary),
            f"--config.file={tmp / 'prometheus.yaml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url), "Prometheus to be ready", timeout=60)
        yield url
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _ready(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
        return bool(r.status == 200)
    return False


def api(url: str, path: str, **params: str) -> Any:
    """``data`` of a successful ``/api/v1/<path>`` answer."""
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def firing(url: str) -> list[dict[str, str]]:
    """The labels of every firing alert."""
    return [dict(a["labels"]) for a in api(url, "alerts")["alerts"] if a["state"] == "firing"]
