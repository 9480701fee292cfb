"""The paper's tables, reproduced on synthetic CTA phantoms: ``cascade-landmarks benchmark``.

For each landmark set (cardiac-5, aortic-9) it writes training and held-out test phantoms (fixed seeds), trains
the cascade (whole-image stage 1, then stage 2) and, for cardiac, the paper's ablation (the U-Net on patches of
the stage-1 grid), evaluates them on the held-out phantoms and prints the paper's

- Table 1 layout: mean error per landmark of the patch-based stage 1, the whole-image stage 1 and the cascade;
- Table 2 layout: mean +- std per landmark of the cascade, for both sets;

beside the paper's own means (per-landmark figures of the paper are not quoted here). Everything is measured on
phantoms, and every table says so. The work folder keeps the phantoms, models and tables: a second run reuses
what is there (the phantoms are fixed by their seeds) and resumes a training that was killed.

Sizes: ``full`` (the bundled models are trained with it) and ``quick`` (a smoke run of a few minutes that shows
the machinery, not accuracy). Both use coarser voxels than the paper's scans (cardiac 0.8 mm instead of 0.4 mm,
aortic 1.4 mm instead of 0.71 x 0.71 x 0.81 mm) and far fewer iterations, to fit a laptop CPU.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..evaluation.errors import Evaluation, evaluate
from ..inference.detector import detect
from ..io.atomic_files import write_text_atomically
from ..io.landmark_sets import load_landmark_set
from ..io.landmarks import read_landmarks
from ..io.volumes import read_volume
from ..model.model_file import CascadeModel, load_model
from ..progress import Reporter
from ..training.config import FINE_TUNING_LEARNING_RATE, TrainingConfig
from ..training.run_files import checkpoint_path
from ..training.trainer import train
from .bundling import add_bundled_model
from .phantoms import phantom, write_phantoms

# Mean errors in mm reported by Tan et al. (their Tables 1 and 2); None where the paper gives no such figure.
PAPER_MEAN_MM = {
    "cardiac": {"patch": 6.25, "stage1": 3.99, "cascade": 2.08},
    "aortic": {"patch": None, "stage1": None, "cascade": 6.14},
}
TEST_SEED_OFFSET = 10000
REAL_CTA = Path("real") / "cta-thorax-abdomen"


@dataclass(frozen=True)
class BenchmarkSize:
    """How big a benchmark run is; the same size gives the same phantoms and, on the same machine, the same models.

    Training runs both stages at the paper's learning rate (1e-3), then "polishes" stage 2 for
    ``polish_iterations[kind]`` more at 1e-4 (fine-tuning the model: a learning-rate drop, as is usual when the
    iterations are few; the paper trains stage 2 for 45,000), with half of its patches centred close to their
    landmark (``POLISH_NEAR_SHARE``), where the last of the model's stage-2 passes works.
    """

    name: str
    training_cases: int
    test_cases: int
    stage1_iterations: int
    stage2_iterations: int
    polish_iterations: dict[str, int]  # per phantom kind
    batch_size: int = 4
    voxel_scale: float = 1.0  # times the phantoms' benchmark voxel size (SETTINGS)


SIZES = {
    "full": BenchmarkSize(
        "full",
        training_cases=40,
        test_cases=10,
        stage1_iterations=3000,
        stage2_iterations=2500,
        polish_iterations={"cardiac": 10000, "aortic": 5000},
    ),
    "quick": BenchmarkSize(
        "quick",
        training_cases=4,
        test_cases=2,
        stage1_iterations=30,
        stage2_iterations=30,
        polish_iterations={"cardiac": 10, "aortic": 10},
        voxel_scale=2.0,
    ),
}

# Per phantom: the voxel size of the benchmark's phantoms and the model settings fitted to it, for a CPU budget:
# stage 1 on a coarse grid (cardiac 6.4 mm, aortic 12 mm) with a heatmap sigma of 2 voxels; stage-2 patches of 32
# voxels; three stage-2 passes at detection. How these were chosen, with the figures: README, "Phantoms and the
# paper's tables".
SETTINGS = {
    "cardiac": {
        "spacing_mm": 0.8,
        "model": {
            "stage1_spacing_mm": 6.4,
            "heatmap_sigma": 2.0,
            "patch_size": 32,
            "stage2_radius_mm": 12.0,
            "stage1_patch_size": 16,
            "stage2_passes": 3,
        },
    },
    "aortic": {
        "spacing_mm": 1.4,
        "model": {"stage1_spacing_mm": 12.0, "heatmap_sigma": 2.0, "patch_size": 32, "stage2_passes": 3},
    },
}
POLISH_NEAR_SHARE = 0.5


def run_benchmark(
    output: str | os.PathLike,
    *,
    kinds=("cardiac", "aortic"),
    size: str = "full",
    device: str = "auto",
    progress: bool | Reporter = True,
    bundle: bool = False,
    real_data: str | os.PathLike | None = None,
) -> str:
    """Write phantoms, train, evaluate; returns the report (Markdown), also written to ``output/report.md``.

    With ``real_data`` (the shared data folder), the phantom-trained aortic model is also run on the real CTA
    there and scored on the landmarks both share. With ``bundle``, each cascade model is shipped in
    ``Resources/Models`` as ``<set>-phantom`` with its model card and registry entry (for the developers, in a
    checkout).
    """
    if size not in SIZES:
        raise ValueError(f"Unknown benchmark size {size!r}: choose one of {', '.join(SIZES)}.")
    plan = SIZES[size]
    output = Path(output)
    results = {kind: _run_one(kind, output / kind, plan, device, progress) for kind in kinds}
    report = _report(results, plan)
    if real_data is not None and "aortic" in results:
        report += _real_cta_section(output / "aortic" / "aortic-cascade.pt", Path(real_data) / REAL_CTA, device)
    write_text_atomically(output / "report.md", report)
    summary = {
        "size": asdict(plan),
        "settings": {kind: SETTINGS[kind] for kind in kinds},
        "results": {kind: {k: _means(v) for k, v in r.items()} for kind, r in results.items()},
    }
    write_text_atomically(output / "report.json", json.dumps(summary, indent=2))
    if bundle:
        for kind, evaluations in results.items():
            landmark_set = phantom(kind).LANDMARK_SET
            add_bundled_model(
                output / kind / f"{kind}-cascade.pt",
                f"{landmark_set}-phantom",
                model_card(kind, load_model(output / kind / f"{kind}-cascade.pt"), evaluations["cascade"], plan),
                description=f"{load_landmark_set(landmark_set).title}; trained on synthetic phantoms only",
            )
    return report


def _run_one(
    kind: str, folder: Path, plan: BenchmarkSize, device: str, progress: bool | Reporter
) -> dict[str, Evaluation]:
    _claim_folder(folder, plan)
    settings = SETTINGS[kind]
    spacing = (settings["spacing_mm"] * plan.voxel_scale,) * 3
    training_seeds = range(1, plan.training_cases + 1)
    test_seeds = range(TEST_SEED_OFFSET + 1, TEST_SEED_OFFSET + plan.test_cases + 1)
    for subfolder, seeds in (("train", training_seeds), ("test", test_seeds)):
        missing = [s for s in seeds if not (folder / subfolder / f"{kind}-{s:04d}.mrk.json").exists()]
        write_phantoms(kind, folder / subfolder, missing, spacing_mm=spacing)

    landmark_set = phantom(kind).LANDMARK_SET
    evaluations = {}
    for variant, mode, stage2 in (("patch", "patch", 0), ("cascade", "whole", plan.stage2_iterations)):
        if kind != "cardiac" and variant == "patch":
            continue  # the paper's ablation is on the cardiac set only
        model_path = folder / f"{kind}-{variant}.pt"
        first_path = folder / f"{kind}-{variant}-unpolished.pt" if stage2 else model_path
        if not first_path.exists() and not model_path.exists():
            training = TrainingConfig(
                stage1_iterations=plan.stage1_iterations,
                stage2_iterations=stage2,
                batch_size=plan.batch_size,
                validation_fraction=0.1,
                validate_every=max(plan.stage1_iterations // 6, 1),
                device=device,
            )
            train(
                folder / "train",
                first_path,
                landmark_set=landmark_set,
                training=training,
                resume=checkpoint_path(first_path).exists(),
                progress=progress,
                config_settings={**settings["model"], "stage1_mode": mode},
            )
        if not model_path.exists():
            polish = TrainingConfig(
                stage1_iterations=0,
                stage2_iterations=plan.polish_iterations[kind],
                batch_size=plan.batch_size,
                learning_rate=FINE_TUNING_LEARNING_RATE,
                validation_fraction=0.1,
                validate_every=max(plan.polish_iterations[kind] // 5, 1),
                device=device,
                stage2_near_share=POLISH_NEAR_SHARE,
            )
            train(
                folder / "train",
                model_path,
                training=polish,
                init_from=first_path,
                resume=checkpoint_path(model_path).exists(),
                progress=progress,
                config_settings={"stage2_passes": settings["model"]["stage2_passes"]},
            )
        evaluations[variant] = evaluate(model_path, folder / "test", device=device, progress=progress)
    return evaluations


def _claim_folder(folder: Path, plan: BenchmarkSize) -> None:
    """Mark ``folder`` as this size's, or refuse it when another size's phantoms and models are there (they would
    be taken up as they are: a full run would report a quick run's models)."""
    marker = folder / "size.json"
    wanted = asdict(plan)
    found = json.loads(marker.read_text(encoding="utf-8")) if marker.exists() else None
    if found is None and folder.is_dir() and any(folder.iterdir()):
        found = {"name": "unknown-size (made before benchmarks marked their size)"}
    if found is not None and found != wanted:
        raise ValueError(
            f"{folder} holds the phantoms and models of a `{found.get('name')}` benchmark, not a `{plan.name}` one: "
            "give another output folder (-o), or delete this one to start afresh."
        )
    write_text_atomically(marker, json.dumps(wanted, indent=2) + "\n")


def _means(evaluation: Evaluation) -> dict:
    return {
        stage: {
            "per_landmark_mean_mm": dict(zip(evaluation.labels, errors.mean(axis=0).round(3).tolist(), strict=True)),
            "per_landmark_std_mm": dict(zip(evaluation.labels, errors.std(axis=0).round(3).tolist(), strict=True)),
            "mean_mm": round(float(errors.mean()), 3),
        }
        for stage, errors in evaluation.errors_mm.items()
    }


def _report(results: dict[str, dict[str, Evaluation]], plan: BenchmarkSize) -> str:
    lines = [
        "# The paper's tables on synthetic CTA phantoms",
        "",
        f"**Measured on synthetic phantoms, not on patients.** Size `{plan.name}`: {plan.training_cases} training "
        f"phantoms (seeds 1-{plan.training_cases}), {plan.test_cases} held-out test phantoms (seeds "
        f"{TEST_SEED_OFFSET + 1}-{TEST_SEED_OFFSET + plan.test_cases}), {plan.stage1_iterations} stage-1 and "
        f"{plan.stage2_iterations} stage-2 iterations of batch {plan.batch_size} at learning rate 1e-3, then "
        + ", ".join(f"{plan.polish_iterations[kind]} ({kind})" for kind in results)
        + f" stage-2 iterations at {FINE_TUNING_LEARNING_RATE:g}; voxels "
        + ", ".join(f"{kind} {SETTINGS[kind]['spacing_mm'] * plan.voxel_scale:g} mm" for kind in results)
        + ". The paper's figures are means on its patient scans.",
        "",
    ]
    if "cardiac" in results:
        lines += _table1(results["cardiac"])
    lines += ["## Table 2 layout: cascade error per landmark, mean +- std (mm; synthetic phantoms)", ""]
    for kind, evaluations in results.items():
        cascade = evaluations["cascade"].errors_mm["cascade"]
        lines += [f"### {kind}", "", "| landmark | phantoms | paper |", "|---|---|---|"]
        for index, label in enumerate(evaluations["cascade"].labels):
            lines.append(f"| {label} | {cascade[:, index].mean():.2f} +- {cascade[:, index].std():.2f} | - |")
        paper = PAPER_MEAN_MM[kind]["cascade"]
        lines += [f"| **mean** | {cascade.mean():.2f} +- {cascade.std():.2f} | {paper:.2f} |", ""]
    return "\n".join(lines)


def _table1(evaluations: dict[str, Evaluation]) -> list[str]:
    rows = {
        "patch": ("U-Net on patches (stage 1)", evaluations["patch"].errors_mm["stage1"]),
        "stage1": ("U-Net on the whole image (stage 1)", evaluations["cascade"].errors_mm["stage1"]),
        "cascade": ("cascade (stage 1 + stage 2)", evaluations["cascade"].errors_mm["cascade"]),
    }
    labels = evaluations["cascade"].labels
    lines = [
        "## Table 1 layout: cardiac, mean error per landmark (mm; synthetic phantoms)",
        "",
        "| method | "
        + " | ".join(f"{n}. {label}" for n, label in enumerate(labels, start=1))
        + " | mean | paper mean |",
        "|---|" + "---|" * (len(labels) + 2),
    ]
    for key, (title, errors) in rows.items():
        cells = " | ".join(f"{v:.2f}" for v in errors.mean(axis=0))
        paper = PAPER_MEAN_MM["cardiac"][key]
        lines.append(f"| {title} | {cells} | {errors.mean():.2f} | {paper:.2f} |")
    ratio = rows["cascade"][1].mean() / rows["stage1"][1].mean()
    paper = PAPER_MEAN_MM["cardiac"]
    lines += ["", f"Cascade / whole-image stage 1: {ratio:.2f} (paper: {paper['cascade'] / paper['stage1']:.2f}).", ""]
    return lines


def model_card(kind: str, model: CascadeModel, evaluation: Evaluation, plan: BenchmarkSize) -> str:
    """The model card of a bundled phantom-trained model: what it was trained on, how, and how well."""
    config, polished = model.config, model.training
    training = polished["previous_training"] or polished  # the main run; then stage 2 polished at a lower rate
    run, polish = training["training_config"], polished["training_config"]
    landmark_set = config.landmark_set
    rows = [
        f"| {label} | {s1:.2f} +- {d1:.2f} | {c:.2f} +- {dc:.2f} |"
        for label, s1, d1, c, dc in zip(
            evaluation.labels,
            evaluation.errors_mm["stage1"].mean(axis=0),
            evaluation.errors_mm["stage1"].std(axis=0),
            evaluation.errors_mm["cascade"].mean(axis=0),
            evaluation.errors_mm["cascade"].std(axis=0),
            strict=True,
        )
    ]
    stage1, cascade = evaluation.errors_mm["stage1"], evaluation.errors_mm["cascade"]
    return "\n".join(
        [
            f"# {landmark_set.name}-phantom: {landmark_set.title}, trained on synthetic phantoms",
            "",
            "**This model has never seen a real patient.** It was trained and tested on synthetic CT angiography "
            f"phantoms ({kind}, `cascade_landmarks/bench/phantoms/{kind}.py`) whose landmarks are exact by "
            "construction. It drives the demo and is a starting point for fine-tuning on annotated scans; its figures "
            "say how well the method learns the phantoms, not how it does on patients. Not for clinical use.",
            "",
            "## Training",
            f"- Data: {len(training['cases']['training'])} training and {len(training['cases']['validation'])} "
            f"validation phantoms (seeds 1-{plan.training_cases}) at {config.stage2_spacing_mm:g} mm voxels.",
            f"- Stage 1: whole-image U-Net (width {config.unet.width}, depth {config.unet.depth}) on a "
            f"{' x '.join(map(str, config.stage1_grid))} grid of {config.stage1_spacing_mm:g} mm voxels, heatmap sigma "
            f"{config.heatmap_sigma:g} voxels; {run['stage1_iterations']} iterations.",
            f"- Stage 2: one CNN per landmark on {config.displacement.patch_size}^3 patches of "
            f"{config.stage2_spacing_mm:g} mm, corrections up to {config.stage2_radius_mm:.1f} mm per pass, "
            f"{config.stage2_passes} pass(es) at detection; {run['stage2_iterations']} iterations.",
            f"- Adam, learning rate {run['learning_rate']:g}, batch {run['batch_size']}, seed {run['seed']}, no "
            f"augmentation; then stage 2 polished for {polish['stage2_iterations']} iterations at learning rate "
            f"{polish['learning_rate']:g}, {polish.get('stage2_near_share', 0):.0%} of its patches centred within a "
            f"quarter of the radius; {(training['seconds'] + polished['seconds']) / 60:.0f} minutes on "
            f"{training['device']} (torch {training['torch']}, cascade_landmarks {training['cascade_landmarks']}).",
            f"- Reproduce: `cascade-landmarks benchmark --sets {kind} -o benchmark --bundle`.",
            "",
            f"## Error on {len(evaluation.case_names)} held-out phantoms (mm, mean +- std; synthetic data)",
            "",
            "| landmark | stage 1 | cascade |",
            "|---|---|---|",
            *rows,
            f"| **all** | {stage1.mean():.2f} +- {stage1.std():.2f} | {cascade.mean():.2f} +- {cascade.std():.2f} |",
            "",
            "## Limits",
            "- Phantoms are simplified anatomy (tubes, ellipsoids, spheres) with textbook layouts: real scans have "
            "pathology, calcium, stents, motion and streak artefacts, other fields of view and contrast timing.",
            f"- Volumes are resampled to {config.stage2_spacing_mm:g} mm for stage 2; a landmark farther than "
            f"{config.stage2_radius_mm:.1f} mm from the stage-1 estimate is not reached in one pass, and may be "
            "missed altogether.",
            "- A low confidence flags a point to check; check every point before use.",
            "",
        ]
    )


def _real_cta_section(model_path: Path, case: Path, device: str) -> str:
    """The phantom-trained aortic model on the real CTA: error on each landmark the reference file also has."""
    volume_path, reference_path = case / "ct.nii.gz", case / "landmarks.mrk.json"
    if not volume_path.exists():
        raise ValueError(f"No real CTA at {volume_path}: pass the shared data folder.")
    model = load_model(model_path)
    detection = detect(read_volume(volume_path), model, device=device)
    reference = read_landmarks(reference_path)
    lines = [
        "",
        "## The phantom-trained aortic model on a real CTA",
        "",
        f"`{volume_path}` (a real patient, aortic dissection; reference points from TotalSegmentator masks, good "
        "to a few mm). The model has seen phantoms only.",
        "",
        "| landmark | stage 1 (mm) | cascade (mm) | confidence |",
        "|---|---|---|---|",
    ]
    cascade_errors = []
    for label in reference.labels:
        if label not in detection.labels:
            continue
        n, truth = detection.labels.index(label), reference.positions_lps[reference.labels.index(label)]
        stage1 = float(np.linalg.norm(detection.stage1_lps[n] - truth))
        cascade_errors.append(float(np.linalg.norm(detection.positions_lps[n] - truth)))
        lines.append(f"| {label} | {stage1:.1f} | {cascade_errors[-1]:.1f} | {detection.confidence[n]:.2f} |")
    lines += [f"| **mean** | | {np.mean(cascade_errors):.1f} | |", ""]
    return "\n".join(lines)
