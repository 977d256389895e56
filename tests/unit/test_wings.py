"""The package's four wings import only what their rule allows, and nothing imports in a
cycle (operator/gomemlimit_operator/*/__init__.py states each rule)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "gomemlimit_operator"
WINGS = ("core", "cli", "runtime", "install")

# Third-party top-level modules each wing may import (the standard library is always fine).
THIRD_PARTY = {
    "core": {"pydantic"},
    "cli": {"pydantic", "yaml", "kubernetes", "urllib3"},  # kubernetes: cluster.py only
    "install": {"pydantic", "yaml"},
    "runtime": {"aiohttp", "cryptography", "kopf", "kubernetes", "orjson", "prometheus_client"},
}
OWN_WINGS = {
    "core": {"core"},
    "cli": {"core", "cli"},
    "install": {"core", "install"},
    "runtime": {"core", "install", "runtime"},
}
KNOWN_THIRD_PARTY = set().union(*THIRD_PARTY.values()) | {"jsonpatch", "urllib3", "hypothesis"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module a file imports, anywhere in it (functions included), as absolute names."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                own = module_name(path)
                package = own if path.name == "__init__.py" else own.rpartition(".")[0]
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                yield ".".join([*base, node.module] if node.module else base)
            elif node.module:
                yield node.module
                for alias in node.names:  # from gomemlimit_operator.core import engine
                    yield f"{node.module}.{alias.name}"


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def wing_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "gomemlimit_operator" else None


def test_every_module_lives_in_a_wing() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    for wing in WINGS:
        doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
        assert doc is not None
        assert "Rule:" in doc, wing


@pytest.mark.parametrize("wing", WINGS)
def test_a_wing_imports_only_what_its_rule_allows(wing: str) -> None:
    wrong = []
    for path in (PACKAGE / wing).rglob("*.py"):
        for name in imports(path):
            top = name.split(".")[0]
            if top == "gomemlimit_operator":
                target = wing_of(name)
                if target in WINGS and target not in OWN_WINGS[wing]:
                    wrong.append((path.name, name))
            elif top in KNOWN_THIRD_PARTY and top not in THIRD_PARTY[wing]:
                wrong.append((path.name, name))
    assert wrong == []


def test_the_rule_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check itself can fail: a core module importing kopf is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import kopf\nfrom gomemlimit_operator.runtime import app\n")
    found = set(imports(bad))
    assert {"kopf", "gomemlimit_operator.runtime.app"} <= found
    assert "kopf" not in THIRD_PARTY["core"]
    assert wing_of("gomemlimit_operator.runtime.app") not in OWN_WINGS["core"]


def test_no_import_cycles() -> None:
    modules = {module_name(p): p for p in sources()}
    graph = {
        name: {dep for dep in imports(path) if dep in modules and dep != name}
        for name, path in modules.items()
    }
    # a package's __init__ is imported on the way to its modules; it imports nothing here
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle.extend([*trail, node, dep])
                return True
            if dep not in state and visit(dep, [*trail, node]):
                return True
        state[node] = 2
        return False

    for name in sorted(graph):
        if name not in state and visit(name, []):
            break
    assert cycle == []


def test_only_the_live_audit_loads_the_kubernetes_client_and_only_when_it_runs() -> None:
    """cli/cluster.py (audit --cluster) and cli/explain.py (explain pod/NAME) import kubernetes
    inside functions; no other cli module does at all."""
    cli = PACKAGE / "cli"
    users = {
        p.name for p in cli.rglob("*.py") for n in imports(p) if n.split(".")[0] == "kubernetes"
    }
    assert users <= {"cluster.py", "explain.py"}
    for user in sorted(users):
        tree = ast.parse((cli / user).read_text())
        top_level = [
            alias.name if isinstance(node, ast.Import) else node.module
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (node.names if isinstance(node, ast.Import) else [None])
        ]
        assert not [
            name for name in top_level if name and name.split(".")[0] in {"kubernetes", "urllib3"}
        ], user
