"""Detection over many volumes, as ``cascade-landmarks detect`` runs it: a whole cohort in one command.

The model loads once, and the next volume is read while the current one is detected. Each case ends with its
record, ``records/<case>.json`` (the input's identity, the model's checksum, the settings and the whole
detection), written after its ``.mrk.json`` (``records/<case>.pending`` marks a case whose files are being
written): a run killed at any point and started again skips exactly the cases whose record matches, and redoes
the rest. A case that fails (an unreadable file, anything) is listed with its reason in ``failures.csv`` and the
batch goes on. ``detections.csv`` is written at the end, from every record.

Under ``torchrun`` each process takes every n-th case of the list (the same list in every process), writes its
own cases' files, and the first process gathers the records into ``detections.csv`` and ``failures.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..io.atomic_files import DISK_FULL, write_text_atomically
from ..io.landmarks import write_landmarks
from ..io.volumes import case_name, is_dicom_folder, read_volume, volumes_in_folder
from ..model.distributed import Process, join_process_group
from ..model.model_file import CascadeModel
from .detection import Detection, write_detections_csv
from .detector import detect

RECORDS = "records"


@dataclass(frozen=True)
class BatchCase:
    """A volume to detect in (a file or a DICOM folder) and the name its results take."""

    name: str
    volume: Path


@dataclass
class BatchResult:
    """What a batch did: the detections of every case now complete (done in this run, or skipped because an
    earlier run had done them), the names of the skipped ones, and each failed case with its reason."""

    detections: dict[str, Detection] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    is_main: bool = True  # False in the other processes of a torchrun batch: theirs is a part of the whole


def batch_cases(inputs: Iterable[str | os.PathLike]) -> list[BatchCase]:
    """The cases of the command line's inputs: volume files, DICOM folders, folders of those, and CSV manifests
    (a ``volume`` column, paths relative to the manifest, and optionally ``case`` for the results' names)."""
    cases = []
    for given in map(Path, inputs):
        if given.suffix.lower() == ".csv" and given.is_file():
            cases.extend(_manifest_cases(given))
        elif given.is_dir() and not is_dicom_folder(given):
            found = volumes_in_folder(given)
            if not found:
                raise ValueError(f"Folder {given} holds no volume files (.nrrd, .nii.gz, .nii, .mha) or DICOM folders.")
            cases.extend(BatchCase(case_name(p), p) for p in found)
        else:
            cases.append(BatchCase(case_name(given), given))
    names = [case.name for case in cases]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"Several volumes are named {', '.join(repeated)}; their results would overwrite each other.")
    return cases


def _manifest_cases(manifest: Path) -> list[BatchCase]:
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "volume" not in rows[0]:
        raise ValueError(f"Manifest {manifest} needs a volume column (and, optionally, case) and at least one row.")
    cases = []
    for line, row in enumerate(rows, start=2):
        volume = (row.get("volume") or "").strip()
        if not volume:
            raise ValueError(f"Manifest {manifest}, line {line}: the volume cell is empty.")
        path = manifest.parent / volume
        cases.append(BatchCase((row.get("case") or "").strip() or case_name(path), path))
    return cases


def detect_batch(
    cases: list[BatchCase],
    model: CascadeModel,
    output: str | os.PathLike,
    *,
    settings: dict,
    device: str = "auto",
    coordinate_system: str = "LPS",
    overwrite: bool = False,
    read_ahead: bool = True,
    progress: Callable[[str, float, str], None] | None = None,
    on_case: Callable[[str, Detection | None, str | None], None] | None = None,
) -> BatchResult:
    """Detect in every case, writing ``<case>.mrk.json`` and ``records/<case>.json`` into ``output`` as each ends,
    and ``detections.csv`` and ``failures.csv`` at the end.

    Args:
        settings: detection settings for this run (see :func:`~.detector.detect`); part of each record.
        overwrite: replace results of another model or other settings, or a ``.mrk.json`` with no record (a
            folder of cases keeps its reference landmarks so). Without it they are refused, before any case
            starts. A case whose volume changed since its record is done again without it.
        read_ahead: read the next volume while detecting in the current one (then two volumes are in memory).
        progress: called with (case, fraction of that case done, step).
        on_case: called as each case ends, with its detection, or None and the reason it failed.

    Raises:
        ValueError: results already in ``output`` that this run would replace, without ``overwrite``.
    """
    output = Path(output)
    process = join_process_group(device)  # under torchrun: this process's share of the cases, in a fixed order
    identity = {"model_sha256": model.sha256, "settings": settings, "coordinate_system": coordinate_system}
    result, to_do = _skip_finished(cases, output, identity, overwrite)
    result.is_main = process.is_main
    process.barrier()  # every process has looked at the folder before any writes to it
    (output / RECORDS).mkdir(parents=True, exist_ok=True)
    report = progress or (lambda _case, _fraction, _step: None)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reader") as reader:
        mine = to_do[process.rank :: process.world_size]
        upcoming: Future | None = None
        for index, case in enumerate(mine):
            current = upcoming or reader.submit(read_volume, case.volume)
            following = index + 1 < len(mine)
            upcoming = reader.submit(read_volume, mine[index + 1].volume) if read_ahead and following else None
            try:
                detection = detect(current.result(), model, device=str(process.device),
                                   progress=lambda f, s, n=case.name: report(n, f, s), **settings)  # fmt: skip
                pending = output / RECORDS / f"{case.name}.pending"  # the case's files are being written
                pending.touch()
                write_landmarks(detection.landmarks(), output / f"{case.name}.mrk.json",
                                coordinate_system=coordinate_system)  # fmt: skip
                record = {**identity, "input": _input_identity(case.volume), "process": process.rank,
                          "detection": detection.to_dict()}  # fmt: skip
                write_text_atomically(output / RECORDS / f"{case.name}.json", json.dumps(record))
                pending.unlink()
            except Exception as error:  # one case's failure, whatever it is, does not stop the batch...
                if isinstance(error, OSError) and error.errno in DISK_FULL:
                    raise  # ...but a full disk would fail every case after it
                result.failures[case.name] = str(error) if isinstance(error, ValueError) else repr(error)
                _write_failures(result.failures, cases, output, process)
                if on_case:
                    on_case(case.name, None, result.failures[case.name])
                continue
            result.detections[case.name] = detection
            if on_case:
                on_case(case.name, detection, None)
    _write_failures(result.failures, cases, output, process)
    process.barrier()
    if process.world_size > 1:  # every process's cases are done: the main one gathers them
        if not process.is_main:
            return result
        result = _gathered(cases, output, result.skipped, process.world_size)
    order = [c.name for c in cases if c.name in result.detections]
    write_detections_csv({n: result.detections[n] for n in order}, output / "detections.csv",
                         coordinate_system=coordinate_system)  # fmt: skip
    return result


def _skip_finished(
    cases: list[BatchCase], output: Path, identity: dict, overwrite: bool
) -> tuple[BatchResult, list[BatchCase]]:
    """The cases an earlier run finished with this model and settings from the same input (in the result, as
    skipped), and the cases to do; refuses results in the way unless ``overwrite``."""
    result, to_do, in_the_way = BatchResult(), [], []
    for case in cases:
        record, points = _record(case, output), output / f"{case.name}.mrk.json"
        interrupted = (output / RECORDS / f"{case.name}.pending").exists()  # killed while writing its files
        same_run = record is not None and all(record.get(k) == v for k, v in identity.items())
        ours = same_run or interrupted
        if same_run and not interrupted and points.is_file() and record.get("input") == _input_identity(case.volume):
            result.detections[case.name] = record["detection"]
            result.skipped.append(case.name)
            continue
        to_do.append(case)
        if points.exists() and not ours:  # another run's, or not from detect (a case's reference landmarks)
            in_the_way.append(points)
    if (output / "detections.csv").exists() and not (output / RECORDS).is_dir():
        in_the_way.append(output / "detections.csv")
    if in_the_way and not overwrite:
        raise ValueError(
            f"{', '.join(str(p) for p in in_the_way)} already exist(s), from another model, other settings, another "
            "volume, or not from detect at all (a folder of cases keeps its reference landmarks under these names): "
            "choose another output folder, or add --overwrite to replace them."
        )
    return result, to_do


def _gathered(cases: list[BatchCase], output: Path, skipped: list[str], processes: int) -> BatchResult:
    """The results of every process of a distributed batch, from their records and failure files (merged into
    ``failures.csv``)."""
    result = BatchResult(skipped=skipped)
    for rank in range(processes):
        part = output / f"failures.process{rank}.csv"
        with open(part, newline="") as handle:
            result.failures.update((row["case"], row["reason"]) for row in csv.DictReader(handle))
        part.unlink()
    for case in cases:
        record = _record(case, output)
        if case.name not in result.failures and record is not None:
            result.detections[case.name] = record["detection"]
    _write_failures(result.failures, cases, output, None)
    return result


def _record(case: BatchCase, output: Path) -> dict | None:
    """The record an earlier run left for the case, its detection read into a :class:`Detection`; or None (none,
    or unreadable: then the case is done again)."""
    try:
        record = json.loads((output / RECORDS / f"{case.name}.json").read_text())
        return {**record, "detection": Detection.from_dict(record["detection"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _input_identity(volume: Path) -> dict:
    """What tells whether the input changed since a record was written: its path, sizes and modification times
    (of every file, for a DICOM folder)."""
    files = sorted(volume.iterdir()) if volume.is_dir() else [volume]
    stats = [f.stat() for f in files if f.is_file()]
    return {
        "path": str(volume.resolve()),
        "bytes": sum(s.st_size for s in stats),
        "modified_ns": max((s.st_mtime_ns for s in stats), default=0),
    }


def _write_failures(failures: dict[str, str], cases: list[BatchCase], output: Path, process: Process | None) -> None:
    """``failures.csv``, or each process's own part of it in a distributed batch."""
    volumes = {c.name: c.volume for c in cases}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["case", "volume", "reason"])
    writer.writerows([name, str(volumes[name]), reason] for name, reason in failures.items())
    alone = process is None or process.world_size == 1
    write_text_atomically(
        output / ("failures.csv" if alone else f"failures.process{process.rank}.csv"), text.getvalue()
    )
