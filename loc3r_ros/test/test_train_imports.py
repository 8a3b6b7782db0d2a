"""The training package's import graph has no cycle, and each command's --help describes itself."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import loc3r.train
from loc3r.train import ablation, make_default_model, pretrain_vision, train_cut3r, train_vlm

PACKAGE = "loc3r.train"
PACKAGE_DIR = Path(loc3r.train.__file__).parent


def _module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def _imported(node: ast.Import | ast.ImportFrom, importer: str, modules: set[str]) -> set[str]:
    """The package's modules one import statement (at any depth of the file) names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & modules
    base = node.module or ""
    if node.level:  # relative: from the importer's package, `level` packages up
        parts = (importer if importer == PACKAGE else importer.rsplit(".", 1)[0]).split(".")
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    names = {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names & modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (top-level and inside functions alike)."""
    paths = sorted(PACKAGE_DIR.glob("*.py"))
    modules = {_module_name(path) for path in paths}
    graph = {}
    for path in paths:
        name = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _imported(node, name, modules)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_train_package_imports_are_acyclic():
    graph = import_graph()
    # the graph is read right: the edges the package is known to have are there
    assert f"{PACKAGE}.config" in graph[f"{PACKAGE}.pipeline"]
    assert f"{PACKAGE}.pipeline" in graph[f"{PACKAGE}.train_vlm"]
    assert f"{PACKAGE}.config" in graph[f"{PACKAGE}.train_cut3r"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def _help_of(command: Callable[[list[str]], object], capsys) -> str:
    threads = torch.get_num_threads()  # make_default_model and ablation set one thread
    try:
        with pytest.raises(SystemExit) as exit_info:
            command(["--help"])
    finally:
        torch.set_num_threads(threads)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("module", "command"),
    [
        (train_cut3r, train_cut3r.Cut3rTrainConfig.from_args),
        (pretrain_vision, pretrain_vision.VisionPretrainConfig.from_args),
        (train_vlm, train_vlm.main),
        (make_default_model, make_default_model.main),
        (ablation, ablation.main),
    ],
    ids=lambda value: getattr(value, "__name__", "").rsplit(".", 1)[-1],
)
def test_help_describes_the_command(module, command, capsys):
    text = " ".join(_help_of(command, capsys).split())  # argparse wraps the description
    summary = " ".join(module.__doc__.strip().splitlines()[0].split())
    assert summary in text
    if module is not train_vlm:
        assert train_vlm.__doc__.strip().splitlines()[0] not in text


def test_cut3r_help_is_about_cut3r(capsys):
    text = _help_of(train_cut3r.Cut3rTrainConfig.from_args, capsys)
    assert "CUT3R" in text and "Loc3R-VLM" not in text
    assert "Cut3rTrainConfig keys" in text
