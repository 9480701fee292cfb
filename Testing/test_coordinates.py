"""Voxel index <-> physical point conversions through the full index-to-physical matrix."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from cascade_landmarks import Geometry, lps_to_ras, ras_to_lps

from conftest import rotation


def test_index_to_lps_agrees_with_simpleitk_on_an_oblique_anisotropic_grid():
    direction = rotation([0.3, -1.0, 2.0], 71.0)
    geometry = Geometry(size=(9, 8, 7), spacing=(0.4, 1.3, 3.0), origin=(10.5, -20.25, 33.0), direction=direction)
    image = sitk.Image(9, 8, 7, sitk.sitkInt16)
    image.SetSpacing((0.4, 1.3, 3.0))
    image.SetOrigin((10.5, -20.25, 33.0))
    image.SetDirection(direction.ravel().tolist())
    indices = np.array([[0, 0, 0], [8, 7, 6], [2.5, 3.25, 1.75]])
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in indices])
    np.testing.assert_allclose(geometry.index_to_lps(indices), expected, atol=1e-9)
    np.testing.assert_allclose(geometry.lps_to_index(expected), indices, atol=1e-9)


def test_ras_is_lps_with_the_first_two_axes_negated():
    np.testing.assert_array_equal(lps_to_ras([[1.0, 2.0, 3.0]]), [[-1.0, -2.0, 3.0]])
    np.testing.assert_array_equal(ras_to_lps(lps_to_ras([[1.0, -2.0, 3.0]])), [[1.0, -2.0, 3.0]])


def test_index_to_ras_matrix_round_trips_through_slicers_form():
    geometry = Geometry(size=(5, 6, 7), spacing=(0.5, 0.6, 2.0), origin=(1, 2, 3), direction=rotation([1, 1, 0], 20))
    again = Geometry.from_index_to_ras_matrix(geometry.index_to_ras_matrix, size=geometry.size)
    assert again.same_as(geometry, tolerance_mm=1e-12)
    point = geometry.index_to_ras([1.0, 2.0, 3.0])
    np.testing.assert_allclose(geometry.index_to_ras_matrix @ [1.0, 2.0, 3.0, 1.0], [*point, 1.0])


def test_contains_counts_voxel_edges_as_inside():
    geometry = Geometry(size=(4, 4, 4), spacing=(1, 1, 1), origin=(0, 0, 0), direction=np.eye(3))
    assert geometry.contains_lps([[-0.5, 0, 0], [3.5, 3.5, 3.5]]).all()
    assert not geometry.contains_lps([[-0.51, 0, 0]]).any()


@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    [
        ("spacing", (1.0, 0.0, 1.0), "zero, negative"),
        ("spacing", (1.0, 1.0, 1000.0), "metres"),
        ("direction", np.diag([1.0, 1.0, 0.0]), "not a rotation"),
        ("origin", (np.nan, 0.0, 0.0), "not finite"),
    ],
)
def test_unusable_geometry_is_refused_with_the_reason(field, value, phrase):
    settings = {"size": (2, 2, 2), "spacing": (1, 1, 1), "origin": (0, 0, 0), "direction": np.eye(3)}
    settings[field] = value
    with pytest.raises(ValueError, match=phrase):
        Geometry(**settings)


def test_the_one_line_description_says_where_the_axes_point():
    size, spacing, origin = (4, 5, 6), (1.0, 1.0, 2.0), np.zeros(3)
    assert Geometry(size, spacing, origin, np.eye(3)).describe().endswith("LPS mm, axes LPS")
    nifti = Geometry(size, spacing, origin, np.diag([-1.0, -1.0, 1.0]))  # what a NIfTI's RAS grid reads as
    assert nifti.axes_code() == "RAS"
    sagittal = Geometry(size, spacing, origin, np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]]))  # i runs P, j I, k L
    assert sagittal.axes_code() == "PIL"
    assert Geometry(size, spacing, origin, rotation([0, 0, 1], 20.0)).axes_code() == "LPS oblique"
    np.testing.assert_allclose(Geometry(size, spacing, origin, np.eye(3)).centre_lps, [1.5, 2.0, 5.0])
