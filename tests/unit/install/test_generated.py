"""Generated files stay in sync with the pydantic models, and the models with the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from gomemlimit_operator.core.api import ContainerCounts, PolicyStatus
from gomemlimit_operator.core.engine import State
from gomemlimit_operator.install import crds as crdgen

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "path", sorted(crdgen.generated_files(ROOT)), ids=lambda p: str(p.relative_to(ROOT))
)
def test_generated_file_is_up_to_date(path: Path) -> None:
    expected = crdgen.generated_files(ROOT)[path]
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run `make generate`"
    assert path.read_text() == expected, f"{path.relative_to(ROOT)} drifted: run `make generate`"


def test_generated_files_cover_crds_and_docs() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in crdgen.generated_files(ROOT)}
    assert names == {
        "crds/gomemlimit.io_gomempolicies.yaml",
        "crds/gomemlimit.io_clustergomempolicies.yaml",
        "docs/policy-reference.md",
    }


def test_check_mode_agrees(tmp_path: Path) -> None:
    assert crdgen.main(["--root", str(ROOT), "--check"]) == 0
    # And it does notice drift: an empty tree is all drift.
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1


def test_container_counts_have_one_field_per_governed_state() -> None:
    fields = set(ContainerCounts.model_fields)
    assert fields == {state.value for state in State} - {State.UNMANAGED.value}
    # In the API (camelCase), every count is named after its state.
    aliases = {info.alias for info in ContainerCounts.model_fields.values()}
    assert aliases == {_camel(state.value) for state in State if state is not State.UNMANAGED}


def test_status_schema_lists_every_count() -> None:
    schema = crdgen.openapi_schema(PolicyStatus)
    counts = schema["properties"]["containers"]["properties"]
    assert set(counts) == {_camel(s.value) for s in State if s is not State.UNMANAGED}


def _camel(snake: str) -> str:
    first, *rest = snake.split("_")
    return first + "".join(part.capitalize() for part in rest)
