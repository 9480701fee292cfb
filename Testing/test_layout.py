"""The engine's layout holds: its folders follow the pipeline and their boundaries (what needs torch, what needs
Slicer, what is research tooling) stay where they are, and no function grows past what a reader takes in."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import REPOSITORY

ENGINE_DIR = REPOSITORY / "CascadeLandmarks" / "cascade_landmarks"
ENGINE_FILES = sorted(ENGINE_DIR.rglob("*.py"))
# What each folder of the engine may import from the others (besides itself, ``progress`` and the package's root).
MAY_IMPORT = {
    "io": set(),
    "model": {"io"},
    "inference": {"io", "model"},
    "training": {"io", "model", "inference"},
    "evaluation": {"io", "model", "inference"},
    "bench": {"io", "model", "inference", "training", "evaluation", "slicer"},  # the correction loop drives slicer/
    "slicer": {"io", "model", "inference", "training"},
    "web": {"io", "model", "slicer"},  # the module's workflow, in a browser
}
# Modules that a process without torch must be able to import (the Slicer application's, listing models and
# following a background run; the command line, whose file commands start at once), and which therefore import
# none of the modules that need it.
TORCH_FREE = [
    "cascade_landmarks",
    "cascade_landmarks.cli",
    "cascade_landmarks.model.config",
    "cascade_landmarks.training.config",
    "cascade_landmarks.io.cases",
    "cascade_landmarks.inference.detection",
    "cascade_landmarks.model.registry",
    "cascade_landmarks.training.run_files",
    "cascade_landmarks.slicer.runs",
    "cascade_landmarks.slicer.workflow",
]
LONGEST_FUNCTION = 80  # lines
LONG_TABLES = {("bench/phantoms/cardiac.py", "anatomy"), ("bench/phantoms/aortic.py", "anatomy")}


def _part(path) -> str:
    """The engine folder a file lies in ("io", "model", ...), or its name for the files at the top."""
    relative = path.relative_to(ENGINE_DIR)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path) -> list[tuple[str, ast.stmt, bool]]:
    """Every import of a file: (the module imported, absolute; the statement; whether it is at the top level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    package = ["cascade_landmarks", *path.relative_to(ENGINE_DIR).parts[:-1]]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found += [(module, node, id(node) in top)]
    return found


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: str(p.relative_to(ENGINE_DIR)))
def test_each_folder_imports_only_the_stages_before_it(path):
    part = _part(path)
    allowed = MAY_IMPORT.get(part)
    for module, node, _ in _imports(path):
        names = module.split(".")
        if allowed is None or names[0] != "cascade_landmarks" or len(names) < 2 or names[1] == part:
            continue  # the command line and the top-level modules may use every folder
        if names[1] not in MAY_IMPORT:
            continue  # progress, the package's root
        assert names[1] in allowed, f"{path.name}:{node.lineno} ({part}/) imports {module}"
        if part == "slicer" and names[1] == "training":  # what Slicer's process needs of training: file names
            assert module == "cascade_landmarks.training.run_files", f"{path.name}:{node.lineno} imports {module}"


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: str(p.relative_to(ENGINE_DIR)))
def test_only_the_bridge_imports_slicer_and_vtk_is_imported_only_where_it_is_used(path):
    for module, node, at_top in _imports(path):
        root = module.split(".")[0]
        if root in ("slicer", "qt", "ctk"):
            assert path.relative_to(ENGINE_DIR).as_posix() == "slicer/bridge.py", f"{path.name}:{node.lineno}"
        if root in ("slicer", "qt", "ctk", "vtk"):
            assert not at_top, f"{path.name}:{node.lineno} imports {module} when the engine is imported"


def test_io_needs_no_torch():
    for path in sorted((ENGINE_DIR / "io").glob("*.py")):
        assert not [m for m, _, _ in _imports(path) if m.split(".")[0] == "torch"], path.name


def test_what_slicer_and_a_model_list_need_imports_no_torch():
    probe = (
        f"import sys; import {', '.join(TORCH_FREE)}; print(sorted({{'torch', 'slicer', 'vtk'}} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    # detect, evaluate and train are at the top of the package too, brought in (with torch) when first used.
    probe = "import cascade_landmarks as cl; print(cl.detect.__module__, cl.train.__module__, cl.evaluate.__module__)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [
        "cascade_landmarks.inference.detector",
        "cascade_landmarks.training.trainer",
        "cascade_landmarks.evaluation.errors",
    ]


def test_no_function_is_longer_than_a_reader_takes_in():
    long = []
    for path in ENGINE_FILES:
        relative = path.relative_to(ENGINE_DIR).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (relative, node.name) not in LONG_TABLES:
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{relative}:{node.lineno} {node.name} ({lines} lines)")
    assert not long
