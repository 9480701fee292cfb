"""The ``cascade-landmarks`` command. Commands that need torch import it when they run, so that ``info``,
``convert``, ``sets`` and ``phantom`` start at once.

- ``train DATA -o MODEL --landmarks SET``: train both stages on a folder of cases (or a CSV manifest); also
  fine-tuning (``--init-from``), resuming after a kill (``--resume``) and, under ``torchrun``, several processes;
- ``export-checkpoint MODEL.pt.checkpoint -o MODEL``: the model a training run had reached at its last checkpoint;
- ``detect MODEL VOLUME... -o OUT``: one ``.mrk.json`` per volume (files, DICOM folders, folders of those, CSV
  manifests) and a CSV for the batch, resumable;
- ``evaluate MODEL DATA -o OUT``: error tables (Markdown, CSV), the error plot and quality-control images;
- ``calibrate MODEL DATA -o OUT``: an extent model's presence thresholds set from annotated cases;
- ``benchmark [--quick]``: the paper's tables on synthetic phantoms (writes phantoms, trains, evaluates);
- ``benchmark-speed``: time and peak memory of detection on a 512^3 volume (``--batch N``: volumes per hour);
- ``benchmark-afids MODEL``: an afids-32 model scored on Colin27 beside the human raters;
- ``benchmark-real MODEL...``: aortic-9 models on the real CT scans of the shared data;
- ``benchmark-crops MODEL DATA``: the in-view decision on held-out cases cut at random into boxes;
- ``benchmark-correction MODEL``: the annotation loop on the real CTA (detect, correct, save, fine-tune), re-scored;
- ``compare-phantoms``: aortic phantoms, plain and realistic, against the real CTA (tissues, noise, a montage);
- ``info VOLUME [LANDMARKS]``: a volume's geometry and, for each landmark, its RAS position, voxel index and
  the intensity there (the quickest check that a landmark file and a volume agree on coordinates);
- ``convert LANDMARKS OUT``: between ``.fcsv``, ``.mrk.json`` (LPS or RAS) and long-format CSV;
- ``phantom {cardiac,aortic} -n N -o DIR``: synthetic CTA phantoms with exactly known landmarks;
- ``sets [NAME]``: the shipped landmark sets, or one set's landmarks;
- ``serve DATA``: the web app (open, detect, correct, save and fine-tune in a browser);
- ``demo``: the built-in example (see README).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bench.phantoms import FORMATS as PHANTOM_FORMATS
from .bench.phantoms import PHANTOMS, phantom, write_phantoms
from .io.atomic_files import DISK_FULL, write_text_atomically
from .io.landmark_sets import available_landmark_sets, load_landmark_set
from .io.landmarks import LANDMARK_SUFFIXES, Landmarks, read_landmarks, write_landmarks, write_landmarks_csv
from .io.volumes import Volume, read_volume, values_at, write_volume
from .model.config import DETECTION_SETTINGS, STAGE1_MODES, STAGE1_PRECISIONS, IntensityWindow
from .model.registry import available_models, names_a_file, register_model
from .progress import JsonReporter, TerminalReporter
from .slicer.runs import FINE_TUNING_STAGE1_ITERATIONS, FINE_TUNING_STAGE2_ITERATIONS
from .training.config import FINE_TUNING_LEARNING_RATE, LEARNING_RATE_SCHEDULES, PRESETS, TrainingConfig, with_settings

DEMO_MODEL = "cardiac-5-phantom"
DEMO_SEED = 20001  # not among the benchmark's training or test seeds
PASSES_HELP = "how many times stage 2 refines each point, from a patch centred where the last pass left it"
PROGRESS_FORMATS = ("bar", "json")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; its exit code: 0 done, 2 refused (a message says what to change), 1 failed otherwise
    (``detect`` on several volumes: the number of cases that failed)."""
    args = _build_parser().parse_args(argv)
    show = not getattr(args, "quiet", False)
    args.reporter = JsonReporter(progress=show) if args.progress_format == "json" else TerminalReporter(progress=show)
    try:
        if not isinstance(args.reporter, JsonReporter):
            return args.run(args)
        with contextlib.redirect_stdout(sys.stderr):  # standard output carries the messages, and only them
            code = args.run(args)
        if not args.reporter.results:
            args.reporter.send({"type": "result"})  # done, with nothing more to say
        return code
    except ValueError as error:
        _report_error(args, str(error))
        return 2
    except BrokenPipeError:  # the reader stopped early (``cascade-landmarks sets | head``): nothing went wrong
        sys.stderr.close()
        return 0
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        _report_error(args, f"Cannot write {error.filename or 'a file'}: {os.strerror(error.errno)}. {OUT_OF_SPACE}")
        return 1
    except Exception as error:
        if not isinstance(args.reporter, JsonReporter):
            raise  # a person at a terminal gets the traceback, to report it
        _report_error(args, f"{type(error).__name__}: {error}")
        return 1


OUT_OF_SPACE = (
    "Every file is written whole or not at all, so the files written before are intact: make room, then run the "
    "same command again (detect skips the cases it finished; train goes on with --resume)."
)


def _report_error(args: argparse.Namespace, message: str) -> None:
    """Say why the command stopped: on standard error, and as the last JSON message for a program."""
    print(f"cascade-landmarks {args.command}: {message}", file=sys.stderr)
    if isinstance(args.reporter, JsonReporter):
        args.reporter.send({"type": "error", "message": message})


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade-landmarks", description="Anatomical landmark detection in CT angiography (Tan et al.)."
    )
    parser.add_argument(
        "--progress-format",
        choices=PROGRESS_FORMATS,
        default="bar",
        help="bar: progress bars on standard error; json: messages for a program, one JSON object per line on "
        "standard output (progress, warnings, then the result or the error)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train_parser, _add_export_parser, _add_detect_parser, _add_evaluate_parser, _add_bench_parsers,
                _add_speed_parser, _add_file_parsers, _add_phantom_parser, _add_serve_parser,
                _add_demo_parser):  # fmt: skip
        add(commands)
    return parser


def _add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export-checkpoint", help="write the model a training run had reached at its last checkpoint"
    )
    export.add_argument("checkpoint", help="MODEL.pt.checkpoint, beside a training run's output")
    export.add_argument("-o", "--output", required=True, help="model file to write (.pt); must not exist")
    export.set_defaults(run=_run_export_checkpoint)


def _add_speed_parser(commands) -> None:
    speed = commands.add_parser("benchmark-speed", help="time and peak memory of detection on a large CT volume")
    speed.add_argument("--size", type=int, default=512, help="volume edge in voxels (default: %(default)s)")
    speed.add_argument("--model", help="model file (default: an untrained model of the default size; timing only)")
    speed.add_argument("--device", default="cpu", help="auto, cpu or cuda (default: %(default)s)")
    speed.add_argument("--repeats", type=int, default=3, help="detections to time (default: %(default)s)")
    speed.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="instead: volumes per hour and memory over N volumes of 512 x 512 x 300 (gzipped NIfTI), with and "
        "without read-ahead",
    )
    speed.set_defaults(run=_run_benchmark_speed)


def _add_bench_parsers(commands) -> None:
    bench = commands.add_parser(
        "benchmark", help="the paper's tables on synthetic phantoms: write phantoms, train, evaluate, report"
    )
    bench.add_argument(
        "-o", "--output", default="benchmark", help="work folder, reused by a second run (default: %(default)s)"
    )
    bench.add_argument(
        "--sets", nargs="+", choices=sorted(PHANTOMS), default=["cardiac", "aortic"], help="phantom kinds"
    )
    bench.add_argument(
        "--quick", action="store_true", help="a smoke run of a few minutes: shows the machinery, not accuracy"
    )
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    bench.add_argument("--real-data", help="the shared data folder: also run the aortic model on its real CTA")
    bench.add_argument(
        "--bundle", action="store_true", help="ship the cascade models in Resources/Models with cards (developers)"
    )
    bench.set_defaults(run=_run_benchmark)

    afids = commands.add_parser(
        "benchmark-afids", help="score an afids-32 model on Colin27 beside the human raters (shared/data)"
    )
    afids.add_argument("model", help="an afids-32 model trained on the MNI template only")
    afids.add_argument("--data", default="../shared/data", help="the shared data folder (default: %(default)s)")
    afids.add_argument("-o", "--output", default="afids-report", help="report folder (default: %(default)s)")
    afids.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    afids.add_argument(
        "--bundle", action="store_true", help="ship the model with a card if it clearly beats the reference points"
    )
    afids.set_defaults(run=_run_benchmark_afids)

    real = commands.add_parser(
        "benchmark-real", help="aortic-9 models on the real CT scans of the shared data: errors and in-view decisions"
    )
    real.add_argument("models", nargs="+", help="aortic-9 model files or registered names")
    real.add_argument("--data", default="../shared/data", help="the shared data folder (default: %(default)s)")
    real.add_argument("-o", "--output", default="real-report", help="report folder (default: %(default)s)")
    real.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    real.add_argument("--bundle", metavar="NAME", help="ship the first model as NAME with a card (developers)")
    real.set_defaults(run=_run_benchmark_real)

    crops = commands.add_parser(
        "benchmark-crops", help="the in-view decision on held-out cases cut into boxes of random extent and place"
    )
    crops.add_argument("model", help="a model file or registered name")
    crops.add_argument("data", help="a folder or manifest of held-out cases with reference landmarks")
    crops.add_argument("-o", "--output", default="crops-report", help="report folder (default: %(default)s)")
    crops.add_argument("--crops-per-case", type=int, default=5, help="boxes cut from each case (default: %(default)s)")
    crops.add_argument("--seed", type=int, default=0, help="seed of the boxes (default: %(default)s)")
    crops.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    crops.set_defaults(run=_run_benchmark_crops)

    loop = commands.add_parser(
        "benchmark-correction",
        help="the annotation loop on the real CTA: detect, correct, save, fine-tune (Slicer's MRML core), re-score",
    )
    loop.add_argument("model", help="an aortic-9 model file or registered name to start from")
    loop.add_argument("--data", default="../shared/data", help="the shared data folder (default: %(default)s)")
    loop.add_argument("-o", "--output", default="correction-loop", help="work folder (default: %(default)s)")
    for stage, steps in ((1, FINE_TUNING_STAGE1_ITERATIONS), (2, FINE_TUNING_STAGE2_ITERATIONS)):
        loop.add_argument(f"--stage{stage}-iterations", type=int, default=steps,
                          help="fine-tuning steps (default: the Slicer module's, %(default)s)")  # fmt: skip
    loop.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    loop.set_defaults(run=_run_benchmark_correction)

    compare = commands.add_parser(
        "compare-phantoms", help="aortic phantoms, plain and realistic, set against the real CTA of the shared data"
    )
    compare.add_argument("--data", default="../shared/data", help="the shared data folder (default: %(default)s)")
    compare.add_argument("-o", "--output", default="phantoms-vs-real", help="report folder (default: %(default)s)")
    compare.add_argument("--cases", type=int, default=4, help="phantoms of each kind (default: %(default)s)")
    compare.set_defaults(run=_run_compare_phantoms)


def _add_file_parsers(commands) -> None:
    info = commands.add_parser("info", help="show a volume's geometry and where landmarks fall in it")
    info.add_argument("volume", help="volume file (.nrrd, .nii.gz, .mha, ...) or DICOM folder")
    info.add_argument("landmarks", nargs="?", help="landmark file (.mrk.json or .fcsv)")
    info.set_defaults(run=_run_info)

    convert = commands.add_parser("convert", help="convert a landmark file (.fcsv, .mrk.json) to .mrk.json or .csv")
    convert.add_argument("source", help="landmark file (.mrk.json or .fcsv)")
    convert.add_argument("output", help="output file: .mrk.json, or .csv (long format)")
    convert.add_argument(
        "--coordinate-system", choices=["LPS", "RAS"], default="LPS", help="frame to write in (default: %(default)s)"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    convert.add_argument("--case", help="case name for the CSV (default: the source file name without .mrk.json/.fcsv)")
    convert.set_defaults(run=_run_convert)

    sets = commands.add_parser("sets", help="list the shipped landmark sets, or the landmarks of one")
    sets.add_argument("name", nargs="?", help="a landmark set, e.g. cardiac-5")
    sets.set_defaults(run=_run_sets)


def _add_phantom_parser(commands) -> None:
    make_phantoms = commands.add_parser("phantom", help="write synthetic CTA phantoms with exactly known landmarks")
    make_phantoms.add_argument(
        "kind", choices=sorted(PHANTOMS), help="cardiac (cardiac-5 landmarks) or aortic (aortic-9)"
    )
    make_phantoms.add_argument("-n", "--cases", type=int, default=1, help="how many cases (default: %(default)s)")
    make_phantoms.add_argument("-o", "--output", required=True, help="folder to write the cases into")
    make_phantoms.add_argument("--seed", type=int, default=1, help="seed of the first case; the next ones count up")
    make_phantoms.add_argument(
        "--spacing",
        type=_spacing,
        help="voxel size in mm, one value or three (default: the paper's, 0.4 cardiac, 0.71,0.71,0.81 aortic)",
    )
    make_phantoms.add_argument("--format", choices=sorted(PHANTOM_FORMATS), default="nrrd", help="volume file format")
    make_phantoms.add_argument(
        "--realistic",
        action="store_true",
        help="add what a clinical CTA also shows: veins, lung vessels, airways, plaques, texture, correlated noise, "
        "streaks, thick slices, contrast timing (default: the plain phantoms of the paper's tables)",
    )
    make_phantoms.set_defaults(run=_run_phantom)


def _add_serve_parser(commands) -> None:
    serve = commands.add_parser("serve", help="the web app: open, detect, correct and save cases in a browser")
    serve.add_argument("data", help="folder of cases (volume files, DICOM folders) the page may open")
    serve.add_argument(
        "--training-folder", help="where the page saves corrected cases and fine-tunes (default: DATA/corrected)"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: %(default)s, this machine only)"
    )
    serve.add_argument("--port", type=int, default=8080, help="port; 0: any free one (default: %(default)s)")
    serve.add_argument(
        "--max-upload-mb", type=float, default=1024, help="largest volume a page may upload (default: %(default)s)"
    )
    serve.add_argument("--model", help="registered model chosen when the page opens (default: the first)")
    serve.add_argument("--device", default="auto", help="auto, cpu or cuda, for detection (default: %(default)s)")
    serve.set_defaults(run=_run_serve)


def _add_demo_parser(commands) -> None:
    demo = commands.add_parser("demo", help="detect with the bundled cardiac model on a new synthetic phantom")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    demo.add_argument("--output", default="demo-output", help="folder for the results (default: %(default)s)")
    demo.set_defaults(run=_run_demo)


def _add_train_parser(commands) -> None:
    train = commands.add_parser("train", help="train both stages on a folder of volumes with landmark files")
    train.add_argument("data", help="folder of volumes with landmark files of the same name, or a CSV manifest")
    train.add_argument("-o", "--output", required=True, help="model file to write (.pt)")
    train.add_argument("--landmarks", help="landmark set: cardiac-5, aortic-9, afids-32 or a definition file")
    train.add_argument("--init-from", help="fine-tune this model (file or registered name) on the data")
    train.add_argument("--resume", action="store_true", help="continue a killed run from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    train.add_argument(
        "--register",
        action="store_true",
        help="add the trained model to your model list (with --init-from a registered model: as its next version)",
    )
    defaults = TrainingConfig()
    schedule = train.add_argument_group("schedule")
    schedule.add_argument("--stage1-iterations", type=int, default=defaults.stage1_iterations)
    schedule.add_argument("--stage2-iterations", type=int, default=defaults.stage2_iterations)
    schedule.add_argument("--batch-size", type=int, default=defaults.batch_size)
    schedule.add_argument(
        "--learning-rate",
        type=float,
        help=f"Adam's rate (default: {defaults.learning_rate:g}; {FINE_TUNING_LEARNING_RATE:g} with --init-from)",
    )
    schedule.add_argument(
        "--learning-rate-schedule",
        choices=LEARNING_RATE_SCHEDULES,
        default=defaults.learning_rate_schedule,
        help="constant (the paper) or cosine: down to 0 over each stage (default: %(default)s)",
    )
    schedule.add_argument("--seed", type=int, default=defaults.seed)
    schedule.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction)
    schedule.add_argument("--validate-every", type=int, default=defaults.validate_every)
    schedule.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    schedule.add_argument("--device", default=defaults.device, help="auto, cpu or cuda (default: %(default)s)")
    schedule.add_argument(
        "--stage2-near-share",
        type=float,
        default=defaults.stage2_near_share,
        help="share of stage-2 training patches centred within a quarter of the stage-2 radius (default: "
        "%(default)s, uniform in the whole radius); for models detecting with --stage2-passes above 1",
    )
    schedule.add_argument(
        "--augmentation",
        choices=sorted(PRESETS),
        default="none",
        help="random transforms and intensity changes: none (the paper, CTA) or one-shot (one annotated image)",
    )
    schedule.add_argument(
        "--augmentation-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change one setting of the --augmentation preset, e.g. elastic_grid=9 (repeatable; names in "
        "cascade_landmarks.training.config.Augmentation)",
    )
    _add_model_options(
        train.add_argument_group("model (defaults fitted to the data; ignored with --init-from or --resume)")
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(run=_run_train)


def _add_model_options(model) -> None:
    """How a new model is built (``train``'s options; a fine-tuned or resumed model keeps its own)."""
    model.add_argument("--stage1-spacing", type=float, help="stage-1 voxel size in mm (default: 4 x stage 2)")
    model.add_argument(
        "--stage1-grid",
        type=int,
        nargs=3,
        metavar=("I", "J", "K"),
        help="stage-1 grid in voxels (extent mode: the training cubes' size)",
    )
    model.add_argument(
        "--stage1-mode",
        choices=STAGE1_MODES,
        default="whole",
        help="whole: the paper's fixed grid; patch: its ablation; extent: any field of view, trained on cubes cut "
        "anywhere (default: %(default)s)",
    )
    model.add_argument("--stage1-patch-size", type=int, default=48)
    model.add_argument("--stage2-spacing", type=float, help="stage-2 voxel size in mm (default: the data's)")
    model.add_argument("--patch-size", type=int, default=64, help="stage-2 patch edge in voxels")
    model.add_argument("--stage2-radius", type=float, help="largest stage-2 correction in mm")
    model.add_argument("--unet-width", type=int, default=8)
    model.add_argument("--unet-depth", type=int, default=3)
    model.add_argument("--heatmap-sigma", type=float, default=3.0, help="target width in stage-1 voxels")
    _add_detection_options(model, "default: the model's with --init-from, else the paper's: one pass, no mirroring")
    model.add_argument(
        "--intensity",
        default="fixed:-1000:2000",
        help="fixed:LOW:HIGH (HU) or percentile:LOW:HIGH (default: %(default)s)",
    )


def _run_export_checkpoint(args: argparse.Namespace) -> int:
    from .training.trainer import export_checkpoint

    model = export_checkpoint(args.checkpoint, args.output)
    print(f"Wrote {args.output}: {model.training['stopped']}. The checkpoint is kept for train --resume.")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from .training.trainer import train

    if args.register:  # refused before hours of training, not after
        _check_registration(args)
    if not args.resume:
        _keep_existing(Path(args.output), args.overwrite)
    defaults = TrainingConfig()
    training = TrainingConfig(
        stage1_iterations=args.stage1_iterations,
        stage2_iterations=args.stage2_iterations,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate
        or (FINE_TUNING_LEARNING_RATE if args.init_from and not args.resume else defaults.learning_rate),
        learning_rate_schedule=args.learning_rate_schedule,
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        validate_every=args.validate_every,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        augmentation=with_settings(PRESETS[args.augmentation], args.augmentation_setting),
        stage2_near_share=args.stage2_near_share,
    )
    settings = {
        "stage1_spacing_mm": args.stage1_spacing,
        "stage1_grid": tuple(args.stage1_grid) if args.stage1_grid else None,
        "stage2_spacing_mm": args.stage2_spacing,
        "patch_size": args.patch_size,
        "unet_width": args.unet_width,
        "unet_depth": args.unet_depth,
        "stage1_mode": args.stage1_mode,
        "stage1_patch_size": args.stage1_patch_size,
        "heatmap_sigma": args.heatmap_sigma,
        "intensity": _intensity(args.intensity),
    }
    if args.stage2_radius is not None:
        settings["stage2_radius_mm"] = args.stage2_radius
    settings.update(_given_detection_settings(args))
    model = train(
        args.data,
        args.output,
        landmark_set=args.landmarks,
        training=training,
        init_from=args.init_from,
        resume=args.resume,
        progress=args.reporter,
        config_settings=settings,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, one process speaks
        return 0
    errors = model.training.get("validation_error_mm", {})
    stage1, cascade = _mm(errors.get("stage1")), _mm(errors.get("cascade"))
    print(f"Wrote {args.output}. Validation error: stage 1 {stage1}, cascade {cascade}.")
    result = {"type": "result", "model": str(args.output)}
    if args.register:
        entry = register_model(args.output, parent=_registered_parent(args, model))
        print(f"Registered it as {entry.name}.")
        result["registered"] = dataclasses.asdict(entry)
    args.reporter.send(result)
    return 0


def _check_registration(args: argparse.Namespace) -> None:
    """Refuse ``--register`` when the registry cannot take the model: a damaged registry, or the output file's name
    taken by a shipped model (when it is registered under its file's name)."""
    names = [entry.name for entry in available_models() if entry.bundled]
    name = Path(args.output).name.removesuffix(".pt")
    if _registered_parent(args) is None and not args.resume and name in names:
        raise ValueError(f"{name} is the name of a shipped model: give the output file another name to --register it.")


def _registered_parent(args: argparse.Namespace, model=None) -> str | None:
    """The registered model a training continues, for ``--register`` (with ``--resume``: the one the checkpoint's
    run was fine-tuned from); None when it started from a file or from nothing."""
    origin = args.init_from or (model.training.get("fine_tuned_from") if model is not None else None)
    return None if origin is None or names_a_file(origin) else origin


def _keep_existing(path: Path, overwrite: bool) -> None:
    """Refuse to replace the user's file at ``path`` unless ``--overwrite`` was given."""
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists: choose another output file, or add --overwrite to replace it.")


def _intensity(text: str) -> IntensityWindow:
    try:
        mode, low, high = text.split(":")
        return IntensityWindow(mode, float(low), float(high))
    except ValueError as error:
        raise ValueError(f"--intensity {text!r}: use fixed:LOW:HIGH or percentile:LOW:HIGH ({error}).") from error


def _mm(value: float | None) -> str:
    return "n/a (no validation cases)" if value is None else f"{value:.2f} mm"


def _add_detect_parser(commands) -> None:
    parser = commands.add_parser("detect", help="detect landmarks in volumes; one .mrk.json each and a CSV")
    parser.add_argument("model", help="model file or registered name (e.g. afids-32-mni152)")
    parser.add_argument(
        "volumes", nargs="+", help="volume files, DICOM folders, folders of those, or CSV manifests (a volume column)"
    )
    parser.add_argument("-o", "--output", required=True, help="folder for the results")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace results already in the output folder (default: refuse)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument(
        "--coordinate-system", choices=["LPS", "RAS"], default="LPS", help="frame of the outputs (default: %(default)s)"
    )
    parser.add_argument(
        "--read-ahead",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read the next volume while detecting in the current one; two volumes are then in memory (default: "
        "%(default)s)",
    )
    _add_detection_options(parser, "default: the model's")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_detect)


def _add_detection_options(parser, defaults: str) -> None:
    """The detection settings (``config.DETECTION_SETTINGS``), which may change on a trained model."""
    parser.add_argument("--stage2-passes", type=int, help=f"{PASSES_HELP} ({defaults})")
    parser.add_argument(
        "--presence-threshold",
        type=float,
        metavar="PEAK",
        help=f"a landmark whose heatmap peak is below PEAK (0-1) is not in view, for every landmark ({defaults}: "
        "training an extent model sets one per landmark from its validation cases; so does calibrate)",
    )
    parser.add_argument(
        "--stage2-tolerance",
        dest="stage2_tolerance_mm",
        type=float,
        metavar="MM",
        help=f"stop the passes early once one moves no point farther than MM; 0: always --stage2-passes ({defaults})",
    )
    parser.add_argument(
        "--mirror-stage1",
        action=argparse.BooleanOptionalAction,
        help="test-time left/right mirroring of stage 1 with twin labels swapped, for symmetric anatomy such as "
        f"the brain ({defaults})",
    )
    parser.add_argument(
        "--mirror-stage2",
        action=argparse.BooleanOptionalAction,
        help="the same for stage 2: each displacement averaged with the twin network's on the mirrored patch "
        f"({defaults})",
    )
    parser.add_argument(
        "--stage1-precision",
        choices=STAGE1_PRECISIONS,
        help="number format of stage 1's U-Net: bfloat16 takes about half the time where the device computes it "
        f"natively, which auto chooses ({defaults}; a model's default is auto)",
    )


def _given_detection_settings(args: argparse.Namespace) -> dict:
    """The detection settings given on the command line (those not given are left out)."""
    given = {name: getattr(args, name) for name in DETECTION_SETTINGS}
    return {name: value for name, value in given.items() if value is not None}


def _run_detect(args: argparse.Namespace) -> int:
    from .inference.batch import batch_cases, detect_batch
    from .model.model_file import load_model

    model = load_model(args.model)
    cases = batch_cases(args.volumes)
    output = Path(args.output)
    reporter = args.reporter
    task = reporter.task("detecting", 100 * len(cases))
    position = {case.name: index for index, case in enumerate(cases)}

    def report(name: str, fraction: float, step: str) -> None:
        task.update(int(100 * (position[name] + fraction)), case=name, step=step)

    def case_ended(name: str, detection, reason: str | None) -> None:
        if detection is None:
            reporter.warn(f"failed: {reason}", case=name)  # shown with --quiet too
            reporter.send({"type": "failure", "case": name, "reason": reason})
            return
        task.update(100 * (position[name] + 1), flagged=int(detection.flagged.sum()))
        for warning in detection.warnings:
            reporter.warn(warning, case=name)
        reporter.send({"type": "result", "case": name, "detection": detection.to_dict()})

    result = detect_batch(cases, model, output, settings=_given_detection_settings(args), device=args.device,
                          coordinate_system=args.coordinate_system, overwrite=args.overwrite,
                          read_ahead=args.read_ahead, progress=report, on_case=case_ended)  # fmt: skip
    task.close()
    if not result.is_main:  # another process of a torchrun batch: the first one reports for all
        return 0
    if len(cases) == 1 and result.failures:  # one volume: its error is the command's
        raise ValueError(next(iter(result.failures.values())))
    print(_detect_summary(result, output))
    return min(len(result.failures), MOST_FAILURES_IN_EXIT_STATUS)


# The exit status of detect is the number of cases that failed, up to this (a status is a byte).
MOST_FAILURES_IN_EXIT_STATUS = 100


def _detect_summary(result, output: Path) -> str:
    """What was written, what was skipped or failed, then per case the landmarks reported not in view and the
    points flagged for checking."""
    detections = result.detections
    absent = sum(int((~d.in_view).sum()) for d in detections.values())
    low = sum(int((d.flagged & d.in_view).sum()) for d in detections.values())
    skipped = f" ({len(result.skipped)} done by an earlier run, skipped)" if result.skipped else ""
    lines = [
        f"Wrote {len(detections)} .mrk.json files{skipped} and detections.csv to {output}.",
        f"{absent} landmark(s) not in view (a missing point; in_view 0 in detections.csv); {low} point(s) flagged "
        "for checking (low confidence; the flagged column).",
    ]
    if result.failures:
        lines.append(f"{len(result.failures)} case(s) failed, each with its reason in {output / 'failures.csv'}: "
                     f"{', '.join(result.failures)}.")  # fmt: skip
    for name, detection in detections.items():
        for what, chosen in (("not in view", ~detection.in_view), ("check", detection.flagged & detection.in_view)):
            labels = [label for label, pick in zip(detection.labels, chosen, strict=True) if pick]
            if labels:
                lines.append(f"  {name}, {what}: {', '.join(labels)}")
    return "\n".join(lines)


def _add_evaluate_parser(commands) -> None:
    parser = commands.add_parser("evaluate", help="error tables, plot and quality-control images on annotated cases")
    parser.add_argument("model", help="model file or registered name")
    parser.add_argument("data", help="folder of volumes with reference landmark files, or a CSV manifest")
    parser.add_argument("-o", "--output", required=True, help="folder for the report")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--no-qc", action="store_true", help="skip the quality-control images")
    _add_detection_options(parser, "default: the model's")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_evaluate)

    calibrate = commands.add_parser(
        "calibrate", help="set an extent model's presence thresholds (in view or not) from annotated cases"
    )
    calibrate.add_argument("model", help="model file or registered name (trained with --stage1-mode extent)")
    calibrate.add_argument("data", help="folder of volumes with reference landmark files, or a CSV manifest")
    calibrate.add_argument("-o", "--output", required=True, help="the calibrated model file (a new file)")
    calibrate.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the random fields of view (default: 0)")
    calibrate.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from .model.model_file import load_model
    from .training.presence import calibrate_model

    _, record = calibrate_model(load_model(args.model), args.data, args.output, device=args.device, seed=args.seed)
    thresholds = ", ".join(f"{t:.2f}" for t in record["thresholds"])
    print(f"Wrote {args.output}: presence thresholds {thresholds}; balanced accuracy "
          f"{record['overall_balanced_accuracy']:.2f} over {record['present']} views in and {record['absent']} out, "
          f"on {len(record['cases'])} case(s).")  # fmt: skip
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.errors import evaluate, write_tables
    from .evaluation.figures import PLOT_NEEDS_VTK, can_plot, quality_control_image, write_error_plot, write_png

    output = Path(args.output)

    def quality_control(name, volume, detection, reference):
        if not args.no_qc:
            write_png(output / "qc" / f"{name}.png", quality_control_image(volume, reference, detection))

    plot = can_plot()
    if not plot:  # said before the long part, not after it
        args.reporter.warn(
            f"{PLOT_NEEDS_VTK} Without it, errors.png is skipped; the tables and quality-control images are not."
        )
    evaluation = evaluate(
        args.model,
        args.data,
        device=args.device,
        progress=args.reporter,
        on_case=quality_control,
        **_given_detection_settings(args),
    )
    written = write_tables(evaluation, output)
    if plot:
        written.append(write_error_plot(evaluation, output / "errors.png"))
    print(evaluation.markdown())
    print("Wrote " + ", ".join(str(p) for p in written) + ("" if args.no_qc else f" and {output / 'qc'}/*.png"))
    return 0


def _run_benchmark(args: argparse.Namespace) -> int:
    from .bench.paper_tables import run_benchmark

    size = "quick" if args.quick else "full"
    report = run_benchmark(
        args.output,
        kinds=args.sets,
        size=size,
        device=args.device,
        bundle=args.bundle,
        real_data=args.real_data,
        progress=args.reporter,
    )
    print(report)
    print(f"Wrote {Path(args.output) / 'report.md'} and report.json (figures on synthetic phantoms).")
    return 0


def _run_benchmark_speed(args: argparse.Namespace) -> int:
    from .bench.speed import batch_speed, detection_speed

    if args.batch is not None:
        print(batch_speed(volumes=args.batch, model_path=args.model, device=args.device))
        return 0

    print(detection_speed(size=args.size, model_path=args.model, device=args.device, repeats=args.repeats))
    return 0


def _run_benchmark_afids(args: argparse.Namespace) -> int:
    from .bench.afids import afids_benchmark

    print(afids_benchmark(args.data, args.model, args.output, device=args.device, bundle=args.bundle))
    return 0


def _run_benchmark_real(args: argparse.Namespace) -> int:
    from .bench.real_ct import real_ct_benchmark

    print(real_ct_benchmark(args.data, args.models, args.output, device=args.device, bundle=args.bundle))
    return 0


def _run_benchmark_crops(args: argparse.Namespace) -> int:
    from .bench.random_crops import random_crop_benchmark

    print(random_crop_benchmark(args.model, args.data, args.output, crops_per_case=args.crops_per_case,
                                seed=args.seed, device=args.device))  # fmt: skip
    return 0


def _run_benchmark_correction(args: argparse.Namespace) -> int:
    from .bench.correction_loop import correction_loop

    print(correction_loop(args.data, args.model, args.output, stage1_iterations=args.stage1_iterations,
                          stage2_iterations=args.stage2_iterations, device=args.device))  # fmt: skip
    return 0


def _run_compare_phantoms(args: argparse.Namespace) -> int:
    from .bench.realism_report import compare_phantoms

    print(compare_phantoms(args.data, args.output, seeds=range(1, args.cases + 1)))
    print(f"Wrote {Path(args.output) / 'realism.md'} and {Path(args.output) / 'montage.png'}.")
    return 0


def _run_phantom(args: argparse.Namespace) -> int:
    if args.cases < 1:
        raise ValueError(f"--cases must be at least 1, not {args.cases}.")
    seeds = range(args.seed, args.seed + args.cases)
    task = args.reporter.task(f"{args.kind} phantoms", args.cases)
    written = write_phantoms(
        args.kind,
        args.output,
        seeds,
        spacing_mm=args.spacing,
        file_format=args.format,
        realistic=args.realistic,
        on_case=task.update,
    )
    task.close()
    print(
        f"Wrote {len(written)} {args.kind} phantoms (synthetic; seeds {seeds.start}-{seeds.stop - 1}) to {args.output}."
    )
    return 0


def _spacing(text: str) -> tuple[float, float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a spacing in mm: give one or three positive numbers")
    return tuple(values * 3 if len(values) == 1 else values)


def _run_info(args: argparse.Namespace) -> int:
    volume = read_volume(args.volume)
    print(_volume_summary(volume, args.volume))
    if args.landmarks:
        print(_landmark_table(volume, read_landmarks(args.landmarks)))
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    landmarks = read_landmarks(args.source)
    output = Path(args.output)
    _keep_existing(output, args.overwrite)  # it may be a hand-corrected point list
    if output.suffix.lower() == ".csv":
        name = Path(args.source).name
        case = args.case or next((name[: -len(s)] for s in LANDMARK_SUFFIXES if name.lower().endswith(s)), name)
        write_landmarks_csv({case: landmarks}, output, coordinate_system=args.coordinate_system)
    else:
        write_landmarks(landmarks, output, coordinate_system=args.coordinate_system)
    print(f"Wrote {len(landmarks)} landmarks to {output} ({args.coordinate_system}).")
    return 0


def _run_sets(args: argparse.Namespace) -> int:
    if not args.name:
        for name in available_landmark_sets():
            landmark_set = load_landmark_set(name)
            print(f"{name:12s} {len(landmark_set):3d} landmarks  {landmark_set.title}")
        return 0
    landmark_set = load_landmark_set(args.name)
    print(f"{landmark_set.name}: {landmark_set.title}\n{landmark_set.description}")
    for number, landmark in enumerate(landmark_set.landmarks, start=1):
        twin = f"  (twin: {landmark.twin})" if landmark.twin else ""
        print(f"{number:3d}. {landmark.label:36s} {landmark.description}{twin}")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from .web.app import WebApp
    except ImportError as error:
        raise ValueError(f'The web app needs trame-slicer ({error}): pip install "cascade-landmarks[web]".') from error
    from .web.data_folder import DataFolder

    data = DataFolder(args.data, max_upload_bytes=int(args.max_upload_mb * 1e6))
    training = Path(args.training_folder) if args.training_folder else data.root / "corrected"
    WebApp(data, training, model=args.model, device=args.device).serve(host=args.host, port=args.port)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    """Make a cardiac phantom, detect its landmarks with the bundled model, score them against the truth."""
    from .evaluation.figures import quality_control_image, write_png
    from .inference.detector import detect
    from .model.model_file import load_model

    model = load_model(DEMO_MODEL)
    volume, truth = phantom("cardiac").make_case(DEMO_SEED, spacing_mm=model.config.stage2_spacing_mm)
    output = Path(args.output)
    write_volume(volume, output / "phantom.nrrd")
    write_landmarks(truth, output / "phantom-truth.mrk.json")
    print(f"A synthetic cardiac CTA phantom (seed {DEMO_SEED}, never seen in training): {volume.geometry.describe()}")
    detection = detect(volume, model, device=args.device)
    write_landmarks(detection.landmarks(), output / "detected.mrk.json", coordinate_system="RAS")
    write_png(output / "landmarks.png", quality_control_image(volume, truth, detection))
    errors = detection.errors_mm(truth.positions_lps)
    table = [f"{'landmark':28s} {'stage 1':>8s} {'cascade':>8s} {'confidence':>11s}", "-" * 58]
    for n, label in enumerate(detection.labels):
        flag = "  check" if detection.flagged[n] else ""
        table.append(
            f"{label[:28]:28s} {errors['stage1'][n]:6.2f}mm {errors['cascade'][n]:6.2f}mm "
            f"{detection.confidence[n]:11.2f}{flag}"
        )
    table.append(f"{'mean':28s} {errors['stage1'].mean():6.2f}mm {errors['cascade'].mean():6.2f}mm")
    title = f"Error against the phantom's exact landmarks (synthetic data), model {DEMO_MODEL}:"
    print(title)
    print("\n".join(table))
    write_text_atomically(output / "errors.txt", "\n".join([title, *table]) + "\n")
    print(
        f"\nWrote to {output}/: phantom.nrrd and phantom-truth.mrk.json (the case), detected.mrk.json (RAS; open it "
        "in Slicer with the phantom), errors.txt, and landmarks.png (slices through each landmark: truth green, "
        "stage 1 yellow, cascade red)."
    )
    return 0


def _volume_summary(volume: Volume, source) -> str:
    low, high = float(volume.array.min()), float(volume.array.max())
    return f"{source}: {volume.geometry.describe()}; intensities {low:g} to {high:g}"


def _landmark_table(volume: Volume, landmarks: Landmarks) -> str:
    """One row per landmark: RAS mm, voxel index (i, j, k), intensity at the nearest voxel."""
    rows = [f"{'landmark':36s} {'R':>8s} {'A':>8s} {'S':>8s}   {'i':>6s} {'j':>6s} {'k':>6s} {'value':>8s}"]
    ijk = volume.geometry.lps_to_index(landmarks.positions_lps)
    values = values_at(volume, landmarks.positions_lps)
    for label, ras, index, value in zip(landmarks.labels, landmarks.positions_ras, ijk, values, strict=True):
        where = f"{value:8.0f}" if np.isfinite(value) else " outside"
        rows.append(
            f"{label[:36]:36s} {ras[0]:8.2f} {ras[1]:8.2f} {ras[2]:8.2f}   "
            f"{index[0]:6.1f} {index[1]:6.1f} {index[2]:6.1f} {where}"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
