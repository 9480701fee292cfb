"""Shipping a model with the extension (for the developers, in a checkout): the model file, its model card and
its entry, with the file's SHA-256, in ``Resources/Models/registry.json``. Research tooling, not used at run time:
the benchmarks call it with ``--bundle``."""

from __future__ import annotations

import json
import os
import shutil

from ..io.atomic_files import write_atomically, write_text_atomically
from ..model import registry as model_registry
from ..model.model_file import load_model
from ..model.registry import ModelEntry, file_sha256, registry_record
from ..training.config import PRESETS


def add_bundled_model(model_path: str | os.PathLike, name: str, card_text: str, *, description: str) -> ModelEntry:
    """Ship a model with the extension: copy it into ``Resources/Models`` as ``<name>.pt`` with its card
    ``<name>.md``, and list it (with its SHA-256) in that folder's registry. For the developers, in a checkout.

    A new file under the name of a shipped model replaces it with the next version number.
    """
    model = load_model(model_path)
    registry = model_registry.shipped_registry()
    folder = registry.parent
    document = json.loads(registry.read_text(encoding="utf-8"))
    shipped = next((r for r in document["models"] if r["name"] == name), None)
    sha256 = file_sha256(model_path)
    version = 1 if shipped is None else shipped["version"] + (shipped["sha256"] != sha256)
    target = folder / f"{name}.pt"
    write_atomically(target, lambda temporary: shutil.copyfile(model_path, temporary))
    write_text_atomically(folder / f"{name}.md", card_text)
    entry = ModelEntry(
        name=name,
        landmark_set=model.config.landmark_set.name,
        file=target.name,
        sha256=sha256,
        version=version,
        description=description,
        card=f"{name}.md",
    )
    document["models"] = [r for r in document["models"] if r["name"] != name] + [registry_record(entry)]
    write_text_atomically(registry, json.dumps(document, indent=2) + "\n")
    return entry


def training_runs(training: dict) -> list[dict]:
    """The training runs that made a model (its training record), oldest first: fine-tuning links each run to the
    one before."""
    runs = []
    while training:
        runs.append(training)
        training = training.get("previous_training")
    return runs[::-1]


def training_run_lines(training: dict) -> list[str]:
    """A model card's list of the training runs that made a model, oldest first."""
    return [_run_line(run) for run in training_runs(training)]


def _run_line(run: dict) -> str:
    settings = run["training_config"]
    if settings["stage1_iterations"] == settings["stage2_iterations"] == 0:
        now, before = run.get("detection_settings"), (run.get("previous_training") or {}).get("detection_settings")
        if now is None:  # an older record, without them
            return (
                "- No training: detection settings changed (such as test-time mirroring or stage-2 passes), "
                "weights kept."
            )
        if before is None:
            return f"- No training: detection settings set to {_settings_text(now)}; weights kept."
        changed = {name: value for name, value in now.items() if before.get(name) != value}
        return f"- No training: detection settings changed to {_settings_text(changed) or 'the same'}; weights kept."
    augmentation = _augmentation_name(settings.get("augmentation", {}))
    stopped = f" ({run['stopped']})" if run.get("stopped") else ""
    processes = f" on each of {run['processes']} processes" if run.get("processes", 1) > 1 else ""
    cosine = settings.get("learning_rate_schedule") == "cosine"
    schedule = " (cosine decay to 0 over each stage)" if cosine else ""
    cases = len(run.get("cases", {}).get("training", []))
    return (
        f"- {settings['stage1_iterations']} stage-1 and {settings['stage2_iterations']} stage-2 iterations on "
        f"{cases} case(s), batch {settings['batch_size']}{processes}, learning rate "
        f"{settings['learning_rate']:g}{schedule}, augmentation {augmentation}, "
        f"{settings.get('stage2_near_share', 0):.0%} of stage-2 patches within a quarter of the radius; about "
        f"{run.get('seconds', 0) / 60:.0f} minutes on {run.get('device', 'cpu')}{stopped}."
    )


def _settings_text(settings: dict) -> str:
    return ", ".join(
        f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}" for name, value in settings.items()
    )


def _augmentation_name(settings: dict) -> str:
    """The preset closest to ``settings``, with the settings that differ from it ("one-shot with elastic_grid=9")."""

    def changed(preset: str) -> list[str]:
        return [f"{k}={v:g}" for k, v in settings.items() if PRESETS[preset].to_dict().get(k) != v]

    closest = min(PRESETS, key=lambda preset: len(changed(preset)))
    differences = changed(closest)
    return f"{closest} with {', '.join(differences)}" if differences else closest
