"""What the commands share: the prompt options, clean one-line errors, reading images.

The model options and model loading are in `model_choice`.

Exit codes: 0 success; 1 a bad input or a failure, told in one line `error: ...` on stderr
(missing or unreadable files, corrupt videos, cameras that do not open, prompts outside the frame
or past the end, malformed prompts files, wrong checkpoints, outputs that cannot be written);
2 a wrong command line (unknown option, malformed value), told by typer with the usage; 128 + the
signal's number when a run is stopped by one: 130 Ctrl+C (SIGINT), 143 SIGTERM, 129 SIGHUP.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NoReturn, Optional

import numpy as np
import typer

from ..checkpoints import CheckpointError
from ..io.image_file import read_rgb
from ..io.live import SourceError
from ..io.prompt_file import Prompt, PromptError, make_prompt, read_mask
from ..io.sinks import OutputError
from ..io.video_file import VideoReadError
from ..model.variants import VARIANTS
from ..processing.images import ImageError

app = typer.Typer(
    name="sam2rt",
    help="SAM 2 for live video: segment and track any object in images, videos, cameras and streams.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# The prompt flags of `image` and `track`, and the progress bar.
POINT = typer.Option([], "--point", "-p", help="X,Y pixel on the object (repeatable).")
NEGATIVE = typer.Option([], "--negative", "-n", help="X,Y pixel not on the object (repeatable).")
BOX = typer.Option(None, "--box", "-b", help="X0,Y0,X1,Y1 box around the object.")
MASK = typer.Option(None, "--mask", "-m", help="Image file the size of the frame, non-zero on the object.")
PROGRESS = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: on a terminal).")


class RunFailed(Exception):
    """Raised inside a command to end it with `error: <message>` and exit code 1."""


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {' '.join(message.split())}", err=True)  # one line, whatever the message held
    raise typer.Exit(code)


@contextmanager
def errors_as_messages() -> Iterator[None]:
    """Bad inputs end the command with one line on stderr and exit code 1, never a traceback."""
    try:
        yield
    except (CheckpointError, PromptError, SourceError, OutputError, VideoReadError, ImageError, RunFailed) as error:
        fail(str(error))
    except FileNotFoundError as error:
        fail(str(error) if error.filename is None else f"no such file: {error.filename}")
    except OSError as error:  # unreadable files and folders: the system's reason and the path say it all
        fail(str(error) if error.filename is None else f"{error.filename}: {error.strerror}")


def read_image(path: Path) -> np.ndarray:
    """The image file as (H, W, 3) uint8 RGB; a missing file is a one-line error."""
    try:
        return read_rgb(path)
    except FileNotFoundError:
        raise RunFailed(f"no such image file: {path}") from None


def parse_numbers(text: str, count: int, option: str, form: str) -> list[float]:
    """`"12,34"` -> [12.0, 34.0], or a usage error that shows the expected form."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(np.isfinite(values)):
        raise typer.BadParameter(f"expected {form} (pixels), got {text!r}", param_hint=option)
    return values


def flag_prompt(
    points: list[str], negatives: list[str], box: Optional[str], mask: Optional[Path], frame: int, obj_id: int
) -> Optional[Prompt]:
    """The prompt given by --point/--negative/--box/--mask, if any."""
    if not points and not negatives and box is None and mask is None:
        return None
    clicks = [parse_numbers(p, 2, "--point", "X,Y") for p in points] + [
        parse_numbers(n, 2, "--negative", "X,Y") for n in negatives
    ]
    labels = [1] * len(points) + [0] * len(negatives)
    corners = parse_numbers(box, 4, "--box", "X0,Y0,X1,Y1") if box is not None else None
    origin = "the command line"
    mask_array = read_mask(mask, origin) if mask is not None else None
    return make_prompt(frame, obj_id, clicks or None, labels or None, corners, mask_array, origin, mask)


def check_variant(variant: Optional[str], hint: str) -> None:
    if variant is not None and variant not in VARIANTS:
        raise typer.BadParameter(
            f"unknown variant {variant!r}; the variants are: {', '.join(VARIANTS)}", param_hint=hint
        )
