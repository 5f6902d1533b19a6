"""How a frame becomes the model's input: resized to S x S, scaled to [0, 1], normalised; a named choice.

The tools SAM 2 users come from resize differently, and the masks differ with it (by 7e-2
of the logits' scale on a JPEG folder, measured with parity weights), so each way has a name:

- "bilinear-antialias": the official SAM2ImagePredictor (torchvision's Resize on float tensors,
  bilinear with antialiasing). Runs on the model's device. Default of StreamTracker,
  CameraPredictor and ImagePredictor.
- "pil-bicubic": the official SAM2VideoPredictor's JPEG-folder loader (PIL's default resize
  filter, bicubic, on the uint8 RGB image, then / 255); also the real-time fork on PIL images.
  Default of VideoPredictor, so that a JPEG folder gives the official numbers.
- "opencv-bilinear": the real-time fork's camera predictor on numpy arrays (`cv2.resize` with
  its default INTER_LINEAR on uint8, no antialiasing, then / 255).

The PIL and OpenCV resizes run on the CPU (the S x S result is what goes to the device). Float
frames take the same filter without the rounding to uint8 that the tools apply.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .images import to_device

Resize = Literal["bilinear-antialias", "pil-bicubic", "opencv-bilinear"]
RESIZES: tuple[str, ...] = get_args(Resize)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM3_MEAN = (0.5, 0.5, 0.5)  # SAM 3 (detector and tracker) takes [0, 1] pixels to [-1, 1]
SAM3_STD = (0.5, 0.5, 0.5)


def check_resize(name: str) -> Resize:
    """The name itself when it is one of RESIZES; a ValueError listing them otherwise."""
    if name not in RESIZES:
        raise ValueError(f"unknown resize {name!r}; the resizes are: {', '.join(RESIZES)}")
    return name


def model_input(
    rgb: Tensor,
    image_size: int,
    resize: Resize,
    device: torch.device,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Tensor:
    """(3, H, W) uint8, or float in [0, 1], on any device -> (1, 3, S, S) float32 on `device`, normalised by
    `mean` and `std` (ImageNet's for SAM 2; SAM3_MEAN and SAM3_STD for SAM 3)."""
    check_resize(resize)
    if resize == "bilinear-antialias":
        x = _unit_range(to_device(rgb, device))
        x = F.interpolate(x[None], size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    elif resize == "pil-bicubic":
        x = _unit_range(to_device(_pil_bicubic(rgb, image_size), device))[None]
    else:
        x = _unit_range(to_device(_opencv_bilinear(rgb, image_size), device))[None]
    mean, std = _normalization(x.device, mean, std)
    return (x - mean) / std


def concept_model_input(rgb: Tensor, image_size: int, device: torch.device) -> Tensor:
    """SAM 3's input, as Meta's Sam3Processor makes it: (3, H, W) uint8 on any device -> (1, 3, S, S) float32 on
    `device` in [-1, 1] (mean and std 0.5).

    The processor resizes the uint8 image with torchvision (bilinear, antialiased) and keeps it uint8: on the CPU
    torch's own uint8 kernel, elsewhere in float rounded back to uint8, and the two differ by one level on a fifth
    of the pixels; each device does here what torchvision does on it.
    """
    x = to_device(rgb, device)[None]
    if x.dtype != torch.uint8:
        x = (x.float() * 255).round().clamp(0, 255).to(torch.uint8)  # float frames in [0, 1], as ToDtype scales them
    size = (image_size, image_size)
    if x.device.type == "cpu":
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return (x.float() / 255 - 0.5) / 0.5


def _unit_range(rgb: Tensor) -> Tensor:
    """uint8 -> float32 / 255 (float32 division gives the same 256 values as the tools' float64 one)."""
    return rgb.float() / 255 if rgb.dtype == torch.uint8 else rgb.float()


def _host_hwc(rgb: Tensor) -> np.ndarray:
    """(3, H, W) on any device -> (H, W, 3) numpy on the CPU: uint8, or float32."""
    rgb = rgb if rgb.dtype == torch.uint8 else rgb.float()
    return rgb.permute(1, 2, 0).cpu().numpy()  # (3, H, W) -> (H, W, 3)


def _pil_bicubic(rgb: Tensor, size: int) -> Tensor:
    pixels = _host_hwc(rgb)
    if pixels.dtype == np.uint8:
        resized = np.array(Image.fromarray(pixels, "RGB").resize((size, size), Image.Resampling.BICUBIC))
    else:  # PIL resizes floats one band at a time (mode "F"), with the same filter and no rounding
        bands = [Image.fromarray(np.ascontiguousarray(pixels[..., c]), "F") for c in range(3)]
        resized = np.stack([np.asarray(b.resize((size, size), Image.Resampling.BICUBIC)) for b in bands], -1)
    return torch.from_numpy(resized).permute(2, 0, 1)  # (S, S, 3) -> (3, S, S)


def _opencv_bilinear(rgb: Tensor, size: int) -> Tensor:
    import cv2

    resized = cv2.resize(_host_hwc(rgb), (size, size), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(resized).permute(2, 0, 1)  # (S, S, 3) -> (3, S, S)


@lru_cache(maxsize=None)
def _normalization(device: torch.device, mean: tuple, std: tuple) -> tuple[Tensor, Tensor]:
    """A mean and std as (3, 1, 1) tensors, made once per device (a copy per frame would stall the GPU)."""
    return torch.tensor(mean, device=device)[:, None, None], torch.tensor(std, device=device)[:, None, None]
