"""The module file's own Logic class, run against the real MRML scene of slicer-core.

Stand-ins, because no Qt application can run here: the ``slicer.ScriptedLoadableModule`` base classes (they need
Slicer's Qt application) are replaced by empty classes, and ``qt`` by an empty module (only the Widget and
``detect(wait=False)`` use it, and neither runs here). Everything else is real: the scene, the nodes, their
storage, the background process and the model.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import numpy as np
import pytest

from conftest import REPOSITORY

slicer = pytest.importorskip("slicer", reason="slicer-core is installed by `make test`")


@pytest.fixture
def module(monkeypatch, mrml_scene):
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):  # fmt: skip
        setattr(base, name, type(name, (), {"__init__": lambda self, *args: None}))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", base)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setattr(slicer, "mrmlScene", mrml_scene, raising=False)
    spec = importlib.util.spec_from_file_location(
        "CascadeLandmarks", REPOSITORY / "CascadeLandmarks/CascadeLandmarks.py"
    )
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def _volume_node(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "case")
    storage = scene.AddNode(slicer.vtkMRMLVolumeArchetypeStorageNode())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


def test_the_console_api_detects_corrects_and_saves(module, mrml_scene, trained_model_path, synthetic_data, tmp_path):
    logic = module.CascadeLandmarksLogic()
    volume_node = _volume_node(mrml_scene, synthetic_data / "test" / "case100.nrrd")
    seen = []
    node = logic.detect(
        volume_node, str(trained_model_path), device="cpu", progressCallback=lambda f, s: seen.append(s)
    )
    assert node.GetName() == "case model"
    assert [node.GetNthControlPointLabel(i) for i in range(3)] == ["sphere 1", "sphere 2", "sphere 3"]
    assert seen
    rows = logic.landmarkRows(node)
    assert [r.label for r in rows] == ["sphere 1", "sphere 2", "sphere 3"]
    node.SetNthControlPointPositionWorld(
        2, *(np.array(node.GetNthControlPointPositionWorld(2)) + np.array([0, 0, 1.5]))
    )
    assert logic.landmarkRows(node)[2].moved_mm == pytest.approx(1.5)
    volume_path, points_path = logic.saveCorrectedCase(volume_node, node, tmp_path / "corrected", caseName="c1")
    assert volume_path.exists()
    assert points_path.exists()


def test_the_logic_explains_missing_choices(module, mrml_scene, trained_model_path, synthetic_data):
    logic = module.CascadeLandmarksLogic()
    volume_node = _volume_node(mrml_scene, synthetic_data / "test" / "case100.nrrd")
    with pytest.raises(ValueError, match="Pick a model first"):
        logic.detect(volume_node, None)
    with pytest.raises(ValueError, match="Pick an input volume"):
        logic.detect(None, str(trained_model_path))


def test_background_processes_find_the_engine_and_a_missing_gpu_falls_back(module):
    logic = module.CascadeLandmarksLogic()
    assert logic.backgroundEnvironment()["PYTHONPATH"].split(os.pathsep)[0] == str(REPOSITORY / "CascadeLandmarks")
    assert logic.pythonExecutable()  # PythonSlicer inside Slicer, this Python here
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert logic.resolveDevice("cuda") == ("cpu", "No GPU found: running on the CPU.")
    assert logic.resolveDevice("auto") == ("auto", "")


def test_jobs_cannot_cancel_each_other_and_closing_the_scene_cancels_only_a_detection(
    module, mrml_scene, trained_model_path, synthetic_data, tmp_path
):
    """Stand-ins for the Widget's Qt parts (buttons, status label, progress bar, timer): plain objects with the
    attributes it sets. The job is a real background detection."""
    from types import SimpleNamespace

    from cascade_landmarks.slicer_workflow import DetectionRun, FineTuneRun

    widget = module.CascadeLandmarksWidget.__new__(module.CascadeLandmarksWidget)
    widget.timer = SimpleNamespace(start=lambda: None, stop=lambda: None)
    widget.ui = SimpleNamespace(
        detectButton=SimpleNamespace(text="Detect", enabled=True),
        fineTuneButton=SimpleNamespace(text="Fine-tune model on training folder", enabled=True),
        statusLabel=SimpleNamespace(text=""),
        progressBar=SimpleNamespace(value=0),
    )
    volume_node = _volume_node(mrml_scene, synthetic_data / "test" / "case100.nrrd")
    run = DetectionRun(mrml_scene, volume_node, trained_model_path).start()
    widget.startedRun(run, widget.ui.detectButton, "Cancel", "Detecting...")
    assert (widget.ui.detectButton.text, widget.ui.detectButton.enabled) == ("Cancel", True)
    assert not widget.ui.fineTuneButton.enabled  # a click there cannot cancel the detection
    widget.onDetectButton()  # the button reads Cancel
    assert not run.running
    assert widget.run is None
    assert widget.ui.statusLabel.text == "Cancelled."
    assert (widget.ui.detectButton.text, widget.ui.detectButton.enabled, widget.ui.fineTuneButton.enabled) == (
        "Detect",
        True,
        True,
    )

    # Closing the scene cancels a detection (its points belong to that scene) but not a fine-tuning.
    widget.logic = module.CascadeLandmarksLogic()
    widget.pointListNode = None
    widget.ui.landmarkTable = SimpleNamespace(setRowCount=lambda rows: None, resizeColumnsToContents=lambda: None)
    detection = DetectionRun(mrml_scene, volume_node, trained_model_path).start()
    widget.startedRun(detection, widget.ui.detectButton, "Cancel", "Detecting...")
    widget.onSceneStartClose(mrml_scene, None)
    assert not detection.running
    assert widget.run is None
    fine_tuning = FineTuneRun(synthetic_data / "train", str(trained_model_path), output=tmp_path / "tuned.pt")
    widget.startedRun(fine_tuning.start(), widget.ui.fineTuneButton, "Cancel fine-tuning", "Fine-tuning...")
    widget.onSceneStartClose(mrml_scene, None)
    assert fine_tuning.running
    assert widget.run is fine_tuning
    widget.onFineTuneButton()  # the button reads Cancel fine-tuning
    assert not fine_tuning.running
