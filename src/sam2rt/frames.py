"""Checking user images and video frames: RGB, of a known value range, finite; refused with the reason otherwise.

A frame is checked before anything else happens with it, so that a refused frame leaves a tracker
as it was. How a checked frame becomes the model's input is preprocess.py's job.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .io.image_file import rgb_from_image

ImageLike = Union[np.ndarray, Tensor, Image.Image]


def as_rgb_tensor(image: ImageLike) -> Tensor:
    """An RGB image as a (3, H, W) tensor: uint8, or float in [0, 1].

    Accepts H x W x 3 numpy arrays or tensors (uint8, or float in [0, 1]), H x W grayscale, and PIL
    images (converted as image files are: 16-bit scaled to 8 bits, alpha dropped). Anything else
    (other integer types, floats outside [0, 1] such as 0-255 floats, NaN or infinity) is refused
    with a ValueError or TypeError that names the problem. Checking a float tensor on a GPU waits
    for it (one synchronisation); uint8 frames need no check. The tensor may share the array's memory,
    read-only arrays' too: never write into it.
    """
    if isinstance(image, Image.Image):
        image = rgb_from_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype == np.bool_ or image.dtype.kind not in "uif":
            raise TypeError(f"expected an RGB image of uint8 or float values, got an array of {image.dtype}")
        if image.dtype.kind in "ui" and image.dtype != np.uint8:
            raise TypeError(f"expected uint8 pixel values (or floats in [0, 1]), got an array of {image.dtype}")
        image = np.ascontiguousarray(image)
        # Read-only arrays (np.asarray of a PIL image) are shared through DLPack, not copied: nothing writes
        # into a frame, and torch.from_numpy would warn. With numpy < 2.1 or a torch without DLPack 1.0: a copy.
        try:
            image = torch.from_numpy(image) if image.flags.writeable else torch.from_dlpack(image)
        except BufferError:
            image = torch.from_numpy(image.copy())
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
    if image.is_floating_point():
        _check_unit_range(image)
    return image.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _check_unit_range(image: Tensor) -> None:
    """Float pixels must be finite and within [0, 1]: one reduction, one wait on a GPU."""
    valid = torch.isfinite(image) & (image >= 0) & (image <= 1)
    if bool(valid.all()):
        return
    if not bool(torch.isfinite(image).all()):
        raise ValueError("the image contains NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    hint = " (0-255 floats? pass uint8, or divide by 255)" if high <= 255 and low >= 0 else ""
    raise ValueError(f"float images must hold values in [0, 1]; this one holds values from {low:g} to {high:g}{hint}")


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Upload a host tensor (a frame, a few numbers) without stalling the GPU queue: through pinned
    memory, asynchronously. A plain copy from pageable memory waits for all queued GPU work."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


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
