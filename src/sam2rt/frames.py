"""Turning user images and video frames into the model's normalised square input."""

from __future__ import annotations

from functools import lru_cache
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageLike = Union[np.ndarray, Tensor, Image.Image]


def as_rgb_tensor(image: ImageLike) -> Tensor:
    """An RGB image as a (3, H, W) tensor: uint8, or float already in [0, 1].

    Accepts H x W x 3 numpy arrays or tensors (uint8, or float in [0, 1]), H x W grayscale, and PIL images.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype == np.bool_ or image.dtype.kind not in "uif":
            raise TypeError(f"expected an RGB image of uint8 or float values, got an array of {image.dtype}")
        if not image.flags.writeable:
            image = image.copy()  # torch wants writable memory; frames from decoders are often read-only
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise TypeError(f"expected an RGB image (numpy array, torch tensor or PIL image), got {type(image).__name__}")
    if image.dim() == 2:
        image = image.unsqueeze(-1).expand(-1, -1, 3)
    if image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an image of shape (H, W, 3) in RGB order, got shape {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"the image is empty: shape {tuple(image.shape)}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise TypeError(f"expected uint8 pixel values (or floats in [0, 1]), got {image.dtype}")
    return image.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def normalize_frame(rgb: Tensor, image_size: int) -> Tensor:
    """(3, H, W) uint8 or [0, 1] float on any device -> (1, 3, S, S) float32, resized and normalised.

    Bilinear resizing with antialiasing, as the official image predictor does it (torchvision's Resize).
    """
    x = rgb.float()
    if rgb.dtype == torch.uint8:
        x = x / 255
    x = F.interpolate(x[None], size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean, std = _normalization(x.device)
    return (x - mean) / std


@lru_cache(maxsize=None)
def _normalization(device: torch.device) -> tuple[Tensor, Tensor]:
    """ImageNet mean and std as (3, 1, 1) tensors, made once per device (a copy per frame would stall the GPU)."""
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    return mean, std


def to_device(rgb: Tensor, device: torch.device) -> Tensor:
    """Upload a frame without stalling the GPU queue: through pinned memory, asynchronously."""
    if device.type == "cuda" and rgb.device.type == "cpu":
        return rgb.pin_memory().to(device, non_blocking=True)
    return rgb.to(device)


def to_host(tensor: Tensor) -> np.ndarray:
    """A tensor on any device -> numpy; from a GPU through pinned memory.

    Masks at full resolution are tens of megabytes, and a copy into pageable memory runs at a
    fraction of the bus speed.
    """
    if not tensor.is_cuda:
        return tensor.numpy()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host.numpy()
