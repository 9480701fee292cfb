"""MRML nodes <-> engine objects: the one module of the engine that imports ``slicer``.

Slicer's scene is RAS; the engine works in LPS. Every conversion here goes through the volume node's
IJKToRAS matrix (and the node's parent transform, when it has a linear one), never origin or spacing alone.
``slicer`` and ``vtk`` are imported inside the functions, so importing the engine never needs Slicer. The
functions work in the Slicer application and with the MRML core of the ``slicer-core`` wheel alike: they take
the scene as an argument instead of using the application's ``slicer.mrmlScene``.
"""

from __future__ import annotations

import numpy as np

from ..io.coordinates import Geometry
from ..io.landmarks import DEFINED, MISSING, Landmarks
from ..io.volumes import Volume, check_voxel_values


def new_scene():
    """An empty MRML scene (for work outside the Slicer application, which has its own)."""
    import slicer

    return slicer.vtkMRMLScene()


def volume_from_node(volume_node) -> Volume:
    """A copy of a scalar volume node's voxels with its geometry in LPS mm (world frame).

    A linear parent transform is applied to the geometry, as Slicer shows the volume; a non-linear one is
    refused, because it cannot be expressed as a grid geometry.
    """
    import slicer
    import vtk

    if volume_node is None:
        raise ValueError("Pick an input volume first (load a CT angiogram, then choose it as input).")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(
            f"{volume_node.GetName()} is not a greyscale volume; pick a scalar volume such as the CT angiogram itself."
        )
    if volume_node.GetImageData() is None:
        raise ValueError(f"Volume {volume_node.GetName()} has no voxels loaded.")
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = slicer.util.arrayFromVTKMatrix(ijk_to_ras)
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(
                f"Volume {volume_node.GetName()} is under a non-linear transform; harden it "
                "(Data module, right-click, Harden transform) before detection."
            )
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        matrix = slicer.util.arrayFromVTKMatrix(to_world) @ matrix
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    check_voxel_values(array, source=volume_node.GetName())
    geometry = Geometry.from_index_to_ras_matrix(matrix, size=array.shape[::-1])
    return Volume(array=array, geometry=geometry)


def volume_to_node(volume: Volume, scene, *, name: str = "Volume", node=None):
    """Put ``volume`` in ``scene`` as a scalar volume node (new, or ``node`` if given); returns the node."""
    import slicer

    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.geometry.index_to_ras_matrix))
    slicer.util.updateVolumeFromArray(node, volume.array)
    node.CreateDefaultDisplayNodes()
    return node


def landmarks_from_node(point_list_node) -> Landmarks:
    """The control points of a point-list node, in world coordinates, as landmarks in LPS mm.

    Points without a position come back as NaN rows: missing (Slicer's "missing") or unplaced ("undefined",
    "preview").
    """
    if point_list_node is None or not point_list_node.IsA("vtkMRMLMarkupsNode"):
        raise ValueError("Pick a point list (markups); this node is not one.")
    count = point_list_node.GetNumberOfControlPoints()
    labels, descriptions, positions_ras, missing = [], [], np.full((count, 3), np.nan), []
    for index in range(count):
        labels.append(point_list_node.GetNthControlPointLabel(index))
        descriptions.append(point_list_node.GetNthControlPointDescription(index))
        status = point_list_node.GetNthControlPointPositionStatus(index)
        if status == point_list_node.PositionDefined:
            point_list_node.GetNthControlPointPositionWorld(index, positions_ras[index])
        missing.append(status == point_list_node.PositionMissing)
    return Landmarks.from_ras(labels, positions_ras, descriptions, missing)


def landmarks_to_node(landmarks: Landmarks, scene, *, name: str = "Landmarks", node=None, locked: bool = False):
    """Show ``landmarks`` as a point-list node: a new ``vtkMRMLMarkupsFiducialNode`` named ``name``, or the
    given ``node``, whose points are replaced. Positions are set in world coordinates; returns the node."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(name))
        node.CreateDefaultDisplayNodes()
    elif not node.IsA("vtkMRMLMarkupsFiducialNode"):
        raise ValueError(f"Node {node.GetName()} is not a point list; pick a point list as output.")
    was_modifying = node.StartModify()
    try:
        node.RemoveAllControlPoints()
        for label, description, position, status in zip(
            landmarks.labels, landmarks.descriptions, landmarks.positions_ras, landmarks.statuses, strict=True
        ):
            index = node.AddControlPoint(0.0, 0.0, 0.0, label)
            node.SetNthControlPointDescription(index, description)
            if status == DEFINED:
                node.SetNthControlPointPositionWorld(index, *position)
            elif status == MISSING:
                node.SetNthControlPointPositionMissing(index)
            else:
                node.UnsetNthControlPointPosition(index)
            node.SetNthControlPointLocked(index, locked)
    finally:
        node.EndModify(was_modifying)
    return node


def centre_slice_views(scene, position_ras) -> None:
    """Move every slice view of ``scene`` through the RAS point ``position_ras`` and centre it there."""
    import slicer

    r, a, s = (float(v) for v in position_ras)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
