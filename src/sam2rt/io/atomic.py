"""Output files that appear whole or not at all: written under a temporary name beside them, then renamed.

A rename within one folder replaces the old file in one step (os.replace), so a reader, a crash or
an interruption never leaves half a file under the real name: it finds the previous file or the new
one. The temporary name is hidden, keeps the suffix (PIL and the video muxers choose the format by
it) and holds the process id, so that two runs writing beside each other do not collide.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

TEMPORARY_MARK = ".partial"  # in every temporary name, so that leftovers of a killed run are easy to find


class OutputError(ValueError):
    """An output that cannot be written."""


def temporary_path(path: Path) -> Path:
    """The hidden name `path` is written under before it is renamed into place: `.masks.1234.partial.json`."""
    return path.with_name(f".{path.stem}.{os.getpid()}{TEMPORARY_MARK}{path.suffix}")


def replace_with(temporary: Path, path: Path) -> None:
    """Move a finished temporary file into place, or remove it and fail with an OutputError."""
    try:
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary)` then rename it to `path`; on any failure (Ctrl+C included) the temporary file is removed."""
    temporary = temporary_path(path)
    try:
        write(temporary)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    replace_with(temporary, path)


def write_text_atomically(path: Path, text: str) -> None:
    """`text` as the whole content of `path`, appearing at once (see write_atomically)."""
    write_atomically(path, lambda temporary: temporary.write_text(text))
