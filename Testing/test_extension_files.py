"""The extension's build files and packaging: what a Slicer build and `pip install .` need, checked here
where neither Slicer's build system nor its Qt application can run."""

from __future__ import annotations

import ast
import os
import re
import struct
import subprocess
import sys
import zipfile

import pytest

from conftest import REPOSITORY

MODULE_DIR = REPOSITORY / "CascadeLandmarks"
ENGINE_DIR = MODULE_DIR / "cascade_landmarks"
PYTHON_FILES = sorted(MODULE_DIR.rglob("*.py"))


def test_the_module_cmake_lists_every_python_file_of_the_module_and_engine():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    block = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", cmake, re.S).group(1)
    listed = {line.strip().replace("${MODULE_NAME}", "CascadeLandmarks") for line in block.splitlines() if line.strip()}
    on_disk = {str(path.relative_to(MODULE_DIR)) for path in PYTHON_FILES}
    assert listed == on_disk
    assert "slicerMacroBuildScriptedModule" in cmake


def test_the_extension_cmake_and_description_name_slicer_and_pytorch():
    cmake = (REPOSITORY / "CMakeLists.txt").read_text()
    for needed in (
        "find_package(Slicer REQUIRED)",
        'set(EXTENSION_DEPENDS "PyTorch")',
        "add_subdirectory(CascadeLandmarks)",
    ):
        assert needed in cmake
    fields = dict(
        line.split(" ", 1)
        for line in (REPOSITORY / "CascadeLandmarks.s4ext").read_text().splitlines()
        if line and not line.startswith("#") and " " in line
    )
    assert fields["depends"] == "PyTorch"
    for key in ("scmurl", "homepage", "category", "iconurl", "description"):
        assert fields[key].strip(), key


def test_the_module_icon_is_a_128_pixel_png():
    header = (MODULE_DIR / "Resources/Icons/CascadeLandmarks.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (128, 128)


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: str(p.relative_to(MODULE_DIR)))
def test_every_python_file_compiles(path):
    compile(path.read_text(encoding="utf-8"), str(path), "exec")


def _imports(path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_engine_imports_slicer_only_in_the_bridge_and_vtk_only_lazily():
    for path in sorted(ENGINE_DIR.rglob("*.py")):
        slicer_parts = _imports(path, top_level_only=False) & {"slicer", "qt", "ctk"}
        if path.name != "slicer_bridge.py":
            assert not slicer_parts, f"{path.name} imports {slicer_parts}"
        assert not _imports(path, top_level_only=True) & {"slicer", "qt", "ctk", "vtk"}, path.name


def test_the_slicer_module_loads_nothing_heavy_at_import():
    assert not _imports(MODULE_DIR / "CascadeLandmarks.py", top_level_only=True) & {
        "torch",
        "SimpleITK",
        "cascade_landmarks",
    }


def test_importing_the_engine_pulls_in_neither_torch_nor_slicer():
    probe = "import sys, cascade_landmarks; print(sorted({'torch', 'slicer', 'vtk'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    # detect, evaluate and train are at the top too, brought in (with torch) when first used.
    probe = "import cascade_landmarks as cl; print(cl.detect.__module__, cl.train.__module__, cl.evaluate.__module__)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [
        "cascade_landmarks.detector",
        "cascade_landmarks.training",
        "cascade_landmarks.evaluation",
    ]


def test_the_wheel_carries_the_engine_the_command_and_the_landmark_sets(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(REPOSITORY),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("cascade_landmarks-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"cascade_landmarks/volumes.py", "cascade_landmarks/slicer_bridge.py"} <= names
    assert {
        f"cascade_landmarks/resources/LandmarkSets/{n}.json" for n in ("cardiac-5", "aortic-9", "afids-32")
    } <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cascade-landmarks = cascade_landmarks.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # Installed from the wheel alone (not this checkout), the command's modules import and the shipped files are
    # found: the networks, the phantoms, the landmark sets and the model registry.
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    probe = (
        "import cascade_landmarks, cascade_landmarks.cli, cascade_landmarks.models.displacement_cnn;"
        "from cascade_landmarks.model_registry import available_models, resolve_model;"
        "from cascade_landmarks.landmark_sets import load_landmark_set;"
        "print(cascade_landmarks.__file__); print(len(load_landmark_set('afids-32')));"
        "print(' '.join(e.name for e in available_models())); print(resolve_model('cardiac-5-phantom'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed)},
    )
    assert result.returncode == 0, result.stderr
    module_file, landmarks, models, model_file = result.stdout.splitlines()
    assert module_file.startswith(str(installed))
    assert landmarks == "32"
    assert models.split() == ["cardiac-5-phantom", "aortic-9-phantom", "afids-32-mni152"]
    assert model_file.startswith(str(installed / "cascade_landmarks" / "resources" / "Models"))


# --- the Slicer module: what can be checked without Qt ----------------------------------------------------
# (Qt widgets and the Slicer application do not run here; the module's Test class runs the workflow inside
# Slicer, and Testing/test_slicer_workflow.py runs the same workflow against the real MRML core.)

UI_FILE = MODULE_DIR / "Resources/UI/CascadeLandmarks.ui"


def test_every_widget_the_module_uses_is_in_the_ui_file():
    import xml.etree.ElementTree as ElementTree

    declared = {w.get("name") for w in ElementTree.parse(UI_FILE).iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "CascadeLandmarks.py").read_text()))
    assert used
    assert used <= declared, f"missing from the .ui file: {sorted(used - declared)}"


def test_the_module_has_the_four_classes_slicer_expects():
    tree = ast.parse((MODULE_DIR / "CascadeLandmarks.py").read_text())
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"CascadeLandmarks", "CascadeLandmarksWidget", "CascadeLandmarksLogic", "CascadeLandmarksTest"} <= classes


def test_the_module_cmake_ships_the_ui_and_registers_the_test():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "Resources/UI/${MODULE_NAME}.ui" in cmake
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake


def test_the_module_cmake_installs_every_shipped_model_and_landmark_set(tmp_path):
    """The CMake lines that gather the extension's shared data, run by cmake itself from the module's folder."""
    import shutil

    if shutil.which("cmake") is None:
        pytest.skip("no cmake on this machine")
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    start = cmake.index("set(EXTENSION_RESOURCES_SOURCE_DIR")
    end = cmake.index(")", cmake.index("file(GLOB ENGINE_RESOURCE_FILES")) + 1
    script = tmp_path / "gather.cmake"
    script.write_text(
        f'set(CMAKE_CURRENT_SOURCE_DIR "{MODULE_DIR}")\n{cmake[start:end]}\nmessage("${{ENGINE_RESOURCE_FILES}}")\n'
    )
    result = subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True, check=True)
    gathered = set(result.stderr.strip().split(";"))
    shipped = {
        str(path.relative_to(REPOSITORY / "Resources"))
        for folder in ("LandmarkSets", "Models")
        for path in (REPOSITORY / "Resources" / folder).iterdir()
        if path.suffix in (".json", ".pt", ".md")
    }
    assert gathered == shipped
    assert {"Models/registry.json", "Models/afids-32-mni152.pt", "LandmarkSets/afids-32.json"} <= gathered
