"""What the web app may read and write: the cases of one data folder, and uploads into it.

The page names a case by its path relative to the data folder; a path that leads outside it (``..``, an absolute
path, or a symbolic link pointing away) is refused before anything is opened. Uploads go into ``uploads/`` inside
the data folder, under a name of their own (a second upload of the same name gets ``-2``, and so on, so nothing
is overwritten), written whole or not at all, and only up to a size limit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..io.atomic_files import write_atomically
from ..io.volumes import volumes_in_folder

UPLOADS = "uploads"
UPLOAD_SUFFIXES = (".nii.gz", ".nrrd", ".nii", ".mha")  # one file each (a DICOM series: copy its folder in)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class DataFolder:
    """The folder the page works in: its cases and its uploads.

    Args:
        root: the data folder; it must exist.
        max_upload_bytes: the largest file an upload may bring.
    """

    def __init__(self, root: str | os.PathLike, *, max_upload_bytes: int):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"Data folder {root} does not exist: give the folder that holds the cases.")
        self.max_upload_bytes = max_upload_bytes

    def cases(self) -> list[str]:
        """The volumes in the data folder and in its uploads, as paths relative to the data folder (a symbolic
        link leading out of it left out)."""
        folders = [self.root] + ([self.root / UPLOADS] if (self.root / UPLOADS).is_dir() else [])
        found = [p for folder in folders for p in volumes_in_folder(folder) if p.resolve().is_relative_to(self.root)]
        return [p.relative_to(self.root).as_posix() for p in found]

    def resolve(self, relative: str) -> Path:
        """The file or DICOM folder that ``relative`` names inside the data folder.

        Raises:
            ValueError: the path leads outside the data folder (``..``, absolute, a symbolic link pointing
                away), or names nothing there.
        """
        given = Path(relative.strip())
        path = (self.root / given).resolve()
        if given.is_absolute() or ".." in given.parts or not path.is_relative_to(self.root):
            raise ValueError(
                f"{relative} is outside the data folder; open a case inside it (the list shows them), or upload it."
            )
        if not path.exists():
            raise ValueError(f"{relative} is not in the data folder; pick a case from the list.")
        return path

    def save_upload(self, name: str, content: bytes) -> str:
        """Write an uploaded volume file into ``uploads/`` and return its path relative to the data folder.

        Raises:
            ValueError: the file is larger than the limit, or not a volume file by its name.
        """
        if len(content) > self.max_upload_bytes:
            raise ValueError(
                f"{name} is {len(content) / 1e6:.0f} MB, more than this server takes in one upload "
                f"({self.max_upload_bytes / 1e6:.0f} MB): copy it into the data folder instead, or start the "
                "server with a larger --max-upload-mb."
            )
        safe = _SAFE_NAME.sub("_", Path(name).name).lstrip(".") or "upload"
        if not safe.lower().endswith(UPLOAD_SUFFIXES):
            raise ValueError(
                f"{name} is not a volume file this page takes: upload a .nrrd, .nii.gz, .nii or .mha file (a DICOM "
                "series: copy its folder into the data folder)."
            )
        folder = self.root / UPLOADS
        folder.mkdir(exist_ok=True)
        target, number = folder / safe, 1
        while target.exists():
            number += 1
            stem, suffix = _split_suffix(safe)
            target = folder / f"{stem}-{number}{suffix}"
        write_atomically(target, lambda path: path.write_bytes(content))
        return target.relative_to(self.root).as_posix()


def _split_suffix(name: str) -> tuple[str, str]:
    """``ct.nii.gz`` -> (``ct``, ``.nii.gz``)."""
    suffix = next(s for s in UPLOAD_SUFFIXES if name.lower().endswith(s))
    return name[: -len(suffix)], name[-len(suffix) :]
