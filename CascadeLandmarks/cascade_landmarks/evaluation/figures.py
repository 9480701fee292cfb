"""Pictures of the results: quality-control slices through each landmark, and the error plot.

- Quality control (drawn with numpy, written by SimpleITK): for each case one PNG, a row per landmark with its
  axial, coronal and sagittal slice through the reference point; the reference is drawn as a green cross, stage 1
  as a yellow one, the cascade as a red one (a cross is drawn where the point lies within a slice thickness of the
  plane, a small square where it lies further off). Views follow the radiological convention: patient right on
  image left.
- Error plot (VTK, rendered offscreen): mean error per landmark, stage 1 beside the cascade.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..inference.detection import Detection
from ..inference.preprocessing import Sampler
from ..io.atomic_files import write_atomically
from ..io.coordinates import Geometry
from ..io.landmarks import Landmarks
from ..io.volumes import Volume
from ..model.config import IntensityWindow

REFERENCE_COLOUR = (60, 220, 60)
STAGE1_COLOUR = (240, 210, 40)
CASCADE_COLOUR = (240, 50, 50)
RATERS_COLOUR = (90, 120, 220)
QC_PIXELS = 96
QC_FIELD_MM = 60.0

# Per view: the LPS directions of image columns, image rows and the normal. Rows run downwards on screen.
_VIEWS = {
    "axial": ([1, 0, 0], [0, 1, 0], [0, 0, 1]),  # columns to patient left, rows anterior -> posterior
    "coronal": ([1, 0, 0], [0, 0, -1], [0, 1, 0]),  # columns to patient left, rows superior -> inferior
    "sagittal": ([0, -1, 0], [0, 0, -1], [1, 0, 0]),  # columns posterior -> anterior, rows superior -> inferior
}


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an RGB image (height, width, 3) of uint8 as PNG, atomically."""
    picture = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.uint8), isVector=True)
    return write_atomically(path, lambda temporary: sitk.WriteImage(picture, str(temporary)))


def quality_control_image(
    volume: Volume,
    reference: Landmarks,
    detection: Detection | None = None,
    *,
    window: IntensityWindow | None = None,
    pixels: int = QC_PIXELS,
    field_mm: float = QC_FIELD_MM,
) -> np.ndarray:
    """RGB image (uint8): one row per landmark, three views centred on the reference point, with the detected
    points marked when a detection is given."""
    window = window or _display_window(volume)
    sampler = Sampler(volume, window)
    spacing = field_mm / pixels
    rows = []
    for index in range(len(reference)):
        centre = reference.positions_lps[index]
        tiles = []
        for columns, down, normal in _VIEWS.values():
            plane = _plane(
                centre, np.array(columns, float), np.array(down, float), np.array(normal, float), spacing, pixels
            )
            grey = (255 * sampler.sample(plane)[:, 0, :]).astype(np.uint8)  # (rows, columns)
            tile = np.repeat(grey[..., None], 3, axis=2)
            marks = [(centre, REFERENCE_COLOUR)]
            if detection is not None:
                marks[:0] = [
                    (detection.stage1_lps[index], STAGE1_COLOUR),
                    (detection.positions_lps[index], CASCADE_COLOUR),
                ]
            # The volume's own slice thickness along this view's normal (its voxel's extent in that direction).
            thickness = float(np.abs(volume.geometry.direction.T @ np.array(normal, float)) @ volume.geometry.spacing)
            for point, colour in marks:
                _mark(tile, plane, point, colour, spacing, thickness)
            tiles.append(tile)
            tiles.append(np.full((pixels, 2, 3), 255, np.uint8))
        rows.append(np.concatenate(tiles[:-1], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def _display_window(volume: Volume) -> IntensityWindow:
    """A soft-tissue to contrast window for CT (HU range), percentiles for anything else."""
    low, high = np.percentile(volume.array[:: max(1, volume.array.shape[0] // 32)], [1, 99])
    if low < -500 and high > 100:
        return IntensityWindow("fixed", -200.0, 600.0)
    return IntensityWindow("percentile", 1.0, 99.5)


def _plane(centre, columns, down, normal, spacing, pixels) -> Geometry:
    # A grid of (pixels x 1 x pixels) voxels whose index axes are (columns, normal, rows): array [rows, 0, columns].
    direction = np.stack([columns, normal, down], axis=1)
    half = (pixels - 1) / 2.0 * spacing
    origin = centre - half * columns - half * down
    return Geometry(size=(pixels, 1, pixels), spacing=(spacing, spacing, spacing), origin=origin, direction=direction)


def _mark(
    tile: np.ndarray, plane: Geometry, point_lps: np.ndarray, colour, spacing: float, thickness_mm: float
) -> None:
    """A cross at the point when it lies within ``thickness_mm`` of the plane, else a small square."""
    column, offset, row = plane.lps_to_index(point_lps)
    column, row = int(np.rint(column)), int(np.rint(row))
    near_plane = abs(offset) * spacing <= thickness_mm
    arm = 4
    for d in range(-arm, arm + 1):
        if near_plane:
            _put(tile, row, column + d, colour)
            _put(tile, row + d, column, colour)
        elif abs(d) <= 2:
            for e in (-2, 2):
                _put(tile, row + e, column + d, colour)
                _put(tile, row + d, column + e, colour)


def _put(tile: np.ndarray, row: int, column: int, colour) -> None:
    if 0 <= row < tile.shape[0] and 0 <= column < tile.shape[1]:
        tile[row, column] = colour


PLOT_NEEDS_VTK = 'The error plot needs VTK: `pip install "cascade-landmarks[report]"`, or run inside 3D Slicer.'


def can_plot() -> bool:
    """Whether :func:`write_error_plot` can run here (VTK is importable)."""
    try:
        import vtk  # noqa: F401
    except ImportError:
        return False
    return True


def write_error_plot(evaluation, path: str | os.PathLike, *, title: str = "Mean error per landmark (mm)") -> Path:
    """A bar chart of the mean error per landmark, stage 1 beside the cascade (and the human raters when the
    evaluation has them), as PNG (needs VTK)."""
    if not can_plot():
        raise ValueError(PLOT_NEEDS_VTK)
    import vtk

    # Offscreen rendering tries an X display before EGL; without a display that is expected, not worth a warning.
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    rows = evaluation.rows()
    table = vtk.vtkTable()
    bars = [("stage1", "stage 1", STAGE1_COLOUR), ("cascade", "cascade", CASCADE_COLOUR)]
    if "raters" in evaluation.columns:
        bars.append(("raters", "human raters", RATERS_COLOUR))
    for name in ["landmark", *(title for _, title, _ in bars)]:
        array = vtk.vtkFloatArray()
        array.SetName(name)
        table.AddColumn(array)
    table.SetNumberOfRows(len(rows))
    for number, row in enumerate(rows):
        table.SetValue(number, 0, number + 1)
        for column, (key, _, _) in enumerate(bars, start=1):
            table.SetValue(number, column, row[f"{key}_mean"])
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(max(480, 20 * len(bars) * len(rows) + 160), 620)
    view = vtk.vtkContextView()
    view.SetRenderWindow(window)
    view.GetRenderer().SetBackground(1.0, 1.0, 1.0)
    chart = vtk.vtkChartXY()
    view.GetScene().AddItem(chart)
    chart.SetTitle(title)
    chart.SetShowLegend(True)
    chart.SetBarWidthFraction(0.8)
    for column, (_, _, colour) in enumerate(bars, start=1):
        plot = chart.AddPlot(vtk.vtkChart.BAR)
        plot.SetInputData(table, 0, column)
        plot.SetColor(*colour, 255)
    bottom = chart.GetAxis(vtk.vtkAxis.BOTTOM)
    bottom.SetTitle("landmark")
    ticks, labels = vtk.vtkDoubleArray(), vtk.vtkStringArray()
    for number, row in enumerate(rows):
        ticks.InsertNextValue(number + 1)
        labels.InsertNextValue(str(row["landmark"])[:36])
    bottom.SetCustomTickPositions(ticks, labels)
    # Names upright would run into each other: written upwards, each keeps to its own bar group.
    bottom.GetLabelProperties().SetOrientation(90)
    bottom.GetLabelProperties().SetJustificationToRight()
    bottom.GetLabelProperties().SetVerticalJustificationToCentered()
    bottom.SetRange(0.4, len(rows) + 0.6)
    bottom.SetBehavior(vtk.vtkAxis.FIXED)
    left = chart.GetAxis(vtk.vtkAxis.LEFT)
    left.SetTitle("mean error (mm)")
    highest = max(row[f"{key}_mean"] for row in rows for key, _, _ in bars)
    left.SetRange(0.0, 1.2 * highest)  # headroom for the legend above the tallest bars
    left.SetBehavior(vtk.vtkAxis.FIXED)
    window.Render()
    capture = vtk.vtkWindowToImageFilter()
    capture.SetInput(window)
    capture.Update()
    image = capture.GetOutput()
    width, height, _ = image.GetDimensions()
    from vtk.util.numpy_support import vtk_to_numpy

    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
    window.Finalize()
    return write_png(path, pixels)
