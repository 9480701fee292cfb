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
