"""Writing files so that a crash or a kill never leaves a half-written file behind.

Each writer writes a temporary file beside the target, flushes it to disk, then renames it over the target
in one step (``os.replace``), so readers see either the old file or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

# What a write fails with when there is no room: no space left, over a quota, or a file over RLIMIT_FSIZE.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` that becomes ``target`` when the block ends without error.

    The temporary name ends with the target's own name, so writers that pick a format from the file
    extension (SimpleITK, for ``.nii.gz``) still see the right one. On error it is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".partial-{uuid.uuid4().hex[:8]}-{target.name}")
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as error:
        if error.errno in DISK_FULL:  # said of the file the user knows, not of its temporary name
            raise OSError(error.errno, os.strerror(error.errno), str(target)) from error
        raise
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically; returns the target path."""
    return write_atomically(target, lambda path: path.write_text(text, encoding="utf-8"))


def write_atomically(target: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(temporary_path)`` and move its result onto ``target`` atomically."""
    with atomic_path(target) as temporary:
        writer(temporary)
    return Path(target)
