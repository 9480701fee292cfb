"""Volumes in and out: every format keeps the geometry, resampling and cropping keep points in place, and
bad input gets an error naming the file and the problem."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cascade_landmarks import Volume, crop_or_pad, read_volume, resample, write_volume
from cascade_landmarks.io.volumes import read_geometry, values_at

from conftest import MARKED_VOXELS, MARKER_VALUES


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_each_file_format_keeps_voxels_and_geometry(tmp_path, oblique_volume, suffix):
    path = write_volume(oblique_volume, tmp_path / f"case{suffix}")
    again = read_volume(path)
    np.testing.assert_array_equal(again.array, oblique_volume.array)
    assert again.array.dtype == np.int16
    # NIfTI stores its header in single precision; a micrometre is the bar for every format.
    assert again.geometry.same_as(oblique_volume.geometry, tolerance_mm=1e-3)
    marked = oblique_volume.geometry.index_to_lps(MARKED_VOXELS)
    np.testing.assert_array_equal(values_at(again, marked), MARKER_VALUES)


def test_the_voxels_of_a_read_volume_outlive_the_volume_object(tmp_path, oblique_volume):
    # A script keeps only the array, or puts it under another geometry: the voxels must stay the file's, not
    # memory freed with the image SimpleITK read (it did, silently, before the array held the image).
    path = write_volume(oblique_volume, tmp_path / "case.nrrd")
    array = read_volume(path).array
    gc.collect()
    filler = [np.full(oblique_volume.array.shape, 7777, np.int16) for _ in range(20)]  # reuses freed memory
    np.testing.assert_array_equal(array, oblique_volume.array)
    assert not array.flags.writeable, "the voxels are shared with the image read, so read-only"
    del filler  # held until the voxels were compared


def test_a_dicom_series_whose_slices_are_not_one_regular_stack_is_refused(tmp_path, oblique_volume):
    # ITK stacks such slices with one spacing and no shear, millimetres off; the engine refuses them instead.
    _write_dicom_series(oblique_volume, tmp_path / "gap")
    (tmp_path / "gap" / "slice005.dcm").unlink()
    with pytest.raises(ValueError, match=r"slice spacing varies from 2\.5 to 5 mm \(a missing slice\?\)"):
        read_volume(tmp_path / "gap")
    _write_dicom_series(oblique_volume, tmp_path / "tilt", shift_per_slice_mm=(0.0, 0.9, 0.0))
    with pytest.raises(ValueError, match=r"shift sideways .* \(a gantry tilt\?\)"):
        read_volume(tmp_path / "tilt")


def test_a_dicom_series_folder_is_read_with_its_oblique_geometry(tmp_path, oblique_volume):
    _write_dicom_series(oblique_volume, tmp_path / "dicom")
    again = read_volume(tmp_path / "dicom")
    np.testing.assert_array_equal(again.array, oblique_volume.array)
    assert again.geometry.same_as(oblique_volume.geometry, tolerance_mm=1e-3)


def test_writing_is_atomic_and_leaves_no_temporary_files(tmp_path, oblique_volume):
    target = tmp_path / "case.nrrd"
    target.write_text("the user's old file")
    with pytest.raises(ValueError, match="extensions"):
        write_volume(oblique_volume, tmp_path / "case.txt")
    # A detached header names its data file, which the rename into place would leave under a temporary name.
    for detached in ("case.nhdr", "case.mhd"):
        with pytest.raises(ValueError, match=r"use one of the extensions \.nrrd, \.nii, \.nii\.gz, \.mha, lower"):
            write_volume(oblique_volume, tmp_path / detached)
    # SimpleITK picks its writer by the exact extension: upper case fails, or writes a detached .mhd for .MHA.
    for shouting in ("CASE.NII.GZ", "case.MHA"):
        with pytest.raises(ValueError, match="lower case"):
            write_volume(oblique_volume, tmp_path / shouting)
    write_volume(oblique_volume, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nrrd"]
    assert read_volume(target).geometry.same_as(oblique_volume.geometry)


def test_resampling_an_integer_volume_rounds_rather_than_truncates(oblique_volume):
    shape = oblique_volume.geometry.shape
    stripes = Volume((np.indices(shape).sum(axis=0) % 2).astype(np.int16), oblique_volume.geometry)
    finer = resample(stripes, 0.5 * oblique_volume.geometry.spacing)
    assert finer.array.dtype == np.int16
    assert abs(finer.array.mean() - 0.5) < 0.15  # truncating every in-between value to 0 gave about 0.06


def test_resampling_keeps_physical_points_in_place(oblique_volume):
    coarse = resample(oblique_volume, 2.0, interpolation="nearest")
    np.testing.assert_allclose(coarse.geometry.spacing, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(coarse.geometry.extent_mm, oblique_volume.geometry.extent_mm, atol=1.0)
    np.testing.assert_allclose(coarse.geometry.direction, oblique_volume.geometry.direction)
    # The outer corner of the first voxel stays put.
    first_corner = oblique_volume.geometry.index_to_lps([-0.5, -0.5, -0.5])
    np.testing.assert_allclose(coarse.geometry.index_to_lps([-0.5, -0.5, -0.5]), first_corner, atol=1e-9)
    # A linear ramp resampled finely still holds, at every new voxel centre, the ramp's value there.
    smooth = _linear_ramp_volume(oblique_volume)
    fine = resample(smooth, (0.5, 0.5, 0.5))
    centres = np.stack(np.indices(fine.geometry.size), axis=-1).reshape(-1, 3)
    old_index = smooth.geometry.lps_to_index(fine.geometry.index_to_lps(centres))
    interior = np.all((old_index > 0) & (old_index < np.asarray(smooth.geometry.size) - 1), axis=1)
    expected = old_index[interior] @ [10.0, 7.0, 3.0]
    i, j, k = centres[interior].T
    np.testing.assert_allclose(fine.array[k, j, i], expected, atol=0.01)


def test_crop_and_pad_copy_voxels_to_their_physical_place(oblique_volume):
    box = crop_or_pad(oblique_volume, start_index=(-3, 2, 1), size=(50, 10, 20), fill_value=-2048)
    assert box.array.shape == (20, 10, 50)
    inside = MARKED_VOXELS[(MARKED_VOXELS[:, 1] >= 2) & (MARKED_VOXELS[:, 1] < 12)]
    assert len(inside) >= 2
    points = oblique_volume.geometry.index_to_lps(inside)
    np.testing.assert_array_equal(values_at(box, points), values_at(oblique_volume, points))
    assert box.array[0, 0, 0] == -2048  # padding before i = 0


def _linear_ramp_volume(like: Volume) -> Volume:
    k, j, i = np.indices(like.geometry.shape)
    return Volume(array=(10.0 * i + 7.0 * j + 3.0 * k).astype(np.float32), geometry=like.geometry)


def _write_dicom_series(volume: Volume, folder, *, shift_per_slice_mm=(0.0, 0.0, 0.0)):
    """One DICOM file per slice; ``shift_per_slice_mm`` (along the slice's own i, j, k axes) moves each slice's
    position sideways by that much more than the last, as a gantry tilt does."""
    folder.mkdir()
    image = volume.to_sitk()
    direction = volume.geometry.direction
    orientation = "\\".join(f"{v:.10f}" for v in [*direction[:, 0], *direction[:, 1]])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        position = volume.geometry.index_to_lps([0, 0, k]) + k * (direction @ np.asarray(shift_per_slice_mm))
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.10f}" for v in position),
            "0020|0013": str(k + 1),
            "0028|0030": f"{volume.geometry.spacing[1]:.10f}\\{volume.geometry.spacing[0]:.10f}",
            "0018|0050": f"{volume.geometry.spacing[2]:.10f}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)


# --- bad input ---------------------------------------------------------------------------------------


def _write_image(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.nrrd does not exist"):
        read_volume(tmp_path / "nothere.nrrd")


def test_an_unreadable_file_is_named(tmp_path):
    path = tmp_path / "garbage.nrrd"
    path.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"Cannot read volume .*garbage\.nrrd"):
        read_volume(path)


# Each format as SimpleITK writes it, and the file holding its voxels (a detached header keeps them apart).
WRITTEN = {
    ".nii": ".nii", ".nii.gz": ".nii.gz", ".nrrd": ".nrrd", "gzip .nrrd": ".nrrd", ".nhdr": ".raw",
    "gzip .nhdr": ".raw.gz", ".mha": ".mha", "compressed .mha": ".mha", ".mhd": ".raw", "compressed .mhd": ".zraw",
}  # fmt: skip


@pytest.mark.parametrize("written", list(WRITTEN))
def test_a_file_cut_short_is_refused_not_read_with_zeros(tmp_path, written):
    """A scan copied half-way from a PACS export: its header whole, its voxels cut anywhere."""
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 2000, (64, 64, 64)).astype(np.int16))
    header, data = tmp_path / f"case{written.split()[-1]}", tmp_path / f"case{WRITTEN[written]}"
    for share in (None, 0.1, 0.33, 0.66, 0.99):
        sitk.WriteImage(image, str(header), useCompression=" " in written)
        if share is None:  # whole: read
            np.testing.assert_array_equal(read_volume(header).array, sitk.GetArrayFromImage(image))
            continue
        with open(data, "r+b") as handle:
            handle.truncate(int(data.stat().st_size * share))
        with pytest.raises(ValueError, match=r"shorter than its header says .* Copy the file again"):
            read_volume(header)


# GDCM takes seconds over each look at a slice cut inside its pixel data: that case runs with the slow tests.
@pytest.mark.parametrize(
    ("which", "cut"),
    [("first", "at its pixel data"), pytest.param("middle", "inside its pixel data", marks=pytest.mark.slow)],
)
def test_a_dicom_slice_without_its_pixel_data_is_refused(tmp_path, shared_data, which, cut):
    import shutil

    folder = shutil.copytree(shared_data / "real" / "ct-dicom-upper-abdomen", tmp_path / "series")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))  # in slice order
    victim = Path(files[0 if which == "first" else len(files) // 2])
    data = victim.read_bytes()
    pixel_data = data.rfind(b"\xe0\x7f\x10\x00")  # the tag (7FE0,0010), little endian
    victim.write_bytes(data[: pixel_data if cut == "at its pixel data" else (pixel_data + len(data)) // 2])
    with pytest.raises(ValueError, match=rf"1 of its files cannot be read \({victim.name}\): cut short"):
        read_volume(folder)


def test_a_2d_image_is_refused(tmp_path):
    path = _write_image(sitk.Image(10, 10, sitk.sitkInt16), tmp_path / "slice.nrrd")
    with pytest.raises(ValueError, match=r"slice\.nrrd is 2-D"):
        read_volume(path)


def test_a_single_slice_3d_image_is_refused(tmp_path):
    path = _write_image(sitk.Image(10, 10, 1, sitk.sitkInt16), tmp_path / "one.nrrd")
    with pytest.raises(ValueError, match="single slice"):
        read_volume(path)
    with pytest.raises(ValueError, match="single slice"):  # the header-only read the training check uses
        read_geometry(path)


def test_a_4d_image_is_refused_but_a_4d_image_with_one_time_point_is_read(tmp_path):
    path = _write_image(sitk.Image([6, 6, 6, 3], sitk.sitkInt16), tmp_path / "series.nii.gz")
    with pytest.raises(ValueError, match=r"series\.nii\.gz is 4-D .*pick one time point"):
        read_volume(path)
    path = _write_image(sitk.Image([6, 5, 4, 1], sitk.sitkInt16), tmp_path / "one-time-point.nii.gz")
    assert read_volume(path).array.shape == (4, 5, 6)


def test_a_multicomponent_image_is_refused(tmp_path):
    path = _write_image(sitk.Image([6, 6, 6], sitk.sitkVectorUInt8, 3), tmp_path / "rgb.nrrd")
    with pytest.raises(ValueError, match=r"rgb\.nrrd has 3 components per voxel"):
        read_volume(path)


def test_nan_and_inf_voxels_are_refused(tmp_path):
    array = np.zeros((4, 5, 6), dtype=np.float32)
    array[1, 2, 3] = np.nan
    array[0, 0, 0] = np.inf
    path = _write_image(sitk.GetImageFromArray(array), tmp_path / "nan.nrrd")
    with pytest.raises(ValueError, match=r"nan\.nrrd has 2 NaN or infinite voxels"):
        read_volume(path)


@pytest.mark.parametrize(("spacing", "phrase"), [((1.0, 1.0, 1e-6), "zero, negative"), ((1.0, 1.0, 500.0), "metres")])
def test_absurd_spacing_is_refused(tmp_path, spacing, phrase):
    image = sitk.Image(6, 6, 6, sitk.sitkInt16)
    image.SetSpacing(spacing)
    path = _write_image(image, tmp_path / "spacing.nrrd")
    with pytest.raises(ValueError, match=rf"spacing\.nrrd has an unusable header.*{phrase}"):
        read_volume(path)
