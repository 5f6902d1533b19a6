"""Checkpoint files: where the cache is, reading a `.pt` or `.safetensors` file, and strict loading.

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

from ..model.sam2 import SAM2Model
from ..model.variants import VARIANTS, ModelConfig, get_variant


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, or of another variant."""


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
    """The official variant whose keys and shapes the state dict has exactly, if any (among the variants
    that can be built here: EdgeTAM's needs timm)."""
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    for name in VARIANTS:
        try:
            if _signature(name) == shapes:
                return name
        except ImportError:  # its trunk's library is missing
            continue
    return None


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


def check_variant(state_dict: dict[str, torch.Tensor], variant: str, source: Union[str, Path]) -> None:
    """Fail with a CheckpointError naming what `source` holds unless its keys and shapes are exactly `variant`'s."""
    _check_shapes(state_dict, _signature(variant), variant, source)


def _check_shapes(
    state_dict: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], variant: str, source: Union[str, Path]
) -> None:
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    if shapes == expected:
        return
    actual = identify_variant(state_dict)
    if actual is not None:
        raise CheckpointError(f"{source} is a {actual} checkpoint, not {variant}")
    summary = _mismatch_summary(expected, state_dict)
    raise CheckpointError(f"{source} does not match {variant} nor any other SAM 2 variant: {summary}")


def load_weights(model: SAM2Model, path: Union[str, Path]) -> None:
    """Load a checkpoint into `model` strictly, or fail with a CheckpointError that says what the file is."""
    state_dict = read_state_dict(path)
    # The model's own shapes: no second model has to be built for the comparison.
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    _check_shapes(state_dict, expected, model.config.variant.name, path)
    model.load_state_dict(state_dict, strict=True)


def checkpoint_variant(path: Union[str, Path]) -> str:
    """The official variant a checkpoint file holds, read from its keys and shapes."""
    variant = identify_variant(read_state_dict(path))
    if variant is None:
        raise CheckpointError(f"{path} is not a checkpoint of any SAM 2 variant ({', '.join(VARIANTS)})")
    return variant
