"""The extension's build files and packaging: what a Slicer build and `pip install .` need, checked here
where neither Slicer's build system nor its Qt application can run."""

from __future__ import annotations

import ast
import json
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
CATALOG_ENTRY = REPOSITORY / "CascadeLandmarks.json"


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


def _top_level_imports(path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_slicer_module_loads_nothing_heavy_at_import():
    assert not _top_level_imports(MODULE_DIR / "CascadeLandmarks.py") & {"torch", "SimpleITK", "cascade_landmarks"}


def test_the_module_file_loads_in_an_older_slicers_python_to_say_it_is_too_old():
    """Slicer 5.8 runs Python 3.9: the module file must parse there, so that it can tell the user which Slicer it
    needs instead of failing to load (the engine itself needs 3.10)."""
    source = (MODULE_DIR / "CascadeLandmarks.py").read_text(encoding="utf-8")
    ast.parse(source, feature_version=(3, 9))
    with pytest.raises(SyntaxError):  # the check can fail: 3.10 syntax is refused
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 9))


@pytest.mark.slow
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
    assert {"cascade_landmarks/io/volumes.py", "cascade_landmarks/slicer/bridge.py"} <= names
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
        "import cascade_landmarks, cascade_landmarks.cli, cascade_landmarks.model.displacement_cnn;"
        "from cascade_landmarks.model.registry import available_models, resolve_model;"
        "from cascade_landmarks.io.landmark_sets import load_landmark_set;"
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
    assert models.split() == ["cardiac-5-phantom", "aortic-9-phantom", "afids-32-mni152", "aortic-9-cta"]
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


# --- the extensions catalog and the oldest Python -------------------------------------------------------------

# Slicer's extensions index lists an extension by a JSON entry checked against this schema
# (Slicer/Slicer, Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json; the index's 5.10 branch checks
# entries against the same file). Restated here from its definition: draft-07, these properties and no others.
CATALOG_SCHEMA_URL = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
)
CATALOG_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}, "additionalItems": False},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}


def test_the_catalog_entry_is_valid_and_agrees_with_the_extension_cmake():
    import json

    import jsonschema

    text = CATALOG_ENTRY.read_text(encoding="utf-8")
    entry = json.loads(text)
    jsonschema.validate(entry, CATALOG_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):  # the check can fail: an unknown key is refused
        jsonschema.validate({**entry, "minimum_slicer": "5.10"}, CATALOG_SCHEMA)
    assert entry["$schema"] == CATALOG_SCHEMA_URL
    assert list(entry) == sorted(entry)  # the index's own format: sorted keys, LF line ends, a final newline
    assert "\r" not in text
    assert text.endswith("\n")
    cmake = (REPOSITORY / "CMakeLists.txt").read_text()
    assert f"project({CATALOG_ENTRY.stem})" in cmake  # the index finds the entry by the project's name
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in cmake
    assert f'set(EXTENSION_DEPENDS "{" ".join(entry["build_dependencies"])}")' in cmake
    assert entry["category"] in ("Cardiac", "Quantification", "Segmentation", "Utilities")  # categories it accepts


@pytest.mark.slow
def test_the_engine_and_the_model_list_work_under_the_oldest_python_supported(tmp_path):
    """pyproject.toml says Python 3.10 and newer (inside Slicer: 5.10's 3.12). Under 3.10, with numpy and SimpleITK
    and no torch: the engine imports, the landmark sets and the shipped models are listed, a volume is read."""
    import tomllib

    oldest = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["requires-python"]
    assert oldest == ">=3.10"
    python = _python("3.10")
    if python is None:
        pytest.skip("no Python 3.10 on this machine")
    subprocess.run([python, "-m", "venv", str(tmp_path / "venv")], check=True)
    venv_python = str(tmp_path / "venv" / "bin" / "python")
    install = [venv_python, "-m", "pip", "install", "--quiet", "numpy>=1.24", "SimpleITK>=2.3"]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    probe = (
        "import sys, cascade_landmarks as cl; from cascade_landmarks.model.registry import available_models;"
        "print(sys.version_info[:2]); print(cl.available_landmark_sets());"
        "print([e.name for e in available_models()]);"
        f"print(cl.read_volume(r'{REPOSITORY.parent / 'shared/data/real/cta-thorax-abdomen/ct.nii.gz'}').array.shape)"
    )
    environment = {**os.environ, "PYTHONPATH": str(MODULE_DIR), "CASCADE_LANDMARKS_HOME": str(tmp_path / "home")}
    result = subprocess.run([venv_python, "-c", probe], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    version, sets, models, shape = result.stdout.splitlines()
    assert version == "(3, 10)"
    assert sets == "['afids-32', 'aortic-9', 'cardiac-5']"
    shipped = json.loads((REPOSITORY / "Resources" / "Models" / "registry.json").read_text())["models"]
    assert models == str([entry["name"] for entry in shipped])
    assert shape == "(164, 126, 120)"


def _python(version: str) -> str | None:
    """An interpreter of ``version`` ("3.10"): on the PATH, or one pyenv keeps (its shims answer only for the
    versions a project selects)."""
    import shutil
    from pathlib import Path

    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        shutil.which(f"python{version}"),
        *sorted(map(str, pyenv_root.glob(f"versions/{version}.*/bin/python"))),
    ]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None
