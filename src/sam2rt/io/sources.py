"""Random-access frame sequences: a video file, a folder of images, or a list of frames.

Files decode on demand into H x W x 3 uint8 RGB arrays: nothing holds the whole video in memory.
A list of frames is checked whole when it is opened (frames.as_rgb_tensor), so that a bad frame
is refused before a session starts.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..processing.images import ImageError, ImageLike, as_rgb_tensor
from .image_file import image_file_size, read_rgb
from .video_file import VideoFileFrames, VideoReadError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class FrameSequence(Protocol):
    size: tuple[int, int]  # (height, width) of the first frame

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


class ListFrames:
    """Frames already in memory: arrays, tensors or PIL images, all of one size."""

    def __init__(self, frames: Sequence) -> None:
        if len(frames) == 0:
            raise ValueError("the list of frames is empty")
        self._frames = frames
        sizes = [_checked_size(frame, index) for index, frame in enumerate(frames)]
        for index, size in enumerate(sizes):
            if size != sizes[0]:
                raise ValueError(
                    f"frame {index} is {size[1]}x{size[0]} but frame 0 is {sizes[0][1]}x{sizes[0][0]}: "
                    "the frames of a video must all have one size"
                )
        self.size = sizes[0]
        self.fps: Optional[float] = None

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> ImageLike:
        frame = self._frames[index]
        return frame if isinstance(frame, (np.ndarray, torch.Tensor, Image.Image)) else np.asarray(frame)


def _checked_size(frame, index: int) -> tuple[int, int]:
    """(height, width) of a frame that as_rgb_tensor accepts; its refusal, naming the frame, otherwise."""
    if not isinstance(frame, (np.ndarray, torch.Tensor, Image.Image)):
        frame = np.asarray(frame)
    try:
        rgb = as_rgb_tensor(frame)
    except (TypeError, ValueError) as error:
        raise type(error)(f"frame {index}: {error}") from None
    return int(rgb.shape[1]), int(rgb.shape[2])


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
        for path in self.paths:  # headers only: a decompression bomb is refused before any work
            _folder_frame(image_file_size, path)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_size = cache_size
        self.size = self[0].shape[:2]
        self.fps: Optional[float] = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        if index in self._cache:
            return self._cache[index]
        frame = _folder_frame(read_rgb, self.paths[index])
        self._cache[index] = frame
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return frame


def _folder_frame(read, path: Path):
    """A frame folder is a video: its unreadable images are video read errors, which end a run cleanly."""
    try:
        return read(path)
    except ImageError as error:
        raise VideoReadError(str(error)) from None
    except OSError as error:
        raise VideoReadError(f"{path} is not a readable image: {error}") from None


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
