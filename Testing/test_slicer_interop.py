"""The engine and Slicer agree: files written by one load in the other, and the bridge keeps every landmark on
its voxel. Runs against the real MRML core of the slicer-core wheel (storage nodes included)."""

from __future__ import annotations

import numpy as np
import pytest

from cascade_landmarks import (
    Geometry,
    Landmarks,
    Volume,
    read_landmarks,
    read_volume,
    write_landmarks,
    write_volume,
)
from cascade_landmarks.io.volumes import values_at
from cascade_landmarks.slicer.bridge import landmarks_from_node, landmarks_to_node, volume_from_node, volume_to_node

from conftest import MARKED_VOXELS, MARKER_VALUES

slicer = pytest.importorskip("slicer", reason="slicer-core is installed by `make test`")


def _add_storage_node(scene, storage_class):
    # The JSON markups storage node is not registered with a bare scene, so make it by class.
    return scene.AddNode(getattr(slicer, storage_class)())


def _slicer_read_points(scene, path, storage_class):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "read")
    storage = _add_storage_node(scene, storage_class)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, f"Slicer could not read {path}"
    return node


def _slicer_write_points(scene, landmarks, path, storage_class, system):
    node = landmarks_to_node(landmarks, scene, name="to-write")
    storage = _add_storage_node(scene, storage_class)
    storage.SetCoordinateSystem(getattr(storage, f"CoordinateSystem{system}"))
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1, f"Slicer could not write {path}"


def _node_points(node):
    labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
    descriptions = [node.GetNthControlPointDescription(i) for i in range(node.GetNumberOfControlPoints())]
    positions = np.array([node.GetNthControlPointPosition(i) for i in range(node.GetNumberOfControlPoints())])
    return labels, descriptions, positions


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_a_markups_file_written_by_the_engine_loads_in_slicer(tmp_path, mrml_scene, oblique_landmarks, system):
    path = write_landmarks(oblique_landmarks, tmp_path / "engine.mrk.json", coordinate_system=system)
    node = _slicer_read_points(mrml_scene, path, "vtkMRMLMarkupsJsonStorageNode")
    labels, descriptions, positions_ras = _node_points(node)
    assert labels == oblique_landmarks.labels
    assert descriptions == oblique_landmarks.descriptions
    np.testing.assert_allclose(positions_ras, oblique_landmarks.positions_ras, atol=1e-6)


@pytest.mark.parametrize(
    ("storage_class", "suffix"),
    [("vtkMRMLMarkupsJsonStorageNode", ".mrk.json"), ("vtkMRMLMarkupsFiducialStorageNode", ".fcsv")],
)
@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_a_file_written_by_slicer_loads_in_the_engine(
    tmp_path, mrml_scene, oblique_landmarks, storage_class, suffix, system
):
    path = tmp_path / f"slicer{suffix}"
    _slicer_write_points(mrml_scene, oblique_landmarks, path, storage_class, system)
    landmarks = read_landmarks(path)
    assert landmarks.labels == oblique_landmarks.labels
    assert landmarks.descriptions == oblique_landmarks.descriptions
    np.testing.assert_allclose(landmarks.positions_lps, oblique_landmarks.positions_lps, atol=1e-3)


def test_slicer_and_the_engine_read_the_real_afids_fcsv_alike(mrml_scene, shared_data):
    path = shared_data / "real/afids-colin27/tpl-MNIColin27_desc-groundtruth_afids.fcsv"
    node = _slicer_read_points(mrml_scene, path, "vtkMRMLMarkupsFiducialStorageNode")
    labels, descriptions, positions_ras = _node_points(node)
    landmarks = read_landmarks(path)
    assert landmarks.labels == labels
    assert landmarks.descriptions == descriptions
    np.testing.assert_allclose(landmarks.positions_ras, positions_ras, atol=1e-6)


def test_the_bridge_round_trips_a_volume_and_its_geometry(mrml_scene, oblique_volume):
    node = volume_to_node(oblique_volume, mrml_scene, name="oblique")
    again = volume_from_node(node)
    np.testing.assert_array_equal(again.array, oblique_volume.array)
    assert again.geometry.same_as(oblique_volume.geometry, tolerance_mm=1e-9)
    # The node's own IJK-to-RAS mapping (Slicer's, not ours) puts a marked voxel where the engine does.
    i, j, k = MARKED_VOXELS[2]
    ijk_to_ras = slicer.util.vtkMatrixFromArray(np.eye(4))
    node.GetIJKToRASMatrix(ijk_to_ras)
    ras = ijk_to_ras.MultiplyPoint([i, j, k, 1.0])[:3]
    np.testing.assert_allclose(ras, oblique_volume.geometry.index_to_ras([i, j, k]), atol=1e-9)


def test_the_bridge_round_trips_labels_descriptions_and_world_positions(mrml_scene, oblique_landmarks):
    node = landmarks_to_node(oblique_landmarks, mrml_scene, name="points")
    labels, descriptions, positions_ras = _node_points(node)
    assert labels == oblique_landmarks.labels
    assert descriptions == oblique_landmarks.descriptions
    np.testing.assert_allclose(positions_ras, oblique_landmarks.positions_ras, atol=1e-9)
    again = landmarks_from_node(node)
    np.testing.assert_allclose(again.positions_lps, oblique_landmarks.positions_lps, atol=1e-9)


def test_an_unplaced_point_in_an_fcsv_slicer_wrote_stays_unplaced(tmp_path, mrml_scene):
    # Slicer 5 keeps an unplaced point's x, y, z at 0 and says so in a column its header does not name.
    path = tmp_path / "slicer.fcsv"
    landmarks = Landmarks(["placed", "missing"], [[1.0, 2.0, 3.0], [np.nan] * 3])
    _slicer_write_points(mrml_scene, landmarks, path, "vtkMRMLMarkupsFiducialStorageNode", "LPS")
    read = read_landmarks(path)
    assert read.labels == ["placed", "missing"]
    assert read.defined.tolist() == [True, False]
    np.testing.assert_allclose(read.positions_lps[0], [1.0, 2.0, 3.0], atol=1e-6)


def test_missing_and_unplaced_points_survive_the_bridge_and_slicers_own_files(mrml_scene, tmp_path):
    landmarks = Landmarks(["placed", "unplaced", "out of view"], [[1.0, 2.0, 3.0], [np.nan] * 3, [np.nan] * 3],
                          missing=[False, False, True])  # fmt: skip
    node = landmarks_to_node(landmarks, mrml_scene)
    assert [node.GetNthControlPointPositionStatus(i) for i in range(3)] == [
        node.PositionDefined,
        node.PositionUndefined,
        node.PositionMissing,
    ]
    assert landmarks_from_node(node).statuses == ["defined", "undefined", "missing"]
    # Slicer's own storage node writes the list, and reads the engine's file, with the same statuses.
    storage = _add_storage_node(mrml_scene, "vtkMRMLMarkupsJsonStorageNode")
    storage.SetFileName(str(tmp_path / "slicer.mrk.json"))
    assert storage.WriteData(node) == 1
    assert read_landmarks(tmp_path / "slicer.mrk.json").statuses == ["defined", "undefined", "missing"]
    write_landmarks(landmarks, tmp_path / "engine.mrk.json")
    loaded = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage.SetFileName(str(tmp_path / "engine.mrk.json"))
    assert storage.ReadData(loaded) == 1
    assert [loaded.GetNthControlPointPositionStatus(i) for i in range(3)] == [2, 0, 3]


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
@pytest.mark.parametrize("handedness", ["right-handed", "left-handed"])
def test_every_landmark_stays_on_its_voxel_from_file_through_slicer_and_back(
    tmp_path, mrml_scene, oblique_volume, oblique_landmarks, suffix, handedness
):
    volume = oblique_volume
    if handedness == "left-handed":
        # Slicer reorders the voxels of a left-handed grid when it reads it; physical places must not move.
        geometry = volume.geometry
        direction = geometry.direction * [1.0, 1.0, -1.0]
        volume = Volume(volume.array, Geometry(geometry.size, geometry.spacing, geometry.origin, direction))
        oblique_landmarks = Landmarks(oblique_landmarks.labels, volume.geometry.index_to_lps(MARKED_VOXELS))
    volume_path = write_volume(volume, tmp_path / f"case{suffix}")
    points_path = write_landmarks(oblique_landmarks, tmp_path / "case.mrk.json")

    # Slicer's own readers...
    volume_node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "case")
    storage = _add_storage_node(mrml_scene, "vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(volume_path))
    assert storage.ReadData(volume_node) == 1
    points_node = _slicer_read_points(mrml_scene, points_path, "vtkMRMLMarkupsJsonStorageNode")

    # ...then through the bridge: each landmark still reads its own marker value.
    from_slicer = volume_from_node(volume_node)
    landmarks = landmarks_from_node(points_node)
    np.testing.assert_array_equal(values_at(from_slicer, landmarks.positions_lps), MARKER_VALUES)

    # And Slicer's writer gives a file the engine reads with the same voxel under each landmark.
    written = tmp_path / f"written-by-slicer{suffix}"
    storage.SetFileName(str(written))
    assert storage.WriteData(volume_node) == 1
    np.testing.assert_array_equal(values_at(read_volume(written), landmarks.positions_lps), MARKER_VALUES)


def test_a_linear_parent_transform_moves_the_volume_as_slicer_shows_it(mrml_scene, oblique_volume):
    node = volume_to_node(oblique_volume, mrml_scene)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = [10.0, -5.0, 2.5]  # RAS mm
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = volume_from_node(node)
    np.testing.assert_allclose(moved.geometry.origin - oblique_volume.geometry.origin, [-10.0, 5.0, 2.5])


def test_the_bridge_refuses_nodes_of_the_wrong_kind(mrml_scene):
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode")
    with pytest.raises(ValueError, match="scalar volume"):
        volume_from_node(table)
    with pytest.raises(ValueError, match="point list"):
        landmarks_from_node(table)
