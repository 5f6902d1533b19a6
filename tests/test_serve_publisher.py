"""The publisher's lanes: a session's results leave in order, and one waiting for its masks holds up no other."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest
import torch

from sam2rt.serve.protocol import FORMAT_JPEG, ReceivedFrame
from sam2rt.serve.publisher import Outgoing, Publisher
from sam2rt.serve.sessions import Session
from sam2rt.tracking.download import PendingFrame

SIZE = (12, 16)
WAIT_S = 30.0


class HeldMasks(PendingFrame):
    """One object's masks whose copies end when `copied` is set: a tick the GPU is still running."""

    def __init__(self, copied: threading.Event) -> None:
        mask = torch.zeros(1, *SIZE, dtype=torch.bool)
        mask[0, 2:5, 3:9] = True
        super().__init__([1], mask, mask[0].to(torch.uint8), torch.tensor([0.9]))
        self.copied = copied

    def wait(self) -> None:
        assert self.copied.wait(WAIT_S), "never released"


def open_session(lock: threading.Condition, received: list) -> Session:
    session = Session(lock, lambda text, picture: received.append((session, json.loads(text)["frame"])))
    return session


def outgoing(session: Session, frame_id: int, copied: threading.Event) -> Outgoing:
    frame = ReceivedFrame(frame_id, None, b"\xff\xd8jpeg", FORMAT_JPEG, time.monotonic())
    return Outgoing(session, session.generation, frame, HeldMasks(copied), SIZE, frame_id, False, {})


@contextlib.contextmanager
def running(publisher: Publisher):
    publisher.start()
    try:
        yield publisher
    finally:
        publisher.stop()


def wait_until(condition) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_session_waiting_for_its_masks_holds_up_no_other_and_each_keeps_its_order():
    lock, received = threading.Condition(), []
    with running(Publisher(lanes=2)) as publisher:
        slow, fast = open_session(lock, received), open_session(lock, received)
        held, free = threading.Event(), threading.Event()
        free.set()
        publisher.submit(outgoing(slow, 0, held))  # its GPU work not done yet
        publisher.submit(outgoing(slow, 1, free))  # done, but after frame 0 of its session
        for frame_id in range(5):
            publisher.submit(outgoing(fast, frame_id, free))
        wait_until(lambda: len(received) == 5)
        assert [frame for session, frame in received if session is fast] == [0, 1, 2, 3, 4]
        assert not any(session is slow for session, _ in received), "a result left before the one it follows"
        held.set()
        wait_until(lambda: len(received) == 7)
        assert [frame for session, frame in received if session is slow] == [0, 1]


def test_sessions_spread_over_the_lanes_and_closed_ones_free_theirs():
    lock, received = threading.Condition(), []
    publisher = Publisher(lanes=3)
    sessions = [open_session(lock, received) for _ in range(6)]
    lanes = [publisher._lane(session) for session in sessions]
    assert sorted(lanes) == [0, 0, 1, 1, 2, 2]
    assert [publisher._lane(session) for session in sessions] == lanes  # kept
    for session in sessions[:2]:
        session.released.set()  # closed: their lanes count one fewer
    newcomer = open_session(lock, received)
    assert publisher._lane(newcomer) in set(lanes[:2])


def test_the_publisher_needs_a_lane():
    with pytest.raises(ValueError, match="at least one lane"):
        Publisher(lanes=0)


def test_a_result_after_its_session_closed_is_dropped():
    lock, received = threading.Condition(), []
    with running(Publisher(lanes=1)) as publisher:  # one lane: the closed session's result is handled first
        closed, live = open_session(lock, received), open_session(lock, received)
        free = threading.Event()
        free.set()
        closed.released.set()
        publisher.submit(outgoing(closed, 0, free))
        publisher.submit(outgoing(live, 0, free))
        wait_until(lambda: len(received) == 1)
        assert received == [(live, 0)]
        assert live.recorder.frames == 1  # recorded for export as it was sent
