"""The aortic-9 models on the real CT scans of the shared data folder: ``cascade-landmarks benchmark-real``.

Each case is a real scan of part of the body, with the aortic-9 landmarks its reference file places and those its
data README says lie outside the scan (marked missing here): a point for one of those is a false point. Every
other landmark is not scored. The cases, as the data README describes them:

- ``cta-thorax-abdomen``: an arterial-phase CTA crop round the aorta (aortic dissection); five landmarks placed
  from TotalSegmentator's masks (good to a few mm); the renal, inferior mesenteric and iliac landmarks lie below
  the crop.
- ``ct-abdomen-pelvis-noncontrast``: a non-contrast CT of abdomen and pelvis; the bifurcation placed (good to a
  voxel or two, 3 mm); the chest, and with it the three arch origins, lies above it.
- ``ct-dicom-upper-abdomen``: a 40 mm DICOM slab of the upper abdomen, no annotation; the arch origins lie far
  above it and the bifurcation far below.

Figures on these scans are reported for each model run, apart from any figure on phantoms.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..evaluation.errors import Evaluation, write_tables
from ..inference.detection import Detection
from ..inference.detector import detect
from ..io.atomic_files import write_text_atomically
from ..io.landmark_sets import load_landmark_set
from ..io.landmarks import Landmarks, read_landmarks
from ..io.volumes import read_volume
from ..model.model_file import CascadeModel, load_model
from .bundling import add_bundled_model, training_run_lines, training_runs

ARCH = ("brachiocephalic trunk origin", "left common carotid artery origin", "left subclavian artery origin")
BELOW_THE_CHEST = (
    "right renal artery origin",
    "left renal artery origin",
    "inferior mesenteric artery origin",
    "aortic bifurcation",
)
# The targets for these scans (mm).
PHANTOM_TARGET_MM = 15.0
BIFURCATION_TARGET_MM = 10.0
GOAL_MM = 5.0


@dataclass(frozen=True)
class RealCase:
    """A real scan: its volume (a file or a DICOM folder) and reference file under the data folder, and the
    landmarks known to lie outside it."""

    name: str
    volume: str
    landmarks: str | None
    out_of_view: tuple[str, ...]


REAL_CASES = (
    RealCase(
        "cta-thorax-abdomen",
        "real/cta-thorax-abdomen/ct.nii.gz",
        "real/cta-thorax-abdomen/landmarks.mrk.json",
        BELOW_THE_CHEST,
    ),
    RealCase(
        "ct-abdomen-pelvis-noncontrast",
        "real/ct-abdomen-pelvis-noncontrast/ct.nii.gz",
        "real/ct-abdomen-pelvis-noncontrast/landmarks.mrk.json",
        ARCH,
    ),
    RealCase("ct-dicom-upper-abdomen", "real/ct-dicom-upper-abdomen", None, (*ARCH, "aortic bifurcation")),
)


def reference(case: RealCase, data: Path) -> Landmarks:
    """The case's aortic-9 reference: the placed landmarks of its file (those of other sets left out), the
    out-of-view ones missing, the rest not known."""
    aortic = load_landmark_set("aortic-9")
    placed = read_landmarks(data / case.landmarks) if case.landmarks else Landmarks([], np.zeros((0, 3)))
    keep = [n for n, label in enumerate(placed.labels) if label in aortic.labels]
    ordered = aortic.match(
        Landmarks([placed.labels[n] for n in keep], placed.positions_lps[keep], [placed.descriptions[n] for n in keep]),
        partial=True,
    )
    ordered.missing[[aortic.labels.index(label) for label in case.out_of_view]] = True
    return Landmarks(ordered.labels, ordered.positions_lps, ordered.descriptions, ordered.missing)


def real_ct_benchmark(
    data: str | os.PathLike,
    models: list[str],
    output: str | os.PathLike,
    *,
    device: str = "auto",
    bundle: str | None = None,
) -> str:
    """Run each model (a file or registered name) on every real case; write per-case tables into
    ``output/<model>/<case>/`` and ``output/report.md`` and ``report.json``; return the report. With ``bundle``,
    the first model ships in ``Resources/Models`` under that name, with a card holding its figures here."""
    data, output = Path(data), Path(output)
    lines = ["# aortic-9 models on real CT scans (not phantoms)", ""]
    summary, sections, loaded = {}, [], []
    for name in models:
        model = load_model(name, landmark_set="aortic-9")
        loaded.append(model)
        results = {}
        for case in REAL_CASES:
            truth = reference(case, data)
            detection = detect(read_volume(data / case.volume), model, device=device)
            evaluation = Evaluation.of([detection], [truth], [case.name])
            write_tables(evaluation, output / model.name / case.name)
            results[case.name] = (detection, truth)
        sections.append(_model_section(model.name, results))
        summary[model.name] = {case: _case_record(*result) for case, result in results.items()}
    report = "\n".join(lines + [line for section in sections for line in section])
    write_text_atomically(output / "report.md", report + "\n")
    write_text_atomically(output / "report.json", json.dumps(summary, indent=2) + "\n")
    if bundle:
        card = cta_model_card(bundle, loaded[0], sections[0][1:])
        entry = add_bundled_model(models[0], bundle, card, description=CTA_DESCRIPTION)
        report += (
            f"\n\nBundled {models[0]} as {entry.name} (version {entry.version}) in Resources/Models, with its card."
        )
    return report


CTA_DESCRIPTION = "Aortic CTA, 9 landmarks, for real scans of any field of view (trained on phantoms and real CTA)"


def cta_model_card(name: str, model: CascadeModel, real_section: list[str]) -> str:
    """The card of an aortic-9 model for real scans: what it saw, how it was made, and its figures on the real
    scans of the shared data (``real_section``: its table and targets from this benchmark)."""
    config, training = model.config, model.training
    trained_on = {name for run in training_runs(training) for name in run.get("cases", {}).get("training", [])}
    seen = [case.name for case in REAL_CASES if case.name in trained_on]
    weights = training.get("weights", {})
    seen_text = ", ".join(f"{n} (drawn {weights.get(n, 1):g} times as often as a phantom)" for n in seen) or "none"
    thresholds = ", ".join(f"{t:.2f}" for t in config.presence_thresholds)
    return "\n".join(
        [
            f"# {name}: aortic CTA, 9 landmarks, for real scans of any field of view",
            "",
            "Trained run after run (below) on synthetic CT angiography phantoms, the later runs on phantoms with "
            "realistic tissue, noise and contrast (`cascade-landmarks phantom aortic --realistic`), and on the real "
            "scans named here. "
            f"**Real scans seen in training: {seen_text}.** Its figures on those scans are training-set figures; "
            "the other real scans below it never saw. A research model: not for clinical use; check every point.",
            "",
            "## Model",
            f'- Stage 1 over the scan\'s own extent ("extent" mode): a U-Net (width {config.unet.width}, depth '
            f"{config.unet.depth}) on {config.stage1_spacing_mm:g} mm voxels, trained on cubes of "
            f"{' x '.join(map(str, config.stage1_grid))} voxels cut anywhere in the training scans; heatmap sigma "
            f"{config.heatmap_sigma:g} voxels.",
            f"- In view or not: a landmark whose heatmap peak is below its threshold ({thresholds}, in the order of "
            "the landmark set) is reported missing.",
            f"- Stage 2: one CNN per landmark on {config.displacement.patch_size}^3 patches of "
            f"{config.stage2_spacing_mm:g} mm, corrections up to {config.stage2_radius_mm:.1f} mm per pass, "
            f"{config.stage2_passes} pass(es) at detection.",
            "",
            "## Training runs (Adam; each run starts from the one before)",
            *training_run_lines(training),
            "",
            "## On the real scans of the shared data (`cascade-landmarks benchmark-real`)",
            *real_section,
            "## Limits",
            "- Three real scans were at hand, one of them annotated: the figures above are a first look, not a "
            "validation. The aortic dissection of cta-thorax-abdomen is one pathology among many.",
            f"- Stage 1 reads the scan at {config.stage1_spacing_mm:g} mm voxels, and stage 2 moves a point at most "
            f"{config.stage2_radius_mm * config.stage2_passes:.0f} mm from where stage 1 put it: a landmark that "
            "stage 1 places farther off is not found.",
            "- A low confidence flags a point to check; check every point before use.",
            "",
        ]
    )


def _model_section(name: str, results: dict[str, tuple[Detection, Landmarks]]) -> list[str]:
    lines = [f"## {name}", "", "| case | landmark | reference | reported | stage 1 (mm) | cascade (mm) | confidence |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for case, (detection, truth) in results.items():
        errors = detection.errors_mm(truth.positions_lps)
        for n, label in enumerate(detection.labels):
            status = truth.statuses[n]
            if status == "undefined":
                continue  # not known: not scored
            reported = "point" + (" (flagged)" if detection.flagged[n] else "") if detection.in_view[n] else "missing"
            scored = status == "defined" and detection.in_view[n]
            cells = [f"{errors[stage][n]:.1f}" if scored else "" for stage in ("stage1", "cascade")]
            lines.append(f"| {case} | {label} | {status} | {reported} | {cells[0]} | {cells[1]} | "
                         f"{detection.confidence[n]:.2f} |")  # fmt: skip
    return [*lines, "", *_target_lines(results), ""]


def _target_lines(results: dict[str, tuple[Detection, Landmarks]]) -> list[str]:
    """The issue's figures for these scans, measured: each says its value and whether it is met."""
    lines = []
    detection, truth = results["cta-thorax-abdomen"]
    errors = detection.errors_mm(truth.positions_lps)["cascade"]
    placed = truth.defined
    scored = placed & detection.in_view
    unflagged_far = int(np.sum(scored & ~detection.flagged & (errors > PHANTOM_TARGET_MM)))
    if scored.any():
        lines.append(
            f"- cta-thorax-abdomen: mean {np.mean(errors[scored]):.1f} mm over the {int(scored.sum())} of "
            f"{int(placed.sum())} placed landmarks found in view; {unflagged_far} unflagged point(s) beyond "
            f"{PHANTOM_TARGET_MM:g} mm."
        )
    else:
        lines.append(f"- cta-thorax-abdomen: none of the {int(placed.sum())} placed landmarks found in view.")
    false_points = []
    for case, (detection, truth) in results.items():
        false_points += [f"{case}: {label}" for label, gone, seen in
                         zip(truth.labels, truth.missing, detection.in_view, strict=True) if gone and seen]  # fmt: skip
    lines.append(f"- Out of view given a point: {', '.join(false_points) or 'none'}.")
    detection, truth = results["ct-abdomen-pelvis-noncontrast"]
    n = truth.labels.index("aortic bifurcation")
    error = detection.errors_mm(truth.positions_lps)["cascade"][n]
    found = "found" if detection.in_view[n] else "reported missing"
    lines.append(f"- ct-abdomen-pelvis-noncontrast: the bifurcation {found}, {error:.1f} mm off.")
    return lines


def _case_record(detection: Detection, truth: Landmarks) -> dict:
    errors = detection.errors_mm(truth.positions_lps)
    return {
        label: {
            "reference": truth.statuses[n],
            "in_view": bool(detection.in_view[n]),
            "flagged": bool(detection.flagged[n]),
            "stage1_mm": round(float(errors["stage1"][n]), 2) if truth.defined[n] else None,
            "cascade_mm": round(float(errors["cascade"][n]), 2) if truth.defined[n] else None,
            "confidence": round(float(detection.confidence[n]), 3),
        }
        for n, label in enumerate(detection.labels)
    }
