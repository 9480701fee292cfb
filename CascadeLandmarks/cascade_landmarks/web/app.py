"""The web app, ``cascade-landmarks serve DATA``: open a case, detect, inspect, correct, save and fine-tune in a
browser, on Slicer's own MRML core, slice views and markups (trame-slicer).

It runs the Slicer module's workflow, not a copy of it: detection and fine-tuning are the module's background
runs (:mod:`cascade_landmarks.slicer.runs`: a ``cascade-landmarks`` command in another process, followed for
progress and cancellable), and the table, the guard on the user's work and saving a corrected case are
:mod:`cascade_landmarks.slicer.workflow`. Volumes are read by the engine (:func:`~cascade_landmarks.io.volumes.
read_volume`, which refuses files cut short) and put in the scene through :mod:`cascade_landmarks.slicer.bridge`.

One server process holds one scene, and trame shares its state with every tab that connects, so the first tab to
open the page works in it and any other tab is told the server is busy (it may take over once the first tab is
closed and it is reloaded). Work for several people at once: one server each, on ports of their own.

MRML and VTK are touched only on the server's event loop; reading a volume runs in a worker thread, detection and
fine-tuning in other processes, so the page stays responsive.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import sys
from pathlib import Path

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # render offscreen on a headless server

from trame.app import get_server
from trame_slicer.core import LayoutManager, SlicerApp, VolumeWindowLevel
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from wslink.websocket import LinkProtocol

from ..io.landmarks import landmarks_csv_text, markups_json_text
from ..io.volumes import case_name, read_volume
from ..model.registry import available_models
from ..slicer.bridge import centre_slice_views, landmarks_from_node, volume_to_node
from ..slicer.runs import (
    FINE_TUNING_STAGE1_ITERATIONS,
    FINE_TUNING_STAGE2_ITERATIONS,
    DetectionRun,
    FineTuneRun,
)
from ..slicer.workflow import CaseExistsError, detection_rows, point_index, save_corrected_case
from .data_folder import DataFolder
from .page import build_page, slice_view_gutter

LOG = logging.getLogger(__name__)
# Window and level (HU) of the slice views. CTA is this project's choice for contrast-filled vessels; the others
# are Slicer's CT presets.
WINDOWS = {"CTA": (700.0, 200.0), "Abdomen": (350.0, 40.0), "Bone": (1000.0, 400.0), "Lung": (1400.0, -500.0)}
VOLUME_RENDERING = "CT-Coronary-Arteries-3"  # a Slicer volume-rendering preset for contrast CT
POLL_S = 0.2
# Slicer's Four-Up layout: red (axial) above yellow (sagittal) on the left, the 3-D view above green (coronal).
FOUR_UP = Layout(
    LayoutDirection.Horizontal,
    [
        Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.sagittal_view()]),
        Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.threed_view(), ViewLayoutDefinition.coronal_view()]),
    ],
)


class WebApp:
    """The page and what its buttons do.

    Args:
        data: the data folder the page opens cases from and uploads into.
        training_folder: where corrected cases are saved, and fine-tuning reads them.
        model: the registered model chosen when the page opens (default: the first).
        device: where detection and fine-tuning run ("auto", "cpu", "cuda").
    """

    def __init__(self, data: DataFolder, training_folder: Path, *, model: str | None = None, device: str = "auto"):
        self.data, self.training_folder, self.device = data, Path(training_folder), device
        self.server = get_server("cascade-landmarks", client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer = SlicerApp()
        self.scene = self.slicer.scene
        register_rca_factories(self.slicer.view_manager, self.server, slice_view_ui_f=slice_view_gutter)
        self.layout = LayoutManager(self.scene, self.slicer.view_manager, self.server)
        self.layout.register_layout("Four-Up", FOUR_UP)
        self.layout.set_layout("Four-Up")
        self.volume_node = self.points = self.run = None
        self.unsaved = False  # the points were moved since the case was last saved
        self.discard_asked_for: str | None = None
        self.owner_claimed, self.connections = False, set()
        self.server.add_protocol_to_configure(lambda protocol: protocol.registerLinkProtocol(_Connections(self)))
        self.state.update(
            {
                "cases": self.data.cases(),
                "case_path": "",
                "opened": "",
                "models": self._model_names(),
                "model": None,
                "window": "CTA",
                "windows": list(WINDOWS),
                "job": "",
                "progress": 0,
                "status": "Open a case.",
                "rows": [],
                "message": "",
                "message_kind": "info",
                "case_name": "",
                "offer_overwrite": False,
                "mm_per_pixel": "",
                "role": "waiting",
            }
        )
        if model is not None and model not in self.state.models:
            raise ValueError(f"No model named {model!r}; the registered models are: {', '.join(self.state.models)}.")
        self.state.model = model or (self.state.models[0] if self.state.models else None)
        self.state.client_only("role")  # each tab's own: the owner's page, or the busy notice
        self.state.change("window")(self._on_window)
        red = self.slicer.view_manager.get_view("Red").get_view_node()
        red.AddObserver("ModifiedEvent", self._on_red_view_changed)  # zoomed, resized: the scale changes
        build_page(self)

    # --- opening a case ---------------------------------------------------------------------------------------

    async def open_case(self, relative: str) -> None:
        """Open the case ``relative`` (a path inside the data folder) in place of the current one."""
        path = self.data.resolve(relative)
        self._check_unsaved(f"open {relative}")
        with self.state:
            self.state.status = f"Reading {relative}..."
        volume = await asyncio.to_thread(read_volume, path)
        with self.state:  # after an await: changes reach the page when this block ends
            for node in (self.volume_node, self.points):
                if node is not None:
                    self.scene.RemoveNode(node)
            self.points, self.unsaved, self.discard_asked_for = None, False, None
            self.volume_node = volume_to_node(volume, self.scene, name=case_name(path))
            self.slicer.display_manager.show_volume(self.volume_node, vr_preset=VOLUME_RENDERING, do_reset_views=True)
            self._on_window(self.state.window)
            size = " x ".join(map(str, volume.geometry.size))
            self.state.update(
                {
                    "opened": relative,
                    "case_path": relative,
                    "case_name": case_name(path),
                    "rows": [],
                    "offer_overwrite": False,
                    "status": f"{relative}: {size} voxels. Pick a model, then Detect.",
                }
            )

    async def upload(self, files: list[dict]) -> None:
        """Save uploaded volume files into the data folder's uploads and open the first."""
        saved = [self.data.save_upload(f["name"], bytes(f["content"] or b"")) for f in files]
        with self.state:
            self.state.cases = self.data.cases()
        if saved:
            await self.open_case(saved[0])

    def _on_window(self, window, **_) -> None:
        if self.volume_node is not None and window in WINDOWS:
            VolumeWindowLevel.set_volume_node_window_level(self.volume_node, *WINDOWS[window])

    def _on_red_view_changed(self, _caller, _event) -> None:
        with self.state:
            self._show_scale()

    def _show_scale(self) -> None:
        """How many mm one screen pixel of the red view spans, for the footer."""
        red = self.slicer.view_manager.get_view("Red").get_view_node()
        width_px = red.GetDimensions()[0]
        self.state.mm_per_pixel = f"{red.GetFieldOfView()[0] / width_px:.3f}" if width_px else ""

    # --- detection and the table ------------------------------------------------------------------------------

    def detect(self) -> None:
        """Detect with the chosen model in the background; the points and the table appear when it ends, in
        place of the case's earlier points (which are kept if it fails or is cancelled)."""
        if self.volume_node is None or not self.state.model:
            raise ValueError("Open a case and pick a model first.")
        self._check_unsaved("click Detect")
        run = DetectionRun(self.scene, self.volume_node, self.state.model, device=self.device)
        self._start(run, "detect", f"Detecting with {self.state.model}")

    def _detected(self, node) -> None:
        if self.points is not None:
            self.scene.RemoveNode(self.points)
        node.AddObserver(node.PointModifiedEvent, self._on_point_moved)
        node.AddObserver(node.PointEndInteractionEvent, self._on_point_moved)
        node.AddObserver(node.PointPositionDefinedEvent, self._on_point_placed)
        self.points, self.unsaved, self.discard_asked_for = node, False, None
        self._update_rows()

    def _check_unsaved(self, doing: str) -> None:
        """Refuse, once, to ``doing`` what would discard corrections not saved: asked again, it goes ahead.

        Raises:
            ValueError: the points were moved since the case was last saved, and this was not asked before.
        """
        if self.unsaved and self.discard_asked_for != doing:
            self.discard_asked_for = doing
            raise ValueError(
                f"The points of {self.state.opened} hold corrections not saved: save the case first, or {doing} "
                "again to discard them."
            )

    def _on_point_moved(self, _caller, _event) -> None:
        with self.state:
            self.unsaved = True
            self._update_rows()

    def _on_point_placed(self, _caller, _event) -> None:
        with self.state:
            self.unsaved, self.state.status = True, "Placed: drag the point to adjust it, then save the case."
            self._update_rows()

    def _update_rows(self) -> None:
        rows = []
        for row in detection_rows(self.points):
            placed = not math.isnan(row.position_ras[0])
            rows.append(
                {
                    "label": row.label,
                    "description": row.description,
                    "confidence": f"{row.confidence:.2f}",
                    "moved": "" if math.isnan(row.moved_mm) else f"{row.moved_mm:.2f}",
                    "flagged": row.flagged,
                    "in_view": row.in_view,
                    "check": _check(row, placed=placed),
                    "ras": ", ".join(f"{v:.1f}" for v in row.position_ras) if placed else "",
                }
            )
        self.state.rows = rows

    def centre(self, label: str) -> None:
        """Centre the slice views on the point of ``label``."""
        index = point_index(self.points, label) if self.points is not None else None
        if index is None:
            raise ValueError(f"{label} has no point (not in view, or deleted).")
        centre_slice_views(self.scene, self.points.GetNthControlPointPositionWorld(index))

    def place(self, label: str) -> None:
        """Let the next click in a slice view place the point of ``label`` (one without a point: reported not in
        view, or deleted), under its own label."""
        labels = [self.points.GetNthControlPointLabel(i) for i in range(self.points.GetNumberOfControlPoints())]
        if label not in labels:
            raise ValueError(f"{label} is not a landmark of this detection.")
        index = labels.index(label)
        if self.points.GetNthControlPointPositionStatus(index) == self.points.PositionDefined:
            raise ValueError(f"{label} has a point already: drag it where it belongs.")
        self.points.UnsetNthControlPointPosition(index)  # a "missing" point is skipped by placement; an unset one not
        self.points.SetControlPointPlacementStartIndex(index)
        self.slicer.markups_logic.place_node(self.points, persistent=False)
        self.state.status = f"Click in a slice view to place {label}."

    def not_in_view(self, label: str) -> None:
        """Take the point of ``label`` away and say the landmark is not in this image (Slicer's "missing"): a
        saved case then teaches that, and the landmark can still be placed again."""
        index = point_index(self.points, label) if self.points is not None else None
        if index is None:
            raise ValueError(f"{label} has no point to take away.")
        self.points.SetNthControlPointPositionMissing(index)
        self.unsaved, self.state.status = True, f"{label}: marked not in view."
        self._update_rows()

    # --- saving, fine-tuning, downloads -------------------------------------------------------------------------

    def save_case(self, overwrite: bool = False) -> None:
        """Save the volume and the corrected points into the training folder (never over a case unless asked)."""
        self.training_folder.mkdir(parents=True, exist_ok=True)
        try:
            volume, points = save_corrected_case(
                self.volume_node,
                self.points,
                self.training_folder,
                case_name=self.state.case_name or None,
                overwrite=overwrite,
            )
        except CaseExistsError as error:
            self.state.offer_overwrite = True
            raise ValueError(f"{error} Click Replace to overwrite it.") from None
        self.unsaved, self.state.offer_overwrite = False, False
        self._say(f"Saved {volume.name} and {points.name} into {self.training_folder}.")

    def fine_tune(self) -> None:
        """Fine-tune the chosen model on the training folder in the background; the new version joins the list."""
        if not self.state.model:
            raise ValueError("Pick the model to fine-tune.")
        run = FineTuneRun(
            self.training_folder,
            self.state.model,
            stage1_iterations=FINE_TUNING_STAGE1_ITERATIONS,
            stage2_iterations=FINE_TUNING_STAGE2_ITERATIONS,
            device=self.device,
        )
        self._start(run, "fine-tune", f"Fine-tuning {self.state.model} on {self.training_folder}")

    def _fine_tuned(self, entry) -> None:
        self.state.models = self._model_names()
        self.state.model = entry.name
        self._say(f"Fine-tuned: {entry.name} is registered and chosen.")

    def points_file(self, kind: str) -> str:
        """The current points as the text of a ``.mrk.json`` file (``kind`` "mrk", LPS) or a long-format CSV
        ("csv", LPS, the case named as it would be saved), for download; on failure, the page's message and ""."""
        try:
            if self.points is None:
                raise ValueError("There are no points yet: detect first.")
            points = landmarks_from_node(self.points)
            if kind == "mrk":
                return markups_json_text(points)
            return landmarks_csv_text({self.state.case_name or "case": points})
        except Exception as error:
            self._say_error(error)
            return ""

    @staticmethod
    def _model_names() -> list[str]:
        return [entry.name for entry in available_models()]

    # --- background runs --------------------------------------------------------------------------------------

    def _start(self, run, job: str, status: str) -> None:
        if self.run is not None:
            raise ValueError("A job is running; wait for it, or cancel it.")
        self.run = run.start()
        self.state.update({"job": job, "progress": 0, "status": status, "message": ""})
        asyncio.get_event_loop().create_task(self._follow(run, self._detected if job == "detect" else self._fine_tuned))

    async def _follow(self, run, finished) -> None:
        """Poll ``run`` until it stops, showing its progress; then hand its result to ``finished``."""
        try:
            while run.running:
                fraction, status = run.poll()
                with self.state:
                    self.state.progress, self.state.status = round(100 * fraction), status
                await asyncio.sleep(POLL_S)
            with self.state:
                if run.cancelled:
                    self.state.status = "Cancelled."
                    return
                finished(run.finish())
                self.state.progress, self.state.status = 100, run.status
        except Exception as error:  # the run's failure is the page's message, never a dead page
            with self.state:
                self._say_error(error)
        finally:
            with self.state:
                self.run, self.state.job = None, ""

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()

    # --- tabs -------------------------------------------------------------------------------------------------

    def claim(self) -> bool:
        """Whether the asking tab may work here: yes for the first tab to ask since every tab was closed."""
        if self.owner_claimed:
            return False
        self.owner_claimed = True
        return True

    def _say(self, text: str) -> None:
        self.state.message, self.state.message_kind = text, "info"

    def _say_error(self, error: Exception) -> None:
        if not isinstance(error, ValueError):
            LOG.exception("Unexpected error in the web app")
        text = str(error) if isinstance(error, ValueError) else f"Unexpected error: {error!r}"
        self.state.message, self.state.message_kind, self.state.status = text, "error", "Failed."

    # --- the page ---------------------------------------------------------------------------------------------

    def action(self, method):
        """``method`` as an action of the page: its error becomes the page's message (never a dead page), a
        coroutine runs on the server's event loop, and nothing goes back to the browser."""

        async def guarded(result):
            try:
                await result
            except Exception as error:
                with self.state:
                    self._say_error(error)

        @functools.wraps(method)
        def action(*args) -> None:
            self.state.message = ""
            try:
                result = method(*args)
            except Exception as error:
                self._say_error(error)
                return
            if asyncio.iscoroutine(result):
                asyncio.get_event_loop().create_task(guarded(result))

        return action

    def serve(self, *, host: str, port: int) -> None:
        """Serve the page until interrupted (a port of 0: any free one, printed when ready)."""
        self.ctrl.on_server_ready.add(
            lambda **_: print(f"Serving {self.data.root} at http://{host}:{self.server.port}/", flush=True)
        )
        argv, sys.argv = sys.argv, sys.argv[:1]  # trame reads options from the command line; ours were read already
        try:
            self.server.start(host=host, port=port, open_browser=False, timeout=0, show_connection_info=False)
        finally:
            sys.argv = argv


def _check(row, *, placed: bool) -> str:
    """The table's last column: what the user should know of a landmark."""
    if not row.in_view:
        return "placed by hand" if placed else "not in view"
    if not placed:
        return "not in view (yours)"
    return "check" if row.flagged else ""


class _Connections(LinkProtocol):
    """Follows the page's connections: once none is left, the next tab to open the page works in it."""

    def __init__(self, app: WebApp):
        super().__init__()
        self.app = app

    def onConnect(self, request, client_id):  # noqa: N802 (wslink's name)
        self.app.connections.add(client_id)

    def onClose(self, client_id):  # noqa: N802
        self.app.connections.discard(client_id)
        if not self.app.connections:
            self.app.owner_claimed = False
