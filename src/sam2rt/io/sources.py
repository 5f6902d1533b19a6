"""Random-access frame sequences: a video file, a folder of images, or a list of frames.

Every sequence yields H x W x 3 uint8 RGB arrays and decodes on demand: nothing holds the whole
video in memory.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .video_file import VideoFileFrames, VideoReadError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class FrameSequence(Protocol):
    size: tuple[int, int]  # (height, width) of the first frame

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


class ListFrames:
    """Frames already in memory."""

    def __init__(self, frames: Sequence) -> None:
        if len(frames) == 0:
            raise ValueError("the list of frames is empty")
        self._frames = frames
        first = np.asarray(frames[0])
        if first.ndim != 3 or first.shape[-1] != 3:
            raise ValueError(f"frames must be H x W x 3 RGB arrays, got shape {first.shape}")
        self.size = (int(first.shape[0]), int(first.shape[1]))
        self.fps: Optional[float] = None

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self._frames[index])


def _frame_order(path: Path):
    """Numeric file names in numeric order (as the official loader sorts them), others naturally."""
    parts = re.split(r"(\d+)", path.stem)
    return [int(p) if p.isdigit() else p for p in parts]


class ImageFolderFrames:
    """The images of a folder, in the order of the numbers in their names."""

    def __init__(self, folder: Union[str, Path], cache_size: int = 8) -> None:
        self.folder = Path(folder)
        self.paths = sorted(
            (p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=_frame_order
        )
        if not self.paths:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.folder}")
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_size = cache_size
        self.size = self[0].shape[:2]
        self.fps: Optional[float] = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        if index in self._cache:
            return self._cache[index]
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                frame = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise VideoReadError(f"{path} is not a readable image: {error}") from None
        self._cache[index] = frame
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return frame


def open_frames(source) -> FrameSequence:
    """A video file, a folder of images, or a list of H x W x 3 frames, as a random-access sequence."""
    if isinstance(source, (list, tuple)):
        return ListFrames(source)
    if isinstance(source, np.ndarray) and source.ndim == 4:
        return ListFrames(source)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"expected a video path, a folder of frames or a list of frames, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no such video file or folder: {path}")
    if path.is_dir():
        return ImageFolderFrames(path)
    return VideoFileFrames(path)
