"""CascadeLandmarks: the 3D Slicer module.

This file stays thin: Module, Widget, Logic and Test classes, as Slicer's scripted-module template has them. The
engine is the ``cascade_landmarks`` package beside it, which needs no Slicer; the Logic's work on MRML nodes lives
in ``cascade_landmarks.slicer`` (tested against the real MRML core outside Slicer). Here: the Widget wires the UI
to the parameter node and the Logic, turns errors into message boxes and offers to install torch through the
PyTorch extension; the Logic adds what needs the application (the ``PythonSlicer`` interpreter for background
processes, timers). Heavy imports (torch, SimpleITK, the engine) happen inside functions, so Slicer starts fast
and the module loads before torch is installed.

Needs Slicer 5.10 or newer (Python 3.12). In an older Slicer the module loads and says so instead of failing:
this file is kept readable by Python 3.9, Slicer 5.8's.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
TITLE = "Cascade Landmarks"
MINIMUM_SLICER = (5, 10)
TORCH_REQUIREMENT = ">=2.0"  # asked of the PyTorch extension when it installs torch
DEVICES = {"Auto": "auto", "CPU": "cpu", "GPU": "cuda"}
# Fine-tuning steps: a corrected aortic CTA takes about 8 minutes on a 2-core CPU (README, correction loop).
FINE_TUNING_STAGE1_ITERATIONS = 500
FINE_TUNING_STAGE2_ITERATIONS = 1500
POLL_INTERVAL_MS = 200


def slicerTooOld():
    """A sentence saying this Slicer is too old for the module, or None."""
    version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if version >= MINIMUM_SLICER:
        return None
    return (
        f"CascadeLandmarks needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer (its Python 3.12); this "
        f"is Slicer {version[0]}.{version[1]}. Install the current Slicer from download.slicer.org."
    )


class CascadeLandmarks(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = TITLE
        self.parent.categories = ["Landmarks"]
        self.parent.dependencies = []
        self.parent.contributors = ["CascadeLandmarks team"]
        self.parent.helpText = (
            "Finds anatomical landmarks in CT angiography with the two-stage cascade regression model of "
            "Tan et al.: a 3D U-Net regresses one heatmap per landmark on the downsampled volume, then one small "
            "CNN per landmark refines each point from a full-resolution patch.<br>"
            "1. Pick the volume and a model, click <b>Detect</b> (it runs in the background; click again to "
            "cancel).<br>2. Check the orange (low-confidence) points first: click a row to centre the views.<br>"
            "3. Drag wrong points into place; the table shows how far each moved.<br>"
            "4. <b>Save corrected case</b> into a training folder, and <b>Fine-tune</b> the model on it.<br>"
            "See the <a href='https://github.com/cascade-landmarks/CascadeLandmarks#readme'>README</a>."
        )
        self.parent.acknowledgementText = (
            "Method: Tan et al., 'A Cascade Regression Model for Anatomical Landmark Detection'. "
            "Landmark sets: the paper's cardiac and aortic landmarks, and the AFIDs protocol (CC-BY-4.0)."
        )


@parameterNodeWrapper
class CascadeLandmarksParameterNode:
    """The module's choices, saved with the scene.

    inputVolume: the CT angiogram; model: a registered model's name; outputPointList: the list to detect into (none:
    a new one); device: where to run; trainingFolder: where corrected cases are saved and fine-tuned on; caseName:
    the saved case's name (none: the volume's); stage1Iterations, stage2Iterations: how long fine-tuning trains.
    The model list and the training folder are connected by the Widget (the models are known only at run time, and
    a path line edit connects to a path, whose empty value would read as the current folder).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    outputPointList: vtkMRMLMarkupsFiducialNode
    device: Annotated[str, Choice(list(DEVICES))] = "Auto"
    trainingFolder: str = ""
    caseName: str = ""
    stage1Iterations: Annotated[int, WithinRange(0, 100000)] = FINE_TUNING_STAGE1_ITERATIONS
    stage2Iterations: Annotated[int, WithinRange(0, 100000)] = FINE_TUNING_STAGE2_ITERATIONS


class CascadeLandmarksWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the UI (Resources/UI/CascadeLandmarks.ui) to the parameter node and the Logic; no processing of its
    own."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.run = None  # the detection or fine-tuning under way
        self.runButton = None  # the name of its button, which cancels it
        self.pointListNode = None  # the list the table shows
        self.tooOld = False  # in a Slicer older than MINIMUM_SLICER the module only says so
        self.installingTorch = False
        self.idleText = {}  # the job buttons' labels (from the .ui file) while no job runs
        self.readyTips = {}  # the buttons' tooltips (from the .ui file) when they can be clicked

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        tooOld = slicerTooOld()
        if tooOld:
            self.tooOld = True
            label = qt.QLabel(tooOld)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CascadeLandmarks.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CascadeLandmarksLogic()
        self.idleText = {name: getattr(self.ui, name).text for name in ("detectButton", "fineTuneButton")}
        self.readyTips = {name: getattr(self.ui, name).toolTip for name in (*self.idleText, "saveCaseButton")}

        self.ui.detectButton.connect("clicked(bool)", self.onDetectButton)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModelButton)
        self.ui.saveCaseButton.connect("clicked(bool)", self.onSaveCaseButton)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTuneButton)
        self.ui.landmarkTable.connect("cellClicked(int,int)", self.onTableClicked)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChosen)
        self.ui.trainingFolderSelector.connect("currentPathChanged(QString)", self.onTrainingFolderChosen)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.refreshModels()
        self.initializeParameterNode()

    def cleanup(self):
        if self.run is not None:
            self.logic.unwatch(self.run)
            self.run.cancel()
        self.removeObservers()

    def enter(self):
        if not self.tooOld:
            self.initializeParameterNode()

    def exit(self):
        if not self.tooOld:
            self.disconnectParameterNode()

    def onSceneStartClose(self, caller, event):
        if self.run is not None and self.run.running and self.run.scene_bound:
            self.cancelRun()  # a detection's points belong to the scene being closed (a fine-tuning goes on)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered and not self.tooOld:
            self.initializeParameterNode()

    # --- the parameter node ----------------------------------------------------------------------------------

    def initializeParameterNode(self):
        """Take the scene's parameter node; a new one starts on the volume shown in the red view and the first
        model."""
        self.setParameterNode(self.logic.getParameterNode())
        if self._parameterNode.inputVolume is None:
            self._parameterNode.inputVolume = self.backgroundVolume()
        if not self._parameterNode.model and self.ui.modelSelector.count:
            self._parameterNode.model = self.ui.modelSelector.itemData(0)

    def disconnectParameterNode(self):
        """Stop showing the parameter node (leaving the module): the widgets no longer follow it."""
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def setParameterNode(self, inputParameterNode):
        self.disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode is not None:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None):
        """Show the choices the connected widgets do not (the model, the training folder) and the chosen point
        list in the table; enable the buttons whose inputs are there."""
        parameters = self._parameterNode
        if parameters is not None:
            index = self.ui.modelSelector.findData(parameters.model)
            if index < 0 and self.ui.modelSelector.count:  # a scene's model not registered here: the one shown
                parameters.model = self.ui.modelSelector.itemData(max(self.ui.modelSelector.currentIndex, 0))
                return  # the change calls this again
            if index >= 0 and index != self.ui.modelSelector.currentIndex:
                self.ui.modelSelector.setCurrentIndex(index)
            shown = self.ui.trainingFolderSelector.currentPath
            if not parameters.trainingFolder and shown:  # the folder Slicer's settings restored, kept
                parameters.trainingFolder = shown
                return
            if shown != parameters.trainingFolder:
                self.ui.trainingFolderSelector.currentPath = parameters.trainingFolder
        pointList = parameters.outputPointList if parameters is not None else None
        if pointList is not self.pointListNode:
            self.setPointListNode(pointList)
        self.updateButtons()

    def onModelChosen(self, index):
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.model = self.ui.modelSelector.itemData(index)

    def onTrainingFolderChosen(self, path):
        if self._parameterNode is not None:
            self._parameterNode.trainingFolder = path

    def takeTrainingFolder(self):
        """The training folder as its line edit shows it now (an emptied field sends no change of its own)."""
        self._parameterNode.trainingFolder = self.ui.trainingFolderSelector.currentPath
        return self._parameterNode.trainingFolder

    def updateButtons(self):
        """Each button enabled only when its inputs are there (a tooltip says what is missing); while a job runs,
        only its own button, which cancels it."""
        parameters = self._parameterNode
        missing = {
            "detectButton": self.logic.missingForDetection(parameters),
            "saveCaseButton": self.logic.missingForSaving(parameters, self.pointListNode),
            "fineTuneButton": self.logic.missingForFineTuning(parameters),
        }
        for name, reason in missing.items():
            button = getattr(self.ui, name)
            button.enabled = name == self.runButton if self.run is not None else reason is None
            button.toolTip = reason or self.readyTips.get(name, "")

    def backgroundVolume(self):
        """The greyscale volume shown in the red slice view, or None (a label map, vector or diffusion volume is
        not one the input selector lists)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or layoutManager.sliceWidget("Red") is None:
            return None
        volumeID = layoutManager.sliceWidget("Red").sliceLogic().GetSliceCompositeNode().GetBackgroundVolumeID()
        node = slicer.mrmlScene.GetNodeByID(volumeID) if volumeID else None
        return node if node is not None and node.GetClassName() == "vtkMRMLScalarVolumeNode" else None

    def refreshModels(self, select=None):
        """List the registered models; select ``select`` (a name) in the list and the parameter node."""
        selector = self.ui.modelSelector
        selector.blockSignals(True)
        try:
            selector.clear()
            for entry in self.logic.availableModels():
                selector.addItem(f"{entry.name} ({entry.landmark_set})", entry.name)
                selector.setItemData(selector.count - 1, entry.description, qt.Qt.ToolTipRole)
        except Exception as error:  # a damaged registry: a message box, and the list as far as it got
            slicer.util.errorDisplay(f"Cannot list the models.\n\n{error}")
        finally:
            selector.blockSignals(False)
        if select is not None and self._parameterNode is not None:
            self._parameterNode.model = select
        if self._parameterNode is not None:
            self.onParameterNodeModified()  # the list shows the parameter node's model again

    def onAddModelButton(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Add a CascadeLandmarks model", "", "CascadeLandmarks model (*.pt)"
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Cannot add this model.", waitCursor=True):
            entry = self.logic.addModelFromFile(path)
            self.refreshModels(select=entry.name)

    # --- background jobs: detection and fine-tuning -----------------------------------------------------------

    def startedRun(self, run, buttonName, cancelText, status):
        """Show ``run`` as under way: its button reads ``cancelText``, the other job's button is disabled."""
        self.run, self.runButton = run, buttonName
        getattr(self.ui, buttonName).text = cancelText
        self.ui.statusLabel.text = status
        self.ui.progressBar.value = 0
        self.updateButtons()
        self.logic.watch(run, self.showProgress, self.onRunStopped)

    def showProgress(self, fraction, status):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = status

    def cancelRun(self):
        """Cancel the detection or fine-tuning under way."""
        run = self.run
        run.cancel()
        self.onRunStopped(run)

    def onRunStopped(self, run):
        """Show how the job ended: its result, or why it failed, or that it was cancelled."""
        if run is not self.run:
            return  # already shown (cancelled)
        self.logic.unwatch(run)
        self.run = self.runButton = None
        for name, text in self.idleText.items():
            getattr(self.ui, name).text = text
        self.updateButtons()
        if run.cancelled:
            self.ui.statusLabel.text = "Cancelled."
            self.ui.progressBar.value = 0
            return
        try:
            result = run.finish()
        except Exception as error:  # a message box, never a stack in the console (an OSError too: disk full)
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(str(error))
            return
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = run.status
        if run.warnings:
            slicer.util.warningDisplay("\n\n".join(run.warnings), windowTitle=TITLE)
        if hasattr(result, "GetID"):  # a detection gives a point list: the output, shown in the table
            parameters = self._parameterNode or self.logic.getParameterNode()  # (the module may have been left)
            parameters.outputPointList = result
            self.setPointListNode(result)
        else:  # fine-tuning gives a registry entry
            self.refreshModels(select=result.name)

    def ensureTorch(self):
        """True when torch can be imported; otherwise offer to install it through the PyTorch extension."""
        if self.logic.torchAvailable():
            return True
        if self.installingTorch:  # a second click while the first one's installation runs
            return False
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(
                "CascadeLandmarks needs PyTorch: install the PyTorch extension from the Extensions Manager, "
                "restart Slicer, then try again."
            )
            return False
        question = "CascadeLandmarks needs PyTorch, which is not installed yet. Install it now (a few minutes)?"
        if not slicer.util.confirmOkCancelDisplay(question, windowTitle=TITLE):
            return False
        self.installingTorch = True
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            PyTorchUtils.PyTorchUtilsLogic().installTorch(torchVersionRequirement=TORCH_REQUIREMENT)
            problem = None
        except Exception as error:  # pip failed (CalledProcessError), no PythonSlicer, torch does not import
            problem = str(error) or type(error).__name__
        finally:
            slicer.app.restoreOverrideCursor()
            self.installingTorch = False
        if problem:
            slicer.util.errorDisplay(f"PyTorch could not be installed: {problem}")
        return problem is None

    def onDetectButton(self):
        if self.run is not None:  # the button reads Cancel (the run may have just ended: the timer shows it)
            self.cancelRun()
            return
        if not self.ensureTorch():
            return
        parameters = self._parameterNode
        device, message = self.logic.resolveDevice(DEVICES[parameters.device])
        outputNode = parameters.outputPointList
        risk = self.logic.workAtRisk(outputNode, parameters.inputVolume)
        if risk:  # never replace corrections or another volume's points: detect into a new list
            outputNode = None
            message = f"{risk} It is kept: the points go into a new point list. {message}".strip()
        with slicer.util.tryWithErrorDisplay("Cannot start detection.", waitCursor=True):
            run = self.logic.startDetection(parameters.inputVolume, parameters.model, outputNode, device=device)
            self.startedRun(run, "detectButton", "Cancel", message or "Detecting...")

    def onFineTuneButton(self):
        if self.run is not None:  # the button reads Cancel fine-tuning
            self.cancelRun()
            return
        if not self.ensureTorch():
            return
        parameters = self._parameterNode
        device, message = self.logic.resolveDevice(DEVICES[parameters.device])
        with slicer.util.tryWithErrorDisplay("Cannot start fine-tuning.", waitCursor=True):
            run = self.logic.startFineTuning(
                self.takeTrainingFolder(),
                parameters.model,
                stage1Iterations=parameters.stage1Iterations,
                stage2Iterations=parameters.stage2Iterations,
                device=device,
            )
            self.startedRun(run, "fineTuneButton", "Cancel fine-tuning", message or "Fine-tuning...")

    # --- inspection and correction ------------------------------------------------------------------------

    def setPointListNode(self, node):
        """Show ``node``'s detection in the table and follow its points."""
        events = {
            slicer.vtkMRMLMarkupsNode.PointAddedEvent: self.onPointsAddedOrRemoved,
            slicer.vtkMRMLMarkupsNode.PointRemovedEvent: self.onPointsAddedOrRemoved,
            slicer.vtkMRMLMarkupsNode.PointModifiedEvent: self.onPointModified,
        }
        for event, callback in events.items():
            if self.pointListNode is not None:
                self.removeObserver(self.pointListNode, event, callback)
            if node is not None:
                self.addObserver(node, event, callback)
        self.pointListNode = node
        self.updateTable()

    def onPointsAddedOrRemoved(self, caller, event, callData=None):
        self.updateTable()

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointModified(self, caller, event, callData=None):
        """While a point is dragged, only its row changes (the selection stays); several points at once (no
        index given), the whole table."""
        if callData is None or not 0 <= callData < caller.GetNumberOfControlPoints():
            self.updateTable()
            return
        label = caller.GetNthControlPointLabel(callData)
        row = self.logic.landmarkRow(caller, label)
        table = self.ui.landmarkTable
        for index in range(table.rowCount):
            if row is not None and table.item(index, 0) is not None and table.item(index, 0).text() == label:
                self.showRow(index, row)
                return

    def updateTable(self):
        rows = self.logic.landmarkRows(self.pointListNode)
        table = self.ui.landmarkTable
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            self.showRow(index, row)
        table.resizeColumnsToContents()

    def showRow(self, index, row):
        """Write a landmark's row: its label, confidence (or that it is not in view), how far it moved."""
        confidence = f"{row.confidence:.2f}" + ("  check" if row.flagged else "") if row.in_view else "not in view"
        moved = f"{row.moved_mm:.1f}" if row.moved_mm == row.moved_mm else "no point"  # NaN: deleted or unplaced
        table = self.ui.landmarkTable
        for column, text in enumerate((row.label, confidence, moved, row.description)):
            item = table.item(index, column)
            if item is None:
                item = qt.QTableWidgetItem()
                table.setItem(index, column, item)
            item.setText(text)
            if row.flagged:
                item.setForeground(qt.QBrush(qt.QColor(230, 120, 0)))
            else:
                item.setData(qt.Qt.ForegroundRole, None)  # the usual colour

    def onTableClicked(self, row, column):
        if self.pointListNode is None:
            return
        label = self.ui.landmarkTable.item(row, 0).text()
        index = self.logic.pointIndex(self.pointListNode, label)
        if index is None:  # deleted or unplaced: there is nowhere to go
            self.ui.statusLabel.text = f"{label} has no point: place it, then click its row again."
            return
        slicer.modules.markups.logic().JumpSlicesToNthPointInMarkup(self.pointListNode.GetID(), index, True)

    # --- saving corrected cases ---------------------------------------------------------------------------

    def onSaveCaseButton(self):
        exists = self.saveCase()
        if exists is None:
            return
        question = f"Case {exists.case} is already in {exists.folder}. Replace it with these points?"
        if slicer.util.confirmOkCancelDisplay(question, windowTitle=TITLE):  # no wait cursor over a question
            self.saveCase(overwrite=True)

    def saveCase(self, overwrite=False):
        """Save the corrected case; returns the CaseExistsError when the case is there and not to be replaced."""
        from cascade_landmarks.slicer.workflow import CaseExistsError

        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Cannot save the corrected case.", waitCursor=True):
            try:
                volumePath, pointsPath = self.logic.saveCorrectedCase(
                    parameters.inputVolume,
                    self.pointListNode,
                    self.takeTrainingFolder(),
                    caseName=parameters.caseName or None,
                    overwrite=overwrite,
                )
            except CaseExistsError as exists:
                return exists
            self.ui.trainingFolderSelector.addCurrentPathToHistory()
            self.ui.statusLabel.text = f"Saved {os.path.basename(volumePath)} and {os.path.basename(pointsPath)}."
        return None


class CascadeLandmarksLogic(ScriptedLoadableModuleLogic):
    """Detection, correction and fine-tuning on MRML nodes, usable from the Python console:

    ``CascadeLandmarksLogic().detect(volumeNode, model="cardiac-5-phantom")`` returns the point-list node.

    Takes MRML nodes and plain values, never widgets; raises ValueError with a sentence a user can act on.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        if MODULE_DIR not in sys.path:
            sys.path.insert(0, MODULE_DIR)

    def getParameterNode(self):
        return CascadeLandmarksParameterNode(super().getParameterNode())

    # --- what needs the application ------------------------------------------------------------------------

    @staticmethod
    def pythonExecutable():
        """Slicer's own interpreter for background processes (``PythonSlicer``), else the current one."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def backgroundEnvironment():
        """Lets the background process import the engine from this module's folder."""
        paths = [MODULE_DIR, os.environ.get("PYTHONPATH", "")]
        return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}

    @staticmethod
    def torchAvailable():
        """Whether torch can be imported (the Widget offers to install it when not)."""
        try:
            import torch  # noqa: F401
        except Exception:  # not installed, or installed broken (a DLL or an ABI that does not load)
            return False
        return True

    @staticmethod
    def resolveDevice(choice):
        """The device to run on, and a message when a GPU was asked for but is missing (then: the CPU)."""
        if choice != "cuda":
            return choice, ""
        import torch

        if torch.cuda.is_available():
            return "cuda", ""
        return "cpu", "No GPU found: running on the CPU."

    def watch(self, run, progressCallback=None, finishedCallback=None):
        """Poll ``run`` from a timer: ``progressCallback(fraction, status)`` at each tick, ``finishedCallback(run)``
        once it stopped (call ``run.finish()`` there for its result)."""
        timer = qt.QTimer()
        timer.setInterval(POLL_INTERVAL_MS)

        def poll():
            fraction, status = run.poll()
            if progressCallback:
                progressCallback(fraction, status)
            if not run.running:
                self.unwatch(run)
                if finishedCallback:
                    finishedCallback(run)

        timer.connect("timeout()", poll)
        run.timer, run.pollSlot = timer, poll  # the timer lives as long as the run is watched
        timer.start()

    @staticmethod
    def unwatch(run):
        """Stop polling ``run``, and let its timer go (Qt holds the slot, and with it the run, until disconnected)."""
        timer = getattr(run, "timer", None)
        if timer is not None:
            timer.stop()
            timer.disconnect("timeout()", run.pollSlot)
            run.timer = run.pollSlot = None

    # --- the workflow (MRML work in cascade_landmarks.slicer) ---------------------------------------------

    def availableModels(self):
        from cascade_landmarks.model.registry import available_models

        return available_models()

    def addModelFromFile(self, path):
        from cascade_landmarks.model.registry import register_model

        return register_model(path)

    def missingForDetection(self, parameters):
        """What detection still needs, as a sentence, or None."""
        if parameters is None or parameters.inputVolume is None:
            return "Pick the input volume."
        return None if parameters.model else "Pick a model (or add one from a file)."

    def missingForSaving(self, parameters, pointListNode):
        """What saving a corrected case still needs, as a sentence, or None."""
        if pointListNode is None or pointListNode.GetNumberOfControlPoints() == 0:
            return "Detect landmarks first, then correct them."
        if parameters is None or parameters.inputVolume is None:
            return "Pick the volume the points were detected on."
        return None if parameters.trainingFolder else "Choose a training folder."

    def missingForFineTuning(self, parameters):
        """What fine-tuning still needs, as a sentence, or None."""
        if parameters is None or not parameters.model:
            return "Pick the model to fine-tune."
        return None if parameters.trainingFolder else "Choose the training folder with the corrected cases."

    def startDetection(self, volumeNode, model, outputNode=None, device="auto"):
        """Start detection in a background process; poll the returned run, then call its ``finish()``."""
        from cascade_landmarks.model.registry import resolve_model
        from cascade_landmarks.slicer.runs import DetectionRun

        if not model:
            raise ValueError("Pick a model first (or add one from a file).")
        resolve_model(model)  # an unknown name, a missing file or a damaged shipped one: said now, not later
        run = DetectionRun(
            slicer.mrmlScene,
            volumeNode,
            model,
            output_node=outputNode,
            device=device,
            python=self.pythonExecutable(),
            environment=self.backgroundEnvironment(),
        )
        return run.start()

    def detect(self, volumeNode, model, outputNode=None, device="auto", wait=True, progressCallback=None,
               finishedCallback=None):  # fmt: skip
        """Detect the model's landmarks in ``volumeNode``.

        Args:
            model: a registered model name (e.g. "cardiac-5-phantom") or a model file.
            outputNode: a point list to fill (its points are replaced); None creates a new one.
            device: "auto", "cpu" or "cuda".
            wait: block until done and return the point-list node; otherwise return the run at once and call
                ``finishedCallback(node)`` when done (``finishedCallback(None)`` on failure or cancel).
            progressCallback: called with (fraction done, status line) as detection goes.

        Warnings about the volume (a field of view unlike the model's training scans) go to the log.
        """
        run = self.startDetection(volumeNode, model, outputNode=outputNode, device=device)
        if wait:
            node = run.wait(progress=progressCallback)
            self._logWarnings(run)
            return node

        def finished(run):
            node = None
            if not run.cancelled:
                try:
                    node = run.finish()
                    self._logWarnings(run)
                except ValueError as error:
                    logging.error(str(error))
            if finishedCallback:
                finishedCallback(node)

        self.watch(run, progressCallback, finished)
        return run

    @staticmethod
    def _logWarnings(run):
        for warning in run.warnings:
            logging.warning(warning)

    def landmarkRows(self, pointListNode):
        from cascade_landmarks.slicer.workflow import detection_rows

        return detection_rows(pointListNode)

    def landmarkRow(self, pointListNode, label):
        """The table row of the landmark ``label``, or None."""
        from cascade_landmarks.slicer.workflow import detection_row

        return detection_row(pointListNode, label)

    def pointIndex(self, pointListNode, label):
        """The index of the placed point labelled ``label``, or None when the list has none."""
        from cascade_landmarks.slicer.workflow import point_index

        return point_index(pointListNode, label)

    def workAtRisk(self, pointListNode, volumeNode):
        """Why detecting on ``volumeNode`` into ``pointListNode`` would lose work (a sentence), or None."""
        from cascade_landmarks.slicer.workflow import work_at_risk

        return work_at_risk(pointListNode, volumeNode)

    def saveCorrectedCase(self, volumeNode, pointListNode, folder, caseName=None, overwrite=False):
        from cascade_landmarks.slicer.workflow import save_corrected_case

        if not folder:
            raise ValueError("Choose a training folder first.")
        return save_corrected_case(volumeNode, pointListNode, folder, case_name=caseName, overwrite=overwrite)

    def startFineTuning(self, folder, model, stage1Iterations=FINE_TUNING_STAGE1_ITERATIONS,
                        stage2Iterations=FINE_TUNING_STAGE2_ITERATIONS, device="auto"):  # fmt: skip
        """Start fine-tuning ``model`` on the corrected cases in ``folder`` in a background process; the run's
        ``finish()`` gives the new version's registry entry."""
        from cascade_landmarks.model.registry import resolve_model
        from cascade_landmarks.slicer.runs import FineTuneRun

        if not model:
            raise ValueError("Pick the model to fine-tune first.")
        if not folder:
            raise ValueError("Choose the training folder with the corrected cases first.")
        resolve_model(model)
        run = FineTuneRun(
            folder,
            model,
            stage1_iterations=stage1Iterations,
            stage2_iterations=stage2Iterations,
            device=device,
            python=self.pythonExecutable(),
            environment=self.backgroundEnvironment(),
        )
        return run.start()


class CascadeLandmarksTest(ScriptedLoadableModuleTest):
    """The clinician's workflow inside Slicer on generated synthetic volumes (spheres with known centres): train a
    small model, detect, correct a point, save the corrected case, fine-tune on it."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        if not CascadeLandmarksLogic.torchAvailable():  # Reload and Test: a message, not a failure
            self.delayDisplay("Not run: the test needs PyTorch (install it with the PyTorch Utils module).")
            return
        self.test_DetectCorrectSaveFineTune()

    def test_DetectCorrectSaveFineTune(self):
        if not CascadeLandmarksLogic.torchAvailable():  # under CTest: a skip
            self.skipTest("needs PyTorch: install it through the PyTorch extension (PyTorch Utils module)")
        import tempfile

        folder = tempfile.mkdtemp(prefix="CascadeLandmarksTest-")
        userHome = os.environ.get("CASCADE_LANDMARKS_HOME")
        os.environ["CASCADE_LANDMARKS_HOME"] = os.path.join(folder, "home")  # keep the user's own registry clean
        try:
            self.runWorkflow(folder)
        finally:
            if userHome is None:
                del os.environ["CASCADE_LANDMARKS_HOME"]
            else:
                os.environ["CASCADE_LANDMARKS_HOME"] = userHome
            shutil.rmtree(folder, ignore_errors=True)

    def runWorkflow(self, folder):
        from pathlib import Path

        import numpy as np

        sys.path.insert(0, MODULE_DIR)
        from cascade_landmarks.bench.phantoms.spheres import SPHERES_SET, write_cases
        from cascade_landmarks.io.cases import check_cases, find_cases
        from cascade_landmarks.training.config import TrainingConfig
        from cascade_landmarks.training.trainer import train

        self.delayDisplay("Training a small model on synthetic spheres")
        cases = write_cases(Path(folder) / "train", range(4))
        modelPath = Path(folder) / "spheres.pt"
        settings = {"stage1_spacing_mm": 3.0, "stage1_grid": (20, 20, 20), "patch_size": 16, "unet_width": 4,
                    "unet_depth": 2, "stage2_radius_mm": 5.0}  # fmt: skip
        schedule = TrainingConfig(stage1_iterations=20, stage2_iterations=20, batch_size=2, validate_every=0)
        train(cases, modelPath, landmark_set=SPHERES_SET, progress=False, config_settings=settings, training=schedule)

        self.delayDisplay("Detecting")
        write_cases(Path(folder) / "new", [50])
        volumeNode = slicer.util.loadVolume(str(Path(folder) / "new" / "case050.nrrd"))
        logic = CascadeLandmarksLogic()
        pointList = logic.detect(volumeNode, str(modelPath), device="cpu")
        labels = [pointList.GetNthControlPointLabel(i) for i in range(pointList.GetNumberOfControlPoints())]
        self.assertEqual(labels, SPHERES_SET.labels)

        self.delayDisplay("Correcting and saving")
        position = np.array(pointList.GetNthControlPointPositionWorld(0))
        pointList.SetNthControlPointPositionWorld(0, *(position + np.array([2.0, 0.0, 0.0])))
        self.assertAlmostEqual(logic.landmarkRows(pointList)[0].moved_mm, 2.0, places=3)
        trainingFolder = Path(folder) / "corrected"
        logic.saveCorrectedCase(volumeNode, pointList, trainingFolder)
        self.assertEqual(len(check_cases(find_cases(trainingFolder), SPHERES_SET)), 1)

        self.delayDisplay("Fine-tuning")
        entry = logic.startFineTuning(trainingFolder, str(modelPath), 2, 2, device="cpu").finish()
        self.assertEqual(entry.landmark_set, SPHERES_SET.name)
        self.delayDisplay("Test passed")
