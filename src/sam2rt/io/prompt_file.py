"""Prompts for `sam2rt track`: from command-line flags, or from a JSON file for several objects and frames.

The file is a JSON list; each entry prompts one object on one frame:

    [
      {"frame": 0, "obj_id": 1, "points": [[210, 350], [250, 220]], "labels": [1, 0]},
      {"frame": 0, "obj_id": 2, "box": [300, 0, 500, 400]},
      {"frame": 40, "obj_id": 3, "mask": "masks/cup.png"}
    ]

`frame` (default 0) counts from 0; `obj_id` is an integer from 1; `points` are [x, y] pixels of
the frame with `labels` 1 (object) or 0 (background), all 1 when left out; `box` is
[x0, y0, x1, y1]; `mask` is an image the size of the frame, non-zero on the object, its path
relative to the prompts file. Points and a box may go together; a mask stands alone. One entry
per object and frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..prompts import check_inside
from .image_file import ImageFileError, read_mask_image

ENTRY_KEYS = ("frame", "obj_id", "points", "labels", "box", "mask")


class PromptError(ValueError):
    """A prompt that cannot be used: malformed, outside the frame, or on a frame that never comes."""


@dataclass(frozen=True)
class Prompt:
    frame: int
    obj_id: int
    points: Optional[np.ndarray]  # (N, 2) float32 x, y pixels
    labels: Optional[np.ndarray]  # (N,) int32: 1 object, 0 background
    box: Optional[np.ndarray]  # (4,) float32 x0, y0, x1, y1
    mask: Optional[np.ndarray]  # (H, W) bool
    origin: str  # where it was given, for messages: "prompts.json entry 2", "the command line"

    def describe(self) -> str:
        return f"{self.origin} (object {self.obj_id}, frame {self.frame})"


def read_mask(path: Path, origin: str) -> np.ndarray:
    """An image file as a mask (H, W) bool: non-zero pixels (palette indices for indexed PNGs) are the object."""
    try:
        mask = read_mask_image(path)
    except FileNotFoundError:
        raise PromptError(f"{origin}: mask file {path} not found") from None
    except ImageFileError as error:
        raise PromptError(f"{origin}: mask file {error}") from None
    if not mask.any():
        raise PromptError(f"{origin}: mask {path} is empty (no non-zero pixel)")
    return mask


def make_prompt(
    frame: int,
    obj_id: int,
    points: Optional[Sequence[Sequence[float]]],
    labels: Optional[Sequence[int]],
    box: Optional[Sequence[float]],
    mask: Optional[np.ndarray],
    origin: str,
) -> Prompt:
    """Check one object's prompt on one frame and build it."""
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise PromptError(f"{origin}: frame must be an integer >= 0, got {frame!r}")
    if isinstance(obj_id, bool) or not isinstance(obj_id, int) or obj_id < 1:
        raise PromptError(f"{origin}: obj_id must be an integer >= 1, got {obj_id!r}")
    if labels is not None and points is None:
        raise PromptError(f"{origin}: labels were given without points")
    if points is None and box is None and mask is None:
        raise PromptError(f"{origin}: a prompt needs points, a box or a mask")
    if mask is not None and (points is not None or box is not None):
        raise PromptError(f"{origin}: a mask prompt stands alone; give points or a box in another entry")
    point_array = label_array = box_array = None
    if points is not None:
        if not _is_pair_list(points) or len(points) == 0:
            raise PromptError(f"{origin}: points must be a non-empty list of [x, y] pairs, got {points!r}")
        point_array = _numbers(points, origin, "points", "a list of [x, y] pairs").reshape(-1, 2)  # (N, 2)
        if labels is None:
            labels = [1] * len(point_array)
        if not isinstance(labels, list) or not all(type(v) is int and v in (0, 1) for v in labels):
            raise PromptError(f"{origin}: labels must be a list of 1 (object) and 0 (background), got {labels!r}")
        if len(labels) != len(point_array):
            raise PromptError(f"{origin}: {len(point_array)} points but {len(labels)} labels")
        label_array = np.asarray(labels, dtype=np.int32)
    if box is not None:
        box_array = _numbers(box, origin, "box", "[x0, y0, x1, y1]")
        if box_array.shape != (4,) or not isinstance(box, (list, tuple)):
            raise PromptError(f"{origin}: box must be [x0, y0, x1, y1], got {box!r}")
        if box_array[2] < box_array[0] or box_array[3] < box_array[1]:
            raise PromptError(f"{origin}: box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {box!r}")
    return Prompt(frame, obj_id, point_array, label_array, box_array, mask, origin)


def _is_pair_list(points) -> bool:
    return isinstance(points, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points)


def _numbers(value, origin: str, name: str, expected: str) -> np.ndarray:
    """A list of numbers (nested or not) as float32; booleans, strings and NaN are refused."""
    flat = list(_flatten(value))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise PromptError(f"{origin}: {name} must be {expected}, got {value!r}")
    if not all(math.isfinite(v) for v in flat):
        raise PromptError(f"{origin}: {name} must be finite numbers, got {value!r}")
    return np.asarray(flat, dtype=np.float32)


def _flatten(value):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def read_prompts_file(path: Path) -> list[Prompt]:
    """The prompts of a JSON prompts file (the schema is in this module's docstring)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise PromptError(f"prompts file {path} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PromptError(f"prompts file {path} cannot be read: {error}") from None
    except json.JSONDecodeError as error:
        raise PromptError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    if not isinstance(content, list):
        raise PromptError(f"{path}: expected a JSON list of prompts, got {type(content).__name__}")
    if not content:
        raise PromptError(f"{path}: the list of prompts is empty")
    prompts = []
    for number, entry in enumerate(content, start=1):
        origin = f"{path.name} entry {number}"
        if not isinstance(entry, dict):
            raise PromptError(f'{origin}: expected an object like {{"obj_id": 1, "points": [[x, y]]}}, got {entry!r}')
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise PromptError(f"{origin}: unknown key {unknown[0]!r} (known: {', '.join(ENTRY_KEYS)})")
        if "obj_id" not in entry:
            raise PromptError(f"{origin}: obj_id is missing")
        mask = None
        if entry.get("mask") is not None:
            if not isinstance(entry["mask"], str):
                raise PromptError(f"{origin}: mask must be the path of an image file, got {entry['mask']!r}")
            mask = read_mask(path.parent / entry["mask"], origin)
        prompt = make_prompt(
            entry.get("frame", 0),
            entry["obj_id"],
            entry.get("points"),
            entry.get("labels"),
            entry.get("box"),
            mask,
            origin,
        )
        prompts.append(prompt)
    check_unique(prompts)
    return prompts


def check_unique(prompts: Sequence[Prompt]) -> None:
    """One prompt per object and frame: two would silently replace each other."""
    seen: dict[tuple[int, int], Prompt] = {}
    for prompt in prompts:
        key = (prompt.frame, prompt.obj_id)
        if key in seen:
            raise PromptError(
                f"{prompt.origin} prompts object {prompt.obj_id} on frame {prompt.frame} again "
                f"(also {seen[key].origin}): merge them into one prompt"
            )
        seen[key] = prompt


def check_prompts(prompts: Sequence[Prompt], size: tuple[int, int], num_frames: Optional[int], limit: str) -> None:
    """Every prompt must lie on a frame of `size` (height, width) and, when `num_frames` is known, before the end.

    `limit` says where the end comes from, for the message: "the video has 200 frames", "--max-frames 8".
    """
    height, width = size
    for prompt in prompts:
        if num_frames is not None and prompt.frame >= num_frames:
            raise PromptError(
                f"{prompt.describe()}: frame {prompt.frame} is past the end, only frames 0-{num_frames - 1} "
                f"are tracked ({limit})"
            )
        try:
            if prompt.points is not None:
                check_inside(torch.from_numpy(prompt.points), size, True, "point")
            if prompt.box is not None:
                check_inside(torch.from_numpy(prompt.box).reshape(2, 2), size, True, "box corner")  # (4,) -> (2, 2)
        except ValueError as error:
            raise PromptError(f"{prompt.describe()}: {error}") from None
        if prompt.mask is not None and prompt.mask.shape != (height, width):
            mask_height, mask_width = prompt.mask.shape
            raise PromptError(
                f"{prompt.describe()}: the mask is {mask_width}x{mask_height} but the frames are {width}x{height}"
            )
