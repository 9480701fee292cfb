"""The ``cascade-landmarks`` command.

Sub-commands so far:

- ``info VOLUME [LANDMARKS]``: a volume's geometry and, for each landmark, its RAS position, voxel index and
  the intensity there (the quickest check that a landmark file and a volume agree on coordinates);
- ``convert LANDMARKS OUT``: between ``.fcsv``, ``.mrk.json`` (LPS or RAS) and long-format CSV;
- ``sets [NAME]``: the shipped landmark sets, or one set's landmarks;
- ``demo``: the built-in example (see README).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .landmark_sets import available_landmark_sets, load_landmark_set
from .landmarks import Landmarks, read_landmarks, write_landmarks, write_landmarks_csv
from .volumes import Volume, read_volume, values_at

DEMO_CASE = Path("real") / "cta-thorax-abdomen"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"cascade-landmarks {args.command}: {error}", file=sys.stderr)
        return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade-landmarks", description="Anatomical landmark detection in CT angiography (Tan et al.)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="show a volume's geometry and where landmarks fall in it")
    info.add_argument("volume", help="volume file (.nrrd, .nii.gz, .mha, ...) or DICOM folder")
    info.add_argument("landmarks", nargs="?", help="landmark file (.mrk.json or .fcsv)")
    info.set_defaults(run=_run_info)

    convert = commands.add_parser("convert", help="convert a landmark file (.fcsv, .mrk.json) to .mrk.json or .csv")
    convert.add_argument("source", help="landmark file (.mrk.json or .fcsv)")
    convert.add_argument("output", help="output file: .mrk.json, or .csv (long format)")
    convert.add_argument("--coordinate-system", choices=["LPS", "RAS"], default="LPS", help="frame to write in")
    convert.add_argument("--case", help="case name for the CSV (default: the source file name)")
    convert.set_defaults(run=_run_convert)

    sets = commands.add_parser("sets", help="list the shipped landmark sets, or the landmarks of one")
    sets.add_argument("name", nargs="?", help="a landmark set, e.g. cardiac-5")
    sets.set_defaults(run=_run_sets)

    demo = commands.add_parser("demo", help="run the built-in example on the real CTA in shared/data")
    demo.add_argument("--data", default="../shared/data", help="the shared data folder (default: %(default)s)")
    demo.add_argument("--output", default="demo-output", help="folder for the results (default: %(default)s)")
    demo.set_defaults(run=_run_demo)
    return parser


def _run_info(args: argparse.Namespace) -> int:
    volume = read_volume(args.volume)
    print(_volume_summary(volume, args.volume))
    if args.landmarks:
        print(_landmark_table(volume, read_landmarks(args.landmarks)))
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    landmarks = read_landmarks(args.source)
    output = Path(args.output)
    if output.suffix.lower() == ".csv":
        case = args.case or Path(args.source).name.split(".")[0]
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


def _run_demo(args: argparse.Namespace) -> int:
    case = Path(args.data) / DEMO_CASE
    volume_path, landmarks_path = case / "ct.nii.gz", case / "landmarks.mrk.json"
    if not volume_path.exists():
        raise ValueError(f"The demo needs the real CTA at {volume_path}; pass --data with the shared data folder.")
    volume = read_volume(volume_path)
    landmarks = read_landmarks(landmarks_path)
    print(_volume_summary(volume, volume_path))
    print(_landmark_table(volume, landmarks))
    output = Path(args.output)
    write_landmarks(landmarks, output / "cta-thorax-abdomen.mrk.json", coordinate_system="RAS")
    write_landmarks_csv({"cta-thorax-abdomen": landmarks}, output / "landmarks.csv", coordinate_system="RAS")
    print(f"\nWrote {output / 'cta-thorax-abdomen.mrk.json'} (RAS; open it in Slicer with the volume) and")
    print(f"{output / 'landmarks.csv'}. Detection joins this demo once the cascade model lands.")
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
