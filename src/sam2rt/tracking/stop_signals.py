"""Stopping a run cleanly on Ctrl+C (SIGINT), SIGTERM (docker stop, systemd, Kubernetes) and SIGHUP (a closed terminal).

Python's own Ctrl+C raises KeyboardInterrupt wherever the program happens to be: between two
outputs of one frame, or halfway through closing them, which loses the files. Here a signal only
stops the run at points where nothing is half-written:

- inside an `interruptible()` block (decoding or tracking a frame, loading the model), the first
  signal raises `Interrupted` at once: that frame has reached no output yet;
- anywhere else (writing a frame to the outputs, closing them), it is only noted; `check()` raises
  it once the frame is in every output, and closing is never cut short.

Only the first signal stops anything; the ones after it (a second Ctrl+C while the outputs close)
are noted and change nothing. SIGKILL cannot be caught: after it, temporary files may remain.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; a KeyboardInterrupt, so that code written for Ctrl+C handles it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as shells report a process ended by it: 130 SIGINT, 143 SIGTERM, 129 SIGHUP."""
        return 128 + self.signum


class StopSignals:
    """While entered (a context manager), SIGINT, SIGTERM and SIGHUP stop the run only at safe points.

    Handlers can only be installed from the main thread; elsewhere this does nothing and the
    signals keep their usual effect. Leaving gives the previous handlers back, except with
    `ignore_after_signal` once a signal came: then the stop signals are ignored from there on. A
    command exits right after, and Python, as it exits, puts back the default handlers, which
    would kill it on a second Ctrl+C with another exit code than the one it reports.
    """

    def __init__(self, ignore_after_signal: bool = False) -> None:
        self.ignore_after_signal = ignore_after_signal
        self.received: Optional[int] = None  # the first stop signal that came
        self._armed = False  # inside an interruptible() block
        self._raised = False  # Interrupted was raised once: never again
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.ignore_after_signal and self.received is not None:
            for signum in self._previous:
                signal.signal(signum, signal.SIG_IGN)  # unlike a Python handler, kept until the process ends
            self._previous.clear()
            return
        for signum, handler in self._previous.items():
            if handler is not None:  # None: a handler set outside Python, which cannot be put back from here
                signal.signal(signum, handler)
        self._previous.clear()

    @property
    def interrupted(self) -> Optional[Interrupted]:
        """The interruption to report, if a stop signal came."""
        return None if self.received is None else Interrupted(self.received)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is None:
            self.received = signum
        if self._armed and not self._raised:
            self._raised = True
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise Interrupted if a stop signal came and none was raised yet."""
        if self.received is not None and not self._raised:
            self._raised = True
            raise Interrupted(self.received)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block a stop signal may cut short (it touches no output): a signal noted before it stops it at once."""
        outer = self._armed
        self._armed = True
        try:
            self.check()
            yield
        finally:
            self._armed = outer
