"""Where tracking results go: the record each output receives per frame, and DAVIS-style indexed PNG masks.

Every output ("sink") takes the frames one by one and is closed once at the end, also when the
input breaks midway, so that what was written so far stays a valid file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional, Protocol, Sequence

import numpy as np
from PIL import Image

from .atomic import OutputError, write_atomically

MAX_PNG_OBJECT_ID = 255  # an indexed PNG holds one byte per pixel


class TrackedFrame(NamedTuple):
    index: int  # frame number in the source
    name: str  # file stem outputs use for this frame, e.g. "00012"
    image: np.ndarray  # (H, W, 3) uint8 RGB, as read from the source
    object_ids: list[int]
    masks: np.ndarray  # (N, H, W) bool, one per object; objects may overlap
    scores: np.ndarray  # (N,) float, probability that each object is visible
    labels: np.ndarray  # (H, W) int32 object id per pixel (0: background); overlaps go to the highest logit


class MaskSink(Protocol):
    description: str  # what was written, for the summary

    def write(self, frame: TrackedFrame) -> None: ...

    def close(self) -> None: ...


def make_folder(path: Path) -> Path:
    """Create an output folder (and its parents), or fail with an OutputError that says why."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output folder {path}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"cannot write to the output folder {path}: permission denied")
    return path


def check_writable_folder(path: Path) -> Path:
    """Fail early, before any work, if `path` cannot be used or created as a folder."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot use {path} as a folder: it is a file")
    existing = next(folder for folder in (path, *path.parents) if folder.exists() or folder == folder.parent)
    if not existing.is_dir():
        raise OutputError(f"cannot create the folder {path}: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise OutputError(f"cannot write to {existing}: permission denied")
    return path


def check_writable_file(path: Path) -> Path:
    """Fail early, before any work, if `path` cannot be written as a file (its folder is created if missing)."""
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    check_writable_folder(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {path}: permission denied")
    return path


def prepare_file(path: Path) -> Path:
    """Check that `path` can be written and create its folder."""
    check_writable_file(path)
    make_folder(path.parent)
    return path


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS and PASCAL VOC annotations, flattened as [r0, g0, b0, r1, ...].

    Colour i spreads the bits of i over the high bits of the three channels: 1 is dark red, 2 dark
    green, 3 olive, and so on.
    """
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


class PngMaskWriter:
    """One indexed PNG per frame, pixel value = object id, as DAVIS and VOS evaluators read them.

    Files are `<folder>/<frame name>.png`: `00000.png`, ... for videos and the frames' own names
    for a folder of frames.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = make_folder(Path(folder))
        self.count = 0
        self._palette = davis_palette()

    @property
    def description(self) -> str:
        return f"{self.count} PNG masks in {self.folder}"

    def write(self, frame: TrackedFrame) -> None:
        if frame.labels.max(initial=0) > MAX_PNG_OBJECT_ID:
            raise OutputError(f"PNG masks hold object ids 1 to {MAX_PNG_OBJECT_ID}, got {int(frame.labels.max())}")
        image = Image.fromarray(frame.labels.astype(np.uint8))
        image.putpalette(self._palette)  # L -> P: the values stay the object ids
        write_atomically(self.folder / f"{frame.name}.png", lambda temporary: image.save(temporary, format="PNG"))
        self.count += 1

    def close(self) -> None:
        pass


class SinkSet:
    """All the outputs of a run: each frame goes to every one; closing closes each, whatever fails."""

    def __init__(self, sinks: Sequence[MaskSink] = ()) -> None:
        self.sinks = list(sinks)

    def add(self, sink: MaskSink) -> None:
        self.sinks.append(sink)

    def write(self, frame: TrackedFrame) -> None:
        for sink in self.sinks:
            sink.write(frame)

    def close(self) -> Optional[Exception]:
        """Close every sink; the first error, if any, is returned rather than raised so that all get closed."""
        first: Optional[Exception] = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as error:  # one broken output must not keep the others from being finalised
                first = first or error
        return first

    def descriptions(self) -> list[str]:
        return [sink.description for sink in self.sinks]
