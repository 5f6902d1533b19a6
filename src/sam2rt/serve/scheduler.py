"""One loop that runs the model for every session: each tick, the newest frame of every live session, together.

The loop takes each session's queued requests (prompts, removals, resets) and then steps all the
sessions that have a new frame in one call of the engine (a StreamPool: one batched pass). Before a
tick it waits a bounded moment for the frames other sessions are about to send (ticks.py), so that
cameras out of phase share a pass; a request is answered at once. Frames that arrive while a tick
runs replace each other, so a session always gets its newest frame and the ones in between are
dropped (counted in the session's figures). Only this thread touches the model.

A prompt names the frame the user clicked on. When that frame is no longer the stream's newest
(the stream went on while the click travelled), it is stepped again from the frames the session
holds, so that it becomes the newest and the prompt lands on the pixels the user saw.

A session with a phrase (SAM 3) is not stepped in the pool: after the pool's pass, concepts.py steps the tick's
phrase sessions on their new frames (a backbone pass shared); a phrase set on a session that has a frame is
tracked on that frame at once, so that a paused or ended view shows the instances too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any, Optional, Protocol

import numpy as np

from ..runtime.graphs import release_graphs
from ..tracking.download import PendingFrame, start_download
from ..tracking.stream import FrameResult
from .concepts import ConceptModels, phrase_groups, set_phrase, step_phrase_group
from .protocol import (
    MAX_OBJECTS,
    PromptRequest,
    ProtocolError,
    ReceivedFrame,
    RemoveRequest,
    TextRequest,
    error_message,
)
from .publisher import Outgoing, Publisher
from .sessions import RECENT_FRAMES, Close, Command, Reset, Restart, Session, SessionStats
from .ticks import DEFAULT_BATCH_WAIT_S, tick_deadline

DEFAULT_RELEASE_AFTER_S = 60.0  # a server idle this long gives back the GPU memory it kept for speed

log = logging.getLogger("sam2rt.serve")


class TickObserver(Protocol):
    """What the scheduler reports as it runs (ServerMetrics)."""

    def observe_tick(self, sessions: int, seconds: float) -> None: ...

    def observe_frame(self, latency_s: float) -> None: ...

    def observe_stage(self, stage: str, seconds: float) -> None: ...


class StreamEngine(Protocol):
    """What the scheduler needs of the engine: sam2rt.StreamPool's methods."""

    def open_stream(self) -> Any: ...

    def step(self, frames: dict[Any, np.ndarray]) -> dict[Any, FrameResult]: ...

    def close_stream(self, stream: Any) -> None: ...

    def release_memory(self) -> int: ...

    def warm_up(self, max_streams: int) -> int: ...


class Scheduler:
    def __init__(
        self,
        engine: StreamEngine,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        observer: Optional[TickObserver] = None,
        release_after_s: float = DEFAULT_RELEASE_AFTER_S,
        concepts: Optional[ConceptModels] = None,
        warm_up_streams: int = 0,
    ) -> None:
        self.engine = engine
        self.warm_up_streams = warm_up_streams  # the engine's graphs for this many streams captured first (0: none)
        self.ready = threading.Event()  # set once warmed up: what /healthz waits for
        self.concepts = concepts  # SAM 3's models, for sessions that track a phrase; None: phrases are refused
        self.batch_wait_s = batch_wait_s
        self.observer = observer
        self.release_after_s = release_after_s  # idle this long (no session): the engine's caches go (0: never)
        self._idle_since: Optional[float] = None  # since when no session is open, until the caches are released
        self.tracked_total = 0  # frames stepped, all sessions ever
        self._dropped_retired = 0  # frames dropped by sessions closed or restarted since
        self.lock = threading.Condition()  # guards every session's shared fields, see sessions.py
        self.sessions: list[Session] = []
        self.batch_sizes: list[int] = []  # sessions stepped per tick, the last 1000 ticks
        self.publisher = Publisher(observer)
        self._ticks_in_flight: deque[PendingFrame] = deque()  # the last result of each tick the GPU may still run
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="sam2rt scheduler", daemon=True)

    def start(self) -> None:
        self.publisher.start()
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        with self.lock:
            self._stop = True
            self.lock.notify_all()
        self._thread.join(timeout=10.0)
        self.publisher.stop()

    def add(self, session: Session) -> None:
        with self.lock:
            self.sessions.append(session)
            self._idle_since = None

    def figures(self) -> dict[str, int]:
        """Sessions open, and frames tracked and dropped since the start: what /metrics reads."""
        with self.lock:
            dropped = self._dropped_retired + sum(session.stats.dropped for session in self.sessions)
            return {"sessions": len(self.sessions), "tracked": self.tracked_total, "dropped": dropped}

    # The loop

    def _warm_up(self) -> None:
        """Capture the engine's graphs for up to `warm_up_streams` streams before any session is stepped: the
        captures would otherwise stall the first ticks of each new mix of sessions. A failure is logged, and the
        server serves without (the graphs are then captured as ticks need them)."""
        if self.warm_up_streams > 0:
            start = time.monotonic()
            try:
                captured = self.engine.warm_up(self.warm_up_streams)
            except Exception:
                log.exception("warming up the engine failed; its graphs are captured as sessions need them")
            else:
                log.info(
                    "warmed up for %d streams: %d CUDA graphs in %.1f s",
                    self.warm_up_streams,
                    captured,
                    time.monotonic() - start,
                )
        self.ready.set()

    def _run(self) -> None:
        self._warm_up()
        while True:
            self._wait_for_gpu()
            with self.lock:
                while not self._stop and not any(s.has_work() for s in self.sessions) and not self._release_due():
                    self.lock.wait(0.5)
                release = self._release_due()
                if release:
                    self._idle_since = None  # once per idle spell
                else:
                    self._gather()
                    work = [(s, *s.take_work()) for s in self.sessions if s.has_work()]
                if self._stop:
                    return
            if release:
                self._release()
                continue
            batch: dict[Session, ReceivedFrame] = {}
            phrases: dict[Session, ReceivedFrame] = {}
            for session, commands, frame in work:
                for command in commands:
                    self._guarded(session, command)
                if frame is not None and not session.released.is_set():
                    (batch if session.phrase is None else phrases)[session] = frame
            if batch:
                self._step(batch)
            if phrases:
                self._step_phrases(phrases)

    def _wait_for_gpu(self) -> None:
        """At most one tick queued on the GPU while the next is gathered: frames that come meanwhile step
        together in the next tick, instead of in many small ones that queue up behind each other."""
        if len(self._ticks_in_flight) > 1:
            self._ticks_in_flight.popleft().wait()

    def _release_due(self) -> bool:
        """Whether the server has had no session for `release_after_s` (lock held)."""
        idle = self._idle_since is not None and time.monotonic() - self._idle_since >= self.release_after_s
        return idle and self.release_after_s > 0 and not self.sessions

    def _release(self) -> None:
        try:
            released = self.engine.release_memory()
            if self.concepts is not None:  # SAM 3's detector and tracker replay from graphs of their own
                released += release_graphs(self.concepts.detector) + release_graphs(self.concepts.tracker)
        except Exception:
            log.exception("releasing the engine's memory failed")
            return
        log.info("idle for %g s: released %d CUDA graphs and the allocator's cache", self.release_after_s, released)

    def _gather(self) -> None:
        """Wait (lock held, released while waiting) until the frames due soon are in, at most `batch_wait_s`
        after the oldest waiting frame came; at once when a request waits."""
        while not self._stop and self.batch_wait_s > 0:
            if any(session.commands for session in self.sessions):
                return
            waiting = [s.waiting.arrived for s in self.sessions if s.waiting is not None]
            if not waiting:
                return
            expected = [s.arrivals.next_expected() for s in self.sessions if s.waiting is None and not s.paused]
            now = time.monotonic()
            deadline = tick_deadline(min(waiting), expected, self.batch_wait_s, now)
            if deadline <= now:
                return
            self.lock.wait(deadline - now)

    def _guarded(self, session: Session, command: Command) -> None:
        """Run one request; a refused or failing one is told to its session, and the loop goes on."""
        try:
            self._command(session, command)
        except (ProtocolError, ValueError, KeyError, TypeError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            session.deliver(error_message(str(message)), None)
        except Exception:
            log.exception("request of session %s failed", session.id[:6])
            session.deliver(error_message("internal error while handling the request (see the server log)"), None)

    def _step(self, batch: dict[Session, ReceivedFrame]) -> None:
        frames = {self._stream(session): frame.image for session, frame in batch.items()}
        start = time.monotonic()
        try:
            results = self.engine.step(frames)
            engine_seconds = time.monotonic() - start
        except Exception:
            log.exception("tracking step failed for %d sessions", len(batch))
            for session in batch:
                session.deliver(error_message("internal error while tracking (see the server log)"), None)
            return
        self.batch_sizes = self.batch_sizes[-999:] + [len(batch)]
        for session, frame in batch.items():
            session.newest = frame.frame_id
            session.stats.frame_done(frame.arrived)
            result = results[session.stream]
            pending = self._publish(session, frame, _download(result), result.frame_idx, prompted=False)
            self.tracked_total += 1
        self._ticks_in_flight.append(pending)
        if self.observer is not None:
            self.observer.observe_tick(len(batch), time.monotonic() - start)
            self.observer.observe_stage("engine", engine_seconds)

    def _step_phrases(self, phrases: dict[Session, ReceivedFrame]) -> None:
        """The phrases' instances on their sessions' new frames, a group of sessions at a time (concepts.py: one
        backbone pass, then each session's tracker on its own frame), each frame published once its session steps."""
        for group in phrase_groups(phrases):
            start = time.monotonic()
            stepped = 0
            for session, frame, index, pending in step_phrase_group(group):
                session.newest = frame.frame_id
                session.stats.frame_done(frame.arrived)
                self._ticks_in_flight.append(self._publish(session, frame, pending, index, prompted=False))
                self.tracked_total += 1
                stepped += 1
            if self.observer is not None and stepped:
                self.observer.observe_tick(stepped, time.monotonic() - start)
                self.observer.observe_stage("concepts", time.monotonic() - start)

    # Requests

    def _stream(self, session: Session) -> Any:
        if session.stream is None:
            session.stream = self.engine.open_stream()
        return session.stream

    def _command(self, session: Session, command: Command) -> None:
        if isinstance(command, Close):
            self._close(session)
            return
        if session.released.is_set():
            return
        stream = self._stream(session)
        if isinstance(command, TextRequest):
            if set_phrase(session, self.concepts, command.phrase):
                self._track_phrase_on_newest(session)
        elif isinstance(command, PromptRequest):
            if session.phrase is not None:
                raise ProtocolError(
                    f"the objects are those of the phrase {session.phrase.phrase!r}: clear it to click objects"
                )
            self._prompt(session, command)
        elif isinstance(command, RemoveRequest) and session.phrase is not None:
            if session.newest is None or not session.phrase.hide(command.obj_id):
                raise ProtocolError(f"no object {command.obj_id} of the phrase {session.phrase.phrase!r} to remove")
            self._track_phrase_on_newest(session)
        elif isinstance(command, RemoveRequest):
            if session.newest is None or command.obj_id not in stream.object_ids:
                raise ProtocolError(f"no object {command.obj_id} to remove; objects: {stream.object_ids}")
            result = stream.remove_object(command.obj_id)
            frame = session.recalled(session.newest)
            self._publish(session, frame, _download(result), result.frame_idx, prompted=True)
        elif isinstance(command, (Reset, Restart)):
            stream.reset()
            if session.phrase is not None:
                session.phrase.reset()  # the phrase stays: its instances are found again
            session.newest = None
            if isinstance(command, Restart):
                session.generation += 1
                session.forget_frames()
                session.recorder.clear()
                with self.lock:
                    self._dropped_retired += session.stats.dropped
                    session.stats = SessionStats()

    def _track_phrase_on_newest(self, session: Session) -> None:
        """Show the phrase's objects (or none, once it is cleared) on the frame shown, without waiting for the next
        (`SessionPhrase.shown`: a new phrase's tracker steps on it; one tracked there gives it again)."""
        frame = session.recalled(session.newest) if session.newest is not None else None
        if frame is None:
            return
        if session.phrase is None:
            self._publish(session, frame, PendingFrame([]), -1, prompted=True)
            return
        index, pending = session.phrase.shown(lambda: session.pixels(frame))
        self._publish(session, frame, pending, index, prompted=True)

    def _prompt(self, session: Session, request: PromptRequest) -> None:
        stream = session.stream
        if request.obj_id not in stream.object_ids and len(stream.object_ids) >= MAX_OBJECTS:
            raise ProtocolError(f"at most {MAX_OBJECTS} objects per session")
        frame = session.recalled(request.frame)
        if frame is None:
            raise ProtocolError(
                f"frame {request.frame} is not held (the last {RECENT_FRAMES} frames shown are): click again"
            )
        if session.newest != request.frame or stream.frame_idx < 0:
            frame = replace(frame, image=session.pixels(frame))  # kept encoded: decoded again
            self.engine.step({stream: frame.image})  # the clicked frame becomes the stream's newest again
            session.newest = request.frame
            session.remember(frame)
        result = stream.add_prompt(
            request.obj_id,
            points=request.points,
            labels=request.labels,
            box=request.box,
            clear_old_points=request.box is not None,  # clicks on one frame add up; a new box starts over
        )
        self._publish(session, frame, _download(result), result.frame_idx, prompted=True)

    def _close(self, session: Session) -> None:
        if session.stream is not None:
            self.engine.close_stream(session.stream)
        session.stream = None
        session.phrase = None  # its tracker's memory goes with it
        session.forget_frames()
        session.recorder.close()
        with self.lock:
            if session in self.sessions:
                self.sessions.remove(session)
                self._dropped_retired += session.stats.dropped
                if not self.sessions:
                    self._idle_since = time.monotonic()
        session.released.set()

    # Results

    def _publish(
        self, session: Session, frame: ReceivedFrame, pending: PendingFrame, index: int, prompted: bool
    ) -> PendingFrame:
        """Hand a frame's masks, their copies to the CPU started (`_download`), to the publisher, which waits
        for them, then encodes (a server-side frame's JPEG too), records and sends: this thread goes on with the
        next tick meanwhile. `index` is the tracker's frame index."""
        if not prompted:
            session.remember(frame)
        stats = session.stats.as_json()
        size = session.size or (0, 0)
        phrase = session.phrase.phrase if session.phrase is not None else None
        self.publisher.submit(
            Outgoing(session, session.generation, frame, pending, size, index, prompted, stats, phrase)
        )
        return pending


def _download(result: FrameResult) -> PendingFrame:
    """A result's masks on their way to the publisher, laid out down their columns as its RLE encoding reads them."""
    return start_download(result, column_major=True)


def default_engine(model) -> StreamEngine:
    """The engine `sam2rt serve` runs its sessions on: one StreamPool, StreamTracker's options."""
    from ..tracking.pool import StreamPool

    return StreamPool(model)
