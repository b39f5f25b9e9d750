"""The layering the project keeps (docs/architecture.md): no import cycle among its modules, no
project import hidden inside a function, and every task a registered folder of its own. The
layer contracts themselves are checked by `lint-imports` (pyproject's [tool.importlinter])."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import grimp

from trainer.registry import TASK_PACKAGES, list_tasks
from trainer.tasks.base import get_task

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("trainer", "tuner", "serving")


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's strongly connected components of the module import graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.find_modules_directly_imported_by(node):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return components


def test_no_import_cycle_among_the_project_modules():
    graph = grimp.build_graph(*PACKAGES)
    cycles = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert [sorted(c) for c in strongly_connected(graph) if len(c) > 1] == [["p.a", "p.b", "p.c"]]


def hidden_imports(source: str) -> list[str]:
    """Project modules imported inside a function (where no one reading the top sees them)."""
    found = []
    tree = ast.parse(source)
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{func.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in PACKAGES]
    return found


# Deferred on purpose, one reason each: (file, function, module).
DEFERRED = {
    # Ray pickles the Train entry point by reference: the Train controller and each Tune trial's
    # process import its module, and only the workers need the training loop (timm, torchvision)
    ("trainer/engine/entry.py", "train_worker", "trainer.engine.loop"),
    # the QAT annotation rules subclass torchao's Quantizer: torchao (a second of imports and a
    # logged torch deprecation) loads only in runs and exports that use quantization-aware training
    ("trainer/components/qat.py", "_quantizer", "trainer.components.ort_quantizer"),
}


def test_no_project_import_inside_a_function():
    hidden = {
        str(path.relative_to(ROOT)): imports
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (imports := [i for i in hidden_imports(path.read_text()) if (str(path.relative_to(ROOT)),
                        i.split(":")[0], i.split(" ")[1]) not in DEFERRED])
    }  # fmt: skip
    assert not hidden, f"project imports inside functions: {hidden}"


def test_hidden_imports_are_found():
    source = "import os\n\ndef f():\n    from trainer.config import load_config\n    import json\n"
    assert hidden_imports(source) == ["f:4 trainer.config"]


def test_every_task_is_a_registered_folder_with_its_own_config():
    folders = {
        p.parent.name
        for p in (ROOT / "trainer" / "tasks").glob("*/__init__.py")
        if p.parent.name != "__pycache__"
    }
    assert {p.rsplit(".", 1)[1] for p in TASK_PACKAGES} == folders
    assert set(list_tasks()) == folders
    for name in list_tasks():
        task = get_task(name)
        assert type(task).__module__.startswith(f"trainer.tasks.{name}.")
        assert task.config.__module__ == f"trainer.tasks.{name}.config"
        assert typing.get_args(task.config.model_fields["task"].annotation) == (name,)


def test_the_train_entry_point_leaves_the_training_loop_to_the_workers():
    """What the Train controller (and a Tune trial's process) import to unpickle the trainer:
    `trainer.driver` and `tuner.sweep` load neither timm, torchvision nor matplotlib."""
    import subprocess
    import sys

    heavy = ("timm", "torchvision", "matplotlib", "trainer.engine.loop")
    code = f"import sys, tuner.sweep, trainer.driver; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
