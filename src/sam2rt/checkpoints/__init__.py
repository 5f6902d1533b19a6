"""Official checkpoints: where they come from (download.py), where they are cached and how a file loads
strictly (files.py), and `load_model`, which puts a model and its weights together.

A download is accepted only once it loads strictly as its variant (and matches its sha256, where one is
known or pinned).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from ..model.sam2 import SAM2Model
from ..model.variants import ModelConfig, get_variant
from .download import checkpoint_url, download_checkpoint, download_url
from .files import CheckpointError, cache_dir, cached_checkpoint, checkpoint_variant, load_weights

__all__ = [
    "CheckpointError",
    "cache_dir",
    "cached_checkpoint",
    "checkpoint_url",
    "checkpoint_variant",
    "default_device",
    "download_checkpoint",
    "download_url",
    "load_model",
]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    variant: str,
    checkpoint: Union[str, Path, None] = None,
    device: Union[str, torch.device, None] = None,
    image_size: int = 1024,
) -> SAM2Model:
    """A model of an official variant with its weights, in eval mode on `device` (CUDA when available).

    `checkpoint` is a `.pt` or `.safetensors` path; None takes the cached official checkpoint and
    downloads it first when it is not there.
    """
    model = SAM2Model(ModelConfig(get_variant(variant), image_size))
    if checkpoint is None:
        checkpoint = cached_checkpoint(variant)
        if not checkpoint.exists():
            try:
                download_checkpoint(variant, checkpoint)
            except CheckpointError as error:
                raise CheckpointError(
                    f"no checkpoint given and none cached for {variant}, and the download failed ({error}). "
                    f"Offline: download {checkpoint_url(variant)} elsewhere and put it at {checkpoint}, "
                    f"or pass checkpoint=<path>"
                ) from None
    load_weights(model, checkpoint)
    return model.to(device or default_device()).eval()
