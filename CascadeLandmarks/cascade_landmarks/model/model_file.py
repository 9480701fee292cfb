"""The model file: one ``.pt`` file with both stages' weights and everything needed to use them.

Contents (a flat dictionary of tensors and strings, loaded with ``torch.load(weights_only=True)``, which never
unpickles arbitrary objects):

- ``format``: "cascade-landmarks-model"; ``format_version``: an integer, refused when newer than this code knows;
- ``config``: the :class:`~cascade_landmarks.model.config.CascadeConfig` as JSON (landmark set with names, spacings,
  grid and patch sizes, intensity window, network settings);
- ``training``: a JSON summary of how and on what it was trained (cases, spacings, iterations, validation error);
- ``stage1.*`` and ``stage2.*``: the weights of the heatmap U-Net and of the displacement CNNs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io.atomic_files import atomic_path
from .config import CascadeConfig
from .displacement_cnn import DisplacementCNN
from .heatmap_unet import HeatmapUNet
from .registry import names_a_file, resolve_model

FORMAT = "cascade-landmarks-model"
# 2: detection settings added since 1 (stage-2 mirroring), which a reader of version 1 cannot take.
FORMAT_VERSION = 2


@dataclass
class CascadeModel:
    """Both stages of a trained cascade, ready for detection (on the CPU until moved).

    Attributes:
        config: how it is built and detects.
        stage1, stage2: the networks.
        training: how and on what it was trained (the training record, JSON-able).
        name: what it was loaded by (a registered name, else the file's name without ``.pt``); "" when made here.
        sha256: the checksum of the file it was loaded from; "" when made here.
    """

    config: CascadeConfig
    stage1: HeatmapUNet
    stage2: DisplacementCNN
    training: dict = field(default_factory=dict)
    name: str = ""
    sha256: str = ""

    @classmethod
    def create(cls, config: CascadeConfig, *, seed: int = 0) -> CascadeModel:
        """Fresh networks for ``config``, initialised from ``seed``."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            return cls(config, HeatmapUNet(config.unet), DisplacementCNN(config.displacement))
        finally:
            torch.random.set_rng_state(generator_state)

    @property
    def landmark_labels(self) -> list[str]:
        return self.config.landmark_set.labels

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.stage1.parameters()).device

    def to(self, device: torch.device) -> CascadeModel:
        self.stage1.to(device)
        self.stage2.to(device)
        return self

    def state(self) -> dict:
        """The flat dictionary saved to the model file."""
        state = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": json.dumps(self.config.to_dict()),
            "training": json.dumps(self.training),
        }
        for prefix, network in (("stage1", self.stage1), ("stage2", self.stage2)):
            for name, tensor in network.state_dict().items():
                state[f"{prefix}.{name}"] = tensor.detach().cpu()
        return state


def save_model(model: CascadeModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically (a kill mid-write leaves the previous file intact)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save(model.state(), temporary)
    return path


def load_model(name_or_path: str | os.PathLike, *, landmark_set: str | None = None) -> CascadeModel:
    """Load a model file, or a registered model by name, without unpickling anything but tensors and plain values.

    Args:
        name_or_path: a ``.pt`` file or a registered model's name ("cardiac-5-phantom").
        landmark_set: if given, the model must be for this landmark set.

    Raises:
        ValueError: the name is unknown, or the file is missing, truncated or not a model file, comes from a newer
            version of CascadeLandmarks, or is for another landmark set.
    """
    path = resolve_model(name_or_path)
    name = path.name.removesuffix(".pt") if names_a_file(name_or_path) else str(name_or_path)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is damaged or foreign
        raise ValueError(f"Cannot load model {path}: the file is truncated or not a CascadeLandmarks model.")
    content = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise ValueError(
            f"Cannot load model {path}: the file is truncated or not a CascadeLandmarks model ({error})."
        ) from error
    except Exception as error:  # weights_only refuses pickled objects with UnpicklingError and others
        raise ValueError(f"Refusing model {path}: it holds objects other than tensors and plain values.") from error
    model = model_from_state(state, source=str(path), landmark_set=landmark_set)
    model.name, model.sha256 = name, hashlib.sha256(content).hexdigest()
    return model


def model_from_state(state: dict, *, source: str = "model", landmark_set: str | None = None) -> CascadeModel:
    """Rebuild a :class:`CascadeModel` from the dictionary :meth:`CascadeModel.state` gives."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{source} is not a CascadeLandmarks model file.")
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{source} has model format version {version}; this CascadeLandmarks reads up to {FORMAT_VERSION}. "
            "Update CascadeLandmarks to use it."
        )
    try:
        config = CascadeConfig.from_dict(json.loads(state["config"]))
        training = json.loads(state.get("training", "{}"))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{source}: cannot read its configuration ({error}).") from error
    if landmark_set is not None and config.landmark_set.name != landmark_set:
        raise ValueError(
            f"{source} finds landmark set {config.landmark_set.name}, not {landmark_set}; pick a model for "
            f"{landmark_set}."
        )
    # Built on the meta device (shapes, no memory) and given the file's own tensors: a file whose configuration
    # asks for far more than its weights hold is refused, not allocated (a few KB could otherwise ask for 20 GB).
    with torch.device("meta"):
        model = CascadeModel(config, HeatmapUNet(config.unet), DisplacementCNN(config.displacement), training)
    for prefix, network in (("stage1", model.stage1), ("stage2", model.stage2)):
        weights = {key[len(prefix) + 1 :]: value for key, value in state.items() if key.startswith(prefix + ".")}
        try:
            network.load_state_dict(weights, assign=True)
        except RuntimeError as error:
            first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error)).rstrip(".")
            raise ValueError(f"{source}: the {prefix} weights do not fit its configuration ({first}).") from error
    model.stage1.eval()
    model.stage2.eval()
    return model
