"""The annotation team's loop on a real scan, measured: ``cascade-landmarks benchmark-correction``.

What the Slicer module does, on Slicer's own MRML core (the ``slicer-core`` wheel, or Slicer itself): load the
real CTA of the shared data, detect with the model in a background process, correct the points as an annotator
would (each landmark the reference places moved onto it, each it knows to lie outside the scan marked missing),
save the corrected case into a training folder, and fine-tune the model on it in the background with the
module's settings; then score the model before and after on every real scan (:mod:`.real_ct`).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from ..io.atomic_files import write_text_atomically
from ..io.volumes import read_volume
from ..model.registry import USER_FOLDER_VARIABLE, resolve_model
from ..slicer.bridge import landmarks_to_node, new_scene, volume_to_node
from ..slicer.runs import DetectionRun, FineTuneRun
from ..slicer.workflow import save_corrected_case
from .real_ct import REAL_CASES, real_ct_benchmark, reference


def correction_loop(
    data: str | os.PathLike,
    model: str,
    output: str | os.PathLike,
    *,
    stage1_iterations: int,
    stage2_iterations: int,
    device: str = "auto",
) -> str:
    """Detect, correct, save and fine-tune on ``cta-thorax-abdomen``; the report (also ``output/loop.md``)."""
    if importlib.util.find_spec("slicer") is None:
        raise ValueError(
            'The correction loop runs on Slicer\'s MRML core: pip install "slicer-core==5.11.0.6", or run it in Slicer.'
        )
    data, output = Path(data), Path(output)
    case = REAL_CASES[0]
    scene = new_scene()
    volume_node = volume_to_node(read_volume(data / case.volume), scene, name=case.name)
    started = time.perf_counter()
    node = DetectionRun(scene, volume_node, model, device=device).start().wait()
    detect_seconds = time.perf_counter() - started
    truth = reference(case, data)
    corrected = landmarks_to_node(truth, scene, node=node)  # the annotator's corrections, in the same list
    folder = output / "corrected"
    save_corrected_case(volume_node, corrected, folder, case_name=case.name, overwrite=True)
    started = time.perf_counter()
    # The fine-tuned model is registered in a folder of the benchmark's own, not in the user's list of models.
    run = FineTuneRun(folder, model, stage1_iterations=stage1_iterations, stage2_iterations=stage2_iterations,
                      output=output / "fine-tuned.pt", device=device,
                      environment={USER_FOLDER_VARIABLE: str(output / "registry")})  # fmt: skip
    entry = run.start().wait()
    tune_minutes = (time.perf_counter() - started) / 60
    report = "\n".join(
        [
            "# The correction loop on a real CTA",
            "",
            f"Model {model} ({resolve_model(model).name}); detection in the background took {detect_seconds:.0f} s; "
            f"fine-tuning on the corrected case ({stage1_iterations} stage-1 and {stage2_iterations} stage-2 steps, "
            f"the module's settings) took {tune_minutes:.1f} minutes and was registered as {entry.name}.",
            "",
            real_ct_benchmark(data, [model, entry.file], output / "scores", device=device),
        ]
    )
    write_text_atomically(output / "loop.md", report + "\n")
    return report
