"""A session: one browser tab's source, objects and figures, shared by its connection and the scheduler.

The connection (event loop) and a server-side feed (its thread) offer frames and queue requests; the
scheduler (its own thread) takes them and alone touches the session's tracking stream. One lock, the
scheduler's, guards what both sides touch: the newest frame waiting, the requests, `paused`, `closed`. The
frames kept for prompts have a lock of their own, shared by the scheduler and the publisher.
A frame offered while another still waits replaces it: the older one is dropped and counted.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Union

from .export import Recorder
from .protocol import PromptRequest, ReceivedFrame, RemoveRequest, TextRequest, decode_payload
from .ticks import Arrivals

RECENT_FRAMES = 32  # processed frames kept per session, so that a click lands on the frame it was made on
FPS_WINDOW_S = 2.0


@dataclass(frozen=True)
class Restart:
    """A new source: forget the objects, the frames held and the recording."""


@dataclass(frozen=True)
class Reset:
    """Forget the objects; the frames held stay, so the view can still be clicked."""


@dataclass(frozen=True)
class Close:
    """The connection is gone: give the stream back to the engine."""


Command = Union[PromptRequest, RemoveRequest, TextRequest, Restart, Reset, Close]
Deliver = Callable[[str, Optional[bytes]], None]  # (JSON text, binary message to send before it)


@dataclass
class SessionStats:
    processed: int = 0
    dropped: int = 0
    latency_ms: float = 0.0  # from a frame's arrival to its masks sent, smoothed
    _times: deque = field(default_factory=deque)

    def frame_done(self, arrived: float) -> None:
        now = time.monotonic()
        self.processed += 1
        latency = (now - arrived) * 1000.0
        self.latency_ms = latency if self.processed == 1 else 0.8 * self.latency_ms + 0.2 * latency
        self._times.append(now)
        while self._times and self._times[0] < now - FPS_WINDOW_S:
            self._times.popleft()

    def as_json(self) -> dict:
        span = self._times[-1] - self._times[0] if len(self._times) > 1 else 0.0
        fps = (len(self._times) - 1) / span if span > 0 else 0.0
        return {
            "processed": self.processed,
            "dropped": self.dropped,
            "fps": round(fps, 2),
            "latency_ms": round(self.latency_ms, 1),
        }


class Session:
    def __init__(self, lock: threading.Condition, deliver: Deliver) -> None:
        self.id = secrets.token_urlsafe(24)  # unguessable: it is the key to the session's exports
        self.deliver = deliver
        self.stats = SessionStats()
        self.recorder = Recorder()
        self.source_kind = "none"
        self.source_name = ""
        self.fps: Optional[float] = None
        self.feed: Any = None  # the server-side Feed, if any (the connection starts and stops it)
        self.released = threading.Event()  # set once the scheduler has given the stream back
        # Shared with the scheduler, under `_lock`:
        self._lock = lock
        self.waiting: Optional[ReceivedFrame] = None
        self.arrivals = Arrivals()  # when this source's frames come, for the tick to wait for the next one
        self.commands: deque[Command] = deque()
        self.paused = False
        self.closed = False
        self.size: Optional[tuple[int, int]] = None  # (height, width) of this source's frames
        # The scheduler's alone:
        self.stream: Any = None
        self.phrase: Any = None  # a SessionPhrase (concepts.py) while a phrase is tracked instead of clicks
        # Frames shown, for prompts: the scheduler adds them, the publisher swaps a server-side frame's pixels for
        # its JPEG once encoded; under `_recent_lock`.
        self._recent: OrderedDict[int, ReceivedFrame] = OrderedDict()
        self._recent_lock = threading.Lock()
        self.newest: Optional[int] = None  # id of the frame the stream's newest frame is
        self.generation = 0  # counts the sources: results of an earlier one are not sent

    def offer(self, frame: ReceivedFrame) -> Optional[str]:
        """Hand the newest frame to the scheduler; returns why it was refused, if it was."""
        height, width = frame.image.shape[:2]  # (H, W, 3)
        with self._lock:
            if self.closed or self.paused:
                return None
            if self.size is not None and self.size != (height, width):
                return (
                    f"frame size changed from {self.size[1]} x {self.size[0]} to {width} x {height}: "
                    "start the source again for a new size"
                )
            self.size = (height, width)
            if self.waiting is not None:
                self.stats.dropped += 1  # the scheduler had no time for it
            self.waiting = frame
            self.arrivals.note(frame.arrived)
            self._lock.notify_all()
        return None

    def request(self, command: Command) -> None:
        with self._lock:
            if self.closed:
                return
            if isinstance(command, Restart):
                self.waiting, self.size, self.arrivals = None, None, Arrivals()
            if isinstance(command, Close):
                self.closed = True
            self.commands.append(command)
            self._lock.notify_all()

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self.paused = paused
            if paused:
                self.waiting = None  # a paused view stays on the frame shown
        if self.feed is not None:
            self.feed.pause(paused)

    def take_work(self) -> tuple[list[Command], Optional[ReceivedFrame]]:
        """The scheduler's share: the queued requests and the frame waiting (call with the lock held)."""
        commands = list(self.commands)
        self.commands.clear()
        frame, self.waiting = self.waiting, None
        return commands, frame

    def has_work(self) -> bool:
        return bool(self.commands) or self.waiting is not None

    def remember(self, frame: ReceivedFrame) -> None:
        """Keep a processed frame for prompts (scheduler thread): encoded, its pixels decoded again if needed; a
        server-side frame keeps its pixels until the publisher has encoded it (`keep_encoded`)."""
        kept = frame if frame.encoded is None else replace(frame, image=None)
        with self._recent_lock:
            self._recent[frame.frame_id] = kept
            self._recent.move_to_end(frame.frame_id)
            while len(self._recent) > RECENT_FRAMES:
                self._recent.popitem(last=False)

    def recalled(self, frame_id: int) -> Optional[ReceivedFrame]:
        """A frame kept for prompts, or None: encoded (image None), or a server-side frame not encoded yet."""
        with self._recent_lock:
            return self._recent.get(frame_id)

    def pixels(self, frame: ReceivedFrame) -> Any:
        """A held frame's (H, W, 3) uint8 RGB, decoded again if it is kept encoded."""
        if frame.image is not None:
            return frame.image
        height, width = self.size or (0, 0)
        return decode_payload(frame.encoded, frame.format, width, height)

    def keep_encoded(self, frame: ReceivedFrame, encoded: bytes, format: int) -> ReceivedFrame:
        """`frame` (a server-side frame, pixels only) with its encoding (publisher thread); the frame kept for
        prompts, where it is still this one, becomes the encoded one, its pixels freed."""
        encoded_frame = replace(frame, image=None, encoded=encoded, format=format)
        with self._recent_lock:
            if self._recent.get(frame.frame_id) is frame:
                self._recent[frame.frame_id] = encoded_frame
        return encoded_frame

    def forget_frames(self) -> None:
        with self._recent_lock:
            self._recent.clear()
