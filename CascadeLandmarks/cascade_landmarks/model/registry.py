"""Which models a user can pick: the ones shipped in ``Resources/Models/registry.json`` and the user's own
(added from a file, or made by fine-tuning), listed in a registry file in the user's folder.

A model is named by a short name ("cardiac-5", "cardiac-5-v2") or given as a path. Shipped files are checked
against the SHA-256 in the registry before use, so a damaged or replaced file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io.atomic_files import write_text_atomically
from ..io.resources import resource_path

USER_FOLDER_VARIABLE = "CASCADE_LANDMARKS_HOME"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: what users pick it by.
        landmark_set: the set it finds.
        file: absolute path of the model file.
        sha256: checksum of the file.
        version: 1 for a trained model, one more for each fine-tuning.
        description: a line for the model list.
        card: file name of the model card (what it was trained on, how, how well), beside the model; or "".
        bundled: shipped with the extension (read-only) or the user's.
    """

    name: str
    landmark_set: str
    file: str
    sha256: str
    version: int = 1
    description: str = ""
    card: str = ""
    bundled: bool = False


def user_folder() -> Path:
    """Where the user's registry lives: ``$CASCADE_LANDMARKS_HOME``, else ``~/.cascade-landmarks``."""
    return Path(os.environ.get(USER_FOLDER_VARIABLE, Path.home() / ".cascade-landmarks"))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def available_models() -> list[ModelEntry]:
    """The shipped models, then the user's, by name."""
    return _bundled_models() + _user_models()


def find_model(name: str) -> ModelEntry:
    for entry in available_models():
        if entry.name == name:
            return entry
    names = ", ".join(e.name for e in available_models()) or "none yet"
    raise ValueError(f"No model named {name!r}; the registered models are: {names}. Give a model file instead.")


def names_a_file(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` is a model file (it ends in ``.pt`` or exists) rather than a registered name."""
    path = Path(name_or_path)
    return path.suffix == ".pt" or path.exists()


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The model file for a registered name or a path; a shipped file must match its checksum."""
    path = Path(name_or_path)
    if names_a_file(path):
        if not path.is_file():
            raise ValueError(f"Model file {path} does not exist.")
        return path
    entry = find_model(str(name_or_path))
    if not Path(entry.file).is_file():
        raise ValueError(f"The file of model {entry.name} is missing: {entry.file}.")
    if entry.bundled and file_sha256(entry.file) != entry.sha256:
        raise ValueError(f"The file of model {entry.name} does not match its checksum: reinstall the extension.")
    return Path(entry.file)


def register_model(
    path: str | os.PathLike, *, name: str | None = None, parent: str | None = None, description: str = ""
) -> ModelEntry:
    """Add a model file to the user's registry (its landmark set read from the file) and return its entry.

    Args:
        name: defaults to the file name, or ``<base>-v<version>`` when it was fine-tuned from ``parent``.
        parent: the registered model it was fine-tuned from: the new version is one more than the highest of
            ``parent`` and the versions of its base already registered, so a second fine-tuning of the same
            model is added beside the first, not over it.
    """
    from .model_file import load_model  # torch: only when a model is added, not to list them

    path = Path(path).resolve()
    model = load_model(path)
    version = 1
    if parent is not None:
        base = re.sub(r"-v\d+$", "", parent)
        family = [e.version for e in available_models() if re.fullmatch(rf"{re.escape(base)}(-v\d+)?", e.name)]
        version = max([find_model(parent).version, *family]) + 1
    if name is None:
        name = f"{base}-v{version}" if parent else path.name.removesuffix(".pt")
    entries = [e for e in _user_models() if e.name != name]
    if any(e.name == name for e in _bundled_models()):
        raise ValueError(f"{name} is the name of a shipped model; choose another name.")
    entry = ModelEntry(
        name=name,
        landmark_set=model.config.landmark_set.name,
        file=str(path),
        sha256=file_sha256(path),
        version=version,
        description=description or f"{model.config.landmark_set.title}; added from {path.name}",
    )
    document = {"models": [registry_record(e) for e in [*entries, entry]]}
    write_text_atomically(user_folder() / "registry.json", json.dumps(document, indent=2) + "\n")
    return entry


def registry_record(entry: ModelEntry) -> dict:
    """An entry as a registry file lists it (whether it is shipped follows from which file lists it)."""
    record = asdict(entry)
    record.pop("bundled")
    return record


def shipped_registry() -> Path:
    """The registry of the models shipped with the extension, ``Resources/Models/registry.json``; their files lie
    beside it."""
    return Path(str(resource_path("Models", "registry.json")))


def _bundled_models() -> list[ModelEntry]:
    registry = shipped_registry()
    folder = registry.parent
    records = json.loads(registry.read_text(encoding="utf-8"))["models"]
    return [ModelEntry(**{**r, "file": str(folder / r["file"]), "bundled": True}) for r in records]


def _user_models() -> list[ModelEntry]:
    path = user_folder() / "registry.json"
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["models"]
        return [ModelEntry(**r) for r in records]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"Your model registry {path} is damaged ({error}); fix or delete it.") from error
