"""The Slicer module's two background jobs: detecting landmarks in a volume node, and fine-tuning a model on a
folder of corrected cases. Each runs a ``cascade-landmarks`` command in another process
(:mod:`~cascade_landmarks.slicer.background`), is polled from a timer for progress, may be cancelled, and
``finish()`` turns the command's result message into what the module shows: a point list, or a registry entry.

Nothing here imports torch or ``slicer``: the commands do the work, and nodes come in as arguments.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..inference.detection import Detection
from ..io.volumes import write_volume
from ..model.registry import ModelEntry
from ..progress import ProgressCallback
from ..training.run_files import checkpoint_path, unused_model_path
from .background import BackgroundCommand
from .bridge import landmarks_to_node, volume_from_node
from .workflow import show_detection

# How long fine-tuning on corrected cases trains each stage by default (about 7 minutes for a real CTA model on a
# 2-core CPU): the web app's and benchmark-correction's; the Slicer module keeps the same numbers in its own file
# (it imports nothing of the engine when Slicer starts).
FINE_TUNING_STAGE1_ITERATIONS = 500
FINE_TUNING_STAGE2_ITERATIONS = 1500


class BackgroundRun:
    """A command in a background process: start, poll for progress, cancel, wait, finish.

    Attributes:
        fraction, status: the progress so far, as :meth:`poll` last read it.
        warnings: what the command warned of.
        scene_bound: whether its result goes into the scene (closing the scene then cancels it).
    """

    scene_bound = False

    def __init__(self, arguments, *, python: str | None = None, environment: dict | None = None):
        self.command = BackgroundCommand(arguments, python=python, environment=environment)
        self.fraction = 0.0
        self.status = "starting"
        self.warnings: list[str] = []
        self._result: dict | None = None
        self._error: str | None = None

    def start(self) -> BackgroundRun:
        self.command.start()
        return self

    def poll(self) -> tuple[float, str]:
        """Progress so far: (fraction done, status line). Never blocks."""
        for message in self.command.poll():
            kind = message["type"]
            if kind == "progress":
                self._take_progress(message)
            elif kind == "warning":
                self.warnings.append(message["message"])
            elif kind == "result":
                self._result = message
            elif kind == "error":
                self._error = message["message"]
        return self.fraction, self.status

    def _take_progress(self, message: dict) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.command.running

    @property
    def cancelled(self) -> bool:
        return self.command.cancelled

    def cancel(self) -> None:
        """Stop the command and everything it started; remove what it leaves behind."""
        self.command.cancel()
        self.status = "Cancelled"
        self._cleanup()

    def wait(self, *, progress: ProgressCallback | None = None, interval: float = 0.1):
        """Block until done, reporting progress; returns what :meth:`finish` returns."""
        while self.command.running:
            fraction, status = self.poll()
            if progress:
                progress(fraction, status)
            time.sleep(interval)
        return self.finish()

    def result(self, failure: str) -> dict:
        """Wait for the command to end and return its result message; ValueError starting with ``failure`` and
        saying why when it failed."""
        self.command.wait()
        self.poll()  # the last messages: warnings, the result or the error
        if self._error is not None:
            raise ValueError(f"{failure}: {self._error}")
        if self.command.returncode != 0 or self._result is None:
            raise ValueError(f"{failure}: {self.command.stderr_tail()}")
        return self._result

    def finish(self):
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Remove temporary files (nothing by default)."""


class DetectionRun(BackgroundRun):
    """Detect landmarks in a volume node in a background process; ``finish()`` puts them in a point list.

    Args:
        scene: the MRML scene.
        volume_node: the input; it is not modified.
        model: a registered model's name or a model file.
        output_node: a point list the user picked as output (its points are replaced; see
            :func:`~cascade_landmarks.slicer.workflow.work_at_risk`); None makes a new one, as does a picked list
            that left the scene while detection ran.
        device: "auto", "cpu" or "cuda".
        python: the interpreter for the background process (``PythonSlicer`` in Slicer).
        environment: extra environment variables for it (``PYTHONPATH`` to find the engine, in Slicer).
    """

    scene_bound = True

    def __init__(self, scene, volume_node, model, *, output_node=None, device="auto", python=None, environment=None):
        volume = volume_from_node(volume_node)  # checks the node first, before any temporary file exists
        if output_node is not None and not output_node.IsA("vtkMRMLMarkupsFiducialNode"):
            raise ValueError(f"{output_node.GetName()} is not a point list; pick a point list as output, or none.")
        self.scene = scene
        self.volume_node = volume_node
        self.output_node = output_node
        self._folder = Path(tempfile.mkdtemp(prefix="cascade-landmarks-"))
        volume_file = write_volume(volume, self._folder / "input.nrrd", compress=False)
        super().__init__(
            ["detect", model, volume_file, "-o", self._folder, "--device", device],
            python=python,
            environment=environment,
        )

    def _take_progress(self, message: dict) -> None:
        self.fraction = float(message["fraction"])
        step = message.get("metrics", {}).get("step")
        self.status = f"Detecting: {step}" if step else "Detecting"

    def finish(self):
        """Put the detection of a finished run into the output point list (or raise with the reason); returns it."""
        try:
            detection = Detection.from_dict(self.result("Detection failed")["detection"])
        finally:
            self._cleanup()
        name = f"{self.volume_node.GetName()} {detection.model_name}"
        output = self.output_node if self.output_node is not None and self.output_node.GetScene() else None
        if output is None:
            output = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", self.scene.GenerateUniqueName(name))
            output.CreateDefaultDisplayNodes()
        was_modifying = output.StartModify()  # one round of events, once the points and their record are in place
        try:
            node = landmarks_to_node(detection.landmarks(), self.scene, node=output, locked=False)
            show_detection(node, detection, self.volume_node)
        finally:
            output.EndModify(was_modifying)
        outside = int(np.sum(~detection.in_view))
        flagged = int(np.sum(detection.flagged))
        self.status = f"Done: {flagged} of {len(detection.labels)} landmarks flagged for checking"
        if outside:
            self.status += f" ({outside} not in view)"
        if self.warnings:
            self.status += "; warning: check every point"
        self.fraction = 1.0
        return node

    def _cleanup(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


class FineTuneRun(BackgroundRun):
    """Fine-tune a model on a training folder in a background process, which registers the result as a new
    version of the model; ``finish()`` returns its registry entry.

    Args:
        folder: the training folder (corrected cases).
        base_model: the registered model name (or file) to start from.
        stage1_iterations, stage2_iterations: how long to train each stage.
        output: the new model file (default: ``<folder>/<base>-fine-tuned.pt``, or ``-fine-tuned-2.pt`` and so on
            when an earlier fine-tuning has that name, so none is overwritten).
        device, python, environment: as for :class:`DetectionRun`.
    """

    def __init__(self, folder, base_model: str, *, stage1_iterations: int, stage2_iterations: int, output=None,
                 device="auto", python=None, environment=None):  # fmt: skip
        self.folder = Path(folder)
        stem = Path(base_model).name.removesuffix(".pt")
        self.output = Path(output) if output else unused_model_path(self.folder, f"{stem}-fine-tuned")
        # Every corrected case is trained on: holding one out for validation would leave a few cases' work unused.
        super().__init__(
            ["train", self.folder, "-o", self.output, "--init-from", base_model, "--stage1-iterations",
             stage1_iterations, "--stage2-iterations", stage2_iterations, "--device", device,
             "--validation-fraction", 0, "--register"],
            python=python,
            environment=environment,
        )  # fmt: skip

    def _take_progress(self, message: dict) -> None:
        task = message.get("task", "")
        stage = 0.5 if task.startswith("stage 2") else 0.0
        self.fraction = stage + 0.5 * float(message["fraction"]) if task.startswith("stage") else 0.0
        left = message.get("seconds_left")
        self.status = f"Fine-tuning: {task}" + (f", about {int(left)} s left" if left else "")

    def finish(self) -> ModelEntry:
        """The registry entry of the fine-tuned model (or raise with the reason)."""
        entry = ModelEntry(**self.result("Fine-tuning failed")["registered"])
        self.status = f"Done: registered {entry.name}"
        self.fraction = 1.0
        return entry

    def _cleanup(self) -> None:
        """A cancelled fine-tuning leaves no checkpoint behind (the next one would refuse to start beside it)."""
        checkpoint_path(self.output).unlink(missing_ok=True)
