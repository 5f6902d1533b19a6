"""When the scheduler steps: a tick waits a bounded moment for the frames due soon, so that cameras out of phase
step together.

Paced cameras send frames at their own rate and phase. Stepping as soon as any frame waits gives ticks of one
or two sessions, each paying a whole pass of the model; waiting for every session would let a stalled camera
hold up the rest. So each session's frames are timed (a smoothed interval between arrivals), and a tick waits
for the sessions whose next frame is expected before the oldest waiting frame has waited `max_wait`: never
longer, and not at all for a session that is late or stopped sending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

DEFAULT_BATCH_WAIT_S = 0.02  # the longest a frame waits for others to join its tick: 0.6 of a 30 FPS period
JITTER_S = 0.002  # a frame expected at t is waited for until t + this: networks and encoders are not clocks
SMOOTHING = 0.2  # weight of the newest interval in the smoothed one


@dataclass
class Arrivals:
    """When a session's frames come: the last arrival and the smoothed interval between arrivals."""

    last: Optional[float] = None
    interval: Optional[float] = None

    def note(self, arrived: float) -> None:
        if self.last is not None and arrived > self.last:
            gap = arrived - self.last
            self.interval = gap if self.interval is None else (1 - SMOOTHING) * self.interval + SMOOTHING * gap
        self.last = arrived

    def next_expected(self) -> Optional[float]:
        """When the next frame should come, once two have come."""
        if self.last is None or self.interval is None:
            return None
        return self.last + self.interval


def tick_deadline(oldest_waiting: float, expected: Iterable[Optional[float]], max_wait: float, now: float) -> float:
    """When to step, given the arrival of the oldest frame waiting and when the sessions without a frame expect
    their next one: once the last of those due by `oldest_waiting + max_wait` is in, and no later than that.

    A session expected before `now` is late: it is not waited for (it may have stopped, or paused).
    """
    limit = oldest_waiting + max_wait
    due = [time + JITTER_S for time in expected if time is not None and now <= time + JITTER_S <= limit]
    return max(due, default=now)
