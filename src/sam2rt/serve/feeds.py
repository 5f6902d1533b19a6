"""Server-side sources of a session: a video file (media root or upload) or a stream URL, read in a thread.

A recording (a file, or a file served over HTTP: it has a duration) plays at the pace of its
timestamps, as a camera would deliver it; pausing holds its clock. A live stream arrives at its own
pace and is read on while paused (its frames are then skipped). Each
frame read is offered to the session, which keeps only the newest: what the tracker has no time
for is dropped there, and counted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..io.live import STREAM_SCHEMES, SourceError, StreamCapture

FALLBACK_FPS = 30.0


class FeedError(ValueError):
    """A source that cannot be opened."""


FrameCallback = Callable[[int, np.ndarray], None]  # (frame number, (H, W, 3) uint8 RGB)
EndCallback = Callable[[str], None]  # why the source ended


def check_url(url: str) -> str:
    if not url.lower().startswith(STREAM_SCHEMES):
        raise FeedError(f"a stream URL starts with one of {', '.join(STREAM_SCHEMES)}")
    return url


class Feed:
    """Reads a source in a daemon thread and hands each frame to `on_frame`, until it ends or is stopped.

    Opening reads the first frame (it gives the size, and proves the source works).
    """

    def __init__(self, source: Union[Path, str], on_frame: FrameCallback, on_end: EndCallback) -> None:
        try:
            self._capture = StreamCapture(str(source), paced=None, network_only=not isinstance(source, Path))
            first = self._capture.read()
        except SourceError as error:
            raise FeedError(str(error)) from None
        if first is None:
            self._capture.close()
            raise FeedError(f"{source} holds no frame")
        self.fps: Optional[float] = self._capture.fps
        self.size = first.image.shape[:2]  # (height, width)
        self._first = first
        self._on_frame, self._on_end = on_frame, on_end
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sam2rt feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def pause(self, paused: bool) -> None:
        if paused:
            self._paused.set()
        else:
            self._paused.clear()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        if not self._thread.is_alive():  # a capture still blocked in read() is left to the daemon thread's end
            self._capture.close()

    def _run(self) -> None:
        reason = "end of the video"
        played = 0.0  # seconds of the file played so far: the clock stops while paused
        last_wall = time.monotonic()
        start: Optional[float] = None  # timestamp of the first frame
        number = 0
        frame = self._first
        try:
            while frame is not None and not self._stop.is_set():
                if self._capture.paced:
                    while self._paused.is_set() and not self._stop.is_set():
                        time.sleep(0.05)
                        last_wall = time.monotonic()
                    stamp = frame.time if frame.time is not None else number / (self.fps or FALLBACK_FPS)
                    start = stamp if start is None else start
                    now = time.monotonic()
                    played, last_wall = played + now - last_wall, now
                    if stamp - start > played:
                        self._stop.wait(stamp - start - played)
                if not self._stop.is_set() and not (self._paused.is_set() and not self._capture.paced):
                    self._on_frame(number, frame.image)
                number += 1
                frame = self._capture.read()
        except SourceError as error:
            reason = str(error)
        if not self._stop.is_set():
            self._on_end(reason)
