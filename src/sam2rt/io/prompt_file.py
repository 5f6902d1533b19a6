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

Limits, each refused with a message naming the file and entry: the file's size and nesting
(prompt_json.py), MAX_PROMPTS entries, MAX_POINTS points per prompt, ids and frames below 2^31,
coordinates within +-MAX_COORDINATE. Shapes are strict: `points` is a list of [x, y] pairs of
numbers and `box` four numbers, nothing nested otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..processing.images import ImageError
from ..processing.prompts import check_inside
from .image_file import read_mask_image
from .prompt_json import JsonLimitError, load_json, preview, repeated_key

ENTRY_KEYS = ("frame", "obj_id", "points", "labels", "box", "mask")
MAX_PROMPTS = 10_000  # entries of one prompts file
MAX_POINTS = 1_000  # clicks of one prompt; the official tools take a handful
MAX_INDEX = 2**31 - 1  # object ids and frames: object ids become int32 labels in every output
MAX_COORDINATE = 2**24  # pixels; float32 holds every integer up to here exactly


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
    mask_file: Optional[Path] = None  # the image the mask was read from: an input no output may overwrite

    def describe(self) -> str:
        return f"{self.origin} (object {self.obj_id}, frame {self.frame})"


def read_mask(path: Path, origin: str) -> np.ndarray:
    """An image file as a mask (H, W) bool: non-zero pixels (palette indices for indexed PNGs) are the object."""
    try:
        mask = read_mask_image(path)
    except FileNotFoundError:
        raise PromptError(f"{origin}: mask file {path} not found") from None
    except ImageError as error:
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
    mask_file: Optional[Path] = None,
) -> Prompt:
    """Check one object's prompt on one frame and build it."""
    _check_index(frame, 0, "frame", origin)
    _check_index(obj_id, 1, "obj_id", origin)
    if labels is not None and points is None:
        raise PromptError(f"{origin}: labels were given without points")
    if points is None and box is None and mask is None:
        raise PromptError(f"{origin}: a prompt needs points, a box or a mask")
    if mask is not None and (points is not None or box is not None):
        raise PromptError(f"{origin}: a mask prompt stands alone; give points or a box in another entry")
    point_array = label_array = box_array = None
    if points is not None:
        if isinstance(points, (list, tuple)) and len(points) > MAX_POINTS:
            raise PromptError(f"{origin}: {len(points)} points; a prompt takes at most {MAX_POINTS}")
        if not isinstance(points, (list, tuple)) or not points or not all(_is_pair(pair) for pair in points):
            raise PromptError(f"{origin}: points must be a non-empty list of [x, y] pairs, got {preview(points)}")
        if not all(_is_numbers(pair, 2) for pair in points):
            raise PromptError(f"{origin}: points must be a list of [x, y] pairs of numbers, got {preview(points)}")
        point_array = _coordinates([v for pair in points for v in pair], origin, "points").reshape(-1, 2)  # (N, 2)
        if labels is None:
            labels = [1] * len(point_array)
        if not isinstance(labels, (list, tuple)) or not all(type(v) is int and v in (0, 1) for v in labels):
            raise PromptError(
                f"{origin}: labels must be a list of 1 (object) and 0 (background), got {preview(labels)}"
            )
        if len(labels) != len(point_array):
            raise PromptError(f"{origin}: {len(point_array)} points but {len(labels)} labels")
        label_array = np.asarray(labels, dtype=np.int32)
    if box is not None:
        if not _is_numbers(box, 4):
            raise PromptError(f"{origin}: box must be [x0, y0, x1, y1], got {preview(box)}")
        box_array = _coordinates(list(box), origin, "box")
        if box_array[2] < box_array[0] or box_array[3] < box_array[1]:
            raise PromptError(f"{origin}: box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {preview(box)}")
    return Prompt(frame, obj_id, point_array, label_array, box_array, mask, origin, mask_file)


def _check_index(value, lowest: int, name: str, origin: str) -> None:
    """Frames and object ids: plain integers from `lowest` to MAX_INDEX."""
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= MAX_INDEX:
        raise PromptError(f"{origin}: {name} must be an integer from {lowest} to {MAX_INDEX}, got {preview(value)}")


def _is_pair(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2


def _is_numbers(value, count: int) -> bool:
    """Whether `value` is a flat list of `count` numbers (booleans are not numbers here)."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _coordinates(values: list, origin: str, name: str) -> np.ndarray:
    """Pixel coordinates as float32: finite, within +-MAX_COORDINATE (huge integers included)."""
    for value in values:
        if not abs(value) <= MAX_COORDINATE:  # False for NaN; exact for integers too large for a float
            raise PromptError(
                f"{origin}: {name} must be finite numbers within +-{MAX_COORDINATE} (pixels), got {preview(value)}"
            )
    return np.asarray(values, dtype=np.float32)


def read_prompts_file(path: Path) -> list[Prompt]:
    """The prompts of a JSON prompts file (the schema is in this module's docstring)."""
    path = Path(path)
    try:
        content = load_json(path, "prompts file")
    except FileNotFoundError:
        raise PromptError(f"prompts file {path} not found") from None
    except OSError as error:
        raise PromptError(f"prompts file {path} cannot be read: {error.strerror or error}") from None
    except JsonLimitError as error:
        raise PromptError(str(error)) from None
    if not isinstance(content, list):
        raise PromptError(
            f"{path}: expected a JSON list of prompts, got {'dict' if isinstance(content, dict) else type(content).__name__}"
        )
    if not content:
        raise PromptError(f"{path}: the list of prompts is empty")
    if len(content) > MAX_PROMPTS:
        raise PromptError(f"{path}: {len(content)} prompts; a prompts file holds at most {MAX_PROMPTS}")
    prompts = []
    for number, entry in enumerate(content, start=1):
        origin = f"{path.name} entry {number}"
        if not isinstance(entry, dict):
            raise PromptError(
                f'{origin}: expected an object like {{"obj_id": 1, "points": [[x, y]]}}, got {preview(entry)}'
            )
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise PromptError(f"{origin}: unknown key {preview(unknown[0])} (known: {', '.join(ENTRY_KEYS)})")
        if repeated_key(entry) is not None:
            raise PromptError(f"{origin}: key {repeated_key(entry)!r} is given twice")
        if "obj_id" not in entry:
            raise PromptError(f"{origin}: obj_id is missing")
        mask = mask_file = None
        if entry.get("mask") is not None:
            if not isinstance(entry["mask"], str):
                raise PromptError(f"{origin}: mask must be the path of an image file, got {preview(entry['mask'])}")
            mask_file = path.parent / entry["mask"]
            mask = read_mask(mask_file, origin)
        prompt = make_prompt(
            entry.get("frame", 0),
            entry["obj_id"],
            entry.get("points"),
            entry.get("labels"),
            entry.get("box"),
            mask,
            origin,
            mask_file,
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
