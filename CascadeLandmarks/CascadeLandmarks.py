"""CascadeLandmarks: the 3D Slicer module.

This file stays thin (see STYLE.md, rule 1): the engine is the ``cascade_landmarks`` package beside it, which
needs no Slicer, and the Logic's work on MRML nodes lives in ``cascade_landmarks.slicer_workflow`` (tested
against the real MRML core outside Slicer). Here: the Widget wires the UI to the Logic, turns errors into
message boxes and offers to install torch through the PyTorch extension; the Logic adds what needs the
application (the ``PythonSlicer`` interpreter for background processes, timers). Heavy imports (torch,
SimpleITK, the engine) happen inside functions, so Slicer starts fast and the module loads before torch is
installed.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
DEVICES = {"Auto": "auto", "CPU": "cpu", "GPU": "cuda"}


class CascadeLandmarks(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Cascade Landmarks"
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


class CascadeLandmarksWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the UI (Resources/UI/CascadeLandmarks.ui) to the Logic; no processing of its own."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.run = None  # the detection or fine-tuning under way
        self.pointListNode = None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CascadeLandmarks.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CascadeLandmarksLogic()

        self.ui.detectButton.connect("clicked(bool)", self.onDetectButton)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModelButton)
        self.ui.saveCaseButton.connect("clicked(bool)", self.onSaveCaseButton)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTuneButton)
        self.ui.landmarkTable.connect("cellClicked(int,int)", self.onTableClicked)
        self.ui.outputPointListSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.setPointListNode)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

        self.refreshModels()
        self.selectBackgroundVolume()

    def cleanup(self):
        self.timer.stop()
        if self.run is not None and self.run.running:
            self.run.cancel()
        self.removeObservers()

    def enter(self):
        if self.ui.inputVolumeSelector.currentNode() is None:
            self.selectBackgroundVolume()

    def onSceneStartClose(self, caller, event):
        if self.run is not None and self.run.running and self.run.scene_bound:
            self.cancelRun()  # a detection's points belong to the scene being closed (a fine-tuning goes on)
        self.setPointListNode(None)

    def selectBackgroundVolume(self):
        """Default input: the volume shown in the red slice view."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or layoutManager.sliceWidget("Red") is None:
            return
        volumeID = layoutManager.sliceWidget("Red").sliceLogic().GetSliceCompositeNode().GetBackgroundVolumeID()
        if volumeID:
            self.ui.inputVolumeSelector.setCurrentNode(slicer.mrmlScene.GetNodeByID(volumeID))

    def refreshModels(self, select=None):
        self.ui.modelSelector.clear()
        with slicer.util.tryWithErrorDisplay("Cannot list the models.", waitCursor=False):
            for entry in self.logic.availableModels():
                self.ui.modelSelector.addItem(f"{entry.name} ({entry.landmark_set})", entry.name)
                self.ui.modelSelector.setItemData(self.ui.modelSelector.count - 1, entry.description, qt.Qt.ToolTipRole)
        if select is not None:
            self.ui.modelSelector.setCurrentIndex(max(0, self.ui.modelSelector.findData(select)))

    def currentModel(self):
        return self.ui.modelSelector.currentData

    def onAddModelButton(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Add a CascadeLandmarks model", "", "CascadeLandmarks model (*.pt)"
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Cannot add this model.", waitCursor=True):
            entry = self.logic.addModelFromFile(path)
            self.refreshModels(select=entry.name)

    # --- detection ----------------------------------------------------------------------------------------

    def startedRun(self, run, button, cancelText, status):
        """Show ``run`` as under way: its button reads ``cancelText``, the other job's button is disabled."""
        self.run = run
        button.text = cancelText
        for other in (self.ui.detectButton, self.ui.fineTuneButton):
            other.enabled = other is button
        self.ui.statusLabel.text = status
        self.ui.progressBar.value = 0
        self.timer.start()

    def cancelRun(self):
        """Cancel the detection or fine-tuning under way."""
        self.run.cancel()
        self.finishRun(cancelled=True)

    def ensureTorch(self):
        """True when torch can be imported; otherwise offer to install it through the PyTorch extension."""
        if self.logic.torchAvailable():
            return True
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(
                "CascadeLandmarks needs PyTorch: install the PyTorch extension from the Extensions Manager, "
                "restart Slicer, then try again."
            )
            return False
        return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is not None

    def onDetectButton(self):
        if self.run is not None and self.run.running:  # the button reads Cancel
            self.cancelRun()
            return
        if not self.ensureTorch():
            return
        device, message = self.logic.resolveDevice(DEVICES[self.ui.deviceSelector.currentText])
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        outputNode = self.ui.outputPointListSelector.currentNode()
        risk = self.logic.workAtRisk(outputNode, volumeNode)
        if risk:  # never replace corrections or another volume's points: detect into a new list
            outputNode = None
            message = f"{risk} It is kept: the points go into a new point list. {message}".strip()
        with slicer.util.tryWithErrorDisplay("Cannot start detection.", waitCursor=True):
            run = self.logic.startDetection(volumeNode, self.currentModel(), outputNode=outputNode, device=device)
            self.startedRun(run, self.ui.detectButton, "Cancel", message or "Detecting...")

    def onTimer(self):
        fraction, status = self.run.poll()
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = status
        if not self.run.running:
            self.finishRun()

    def finishRun(self, cancelled=False):
        self.timer.stop()
        run, self.run = self.run, None
        self.ui.detectButton.text = "Detect"
        self.ui.fineTuneButton.text = "Fine-tune model on training folder"
        self.ui.detectButton.enabled = self.ui.fineTuneButton.enabled = True
        if cancelled:
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
            slicer.util.warningDisplay("\n\n".join(run.warnings), windowTitle="Cascade Landmarks")
        if hasattr(result, "GetID"):  # a detection gives a point list
            self.ui.outputPointListSelector.setCurrentNode(result)
            self.setPointListNode(result)
        else:  # fine-tuning gives a registry entry
            self.refreshModels(select=result.name)

    # --- inspection and correction ------------------------------------------------------------------------

    POINT_EVENTS = ("PointModifiedEvent", "PointAddedEvent", "PointRemovedEvent")

    def setPointListNode(self, node):
        for event in self.POINT_EVENTS:
            if self.pointListNode is not None:
                self.removeObserver(
                    self.pointListNode, getattr(slicer.vtkMRMLMarkupsNode, event), self.onPointsModified
                )
            if node is not None:
                self.addObserver(node, getattr(slicer.vtkMRMLMarkupsNode, event), self.onPointsModified)
        self.pointListNode = node
        self.updateTable()

    def onPointsModified(self, caller, event):
        self.updateTable()

    def updateTable(self):
        rows = self.logic.landmarkRows(self.pointListNode)
        table = self.ui.landmarkTable
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            confidence = f"{row.confidence:.2f}" + ("  check" if row.flagged else "")
            moved = f"{row.moved_mm:.1f}" if row.moved_mm == row.moved_mm else "deleted"  # NaN: no point left
            for column, text in enumerate((row.label, confidence, moved, row.description)):
                item = qt.QTableWidgetItem(text)
                if row.flagged:
                    item.setForeground(qt.QBrush(qt.QColor(230, 120, 0)))
                table.setItem(index, column, item)
        table.resizeColumnsToContents()

    def onTableClicked(self, row, column):
        if self.pointListNode is None:
            return
        index = self.logic.pointIndex(self.pointListNode, self.ui.landmarkTable.item(row, 0).text())
        if index is not None:  # rows follow the detection; the list may have lost or gained points since
            slicer.modules.markups.logic().JumpSlicesToNthPointInMarkup(self.pointListNode.GetID(), index, True)

    # --- saving corrected cases and fine-tuning -----------------------------------------------------------

    def onSaveCaseButton(self):
        from cascade_landmarks.slicer_workflow import CaseExistsError

        with slicer.util.tryWithErrorDisplay("Cannot save the corrected case.", waitCursor=True):
            folder = self.ui.trainingFolderSelector.currentPath
            if not folder:
                raise ValueError("Choose a training folder first.")
            arguments = (self.ui.inputVolumeSelector.currentNode(), self.pointListNode, folder)
            caseName = self.ui.caseNameEdit.text or None
            try:
                volumePath, pointsPath = self.logic.saveCorrectedCase(*arguments, caseName=caseName)
            except CaseExistsError as exists:
                question = f"Case {exists.case} is already in {exists.folder}. Replace it with these points?"
                if not slicer.util.confirmOkCancelDisplay(question, windowTitle="Cascade Landmarks"):
                    return
                volumePath, pointsPath = self.logic.saveCorrectedCase(*arguments, caseName=caseName, overwrite=True)
            self.ui.trainingFolderSelector.addCurrentPathToHistory()
            self.ui.statusLabel.text = f"Saved {os.path.basename(volumePath)} and {os.path.basename(pointsPath)}."

    def onFineTuneButton(self):
        if self.run is not None and self.run.running:  # the button reads Cancel fine-tuning
            self.cancelRun()
            return
        if not self.ensureTorch():
            return
        device, message = self.logic.resolveDevice(DEVICES[self.ui.deviceSelector.currentText])
        with slicer.util.tryWithErrorDisplay("Cannot start fine-tuning.", waitCursor=True):
            folder = self.ui.trainingFolderSelector.currentPath
            if not folder:
                raise ValueError("Choose the training folder with the corrected cases first.")
            run = self.logic.startFineTuning(
                folder,
                self.currentModel(),
                stage1Iterations=self.ui.stage1IterationsSpinBox.value,
                stage2Iterations=self.ui.stage2IterationsSpinBox.value,
                device=device,
            )
            self.startedRun(run, self.ui.fineTuneButton, "Cancel fine-tuning", message or "Fine-tuning...")


class CascadeLandmarksLogic(ScriptedLoadableModuleLogic):
    """Detection, correction and fine-tuning on MRML nodes, usable from the Python console:

    ``CascadeLandmarksLogic().detect(volumeNode, model="cardiac-5-phantom")`` returns the point-list node.

    Takes MRML nodes and plain values, never widgets; raises ValueError with a sentence a user can act on.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        if MODULE_DIR not in sys.path:
            sys.path.insert(0, MODULE_DIR)

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
        except ImportError:
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

    # --- the workflow (MRML work in cascade_landmarks.slicer_workflow) ------------------------------------

    def availableModels(self):
        from cascade_landmarks.model_registry import available_models

        return available_models()

    def addModelFromFile(self, path):
        from cascade_landmarks.model_registry import register_model

        return register_model(path)

    def startDetection(self, volumeNode, model, outputNode=None, device="auto"):
        """Start detection in a background process; poll the returned run, then call its ``finish()``."""
        from cascade_landmarks.model_registry import resolve_model
        from cascade_landmarks.slicer_workflow import DetectionRun

        if not model:
            raise ValueError("Pick a model first (or add one from a file).")
        run = DetectionRun(
            slicer.mrmlScene,
            volumeNode,
            resolve_model(model),
            model_name=os.path.basename(str(model)).removesuffix(".pt"),
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
        timer = qt.QTimer()
        timer.setInterval(200)

        def poll():
            fraction, status = run.poll()
            if progressCallback:
                progressCallback(fraction, status)
            if not run.running:
                timer.stop()
                try:
                    node = None if run.command.cancelled else run.finish()
                    self._logWarnings(run)
                except ValueError as error:
                    logging.error(str(error))
                    node = None
                if finishedCallback:
                    finishedCallback(node)

        timer.connect("timeout()", poll)
        run.timer = timer  # keep the timer alive as long as the run
        timer.start()
        return run

    @staticmethod
    def _logWarnings(run):
        for warning in run.warnings:
            logging.warning(warning)

    def landmarkRows(self, pointListNode):
        from cascade_landmarks.slicer_workflow import detection_rows

        return detection_rows(pointListNode)

    def pointIndex(self, pointListNode, label):
        """The index of the point labelled ``label``, or None when the list has none."""
        from cascade_landmarks.slicer_workflow import point_index

        return point_index(pointListNode, label)

    def workAtRisk(self, pointListNode, volumeNode):
        """Why detecting on ``volumeNode`` into ``pointListNode`` would lose work (a sentence), or None."""
        from cascade_landmarks.slicer_workflow import work_at_risk

        return work_at_risk(pointListNode, volumeNode)

    def saveCorrectedCase(self, volumeNode, pointListNode, folder, caseName=None, overwrite=False):
        from cascade_landmarks.slicer_workflow import save_corrected_case

        return save_corrected_case(volumeNode, pointListNode, folder, case_name=caseName, overwrite=overwrite)

    def startFineTuning(self, folder, model, stage1Iterations=500, stage2Iterations=2000, device="auto"):
        from cascade_landmarks.slicer_workflow import FineTuneRun

        if not model:
            raise ValueError("Pick the model to fine-tune first.")
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
        self.test_DetectCorrectSaveFineTune()

    def test_DetectCorrectSaveFineTune(self):
        if not CascadeLandmarksLogic.torchAvailable():  # the PyTorch extension installs torch only when asked
            self.skipTest("needs PyTorch: install it through the PyTorch extension (PyTorch Utils module)")
        import tempfile
        from pathlib import Path

        import numpy as np

        sys.path.insert(0, MODULE_DIR)
        from cascade_landmarks.config import TrainingConfig
        from cascade_landmarks.data import check_cases, find_cases
        from cascade_landmarks.phantoms.spheres import SPHERES_SET, write_cases
        from cascade_landmarks.training import train

        folder = tempfile.mkdtemp(prefix="CascadeLandmarksTest-")
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
        userHome = os.environ.get("CASCADE_LANDMARKS_HOME")
        os.environ["CASCADE_LANDMARKS_HOME"] = str(Path(folder) / "home")  # keep the user's own registry clean
        try:
            entry = logic.startFineTuning(trainingFolder, str(modelPath), 2, 2, device="cpu").finish()
        finally:
            if userHome is None:
                del os.environ["CASCADE_LANDMARKS_HOME"]
            else:
                os.environ["CASCADE_LANDMARKS_HOME"] = userHome
        self.assertEqual(entry.landmark_set, SPHERES_SET.name)
        self.delayDisplay("Test passed")
