"""Random access to a video file's frames, decoded on demand with PyAV, with a bounded cache.

Opening the file reads its packet index (no decoding) to count frames and find keyframes. A
frame is decoded by continuing the running decoder when it is ahead, or by seeking to the
keyframe before it; the most recent `cache_size` decoded frames are kept, so that reverse
playback decodes each group of pictures a bounded number of times.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np


class VideoReadError(ValueError):
    """A video that cannot be opened or decoded."""


def _av():
    try:
        import av
    except ImportError as error:  # pragma: no cover - av is a dependency
        raise VideoReadError("reading video files needs PyAV: pip install av") from error
    return av


class VideoFileFrames:
    """Frames of a video file as a sequence of H x W x 3 uint8 RGB arrays."""

    def __init__(self, path: Union[str, Path], cache_size: int = 32) -> None:
        av = _av()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such video file: {self.path}")
        try:
            self._container = av.open(str(self.path))
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path} is not a readable video: {error}") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoReadError(f"{self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        try:
            packets = [p for p in self._container.demux(self._stream) if p.size > 0]
        except av.error.FFmpegError as error:
            self._container.close()
            raise VideoReadError(f"{self.path} is corrupt: {error}") from None
        self._pts = sorted(p.pts for p in packets if p.pts is not None)
        self._keyframes = sorted(p.pts for p in packets if p.pts is not None and p.is_keyframe)
        if not self._pts:
            self._container.close()
            raise VideoReadError(f"{self.path} holds no video frames")
        self._index_of = {pts: i for i, pts in enumerate(self._pts)}
        self.cache_size = max(1, cache_size)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._decoder: Optional[Iterator] = None
        self._next = 0  # index of the frame the running decoder yields next
        self.size = (self._stream.codec_context.height, self._stream.codec_context.width)

    @property
    def fps(self) -> Optional[float]:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    @property
    def time_base(self) -> Optional[Fraction]:
        return self._stream.time_base

    def __len__(self) -> int:
        return len(self._pts)

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} is outside the video's {len(self)} frames")
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        if self._decoder is None or not self._next <= index < self._next + self.cache_size:
            self._seek(index)
        while True:
            found, frame = self._decode_next()
            self._remember(found, frame)
            if found >= index:
                if found != index:
                    raise VideoReadError(f"{self.path}: frame {index} could not be decoded")
                return frame

    def close(self) -> None:
        self._container.close()

    def _seek(self, index: int) -> None:
        target = self._pts[index]
        position = bisect.bisect_right(self._keyframes, target) - 1
        # A damaged index may mark no keyframe at all: decode from the first frame then.
        keyframe = self._keyframes[position] if position >= 0 else self._pts[0]
        self._container.seek(keyframe, stream=self._stream, backward=True)
        self._decoder = self._container.decode(self._stream)
        self._next = self._index_of.get(keyframe, 0)

    def _decode_next(self) -> tuple[int, np.ndarray]:
        av = _av()
        try:
            frame = next(self._decoder)
        except StopIteration:
            raise VideoReadError(f"{self.path} ended after {self._next} of {len(self)} frames (truncated?)") from None
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path}: frame {self._next} could not be decoded: {error}") from None
        index = self._index_of.get(frame.pts, self._next) if frame.pts is not None else self._next
        self._next = index + 1
        return index, frame.to_ndarray(format="rgb24")

    def _remember(self, index: int, frame: np.ndarray) -> None:
        self._cache[index] = frame
        self._cache.move_to_end(index)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
