"""Evaluation: errors in millimetres per landmark and overall, stage 1 alone beside the cascade, as in the paper's
tables, plus success rates, whether the confidence tells good points from bad ones, and how often the in-view
decision is right.

All errors are Euclidean distances in physical space (mm) between detected and reference points, over the
landmarks the reference places and the detection finds in view. A reference may be annotated in part: a landmark
it marks missing is known not to be in the image (a point reported for it is a false point); one it does not
place at all is not scored.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inference.detection import Detection
from ..inference.detector import detect
from ..io.atomic_files import write_text_atomically
from ..io.cases import check_cases, find_cases
from ..io.landmarks import Landmarks
from ..io.volumes import read_volume
from ..model.model_file import CascadeModel, load_model
from ..progress import Reporter, as_reporter
from .metrics import SUCCESS_RADII_MM, spearman, statistics

STAGES = ("stage1", "cascade")
STAGE_TITLES = {"stage1": "stage 1 alone", "cascade": "cascade", "raters": "human raters"}


@dataclass
class Evaluation:
    """Errors of a model on a set of cases.

    Attributes:
        labels: landmark labels, in the model's order.
        case_names: one per case.
        errors_mm: per stage ("stage1", "cascade"), shape (cases, landmarks); NaN where the reference places no
            point or the detection finds none in view.
        confidence, flagged: the cascade's confidence and flag per case and landmark.
        detections, references: per case, what was found and what is true.
        raters_mm: optional human bar: each rater placement's distance to the reference, shape
            (placements, landmarks); reported beside the model as "raters".
    """

    labels: list[str]
    case_names: list[str]
    errors_mm: dict[str, np.ndarray]
    confidence: np.ndarray
    flagged: np.ndarray
    detections: list[Detection]
    references: list[Landmarks]
    raters_mm: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        detections: list[Detection],
        references: list[Landmarks],
        case_names: list[str],
        *,
        raters_mm: np.ndarray | None = None,
    ) -> Evaluation:
        """The errors of ``detections`` against ``references`` (one each per case, in the model's order)."""
        errors = [d.errors_mm(r.positions_lps) for d, r in zip(detections, references, strict=True)]
        in_view = np.stack([d.in_view for d in detections])
        return cls(
            labels=list(detections[0].labels),
            case_names=list(case_names),
            errors_mm={stage: np.where(in_view, np.stack([e[stage] for e in errors]), np.nan) for stage in STAGES},
            confidence=np.stack([d.confidence for d in detections]),
            flagged=np.stack([d.flagged for d in detections]),
            detections=list(detections),
            references=list(references),
            raters_mm=raters_mm,
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """The error columns: stage 1, cascade, and the raters when given."""
        return STAGES if self.raters_mm is None else (*STAGES, "raters")

    def _errors(self, column: str) -> np.ndarray:
        return self.raters_mm if column == "raters" else self.errors_mm[column]

    def rows(self) -> list[dict]:
        """One row per landmark and a last row "all": per stage mean, std, median, max and success rates."""
        rows = []
        for index, label in [*enumerate(self.labels), (None, "all")]:
            row: dict = {"landmark": label}
            for column in self.columns:
                errors = self._errors(column)
                values = errors.ravel() if index is None else errors[:, index]
                row.update(statistics(values, prefix=f"{column}_"))
            rows.append(row)
        return rows

    def in_view_counts(self) -> list[dict]:
        """How often the in-view decision is right, per landmark and a last row "all": ``found`` (placed in the
        reference and in view), ``missed`` (placed, but not in view), ``absent`` (missing in the reference and not
        in view), ``false`` (missing in the reference, yet given a point), ``unscored`` (not placed in the
        reference, nor missing)."""
        placed = np.stack([r.defined for r in self.references])
        missing = np.stack([r.missing for r in self.references])
        in_view = np.stack([d.in_view for d in self.detections])
        kinds = {
            "found": placed & in_view,
            "missed": placed & ~in_view,
            "absent": missing & ~in_view,
            "false": missing & in_view,
            "unscored": ~placed & ~missing,
        }
        rows = [
            {"landmark": label, **{k: int(v[:, n].sum()) for k, v in kinds.items()}}
            for n, label in enumerate(self.labels)
        ]
        return [*rows, {"landmark": "all", **{k: int(v.sum()) for k, v in kinds.items()}}]

    def confidence_check(self) -> dict:
        """Does low confidence go with large error? Rank correlation of confidence and cascade error (negative is
        good), and the mean error of flagged and unflagged landmarks (those scored)."""
        errors = self.errors_mm["cascade"].ravel()
        scored = np.isfinite(errors)
        errors = errors[scored]
        confidence = self.confidence.ravel()[scored]
        flagged = self.flagged.ravel()[scored]
        return {
            "spearman_confidence_vs_error": spearman(confidence, errors),
            "flagged": int(flagged.sum()),
            "total": int(flagged.size),
            "mean_error_flagged_mm": float(errors[flagged].mean()) if flagged.any() else None,
            "mean_error_unflagged_mm": float(errors[~flagged].mean()) if (~flagged).any() else None,
        }

    def markdown(self, *, title: str = "Landmark detection error (mm)") -> str:
        """The table in the paper's layout: per landmark, stage 1 alone and the cascade side by side."""
        radii = " | ".join(f"<={r:g} mm" for r in SUCCESS_RADII_MM)
        lines = [
            f"# {title}",
            "",
            f"{len(self.case_names)} cases. Errors are Euclidean distances in mm, over the landmarks the reference "
            "places and the detection finds in view (n); success rates are the share of them within each radius.",
            "",
        ]
        for stage in self.columns:
            lines += [
                f"## {STAGE_TITLES[stage].capitalize()}",
                "",
                f"| landmark | n | mean +- std | median | max | {radii} |",
                "|---|---|---|---|---|" + "---|" * len(SUCCESS_RADII_MM),
            ]
            for row in self.rows():
                rates = " | ".join(_percent(row[f"{stage}_within_{r:g}mm"]) for r in SUCCESS_RADII_MM)
                name = f"**{row['landmark']}**" if row["landmark"] == "all" else markdown_cell(row["landmark"])
                mean, std, median, largest = (
                    _format(row[f"{stage}_{key}"]) for key in ("mean", "std", "median", "max")
                )
                lines.append(f"| {name} | {row[f'{stage}_count']} | {mean} +- {std} | {median} | {largest} | {rates} |")
            lines.append("")
        lines += self._in_view_lines()
        check = self.confidence_check()
        lines += [
            "## Confidence",
            "",
            f"Rank correlation of confidence with cascade error: {_format(check['spearman_confidence_vs_error'])} "
            "(negative: low confidence goes with large error).",
            f"Flagged: {check['flagged']} of {check['total']} landmarks; mean error flagged "
            f"{_format(check['mean_error_flagged_mm'])} mm, "
            f"not flagged {_format(check['mean_error_unflagged_mm'])} mm.",
            "",
        ]
        return "\n".join(lines)

    def _in_view_lines(self) -> list[str]:
        """The in-view decision's table, when a reference marks a landmark missing or a detection finds one out of
        view (else nothing: every landmark was there and found)."""
        if not self.detections:  # errors given without their detections: nothing to say
            return []
        counts = self.in_view_counts()
        if not counts[-1]["missed"] + counts[-1]["absent"] + counts[-1]["false"]:
            return []
        lines = [
            "## In view",
            "",
            "Found: placed in the reference and found in view. Missed: placed, but reported not in view. Absent: "
            "missing in the reference (not in the image) and reported so. False: missing, yet given a point. "
            "Unscored: neither placed nor missing in the reference.",
            "",
            "| landmark | found | missed | absent | false | unscored |",
            "|---|---|---|---|---|---|",
        ]
        for row in counts:
            name = f"**{row['landmark']}**" if row["landmark"] == "all" else markdown_cell(row["landmark"])
            lines.append(
                f"| {name} | {row['found']} | {row['missed']} | {row['absent']} | {row['false']} | {row['unscored']} |"
            )
        return [*lines, ""]

    def csv_text(self) -> str:
        """The per-landmark statistics of :meth:`rows` as CSV."""
        rows = self.rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
        return buffer.getvalue()

    def errors_csv_text(self) -> str:
        """Every case and landmark: errors of both stages (empty where not scored), confidence, flag, whether it
        was found in view, and the reference's status ("defined", "missing", "undefined")."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["case", "landmark", "stage1_error_mm", "cascade_error_mm", "confidence", "flagged",
                         "in_view", "reference"])  # fmt: skip
        for c, case in enumerate(self.case_names):
            statuses = self.references[c].statuses
            for n, label in enumerate(self.labels):
                errors = [self.errors_mm[stage][c, n] for stage in STAGES]
                writer.writerow(
                    [
                        case,
                        label,
                        *(f"{e:.4f}" if np.isfinite(e) else "" for e in errors),
                        f"{self.confidence[c, n]:.4f}",
                        int(self.flagged[c, n]),
                        int(self.detections[c].in_view[n]),
                        statuses[n],
                    ]
                )
        return buffer.getvalue()


def evaluate(
    model: CascadeModel | str | os.PathLike,
    data: str | os.PathLike,
    *,
    device: str = "auto",
    progress: bool | Reporter = True,
    on_case: Callable[[str, object, Detection, Landmarks], None] | None = None,
    **settings,
) -> Evaluation:
    """Detect on every case of a folder or manifest (with reference landmarks) and measure the errors.

    Args:
        model: a loaded model, a model file or a registered name.
        progress: True for a progress bar on standard error, False for none, or a Reporter.
        on_case: called as ``on_case(name, volume, detection, reference)`` for each case while its volume is
            loaded (the quality-control images use it).
        settings: detection settings for this run, as for :func:`~cascade_landmarks.inference.detector.detect`.
    """
    if not isinstance(model, CascadeModel):
        model = load_model(model)
    cases = check_cases(find_cases(data), model.config.landmark_set, purpose="evaluation")
    task = as_reporter(progress).task("evaluating", len(cases))
    detections, references, names = [], [], []
    for count, case in enumerate(cases, start=1):
        volume = read_volume(case.files.volume)
        detection = detect(volume, model, device=device, **settings)
        if on_case is not None:
            on_case(case.files.name, volume, detection, case.landmarks)
        detections.append(detection)
        references.append(case.landmarks)
        names.append(case.files.name)
        task.update(count)
    task.close()
    return Evaluation.of(detections, references, names)


def write_tables(evaluation: Evaluation, folder: str | os.PathLike) -> list[Path]:
    """``errors.md``, ``errors.csv`` (per landmark) and ``errors_per_case.csv`` in ``folder``."""
    folder = Path(folder)
    return [
        write_text_atomically(folder / "errors.md", evaluation.markdown()),
        write_text_atomically(folder / "errors.csv", evaluation.csv_text()),
        write_text_atomically(folder / "errors_per_case.csv", evaluation.errors_csv_text()),
    ]


def markdown_cell(text: str) -> str:
    """``text`` for a Markdown table cell: a ``|`` in a label would start another column."""
    return str(text).replace("|", "\\|")


def _format(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.2f}"


def _percent(share: float) -> str:
    return "n/a" if not np.isfinite(share) else f"{100 * share:.0f}%"
