"""Live sources: cameras (OpenCV) and network streams (PyAV), read in a thread that keeps only the newest frame.

A live source does not wait for the tracker: a reader thread takes frames as they come and
replaces the one waiting, so the tracker always gets the newest frame and the frames it could
not keep up with are dropped and counted. Frames are H x W x 3 uint8 RGB arrays, converted
once by the decoder.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator, NamedTuple, Optional, Protocol

import numpy as np

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
# What FFmpeg may use for a URL given by someone else (the live server's clients): no file://, no local concat.
NETWORK_PROTOCOLS = "http,https,tls,tcp,udp,rtp,rtsp,rtsps,rtmp,rtmps,srt,crypto,hls,httpproxy"


class SourceError(ValueError):
    """A camera or stream that cannot be opened or read."""


class SourceFrame(NamedTuple):
    index: int  # position in the source: frames read so far, dropped ones included
    image: np.ndarray  # (H, W, 3) uint8 RGB


class Captured(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8 RGB
    time: Optional[float]  # seconds since the start of the stream, when the source says


class Capture(Protocol):
    """Something that yields frames one by one, blocking until the next one is there."""

    name: str
    fps: Optional[float]
    paced: bool  # a recording, to be released at the pace of its timestamps (a live source paces itself)

    def read(self) -> Optional[Captured]:
        """The next frame, or None when the source has ended."""
        ...

    def close(self) -> None: ...


def is_stream_url(spec: str) -> bool:
    return spec.lower().startswith(STREAM_SCHEMES)


class CameraCapture:
    """A camera by its index, through OpenCV."""

    paced = False

    def __init__(self, index: int) -> None:
        import cv2

        self._cv2 = cv2
        self.name = f"camera {index}"
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our one-line error replaces its warnings
        try:
            self._capture = cv2.VideoCapture(index)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"camera {index} could not be opened (no such camera, or it is in use)")
        rate = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(rate) if rate and rate > 0 else None

    def read(self) -> Optional[Captured]:
        ok, bgr = self._capture.read()
        if not ok:
            return None
        return Captured(self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB), None)  # the one conversion: BGR -> RGB

    def close(self) -> None:
        self._capture.release()


class StreamCapture:
    """A network stream (RTSP, HTTP, ...) or a video file, through PyAV.

    A source with a known duration is a recording (a file, or a file served over HTTP): with
    `paced` left to None it is released at the pace of its timestamps, so that it behaves like a
    camera. A live stream (no duration) arrives at its own pace and is read as fast as it comes.
    """

    def __init__(
        self, url: str, paced: Optional[bool] = None, timeout: float = 10.0, network_only: bool = False
    ) -> None:
        import av

        self._av = av
        self.name = url
        options = {"rtsp_transport": "tcp"} if url.lower().startswith("rtsp") else {}
        if network_only:  # a URL from an untrusted client must not read local files
            options["protocol_whitelist"] = NETWORK_PROTOCOLS
        try:
            self._container = av.open(url, options=options, timeout=timeout)
        except (av.error.FFmpegError, OSError) as error:
            raise SourceError(f"{url} could not be opened: {error}") from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{url} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.paced = self._container.duration is not None if paced is None else paced
        self._frames = self._container.decode(self._stream)

    def read(self) -> Optional[Captured]:
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except self._av.error.FFmpegError as error:
            raise SourceError(f"{self.name} broke off: {error}") from None
        return Captured(frame.to_ndarray(format="rgb24"), frame.time)

    def close(self) -> None:
        self._container.close()


class LatestFrameReader:
    """Hands out the newest frame of a capture; the frames the consumer had no time for are dropped.

    The first frame is read when the reader is made (it gives the size, and proves the source
    works); the reading thread starts with the iteration, so that nothing is dropped while the
    model loads. Iterating yields SourceFrame(index, image) until the capture ends.
    """

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.name = capture.name
        self.fps = capture.fps
        self.dropped = 0
        self.frames_read = 0
        first = capture.read()
        if first is None:
            capture.close()
            raise SourceError(f"{capture.name} delivered no frame")
        self.size = (int(first.image.shape[0]), int(first.image.shape[1]))  # (height, width)
        self._first = SourceFrame(0, first.image)
        self.frames_read = 1
        self._latest: Optional[SourceFrame] = None
        self._ended = False
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"sam2rt reader ({capture.name})", daemon=True)

    def _run(self) -> None:
        clock: Optional[tuple[float, float]] = None  # (wall time, stream time) of the first frame read here
        try:
            while not self._stop.is_set():
                frame = self.capture.read()
                if frame is None:
                    break
                if self.capture.paced and frame.time is not None:
                    now = time.monotonic()
                    clock = clock or (now, frame.time)
                    delay = (frame.time - clock[1]) - (now - clock[0])
                    if delay > 0:
                        time.sleep(delay)
                with self._changed:
                    if self._latest is not None:
                        self.dropped += 1  # replaced before the tracker took it
                    self._latest = SourceFrame(self.frames_read, frame.image)
                    self.frames_read += 1
                    self._changed.notify()
        except BaseException as error:  # handed to the consumer, which raises it in its own thread
            self._error = error
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify()

    def _next(self) -> Optional[SourceFrame]:
        """The newest frame not yet taken, waiting for one; None once the capture has ended."""
        with self._changed:
            while self._latest is None and not self._ended:
                self._changed.wait(0.2)  # short waits keep Ctrl+C responsive while a stream stalls
            frame, self._latest = self._latest, None
        if frame is None and self._error is not None:
            error = self._error
            raise error if isinstance(error, SourceError) else SourceError(f"{self.name} broke off: {error}")
        return frame

    def __iter__(self) -> Iterator[SourceFrame]:
        yield self._first
        self._thread.start()
        while (frame := self._next()) is not None:
            yield frame

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        if not self._thread.is_alive():  # a capture still blocked in read() is left to the daemon thread's end
            self.capture.close()
