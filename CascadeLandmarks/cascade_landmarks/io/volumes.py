"""Volumes in and out: read, check, resample, crop and pad, write, always with the full geometry.

A :class:`Volume` is a numpy array indexed ``[k, j, i]`` (as SimpleITK and ``slicer.util.arrayFromVolume``
give it) and the :class:`~cascade_landmarks.io.coordinates.Geometry` that places it in LPS millimetres.
Reading supports every format SimpleITK reads (NRRD, NIfTI, MHA, ...) and a folder holding a DICOM series.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic_files import write_atomically
from .coordinates import Geometry

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")  # read, not written


@dataclass(frozen=True, eq=False)
class Volume:
    """A scalar 3-D image.

    Attributes:
        array: voxel values, shape ``(n_k, n_j, n_i)`` = ``geometry.shape``. A volume read from a file holds a
            read-only view of the image SimpleITK read (no second copy); copy it to change voxels.
        geometry: where each voxel lies in LPS millimetres.
    """

    array: np.ndarray
    geometry: Geometry
    _image: sitk.Image | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.array.shape != self.geometry.shape:
            raise ValueError(
                f"Array shape {self.array.shape} does not match the geometry's (k, j, i) shape {self.geometry.shape}"
            )

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same voxels and geometry (the image read from file, or a copy).

        Treat it as read-only: it may share its voxels with ``array``.
        """
        if self._image is not None:
            return self._image
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.geometry.spacing.tolist())
        image.SetOrigin(self.geometry.origin.tolist())
        image.SetDirection(self.geometry.direction.ravel().tolist())
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, *, source: str = "image") -> Volume:
        """Check a SimpleITK image and take its voxels and geometry; ``source`` names it in errors."""
        image = _as_scalar_3d(image, source)
        geometry = _geometry_of(image, source)
        array = np.asarray(_ImageVoxels(image))
        check_voxel_values(array, source=source)
        return cls(array=array, geometry=geometry, _image=image)


class _ImageVoxels:
    """An image's voxels for numpy without a copy, kept alive with the image.

    ``sitk.GetArrayViewFromImage`` alone returns a view that does not keep its image alive: once the image is
    freed the view reads freed memory (``read_volume(path).array`` held on its own then gave wrong values). An
    array made from this object holds it, and so the image, as its base.
    """

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def is_volume_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a volume file this engine reads by its extension."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def case_name(path: str | os.PathLike) -> str:
    """The name of a case from its volume file or folder: ``case7.nii.gz`` -> ``case7``."""
    name = Path(path).name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def volumes_in_folder(folder: str | os.PathLike) -> list[Path]:
    """The volumes a folder holds, by name: volume files and DICOM folders (hidden entries left out)."""
    return [p for p in sorted(Path(folder).iterdir()) if not p.name.startswith(".") and _is_volume(p)]


def _is_volume(path: Path) -> bool:
    return (path.is_file() and is_volume_path(path)) or (path.is_dir() and is_dicom_folder(path))


def is_dicom_folder(folder: Path) -> bool:
    """Whether a folder is one DICOM series: it holds files (its slices), and no volume files or subfolders."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return bool(entries) and all(p.is_file() and not is_volume_path(p) for p in entries)


def read_volume(path: str | os.PathLike, *, series_uid: str | None = None) -> Volume:
    """Read a volume file (NRRD, NIfTI, MHA, ...) or a folder holding one DICOM series.

    Args:
        path: a file, or a folder of DICOM files.
        series_uid: which series to read when a DICOM folder holds several.

    Raises:
        ValueError: the file is missing or unreadable, or its image is not a usable 3-D scalar volume
            (empty, 2-D, 4-D, multi-component, NaN/Inf voxels, absurd spacing); the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"Volume file {path} does not exist.")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_is_whole(path)  # SimpleITK fills a cut-short NIfTI's missing voxels with 0, without a word
    try:
        image = _read_dicom_series(path, series_uid) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:
        message = str(error).strip()
        meta_image = path.name.lower().endswith((".mha", ".mhd"))  # its reader says only "No such file or directory"
        if any(sign in message for sign in CUT_SHORT_SIGNS) or (meta_image and "No such file" in message):
            raise ValueError(f"Cannot read volume {path}: {CUT_SHORT}") from error
        reason = message.splitlines()[-1] if message else "unknown reason"
        raise ValueError(
            f"Cannot read volume {path}: {reason}. Is it a NRRD, NIfTI, MHA file or a DICOM folder?"
        ) from error
    return Volume.from_sitk(image, source=str(path))


CUT_SHORT = (
    "its voxel data is shorter than its header says (a file cut short by an interrupted copy or download, or a "
    "detached data file missing). Copy the file again."
)
CUT_SHORT_SIGNS = ("fread got only", "bytes but received", "data not read completely")


def _check_nifti_is_whole(path: Path) -> None:
    """Refuse a NIfTI file (``.nii`` or ``.nii.gz``) that holds fewer bytes than its header's voxel offset plus
    its dimensions times its bits per voxel."""
    gzipped = path.name.lower().endswith(".gz")
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
    except (OSError, EOFError) as error:
        raise ValueError(f"Cannot read volume {path}: {error}.") from error
    expected = _nifti_data_end(header)
    if expected is None:
        return  # not a NIfTI header SimpleITK would take either: its reader gives the error
    if gzipped:
        size = path.stat().st_size
        with open(path, "rb") as handle:  # the gzip trailer's length of the whole uncompressed stream, modulo 2^32
            handle.seek(max(size - 4, 0))
            stated = int.from_bytes(handle.read(4), "little")
        if stated == expected % 2**32:
            return
        holds = 0
        try:
            with gzip.open(path, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    holds += len(chunk)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"Cannot read volume {path}: {CUT_SHORT}") from error
    else:
        holds = path.stat().st_size
    if holds < expected:
        raise ValueError(f"Cannot read volume {path}: {CUT_SHORT} ({holds} of {expected} bytes)")


# Where a NIfTI header keeps what fixes its data's length: header size -> (offset and format of dim[8], of bitpix,
# of vox_offset). NIfTI-1 (348 bytes) and NIfTI-2 (540 bytes), as the nifti1.h and nifti2.h headers lay them out.
NIFTI_FIELDS = {348: ((40, "8h"), (72, "h"), (108, "f")), 540: ((16, "8q"), (14, "h"), (168, "q"))}


def _nifti_data_end(header: bytes) -> int | None:
    """Where a NIfTI file's voxel data ends, in bytes from its start; None if ``header`` is not a NIfTI header."""
    for order in "<>":  # the header size, read in the file's byte order, is 348 or 540
        size = struct.unpack(order + "i", header[:4])[0] if len(header) >= 4 else 0
        if size in NIFTI_FIELDS and len(header) >= size:
            dims, bits, offset = (struct.unpack_from(order + code, header, at) for at, code in NIFTI_FIELDS[size])
            if not 1 <= dims[0] <= 7 or bits[0] <= 0:
                return None
            voxels = int(np.prod([max(int(d), 1) for d in dims[1 : dims[0] + 1]]))
            return int(offset[0]) + voxels * int(bits[0]) // 8
    return None


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` atomically, in the format its extension names (``.nrrd``, ``.nii.gz``).

    Only single-file formats: a detached header (``.nhdr``, ``.mhd``) names its data file, which one rename
    cannot move with it.
    """
    writable = [s for s in VOLUME_SUFFIXES if s not in DETACHED_HEADER_SUFFIXES]
    # Lower case only: SimpleITK picks its writer by the exact extension (it refuses ".NII.GZ", and writes a
    # detached .mhd for ".MHA").
    if not str(path).endswith(tuple(writable)):
        raise ValueError(f"Cannot write volume {path}: use one of the extensions {', '.join(writable)}, lower case.")
    image = volume.to_sitk()
    return write_atomically(path, lambda temporary: sitk.WriteImage(image, str(temporary), compress))


def resample(
    volume: Volume,
    spacing_mm: float | tuple[float, float, float],
    *,
    interpolation: str = "linear",
    fill_value: float | None = None,
) -> Volume:
    """Resample to a new voxel spacing over the same physical box, keeping origin corner and direction.

    The new grid covers the same extent (outer voxel edges stay where they were, to within half a new voxel),
    so a physical point keeps its place. ``interpolation`` is ``"linear"``, ``"nearest"`` or ``"bspline"``;
    voxels outside the original grid get ``fill_value`` (default: the volume's minimum).
    """
    new_spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,)).copy()
    if np.any(~np.isfinite(new_spacing)) or np.any(new_spacing <= 0):
        raise ValueError(f"Resampling spacing must be positive millimetres, got {spacing_mm}.")
    old = volume.geometry
    new_size = np.maximum(1, np.round(old.extent_mm / new_spacing)).astype(int)
    # Keep the outer edge of the first voxel in place: centre of new voxel 0 sits half a new voxel in.
    first_edge = old.origin - old.direction @ (old.spacing / 2)
    new_origin = first_edge + old.direction @ (new_spacing / 2)
    target = Geometry(size=tuple(new_size), spacing=new_spacing, origin=new_origin, direction=old.direction)
    return resample_to_geometry(volume, target, interpolation=interpolation, fill_value=fill_value)


_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def resample_to_geometry(
    volume: Volume, target: Geometry, *, interpolation: str = "linear", fill_value: float | None = None
) -> Volume:
    """Resample ``volume`` onto the grid ``target`` (physical points stay where they are)."""
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"Unknown interpolation {interpolation!r}: use one of {', '.join(_INTERPOLATORS)}.")
    fill = float(volume.array.min()) if fill_value is None else float(fill_value)
    dtype = volume.array.dtype
    rounded = np.issubdtype(dtype, np.integer) and interpolation != "nearest"
    # Integers are interpolated in float and rounded: ITK would truncate each value towards zero.
    resampler = resampler_onto(target, interpolation=interpolation, fill_value=fill, as_float=rounded)
    array = sitk.GetArrayFromImage(resampler.Execute(volume.to_sitk()))
    if rounded:
        limits = np.iinfo(dtype)
        array = np.clip(np.rint(array), limits.min, limits.max).astype(dtype)
    return Volume(array=array, geometry=target)


def resampler_onto(
    target: Geometry, *, interpolation: str = "linear", fill_value: float, as_float: bool = False
) -> sitk.ResampleImageFilter:
    """A SimpleITK resampler onto the grid ``target``: voxels outside the input get ``fill_value``; with
    ``as_float`` the output is float32 rather than the input's type."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in target.size])
    resampler.SetOutputSpacing(target.spacing.tolist())
    resampler.SetOutputOrigin(target.origin.tolist())
    resampler.SetOutputDirection(target.direction.ravel().tolist())
    resampler.SetInterpolator(_INTERPOLATORS[interpolation])
    resampler.SetDefaultPixelValue(float(fill_value))
    if as_float:
        resampler.SetOutputPixelType(sitk.sitkFloat32)
    return resampler


def crop_or_pad(
    volume: Volume, start_index: tuple[int, int, int], size: tuple[int, int, int], *, fill_value: float = 0
) -> Volume:
    """The box of ``size`` voxels ``(n_i, n_j, n_k)`` starting at voxel ``start_index`` ``(i, j, k)``.

    ``start_index`` may be negative and the box may reach past the far edge: voxels outside the volume get
    ``fill_value``. Voxel values are copied, not resampled, and the result's geometry puts each copied voxel
    at exactly its original physical place.
    """
    start = np.asarray(start_index, dtype=int).reshape(3)
    size = np.asarray(size, dtype=int).reshape(3)
    if np.any(size < 1):
        raise ValueError(f"Crop size {size.tolist()} must be positive voxel counts.")
    old = volume.geometry
    out = np.full(size[::-1], fill_value, dtype=volume.array.dtype)
    source_low = np.maximum(start, 0)
    source_high = np.minimum(start + size, old.size)
    if np.all(source_high > source_low):
        dest_low = source_low - start
        dest_high = source_high - start
        out[dest_low[2] : dest_high[2], dest_low[1] : dest_high[1], dest_low[0] : dest_high[0]] = volume.array[
            source_low[2] : source_high[2], source_low[1] : source_high[1], source_low[0] : source_high[0]
        ]
    geometry = old.box(start, size)
    return Volume(array=out, geometry=geometry)


def check_voxel_values(array: np.ndarray, *, source: str) -> None:
    """Raise ValueError naming ``source`` if ``array`` is empty or holds NaN or infinite values."""
    if array.size == 0:
        raise ValueError(f"Volume {source} is empty (no voxels).")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ValueError(
                f"Volume {source} has {bad} NaN or infinite voxels; replace them (for example with the "
                "minimum intensity) before detection."
            )


def _as_scalar_3d(image: sitk.Image, source: str) -> sitk.Image:
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise ValueError(
            f"Volume {source} has {components} components per voxel (a colour or vector image); "
            "a scalar CT or MR volume is needed."
        )
    dimension = image.GetDimension()
    size = image.GetSize()
    if dimension == 4 and size[3] == 1:
        # NIfTI often stores a 3-D volume with a fourth axis of length one.
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
    elif dimension != 3:
        raise ValueError(
            f"Volume {source} is {dimension}-D (size {list(size)}); a 3-D volume is needed"
            + (": pick one time point or channel first." if dimension > 3 else ".")
        )
    if 0 in image.GetSize():
        raise ValueError(f"Volume {source} is empty (size {list(image.GetSize())}).")
    if min(image.GetSize()) < 2:
        raise ValueError(f"Volume {source} is a single slice (size {list(image.GetSize())}); a 3-D volume is needed.")
    return image


def _geometry_of(image: sitk.Image | sitk.ImageFileReader, source: str) -> Geometry:
    """The geometry of an image or of a reader that has read a header, or a ValueError naming ``source``."""
    try:
        return Geometry(
            size=image.GetSize(),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.reshape(image.GetDirection(), (3, 3)),
        )
    except ValueError as error:
        raise ValueError(f"Volume {source} has an unusable header. {error}.") from error


def _read_dicom_series(folder: Path, series_uid: str | None) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(f"Folder {folder} holds no DICOM series; give a volume file or a DICOM folder.")
    if series_uid is None:
        if len(series) > 1:
            raise ValueError(
                f"Folder {folder} holds {len(series)} DICOM series ({', '.join(series)}): put each series in its "
                "own folder (or, from Python, pass read_volume(folder, series_uid=...))."
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise ValueError(f"Folder {folder} has no DICOM series {series_uid}; it has {', '.join(series)}.")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
    _check_no_slice_left_out(folder, series_uid, files)
    _check_slice_positions(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _check_no_slice_left_out(folder: Path, series_uid: str, files: Sequence[str]) -> None:
    """Refuse a series of which a file in the folder was left out because it cannot be read (cut short, or without
    its pixel data): GDCM leaves such a slice out of the series without a word, and a slice at either end leaves no
    gap for the slice-position check to see."""
    listed = {Path(name).resolve() for name in files}
    uid = series_uid.encode()
    left_out = []
    for candidate in sorted(folder.iterdir()):
        if not candidate.is_file() or candidate.resolve() in listed:
            continue
        with open(candidate, "rb") as handle:
            start = handle.read(1 << 16)
        if start[128:132] == b"DICM" and uid in start:  # a DICOM file naming this series
            left_out.append(candidate.name)
    if left_out:
        raise ValueError(
            f"DICOM series in {folder}: {len(left_out)} of its files cannot be read ({', '.join(left_out[:3])}"
            f"{', ...' if len(left_out) > 3 else ''}): cut short, or without pixel data? Copy the series again."
        )


# Slice positions may stray this far (mm) from an evenly spaced stack before the series is refused: above the
# rounding of scanners that write positions to 0.1 mm, far below a missing slice or a tilt summed over the stack.
SLICE_POSITION_TOLERANCE_MM = 0.1


def _check_slice_positions(folder: Path, files: Sequence[str]) -> None:
    """Refuse a series whose slices do not form one evenly spaced stack along the slice normal: ITK would stack
    them anyway, with one spacing and no shear, and put the voxels millimetres off without a word (a gantry tilt,
    a missing slice, a localizer sharing the series)."""
    if len(files) < 2:
        return
    orientations, positions = [], []
    for name in files:
        header = sitk.ImageFileReader()
        header.SetFileName(name)
        header.LoadPrivateTagsOff()
        header.ReadImageInformation()
        if not (header.HasMetaDataKey("0020|0037") and header.HasMetaDataKey("0020|0032")):
            return  # no patient geometry per slice to check (ITK falls back on its own defaults)
        orientations.append([float(v) for v in header.GetMetaData("0020|0037").split("\\")])
        positions.append([float(v) for v in header.GetMetaData("0020|0032").split("\\")])
    orientations, positions = np.array(orientations), np.array(positions)
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise ValueError(f"DICOM series in {folder}: its slices are not all oriented alike (a localizer among them?).")
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    along = positions @ normal
    order = np.argsort(along)
    steps = np.diff(along[order])
    in_plane = positions[order] - np.outer(along[order], normal)
    problems = []
    if np.abs(steps - np.median(steps)).max() > SLICE_POSITION_TOLERANCE_MM:
        problems.append(f"its slice spacing varies from {steps.min():.3g} to {steps.max():.3g} mm (a missing slice?)")
    if np.abs(in_plane - in_plane[0]).max() > SLICE_POSITION_TOLERANCE_MM:
        problems.append("its slices shift sideways from one to the next (a gantry tilt?)")
    if problems:
        raise ValueError(
            f"DICOM series in {folder}: {'; '.join(problems)}. Its voxels cannot be placed on one regular grid: "
            "resample it to a regular volume first (Slicer's DICOM module can regularise such a series; then save "
            "it as NRRD)."
        )


def values_at(volume: Volume, points_lps: np.ndarray) -> np.ndarray:
    """Voxel value at each LPS point (mm, shape (N, 3)), from the nearest voxel; NaN outside the volume."""
    ijk = np.rint(volume.geometry.lps_to_index(np.asarray(points_lps, dtype=float).reshape(-1, 3)))
    inside = np.all((ijk >= 0) & (ijk < np.asarray(volume.geometry.size)), axis=1)
    values = np.full(len(ijk), np.nan)
    i, j, k = ijk[inside].astype(int).T
    values[inside] = volume.array[k, j, i]
    return values


def read_geometry(path: str | os.PathLike) -> Geometry:
    """The geometry in a volume file's header, without reading its voxels (fast, for checking many cases)."""
    path = Path(path)
    if path.is_dir():
        return read_volume(path).geometry
    if not path.exists():
        raise ValueError(f"Volume file {path} does not exist.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ValueError(f"Cannot read volume {path}: is it a NRRD, NIfTI or MHA file?") from error
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1 or min(reader.GetSize()) < 2:
        # 4-D with one time point is read; anything else (a single slice too) raises the error naming the problem.
        return read_volume(path).geometry
    return _geometry_of(reader, str(path))
