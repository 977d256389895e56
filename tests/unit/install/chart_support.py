"""Helpers for the chart tests: the pinned helm, rendering, and parsing."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.controlplane import Binaries
from tests.cluster.realnode import ci_requires_real_node

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "gomemlimit-operator"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


def helm_binary() -> Path:
    """The pinned helm; outside CI a missing one skips (make cluster-build builds it)."""
    helm = Binaries.locate().helm
    if not helm.exists():
        message = f"the pinned helm is not built ({helm}): run `make cluster-build`"
        if ci_requires_real_node():
            pytest.fail(message)
        pytest.skip(message)
    return helm


def helm(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(
    binary: Path, *args: str, release: str = "rel", namespace: str = "ops"
) -> list[dict[str, Any]]:
    result = helm(binary, "template", release, str(CHART), "--namespace", namespace, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]
