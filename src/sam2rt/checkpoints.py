"""Official checkpoints: where they come from, where they are cached, and strict loading.

A checkpoint is the official `.pt` format (`{"model": state_dict}`), a bare state dict, or a
`.safetensors` file. Loading is strict: a file of another variant, or one that is corrupt,
fails with one `CheckpointError` that names the problem.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import torch

from .model.sam2 import SAM2Model
from .variants import VARIANTS, ModelConfig, get_variant

_RELEASE_URLS = {
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824",
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, or of another variant."""


def checkpoint_url(variant: str) -> str:
    """The official download address of a variant's checkpoint."""
    spec = get_variant(variant)
    return f"{_RELEASE_URLS[spec.release]}/{spec.checkpoint_filename}"


def cache_dir() -> Path:
    """Where downloaded checkpoints live: $SAM2RT_CACHE, else $XDG_CACHE_HOME/sam2rt, else ~/.cache/sam2rt."""
    if os.environ.get("SAM2RT_CACHE"):
        return Path(os.environ["SAM2RT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sam2rt"


def cached_checkpoint(variant: str) -> Path:
    """The path a variant's checkpoint has in the cache (whether or not it is there)."""
    return cache_dir() / get_variant(variant).checkpoint_filename


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, on the CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, not a file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {detail}") from None
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {error}") from None
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        content = content["model"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(f"{path} holds no SAM 2 state dict (expected {{'model': state_dict}} or a state dict)")
    return content


@lru_cache(maxsize=None)
def _signature(variant: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a variant's state dict, from a model built on the meta device."""
    with torch.device("meta"):
        model = SAM2Model(ModelConfig(get_variant(variant)))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def identify_variant(state_dict: dict[str, torch.Tensor]) -> Optional[str]:
    """The official variant whose keys and shapes the state dict has exactly, if any."""
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    return next((name for name in VARIANTS if _signature(name) == shapes), None)


def _mismatch_summary(expected: dict[str, tuple[int, ...]], state_dict: dict[str, torch.Tensor]) -> str:
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    reshaped = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("with other shapes", reshaped)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            parts.append(f"{len(keys)} keys {label} ({shown})")
    return "; ".join(parts)


def load_weights(model: SAM2Model, path: Union[str, Path]) -> None:
    """Load a checkpoint into `model` strictly, or fail with a CheckpointError that says what the file is."""
    state_dict = read_state_dict(path)
    expected_name = model.config.variant.name
    expected = _signature(expected_name)
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    if shapes != expected:
        actual = identify_variant(state_dict)
        if actual is not None:
            raise CheckpointError(f"{path} is a {actual} checkpoint, not {expected_name}")
        summary = _mismatch_summary(expected, state_dict)
        raise CheckpointError(f"{path} does not match {expected_name} nor any other SAM 2 variant: {summary}")
    model.load_state_dict(state_dict, strict=True)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    variant: str,
    checkpoint: Union[str, Path, None] = None,
    device: Union[str, torch.device, None] = None,
    image_size: int = 1024,
) -> SAM2Model:
    """A model of an official variant with its weights, in eval mode on `device` (CUDA when available).

    `checkpoint` is a `.pt` or `.safetensors` path; None takes the cached official checkpoint.
    """
    model = SAM2Model(ModelConfig(get_variant(variant), image_size))
    if checkpoint is None:
        checkpoint = cached_checkpoint(variant)
        if not checkpoint.exists():
            raise CheckpointError(
                f"no checkpoint given and none cached for {variant}: download {checkpoint_url(variant)} "
                f"and put it at {checkpoint}, or pass checkpoint=<path>"
            )
    load_weights(model, checkpoint)
    return model.to(device or default_device()).eval()
