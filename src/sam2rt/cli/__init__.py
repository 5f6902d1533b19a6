"""The `sam2rt` command: one thin module per job over the library.

Each module registers its commands on the one typer app of `common`; importing them here is what
makes them part of the command.
"""

from .common import app

# The order of registration is the order of `sam2rt --help`.
from . import models  # noqa: E402, F401
from . import image  # noqa: E402, F401
from . import track  # noqa: E402, F401
from . import export  # noqa: E402, F401
from . import train  # noqa: E402, F401
from . import eval  # noqa: E402, F401
from . import serve  # noqa: E402, F401
from . import annotate  # noqa: E402, F401


def main() -> None:
    try:
        app()
    finally:
        _quiet_exit()


def _quiet_exit() -> None:
    """The command is done and the process exits: a Ctrl+C (or SIGTERM, SIGHUP) from here on could only interrupt
    Python's own exit, printing a traceback from an atexit callback (torch registers some) under a finished run's
    summary. Ignored, as a run that was stopped by a signal already ignores them (tracking/stop_signals.py)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            if hasattr(signal, name):  # SIGHUP: not on Windows
                signal.signal(getattr(signal, name), signal.SIG_IGN)
