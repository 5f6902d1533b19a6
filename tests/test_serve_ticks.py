"""The tick policy of `sam2rt serve`: paced cameras out of phase share a pass of the model, and no frame waits
longer than the bound for others; a click is answered at once."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import torch

from sam2rt.serve.protocol import FORMAT_JPEG, ReceivedFrame, RemoveRequest
from sam2rt.serve.scheduler import Scheduler
from sam2rt.serve.sessions import Close, Session
from sam2rt.serve.ticks import JITTER_S, Arrivals, tick_deadline
from sam2rt.tracking.stream import FrameResult

SIZE = (24, 32)  # (height, width)


def test_arrivals_learn_a_cameras_pace():
    arrivals = Arrivals()
    assert arrivals.next_expected() is None
    for index in range(6):
        arrivals.note(10.0 + index / 30)
    assert arrivals.next_expected() == pytest.approx(10.0 + 6 / 30)
    arrivals.note(10.0 + 5 / 30)  # a frame stamped out of order leaves the pace as it was
    assert arrivals.interval == pytest.approx(1 / 30)


def test_a_tick_waits_for_the_frames_due_before_its_bound_only():
    now, oldest = 100.001, 100.0
    # Due at +10 ms: waited for. Due at +30 ms: past the 20 ms bound. Late (due before now), or pace unknown: not.
    assert tick_deadline(oldest, [100.010, 100.030, 99.990, None], 0.02, now) == pytest.approx(100.010 + JITTER_S)
    assert tick_deadline(oldest, [100.030, None], 0.02, now) == now  # nothing due in time: step at once
    assert tick_deadline(oldest, [100.010], 0.0, now) == now  # no waiting at all


class _RecordingEngine:
    """A StreamPool stand-in: records the sessions stepped together, each tick taking `tick_s`."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self.batches: list[int] = []
        self.released = 0
        self.counter = itertools.count()

    def open_stream(self):
        return next(self.counter)

    def close_stream(self, stream) -> None:
        pass

    def release_memory(self) -> int:
        self.released += 1
        return 0

    def step(self, frames: dict) -> dict:
        time.sleep(self.tick_s)
        self.batches.append(len(frames))
        empty = FrameResult(0, [], torch.zeros(0, *SIZE), torch.zeros(0))
        return {stream: empty for stream in frames}


def _paced_cameras(scheduler: Scheduler, count: int, period: float, frames: int) -> list[Session]:
    """`count` cameras at one frame per `period`, out of phase by period / count, each a session of
    `scheduler`; returns the sessions once their frames have been stepped (or dropped)."""
    sessions = [Session(scheduler.lock, lambda text, binary: None) for _ in range(count)]
    for session in sessions:
        scheduler.add(session)
    image = np.zeros((*SIZE, 3), np.uint8)
    start = time.monotonic() + 0.05

    def camera(index: int, session: Session) -> None:
        for frame_id in range(frames):
            due = start + frame_id * period + index * period / count
            time.sleep(max(0.0, due - time.monotonic()))
            session.offer(ReceivedFrame(frame_id, image, b"jpeg", FORMAT_JPEG, time.monotonic()))

    threads = [threading.Thread(target=camera, args=(i, s)) for i, s in enumerate(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.2)
    return sessions


@pytest.mark.parametrize("batch_wait_s", [0.0, 0.03])
def test_paced_cameras_out_of_phase_step_together(batch_wait_s):
    engine = _RecordingEngine(tick_s=0.004)
    scheduler = Scheduler(engine, batch_wait_s=batch_wait_s)
    scheduler.start()
    try:
        sessions = _paced_cameras(scheduler, count=4, period=0.04, frames=30)
    finally:
        scheduler.stop()
    settled = engine.batches[8:]  # once the cameras' paces are learnt
    mean_batch = float(np.mean(settled))
    if batch_wait_s == 0:
        assert mean_batch < 2.0, engine.batches  # each camera's frame alone: four passes where one would do
    else:
        assert mean_batch >= 2.5, engine.batches  # the four cameras (10 ms apart) mostly in one pass
        # No frame waited much past the bound: smoothed latency <= wait + tick + scheduling slack.
        assert max(s.stats.latency_ms for s in sessions) <= (batch_wait_s + 0.004) * 1000 + 40
    assert sum(s.stats.processed + s.stats.dropped for s in sessions) == 4 * 30  # every frame stepped or counted


def test_a_click_does_not_wait_for_other_cameras():
    engine = _RecordingEngine(tick_s=0.0)
    scheduler = Scheduler(engine, batch_wait_s=0.5)
    first, second = Session(scheduler.lock, lambda text, binary: None), Session(scheduler.lock, lambda t, b: None)
    scheduler.add(first)
    scheduler.add(second)
    image = np.zeros((*SIZE, 3), np.uint8)
    now = time.monotonic()
    for frame_id in range(3):  # the second camera sends 5 frames a second: its next one is due in 200 ms
        second.arrivals.note(now - 0.4 + frame_id * 0.2)
    scheduler.start()
    try:
        first.offer(ReceivedFrame(0, image, b"jpeg", FORMAT_JPEG, time.monotonic()))
        time.sleep(0.05)
        assert engine.batches == []  # the first camera's frame waits for the second's ...
        first.request(RemoveRequest(obj_id=5))
        clicked = time.monotonic()
        while not engine.batches and time.monotonic() < clicked + 1.0:
            time.sleep(0.005)
        answered = time.monotonic()
    finally:
        scheduler.stop()
    assert engine.batches == [1]  # ... but a request is answered at once, and the frame goes with it
    assert answered < now + 0.2, "the tick waited for the second camera after the click"


def test_cameras_that_want_more_than_the_engine_can_do_share_it_fairly():
    """Three cameras at 50 FPS against an engine whose pass takes 20 ms plus 15 ms per session: each camera
    wants 20 ms of every 20 ms, together far more than there is; the newest frame wins and the rest is
    dropped and counted, and each gets a like share."""

    class Overloaded(_RecordingEngine):
        def step(self, frames: dict) -> dict:
            time.sleep(0.015 * len(frames))
            return super().step(frames)

    engine = Overloaded(tick_s=0.02)
    scheduler = Scheduler(engine)
    scheduler.start()
    try:
        sessions = _paced_cameras(scheduler, count=3, period=0.02, frames=60)
    finally:
        scheduler.stop()
    processed = [session.stats.processed for session in sessions]
    assert all(session.stats.dropped > 0 for session in sessions), "not overloaded: nothing was dropped"
    assert min(processed) >= 0.6 * max(processed), processed
    assert sum(processed) + sum(s.stats.dropped for s in sessions) == 3 * 60  # every frame stepped or counted


def _wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_an_idle_server_gives_back_the_engines_memory_once_per_idle_spell():
    engine = _RecordingEngine(tick_s=0.0)
    scheduler = Scheduler(engine, release_after_s=0.3)
    image = np.zeros((*SIZE, 3), np.uint8)
    scheduler.start()
    try:
        for spell in (1, 2):
            session = Session(scheduler.lock, lambda text, binary: None)
            scheduler.add(session)
            session.offer(ReceivedFrame(0, image, b"jpeg", FORMAT_JPEG, time.monotonic()))
            assert _wait_for(lambda: len(engine.batches) == spell)
            time.sleep(0.5)
            assert engine.released == spell - 1  # a session is open: nothing is released
            session.request(Close())
            closed = time.monotonic()
            assert _wait_for(lambda: engine.released == spell)  # idle: released ...
            assert time.monotonic() - closed >= 0.3  # ... once the idle time has passed
            time.sleep(1.2)
            assert engine.released == spell  # once per idle spell
    finally:
        scheduler.stop()
