"""Checking user images and video frames: RGB, of a known value range, finite; refused with the reason otherwise.

A frame is checked before anything else happens with it, so that a refused frame leaves a tracker
as it was. How a checked frame becomes the model's input is preprocess.py's job.

PIL images (decoded files, or given as they are) are converted by rule, never clipped: 16-bit values are
scaled to 8 bits, alpha is dropped (as `convert("RGB")` drops it in the official loaders), and what has no
clear meaning as a colour image (32-bit floats outside [0, 1], negative integers) is refused with the reason.
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

ImageLike = Union[np.ndarray, Tensor, Image.Image]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = {"LA": "L", "La": "L", "PA": "P", "RGBA": "RGB", "RGBa": "RGB"}  # mode without its alpha band
_SINGLE_BAND_MODES = ("1", "L", "P", "I", "F", *_SIXTEEN_BIT_MODES)
_SIXTEEN_BIT_MAX = 65535


class ImageError(ValueError):
    """An image (a file, or one given in memory) that cannot be taken as it is: the message says why."""


def as_rgb_tensor(image: ImageLike) -> Tensor:
    """An RGB image as a (3, H, W) tensor: uint8, or float in [0, 1].

    Accepts H x W x 3 numpy arrays or tensors (uint8, other integers holding values in 0..255, or float
    in [0, 1]), H x W grayscale, and PIL images (converted as image files are: 16-bit scaled to 8 bits,
    alpha dropped). Anything else (integers outside 0..255, floats outside [0, 1] such as 0-255 floats,
    NaN or infinity, booleans) is refused with a ValueError or TypeError that names the problem. Checking
    a float or wide-integer tensor on a GPU waits for it (one synchronisation); uint8 frames need no check.
    The tensor may share the array's memory, read-only arrays' too: never write into it.
    """
    if isinstance(image, Image.Image):
        image = rgb_from_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype == np.bool_ or image.dtype.kind not in "uif":
            raise TypeError(f"expected an RGB image of uint8 or float values, got an array of {image.dtype}")
        if image.dtype.kind in "ui" and image.dtype != np.uint8 and image.size:
            # np.asarray of a list of pixel values gives int64: taken as bytes when every value is one
            _check_byte_range(int(image.min()), int(image.max()))
            image = image.astype(np.uint8)
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
    if image.dtype == torch.bool or image.is_complex():
        raise TypeError(f"expected uint8 pixel values (or floats in [0, 1]), got {image.dtype}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        _check_byte_range(int(image.min()), int(image.max()))
        image = image.to(torch.uint8)
    if image.is_floating_point():
        _check_unit_range(image)
    return image.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _check_byte_range(low: int, high: int) -> None:
    if low < 0 or high > 255:
        raise ValueError(f"integer images must hold values in 0..255; this one holds values from {low} to {high}")


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
        return dense_upload(tensor, lambda dense: dense.pin_memory().to(device, non_blocking=True))
    return tensor.to(device)


def dense_upload(tensor: Tensor, upload: Callable[[Tensor], Tensor]) -> Tensor:
    """`upload` (a copy to another device) of a tensor given only contiguous tensors, the result laid out as
    `tensor` is. PyTorch copies a non-contiguous host tensor through a contiguous temporary in pageable memory,
    which waits for the GPU's queue however the source was pinned: a frame's (3, H, W) view of its (H, W, 3)
    pixels is such a tensor. A permutation of a dense tensor goes up as its bytes lie and is permuted back on
    the device (no copy there); anything else is made contiguous on the host first."""
    order = sorted(range(tensor.dim()), key=lambda dim: (-tensor.stride(dim), -tensor.shape[dim]))
    dense = tensor.permute(order)  # the dims in the order they lie in memory
    if not dense.is_contiguous():
        return upload(tensor.contiguous())
    inverse = sorted(range(tensor.dim()), key=order.__getitem__)
    return upload(dense).permute(inverse)


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


def rgb_from_image(image: Image.Image, what: str = "the image") -> np.ndarray:
    """A PIL image as H x W x 3 uint8 RGB, converted by rule (see the module docstring)."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > _SIXTEEN_BIT_MAX):
            raise ImageError(
                f"{what} holds 32-bit integers from {values.min()} to {values.max()}; "
                "only 0..65535 (16-bit images) can be converted to colours"
            )
        gray = np.round(values * (255 / _SIXTEEN_BIT_MAX)).astype(np.uint8)  # 65535 -> 255, not clipped at 255
        return np.repeat(gray[..., None], 3, axis=-1)  # (H, W) -> (H, W, 3)
    if mode == "F":
        values = np.asarray(image)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ImageError(
                f"{what} holds 32-bit floats from {np.nanmin(values)} to {np.nanmax(values)}; "
                "only values in [0, 1] can be converted to colours"
            )
        gray = np.round(values * 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)  # (H, W) -> (H, W, 3)
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as error:
        raise ImageError(f"{what} has mode {mode}, which cannot be converted to RGB: {error}") from None


def mask_from_image(image: Image.Image, what: str = "the mask") -> np.ndarray:
    """A PIL image as a mask (H, W) bool: a pixel is the object when its value (palette index for indexed
    images; any colour band for RGB) is not zero. Alpha is ignored; other colour spaces are refused."""
    mode = image.mode
    values = np.asarray(image)
    if mode in _ALPHA_MODES:
        values = values[..., :-1]  # (H, W, B) without its last band, the alpha
        mode = _ALPHA_MODES[mode]
    if mode == "F" and not np.isfinite(values).all():
        raise ImageError(f"{what} holds NaN or infinite values")
    if mode in _SINGLE_BAND_MODES:
        return values.reshape(values.shape[:2]) != 0
    if mode == "RGB":
        return (values != 0).any(axis=-1)
    raise ImageError(f"{what} has mode {mode}; masks must be grayscale, palette or RGB images (with or without alpha)")
