"""Validating click, box and mask prompts (and the object ids and frame indices they name) and bringing
them to the model's input frame.

User coordinates are pixels of the original image, x before y, or fractions of its width and
height when `normalize_coords=False`. The model wants pixels of its square input.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BOX_CORNER_LABELS = (2, 3)  # top-left, bottom-right


def object_id(value) -> int:
    """An object id as a Python int; numpy integers too, as np.unique of a label mask gives them."""
    return _integer(value, "object ids")


def frame_index(value) -> int:
    """A frame index (or count of frames) as a Python int; numpy integers too."""
    return _integer(value, "frame indices")


def _integer(value, what: str) -> int:
    # Python's own integer protocol takes numpy integers and one-element integer tensors; True as an object
    # or 2.0 as a frame is a slip, not a number, and must not become a key of its own.
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{what} are integers, got {value!r}")


def float_tensor(value, name: str, device: torch.device) -> Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float32), device=device)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric, got {value!r}") from error
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


def point_tensors(points, labels, device: torch.device) -> tuple[Tensor, Tensor]:
    """Points (..., N, 2) and their integer labels (..., N): 1 foreground, 0 background (-1, 2, 3 also accepted)."""
    if points is not None and labels is None:
        raise ValueError("labels must be given with points")
    if labels is not None and points is None:
        raise ValueError("points must be given with labels")
    coords = float_tensor(points, "points", device)
    if coords.dim() < 2 or coords.shape[-1] != 2:
        raise ValueError(f"points must have shape (N, 2) as x, y pairs, got {tuple(coords.shape)}")
    label_array = np.asarray(labels)
    if label_array.dtype.kind not in "iub" and not (
        label_array.dtype.kind == "f" and np.all(np.mod(label_array, 1) == 0)
    ):
        raise ValueError(f"labels must be integers (1 foreground, 0 background), got {labels!r}")
    label_tensor = torch.as_tensor(label_array.astype(np.int32), device=device)
    if tuple(label_tensor.shape) != tuple(coords.shape[:-1]):
        raise ValueError(
            f"labels must give one label per point: shape {tuple(coords.shape[:-1])}, got {tuple(label_tensor.shape)}"
        )
    if not bool(((label_tensor >= -1) & (label_tensor <= 3)).all()):
        raise ValueError(f"labels must be 1 (foreground) or 0 (background), got {label_array.tolist()}")
    return coords, label_tensor


def box_corners(box, device: torch.device) -> Tensor:
    """Boxes (4,) or (B, 4) as x0, y0, x1, y1 -> corners (B, 2, 2); [[x0, y0], [x1, y1]] is accepted too."""
    boxes = float_tensor(box, "box", device)
    if boxes.shape == (2, 2):
        boxes = boxes.reshape(4)
    if boxes.dim() == 1:
        boxes = boxes[None]
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"box must have shape (4,) as x0, y0, x1, y1, got {tuple(boxes.shape)}")
    if bool((boxes[:, 2] < boxes[:, 0]).any() | (boxes[:, 3] < boxes[:, 1]).any()):
        raise ValueError(f"box must be given as x0, y0, x1, y1 with x0 <= x1 and y0 <= y1, got {boxes.tolist()}")
    return boxes.reshape(-1, 2, 2)


def check_inside(coords: Tensor, frame_hw: tuple[int, int], normalize_coords: bool, what: str) -> None:
    """Points must lie on the image: within its pixel extent, or within [0, 1] for fractional coordinates."""
    height, width = frame_hw
    limits = torch.tensor([width, height] if normalize_coords else [1.0, 1.0], device=coords.device)
    outside = (coords < 0).any(-1) | (coords > limits).any(-1)
    if bool(outside.any()):
        x, y = coords[outside][0].tolist()
        extent = f"the {width}x{height} image" if normalize_coords else "[0, 1] (normalize_coords=False)"
        raise ValueError(f"{what} (x={x:g}, y={y:g}) lies outside {extent}")


def to_model_frame(coords: Tensor, frame_hw: tuple[int, int], image_size: int, normalize_coords: bool) -> Tensor:
    """(..., 2) user coordinates -> pixels of the model's square input."""
    if normalize_coords:
        height, width = frame_hw
        # Each axis divided by a Python number, as the official transform does: no tensor of the sizes
        # to copy to a GPU (a copy the GPU's queue would wait for), and on CUDA the same rounding.
        coords = torch.stack((coords[..., 0] / width, coords[..., 1] / height), dim=-1)
    return coords * image_size


def object_clicks(
    points, labels, box, frame_hw: tuple[int, int], image_size: int, normalize_coords: bool
) -> tuple[Tensor, Tensor]:
    """One object's clicks and/or box on a frame -> model pixels (1, N, 2) and labels (1, N), on the CPU.

    points (N, 2) or (1, N, 2) with labels (N,) or (1, N); box (4,) or [[x0, y0], [x1, y1]], its
    corners first. Checked on the CPU, where a failed check does not wait for the GPU.
    """
    cpu = torch.device("cpu")
    coords = torch.zeros(0, 2)
    point_labels = torch.zeros(0, dtype=torch.int32)
    if points is not None or labels is not None:
        coords, point_labels = point_tensors(points, labels, cpu)
        if coords.dim() == 3 and coords.shape[0] == 1:
            coords, point_labels = coords[0], point_labels[0]
        if coords.dim() != 2:
            raise ValueError(f"points must have shape (N, 2), got {tuple(coords.shape)}")
        check_inside(coords, frame_hw, normalize_coords, "point")
    if box is not None:
        corners = box_corners(box, cpu)
        if len(corners) != 1:
            raise ValueError(f"one box per object and frame, got {len(corners)}")
        check_inside(corners[0], frame_hw, normalize_coords, "box corner")
        coords = torch.cat([corners[0], coords])
        point_labels = torch.cat([torch.tensor(BOX_CORNER_LABELS, dtype=torch.int32), point_labels])
    coords = to_model_frame(coords, frame_hw, image_size, normalize_coords)
    return coords[None], point_labels[None]


def mask_to_model_frame(mask, image_size: int, device: torch.device) -> Tensor:
    """A mask (H, W) of the frame, non-zero on the object -> (1, 1, S, S) float 0/1 at the model's input size."""
    try:
        tensor = torch.as_tensor(mask if isinstance(mask, Tensor) else np.asarray(mask), device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"mask must be a 2D array (H, W), got {type(mask).__name__}") from error
    if tensor.dim() != 2 or tensor.numel() == 0:
        raise ValueError(f"mask must be a non-empty 2D array (H, W), got shape {tuple(tensor.shape)}")
    mask_float = (tensor != 0).float()[None, None]  # (1, 1, H, W)
    if tuple(mask_float.shape[-2:]) == (image_size, image_size):
        return mask_float
    resized = F.interpolate(
        mask_float, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    return (resized >= 0.5).float()
