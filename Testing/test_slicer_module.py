"""The module file's Logic and Widget, run against the real MRML scene of slicer-core.

Stand-ins, because no Qt application can run here and slicer-core has no Qt parts:

- the ``slicer.ScriptedLoadableModule`` base classes are empty classes, except that the Logic's parameter node is
  a real ``vtkMRMLScriptedModuleNode`` in the real scene;
- ``slicer.parameterNodeWrapper`` is a small decorator whose objects keep their values in Python and send the
  real node's ModifiedEvent when one changes, as Slicer's wrapper does (``connectGui`` only records the call:
  the .ui file's ``SlicerParameterName`` properties are checked against the parameter node separately);
- ``qt`` is a module of plain classes with the attributes the Widget sets, and the Widget's ``ui`` a namespace of
  such objects; ``slicer.app`` gives a version; ``slicer.util`` dialogs are recorded instead of shown.

Everything else is real: the scene, the nodes, their storage, the background processes and the model.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import xml.etree.ElementTree as ElementTree
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPOSITORY

slicer = pytest.importorskip("slicer", reason="slicer-core is installed by `make test`")
UI_FILE = REPOSITORY / "CascadeLandmarks/Resources/UI/CascadeLandmarks.ui"


# --- stand-ins ----------------------------------------------------------------------------------------------------


class _Qt(types.ModuleType):
    """``qt``: the classes and constants the module file uses, as plain Python."""

    class Qt:
        ToolTipRole, ForegroundRole, WaitCursor = 3, 9, 3

    class QTimer:
        def __init__(self):
            self.active = False

        def setInterval(self, milliseconds):
            self.interval = milliseconds

        def connect(self, signal, slot):
            self.slot = slot

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

        def disconnect(self, signal, slot):
            assert slot is self.slot
            self.slot = None

    class QLabel:
        def __init__(self, text=""):
            self.text = text

    class QTableWidgetItem:
        def __init__(self):
            self._text, self.foreground = "", None

        def setText(self, text):
            self._text = text

        def text(self):
            return self._text

        def setForeground(self, brush):
            self.foreground = brush

        def setData(self, role, value):
            self.foreground = value

    class QBrush:
        def __init__(self, colour):
            self.colour = colour

    class QColor:
        def __init__(self, *rgb):
            self.rgb = rgb


class _Table:
    """A QTableWidget's rows and items."""

    def __init__(self):
        self.rowCount, self.items = 0, {}

    def setRowCount(self, count):
        self.rowCount = count
        self.items = {key: item for key, item in self.items.items() if key[0] < count}

    def item(self, row, column):
        return self.items.get((row, column))

    def setItem(self, row, column, item):
        self.items[(row, column)] = item

    def resizeColumnsToContents(self):
        pass


def _stand_in_parameter_node_wrapper():
    module = types.ModuleType("slicer.parameterNodeWrapper")
    module.Choice = lambda choices: ("choice", tuple(choices))
    module.WithinRange = lambda low, high: ("range", low, high)

    def parameterNodeWrapper(cls):
        fields = {name: getattr(cls, name, None) for name in cls.__annotations__}

        class Wrapped:
            def __init__(self, node):
                object.__setattr__(self, "parameterNode", node)
                object.__setattr__(self, "values", dict(fields))
                object.__setattr__(self, "connectedGuis", [])

            def __getattr__(self, name):
                if name in fields:
                    return self.values[name]
                raise AttributeError(name)

            def __setattr__(self, name, value):
                if name not in fields:
                    raise AttributeError(f"{name} is not a parameter")
                self.values[name] = value
                self.parameterNode.Modified()

            def AddObserver(self, *args):
                return self.parameterNode.AddObserver(*args)

            def RemoveObserver(self, tag):
                self.parameterNode.RemoveObserver(tag)

            def connectGui(self, gui):
                self.connectedGuis.append(gui)
                return gui

            def disconnectGui(self, tag):
                self.connectedGuis.remove(tag)

        Wrapped.__name__ = cls.__name__
        Wrapped.__annotations__ = cls.__annotations__
        Wrapped.defaults = fields
        return Wrapped

    module.parameterNodeWrapper = parameterNodeWrapper
    return module


@pytest.fixture
def module(monkeypatch, mrml_scene):
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
        setattr(base, name, type(name, (), {"__init__": lambda self, *args: None, "setup": lambda self: None}))

    class ScriptedLoadableModuleLogic:
        def __init__(self, *args):
            pass

        def getParameterNode(self):  # Slicer's: the module's singleton parameter node in the scene
            node = mrml_scene.GetSingletonNode("CascadeLandmarks", "vtkMRMLScriptedModuleNode")
            return node or mrml_scene.AddNode(_singleton(slicer.vtkMRMLScriptedModuleNode(), "CascadeLandmarks"))

    base.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", base)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", _stand_in_parameter_node_wrapper())
    monkeypatch.setitem(sys.modules, "qt", _Qt("qt"))
    monkeypatch.setattr(slicer, "mrmlScene", mrml_scene, raising=False)
    app = SimpleNamespace(majorVersion=5, minorVersion=10, layoutManager=lambda: None)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    spec = importlib.util.spec_from_file_location(
        "CascadeLandmarks", REPOSITORY / "CascadeLandmarks/CascadeLandmarks.py"
    )
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def _singleton(node, tag):
    node.SetSingletonTag(tag)
    return node


def _widget(module):
    """A Widget as ``setup()`` leaves it, with stand-ins for its Qt widgets."""
    widget = module.CascadeLandmarksWidget.__new__(module.CascadeLandmarksWidget)
    module.CascadeLandmarksWidget.__init__(widget)
    button = lambda text, tip="": SimpleNamespace(text=text, enabled=True, toolTip=tip)  # noqa: E731
    widget.ui = SimpleNamespace(
        detectButton=button("Detect", "Find the landmarks"),
        fineTuneButton=button("Fine-tune model on training folder", "Train further"),
        saveCaseButton=button("Save corrected case", "Write the case"),
        statusLabel=SimpleNamespace(text=""),
        progressBar=SimpleNamespace(value=0),
        landmarkTable=_Table(),
        modelSelector=SimpleNamespace(findData=lambda name: -1, currentIndex=-1, count=0),
        trainingFolderSelector=SimpleNamespace(currentPath=""),
    )
    widget.logic = module.CascadeLandmarksLogic()
    widget.idleText = {name: getattr(widget.ui, name).text for name in ("detectButton", "fineTuneButton")}
    widget.readyTips = {name: getattr(widget.ui, name).toolTip for name in (*widget.idleText, "saveCaseButton")}
    return widget


def _volume_node(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "case")
    storage = scene.AddNode(slicer.vtkMRMLVolumeArchetypeStorageNode())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


# --- the Logic ------------------------------------------------------------------------------------------------


def test_the_console_api_detects_corrects_and_saves(module, mrml_scene, trained_model_path, synthetic_data, tmp_path):
    logic = module.CascadeLandmarksLogic()
    volume_node = _volume_node(mrml_scene, synthetic_data / "test" / "case100.nrrd")
    seen = []
    node = logic.detect(
        volume_node, str(trained_model_path), device="cpu", progressCallback=lambda f, s: seen.append((f, s))
    )
    assert node.GetName() == "case model"
    assert [node.GetNthControlPointLabel(i) for i in range(3)] == ["sphere 1", "sphere 2", "sphere 3"]
    assert seen
    assert all(0.0 <= fraction <= 1.0 and isinstance(status, str) for fraction, status in seen)
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
    with pytest.raises(ValueError, match="Choose a training folder first"):
        logic.saveCorrectedCase(volume_node, None, "")


def test_background_processes_find_the_engine_and_a_missing_gpu_falls_back(module, monkeypatch, tmp_path):
    logic = module.CascadeLandmarksLogic()
    assert logic.backgroundEnvironment()["PYTHONPATH"].split(os.pathsep)[0] == str(REPOSITORY / "CascadeLandmarks")
    assert logic.pythonExecutable() == sys.executable  # no PythonSlicer on this machine's PATH
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path), prepend=os.pathsep)
    assert logic.pythonExecutable() == str(launcher)  # in Slicer: its launcher, on the PATH
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert logic.resolveDevice("cuda") == ("cpu", "No GPU found: running on the CPU.")
    assert logic.resolveDevice("auto") == ("auto", "")


def test_a_torch_that_fails_to_import_reads_as_missing(module, monkeypatch):
    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                raise OSError("libtorch_cpu.so: cannot open shared object file")  # a broken install, not absent

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    assert module.CascadeLandmarksLogic.torchAvailable() is False


# --- the Widget -----------------------------------------------------------------------------------------------


def test_the_ui_connects_each_widget_to_a_parameter_of_a_type_it_can_show(module):
    """Slicer's parameterNodeWrapper connects a widget to the parameter its SlicerParameterName names, when the
    widget's class can show the parameter's type (its guiConnectors: a node combo box a node, a spin box an int, a
    line edit a str, a combo box a str with a Choice)."""
    can_show = {"qMRMLNodeComboBox": "vtkMRML", "QSpinBox": "int", "QLineEdit": "str", "QComboBox": "Choice"}
    annotations = module.CascadeLandmarksParameterNode.__annotations__
    connected = {}
    for widget in ElementTree.parse(UI_FILE).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                connected[prop.find("string").text] = widget.get("class")
    assert set(connected) == {"inputVolume", "outputPointList", "device", "caseName", "stage1Iterations",
                              "stage2Iterations"}  # fmt: skip
    for name, widget_class in connected.items():
        assert can_show[widget_class] in str(annotations[name]), (name, widget_class, annotations[name])
    # The fine-tuning defaults live in the parameter node (and nowhere in the .ui file).
    defaults = module.CascadeLandmarksParameterNode.defaults
    assert (defaults["stage1Iterations"], defaults["stage2Iterations"]) == (500, 1500)
    assert "<number>500</number>" not in UI_FILE.read_text()


def test_buttons_are_enabled_only_when_their_inputs_are_there(module, mrml_scene, synthetic_data, tmp_path):
    widget = _widget(module)
    widget.initializeParameterNode()  # observes the real parameter node: each change updates the buttons
    parameters = widget._parameterNode
    assert parameters.connectedGuis == [widget.ui]
    assert not widget.ui.detectButton.enabled
    assert widget.ui.detectButton.toolTip == "Pick the input volume."
    parameters.inputVolume = _volume_node(mrml_scene, synthetic_data / "test" / "case100.nrrd")
    assert widget.ui.detectButton.toolTip == "Pick a model (or add one from a file)."
    parameters.model = "cardiac-5-phantom"
    assert widget.ui.detectButton.enabled
    assert widget.ui.detectButton.toolTip == "Find the landmarks"  # the .ui file's own tooltip, once ready
    assert not widget.ui.fineTuneButton.enabled
    assert not widget.ui.saveCaseButton.enabled
    parameters.trainingFolder = str(tmp_path)
    assert widget.ui.fineTuneButton.enabled
    assert widget.ui.trainingFolderSelector.currentPath == str(tmp_path)  # shown in its line edit
    assert widget.ui.saveCaseButton.toolTip == "Detect landmarks first, then correct them."
    points = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    points.AddControlPoint(1.0, 2.0, 3.0, "sphere 1")
    parameters.outputPointList = points
    assert widget.pointListNode is points  # the table follows the chosen list
    assert widget.ui.saveCaseButton.enabled
    widget.setParameterNode(None)  # leaving the module, or closing the scene
    assert parameters.connectedGuis == []


def test_jobs_cannot_cancel_each_other_and_closing_the_scene_cancels_only_a_detection(
    module, mrml_scene, trained_model_path, synthetic_data, tmp_path
):
    from cascade_landmarks.slicer.runs import DetectionRun, FineTuneRun

    widget = _widget(module)
    widget.initializeParameterNode()
    volume_node = _volume_node(mrml_scene, synthetic_data / "test" / "case100.nrrd")
    run = DetectionRun(mrml_scene, volume_node, trained_model_path).start()
    widget.startedRun(run, "detectButton", "Cancel", "Detecting...")
    timer = run.timer
    assert timer.active  # polled by the Logic's timer
    assert (widget.ui.detectButton.text, widget.ui.detectButton.enabled) == ("Cancel", True)
    assert not widget.ui.fineTuneButton.enabled  # a click there cannot cancel the detection
    widget.onDetectButton()  # the button reads Cancel
    assert not run.running
    assert not timer.active
    assert timer.slot is None  # disconnected: Qt no longer holds the run
    assert widget.run is None
    assert widget.ui.statusLabel.text == "Cancelled."
    assert (widget.ui.detectButton.text, widget.ui.fineTuneButton.text) == (
        "Detect",
        "Fine-tune model on training folder",
    )

    # Closing the scene cancels a detection (its points belong to that scene) but not a fine-tuning.
    detection = DetectionRun(mrml_scene, volume_node, trained_model_path).start()
    widget.startedRun(detection, "detectButton", "Cancel", "Detecting...")
    widget.onSceneStartClose(mrml_scene, None)
    assert not detection.running
    assert widget.run is None
    widget.initializeParameterNode()
    fine_tuning = FineTuneRun(synthetic_data / "train", str(trained_model_path), output=tmp_path / "tuned.pt",
                              stage1_iterations=500, stage2_iterations=1500)  # fmt: skip
    widget.startedRun(fine_tuning.start(), "fineTuneButton", "Cancel fine-tuning", "Fine-tuning...")
    widget.onSceneStartClose(mrml_scene, None)
    assert fine_tuning.running
    assert widget.run is fine_tuning
    widget.onFineTuneButton()  # the button reads Cancel fine-tuning
    assert not fine_tuning.running
    assert widget.ui.statusLabel.text == "Cancelled."


def test_dragging_a_point_updates_its_row_only_and_a_missing_point_is_not_jumped_to(
    module, mrml_scene, trained_model_path, synthetic_data, monkeypatch
):
    widget = _widget(module)
    volume_node = _volume_node(mrml_scene, synthetic_data / "test" / "case100.nrrd")
    node = module.CascadeLandmarksLogic().detect(volume_node, str(trained_model_path), device="cpu")
    widget.setPointListNode(node)
    table = widget.ui.landmarkTable
    before = {key: item.text() for key, item in table.items.items()}
    assert [table.item(row, 0).text() for row in range(3)] == ["sphere 1", "sphere 2", "sphere 3"]
    rebuilt = []
    monkeypatch.setattr(widget, "updateTable", lambda: rebuilt.append(True))
    dragged = np.array(node.GetNthControlPointPositionWorld(1)) + np.array([3.0, 0.0, 0.0])
    node.SetNthControlPointPositionWorld(1, *dragged)
    assert table.item(1, 2).text() == "3.0"  # the dragged point's row, through the real PointModifiedEvent
    assert not rebuilt  # no rebuild of the whole table (which would lose the selection)
    assert {key: item.text() for key, item in table.items.items() if key[0] != 1} == {
        key: text for key, text in before.items() if key[0] != 1
    }
    # A landmark whose point is not placed: its row centres nothing (Slicer would jump to 0, 0, 0).
    jumps = []
    markups = SimpleNamespace(JumpSlicesToNthPointInMarkup=lambda *args: jumps.append(args))
    monkeypatch.setattr(slicer, "modules", SimpleNamespace(markups=SimpleNamespace(logic=lambda: markups)),
                        raising=False)  # fmt: skip
    node.SetNthControlPointPositionMissing(2)
    widget.onTableClicked(2, 0)
    assert not jumps
    assert widget.ui.statusLabel.text == "sphere 3 has no point: place it, then click its row again."
    widget.onTableClicked(0, 0)
    assert jumps == [(node.GetID(), 0, True)]


def test_a_detection_into_the_list_the_table_shows_fills_the_table(module, mrml_scene, trained_model_path,
                                                                   synthetic_data):  # fmt: skip
    """The points and their record go into a list that is already shown (picked as output, empty): the table
    shows the new detection once it is done."""
    import time

    from cascade_landmarks.slicer.runs import DetectionRun

    widget = _widget(module)
    widget.initializeParameterNode()
    picked = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "picked")
    widget._parameterNode.outputPointList = picked
    assert widget.ui.landmarkTable.rowCount == 0
    volume_node = _volume_node(mrml_scene, synthetic_data / "test" / "case100.nrrd")
    run = DetectionRun(mrml_scene, volume_node, trained_model_path, output_node=picked).start()
    widget.startedRun(run, "detectButton", "Cancel", "Detecting...")
    while run.running:
        time.sleep(0.05)
    run.timer.slot()  # the timer's next tick: the run has ended
    assert widget.run is None
    table = widget.ui.landmarkTable
    assert [table.item(row, 0).text() for row in range(table.rowCount)] == ["sphere 1", "sphere 2", "sphere 3"]
    assert widget.ui.statusLabel.text.startswith("Done: ")


def test_in_a_slicer_too_old_the_module_says_so_instead_of_failing(module, monkeypatch):
    monkeypatch.setattr(slicer, "app", SimpleNamespace(majorVersion=5, minorVersion=8, layoutManager=lambda: None))
    widget = module.CascadeLandmarksWidget.__new__(module.CascadeLandmarksWidget)
    module.CascadeLandmarksWidget.__init__(widget)
    shown = []
    widget.layout = SimpleNamespace(addWidget=shown.append)
    widget.setup()
    assert shown[0].text.startswith("CascadeLandmarks needs 3D Slicer 5.10 or newer (its Python 3.12); this is ")
    assert not hasattr(widget, "ui")  # nothing of the engine was loaded
    widget.enter()  # entering and leaving the module do nothing more
    widget.exit()
