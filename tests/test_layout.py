"""The house rules of the layout: subpackages import each other without cycles (train never imports the app layer),
scripts are thin shells, tests import the package rather than scripts, and pyproject ships every package."""

from __future__ import annotations

import ast
from pathlib import Path

from dreamnfsd.utils.requirements import tomllib
from tests.conftest import REPO

PACKAGE = REPO / "dreamnfsd"
MAX_SCRIPT_LINES = 150


def subpackage_imports() -> dict[str, set[str]]:
    """{subpackage: subpackages it imports}, from every import statement (module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        source = parts[0]
        graph.setdefault(source, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "dreamnfsd"]
            for name in names:
                bits = name.split(".")
                if bits[0] == "dreamnfsd" and len(bits) > 1 and bits[1] != source:
                    graph[source].add(bits[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_subpackages_import_each_other_without_cycles():
    graph = subpackage_imports()
    assert {"app", "train", "eval", "models", "rendering"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert "app" not in graph["train"] and "app" not in graph["eval"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_scripts_are_thin_shells():
    long = {p.name: n for p in (REPO / "scripts").glob("*.py") if (n := len(p.read_text().splitlines())) > 150}
    assert not long, f"scripts over {MAX_SCRIPT_LINES} lines (move their logic into the package): {long}"


def test_tests_import_the_package_not_scripts():
    for path in (REPO / "tests").glob("*.py"):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        assert 'sys.path.insert(0, str(ROOT / "scripts"))' not in text and "spec_from_file_location" not in text, path


def test_pyproject_ships_every_package_and_the_configs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")}
    configs = REPO / "configs"
    groups = {".".join(("dreamnfsd", *p.relative_to(REPO).parts)) for p in configs.rglob("*") if p.is_dir()}
    assets = PACKAGE / "assets"
    data = {".".join(p.relative_to(REPO).parts) for p in [assets, *assets.rglob("*")] if p.is_dir()}
    on_disk |= {g for g in groups | data if not g.endswith("__pycache__")}
    assert set(project["packages"]) == on_disk | {"dreamnfsd.configs"}
    assert project["package-dir"] == {"dreamnfsd.configs": "configs"}
    assert (REPO / "configs" / "__init__.py").is_file() and (REPO / "configs" / "config.yaml").is_file()
