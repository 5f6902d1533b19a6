"""`sam2rt track` without the command line: a StreamTracker over a source, prompts on their frames, into outputs.

Frames are tracked as they arrive. A prompt on frame k is added once frame k has been stepped,
so it lands on frame k (StreamTracker's semantics); on a live source, where frames may be
dropped, it lands on the first frame tracked at or after k. Whatever ends the run (the end of the
source, --max-frames, an input that breaks midway, Ctrl+C, SIGTERM, SIGHUP), the outputs are
closed so that what was written stays valid, and every output holds the same frames.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from ..io.clashes import OutputPath
from ..io.coco import CocoWriter
from ..io.live import SourceError
from ..io.overlay import OverlayVideoWriter
from ..io.prompt_file import Prompt, PromptError
from ..io.sinks import (
    MaskSink,
    OutputError,
    PngMaskWriter,
    SinkSet,
    TrackedFrame,
    check_writable_file,
    check_writable_folder,
)
from ..io.track_source import TrackSource
from ..io.video_file import VideoReadError
from ..io.yolo import YoloWriter
from .download import start_download
from .lookahead import default_lookahead, encoded_ahead
from .stop_signals import StopSignals
from .stream import FrameResult, StreamTracker

# Errors of the input or the outputs, not of sam2rt: they end a run with a message, not a traceback.
RUN_ERRORS = (VideoReadError, SourceError, PromptError, OutputError)


class RunSummary(NamedTuple):
    frames: int  # frames tracked
    dropped: int  # frames a live source delivered while the tracker was busy
    objects: int  # distinct objects tracked
    seconds: float
    outputs: list[str]  # what each output holds
    error: Optional[BaseException]  # what ended the run early, if anything (Interrupted for a stop signal)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        stopped = " (stopped early)" if self.error is not None else ""
        lines = [
            f"tracked {_counted(self.frames, 'frame')}{stopped}, {self.dropped} dropped, "
            f"{_counted(self.objects, 'object')}, "
            f"in {self.seconds:.1f} s ({self.fps:.1f} frames/s)"
        ]
        lines += [f"wrote {output}" for output in self.outputs]
        return "\n".join(lines)


def _counted(count: int, noun: str) -> str:
    """ "1 frame", "2 frames", "0 frames"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def tracked_frame(result: FrameResult, index: int, name: str, image: np.ndarray) -> TrackedFrame:
    """A tracker result for source frame `index` as the outputs take it: masks, visibility, an object id per pixel.

    `index` counts the source's frames; the tracker's own frame_idx skips the frames a live source dropped.
    """
    return start_download(result).tracked(index, name, image)


def apply_prompt(tracker: StreamTracker, prompt: Prompt) -> FrameResult:
    """Add one prompt to the tracker's newest frame."""
    try:
        if prompt.mask is not None:
            return tracker.add_prompt(prompt.obj_id, mask=prompt.mask)
        return tracker.add_prompt(prompt.obj_id, points=prompt.points, labels=prompt.labels, box=prompt.box)
    except ValueError as error:
        raise PromptError(f"{prompt.describe()}: {error}") from None


def run_tracking(
    tracker: StreamTracker,
    source: TrackSource,
    prompts: Sequence[Prompt],
    sinks: SinkSet,
    max_frames: Optional[int] = None,
    progress: Optional[bool] = None,
    stops: Optional[StopSignals] = None,
    lookahead: Optional[int] = None,
) -> RunSummary:
    """Track every frame of `source` (at most `max_frames`) into `sinks`; closes both.

    Input and output errors, Ctrl+C, SIGTERM and SIGHUP end the run early and come back in the
    summary's `error` (Interrupted for a signal); anything else is a bug and is raised, after the
    outputs are closed. A frame goes to every output or to none, so the summary's frame count is
    what each output holds. `stops`: the caller's active StopSignals (None: installed for the run).
    `progress`: show a progress bar (None: when stderr is a terminal). `lookahead`: frames of a video
    known ahead encoded in one batch (None: tracking.lookahead's default; a live source: always 1).
    """
    pending = sorted(prompts, key=lambda p: p.frame)  # stable: same-frame prompts keep their order
    if source.length is None:
        lookahead = 1  # a live source: frames are tracked as they come, never held back
    elif lookahead is None:
        lookahead = default_lookahead(tracker.engine.device)
    incoming = encoded_ahead(tracker, itertools.islice(source, max_frames), lookahead, image=lambda item: item[1])

    def step(index: int, image: np.ndarray) -> TrackedFrame:
        result = tracker.step(image)
        while pending and pending[0].frame <= index:
            result = apply_prompt(tracker, pending.pop(0))
        return tracked_frame(result, index, source.frame_name(index), image)

    def check_end(frames: int) -> None:
        if pending:
            first = pending[0]
            raise PromptError(
                f"{first.describe()}: frame {first.frame} never came, the run ended after "
                f"{frames} frames{f' (--max-frames {max_frames})' if frames == max_frames else ''}"
            )

    return run_frames(source, incoming, step, sinks, max_frames, progress, stops, check_end)


def run_frames(
    source: TrackSource,
    incoming: Iterator[tuple[int, np.ndarray]],
    step: Callable[[int, np.ndarray], TrackedFrame],
    sinks: SinkSet,
    max_frames: Optional[int] = None,
    progress: Optional[bool] = None,
    stops: Optional[StopSignals] = None,
    check_end: Optional[Callable[[int], None]] = None,
) -> RunSummary:
    """The loop of a tracking run, whatever tracks: `step(index, image)` makes source frame `index`'s TrackedFrame
    for each (index, image) of `incoming` (the source's frames, at most `max_frames`), which goes to every sink;
    `check_end(frames)` may fail a run that ended early. Closes the sinks and the source; errors and signals as
    `run_tracking` says."""
    if stops is None:
        with StopSignals() as own:
            return run_frames(source, incoming, step, sinks, max_frames, progress, own, check_end)
    from tqdm import tqdm

    total = source.length if max_frames is None else min(max_frames, source.length or max_frames)
    bar = tqdm(total=total, unit="frame", desc="tracking", disable=None if progress is None else not progress)
    objects: set[int] = set()
    frames = 0
    error: Optional[BaseException] = None
    start = time.monotonic()
    try:
        while frames != max_frames:
            with stops.interruptible():  # a signal here drops this frame: no output has it yet
                item = next(incoming, None)
                if item is None:
                    break
                tracked = step(*item)
            sinks.write(tracked)  # a signal here waits until the frame is in every output
            objects.update(tracked.object_ids)
            frames += 1
            bar.update(1)
            if source.length is None:
                bar.set_postfix(dropped=source.dropped, refresh=False)
            stops.check()
        if check_end is not None:
            check_end(frames)
    except RUN_ERRORS as caught:
        error = caught
    except KeyboardInterrupt as caught:
        error = caught
    finally:
        # Outside interruptible blocks signals are only noted: closing is never cut short.
        seconds = time.monotonic() - start
        bar.close()
        close_error = sinks.close()
        source.close()
    if error is None and close_error is not None:
        error = close_error
    return RunSummary(frames, source.dropped, len(objects), seconds, sinks.descriptions(), error)


def check_outputs(
    overlay: Optional[Path], png_dir: Optional[Path], coco: Optional[Path], yolo_dir: Optional[Path]
) -> None:
    """Fail before any work (loading the model included) if an output cannot be written."""
    if overlay is not None:
        OverlayVideoWriter.check_path(overlay)
    for folder in (png_dir, yolo_dir):
        if folder is not None:
            check_writable_folder(folder)
    if coco is not None:
        check_writable_file(coco)


def output_paths(
    overlay: Optional[Path], png_dir: Optional[Path], coco: Optional[Path], yolo_dir: Optional[Path]
) -> list[OutputPath]:
    """The outputs asked for, checked before any work (loading the model included): each can be written."""
    check_outputs(overlay, png_dir, coco, yolo_dir)
    named = [
        OutputPath("--overlay", overlay),
        OutputPath("--png-dir", png_dir, ".png"),
        OutputPath("--coco", coco),
        OutputPath("--yolo-dir", yolo_dir, ".txt"),
    ]
    return [output for output in named if output.path is not None]


def open_sinks(
    source: TrackSource,
    overlay: Optional[Path],
    png_dir: Optional[Path],
    coco: Optional[Path],
    yolo_dir: Optional[Path],
    yolo_pieces: bool = False,
    coco_writer: Optional[Callable[[Path], MaskSink]] = None,
) -> SinkSet:
    """The outputs asked for, ready for the first frame. `coco_writer(path)`: the COCO sink (None: a CocoWriter
    with one category)."""
    sinks = SinkSet()
    try:
        if overlay is not None:
            sinks.add(OverlayVideoWriter(overlay, source.fps, source.size))
        if png_dir is not None:
            sinks.add(PngMaskWriter(png_dir))
        if coco is not None:
            sinks.add(CocoWriter(coco, source.name, source.frame_file) if coco_writer is None else coco_writer(coco))
        if yolo_dir is not None:
            sinks.add(YoloWriter(yolo_dir, yolo_pieces))
    except BaseException:
        sinks.close()
        raise
    return sinks
