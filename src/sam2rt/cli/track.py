"""`sam2rt track`: objects through a video, a folder of frames, a camera or a stream, from clicks, boxes and masks
or (--text, SAM 3) every instance of some phrases."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import NoReturn, Optional

import typer

from ..io.clashes import NamedPath, check_clashes
from ..io.live import is_stream_url
from ..io.prompt_file import Prompt, check_prompts, check_unique, read_prompts_file
from ..io.sinks import MAX_PNG_OBJECT_ID
from ..io.track_source import open_track_source
from ..tracking.stop_signals import Interrupted, StopSignals
from .common import (
    BOX,
    MASK,
    NEGATIVE,
    POINT,
    PROGRESS,
    RunFailed,
    app,
    errors_as_messages,
    fail,
    flag_prompt,
)
from .concepts import SCORE_THRESHOLD, TEXT, check_sam3_choice, check_threshold, load_concept_tracks, parse_phrases
from .model_choice import MODEL_OPTIONS, ModelChoice, model_options
from .onnx_backend import Backend, onnx_tracker


@app.command()
@model_options
def track(
    source: str = typer.Argument(
        ..., help="Video file, folder of frames, camera index (0, 1, ...) or stream URL (rtsp://, http://)."
    ),
    point: list[str] = POINT,
    negative: list[str] = NEGATIVE,
    box: Optional[str] = BOX,
    mask: Optional[Path] = MASK,
    frame: int = typer.Option(0, "--frame", min=0, help="Frame the --point/--negative/--box/--mask prompt is on."),
    obj: int = typer.Option(1, "--obj", min=1, help="Object id of the --point/--negative/--box/--mask prompt."),
    prompts: Optional[Path] = typer.Option(
        None, "--prompts", help="JSON prompts file: several objects, any frames (see the README)."
    ),
    overlay: Optional[Path] = typer.Option(
        None, "--overlay", help="Overlay video (.mp4, H.264) with the masks and ids drawn."
    ),
    png_dir: Optional[Path] = typer.Option(
        None, "--png-dir", help="Folder for indexed PNG masks per frame (DAVIS layout)."
    ),
    coco: Optional[Path] = typer.Option(
        None, "--coco", help="COCO-style JSON with RLE masks, boxes, scores and object ids."
    ),
    yolo_dir: Optional[Path] = typer.Option(
        None, "--yolo-dir", help="Folder for YOLO segmentation polygons per frame."
    ),
    yolo_pieces: bool = typer.Option(
        False, "--yolo-pieces", help="With --yolo-dir: a line per piece of a mask, not one per object."
    ),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
    realtime: bool = typer.Option(
        False, "--realtime", help="Play a video file as a live source: at its frame rate, dropping frames."
    ),
    lookahead: Optional[int] = typer.Option(
        None,
        "--lookahead",
        min=1,
        help="Frames of a file or folder encoded in one batch (default: 4 on CUDA, 1 on CPU; live sources: 1).",
    ),
    backend: Backend = typer.Option(
        Backend.torch, "--backend", help="torch: the PyTorch engine; onnxruntime: the graphs of --onnx (CPU)."
    ),
    onnx: Optional[Path] = typer.Option(
        None, "--onnx", help="With --backend onnxruntime: the folder `sam2rt export` wrote."
    ),
    text: Optional[str] = TEXT,
    score_threshold: float = SCORE_THRESHOLD,
    model: ModelChoice = MODEL_OPTIONS,
    progress: Optional[bool] = PROGRESS,
) -> None:
    """Track objects through a video, a folder of frames, a camera or a stream: those prompted by clicks, boxes and
    masks, or every instance of some phrases (--text, SAM 3)."""
    from ..tracking.concept_run import open_concept_sinks, run_concept_tracking
    from ..tracking.run import open_sinks, output_paths, run_tracking
    from ..tracking.stream import StreamTracker

    phrases = None
    if text is not None:  # usage errors first, before any file is read
        given = {"--point": point, "--negative": negative, "--box": box, "--mask": mask, "--prompts": prompts}
        given.update({"--lookahead": lookahead, "--onnx": onnx})
        given["--backend onnxruntime"] = backend is Backend.onnxruntime
        refused = [option for option, value in given.items() if value]
        if refused:
            raise typer.BadParameter(
                f"--text finds the objects itself: it takes no {', '.join(refused)} (click prompts with --text are "
                "not supported yet)",
                param_hint="--text",
            )
        phrases, score_threshold = parse_phrases(text), check_threshold(score_threshold)
        check_sam3_choice(model)
    else:
        model.check()
    if backend is Backend.onnxruntime and onnx is None:
        raise typer.BadParameter("--backend onnxruntime tracks with an export: give --onnx DIR", param_hint="--onnx")
    if backend is Backend.torch and onnx is not None:
        raise typer.BadParameter("--onnx is read with --backend onnxruntime", param_hint="--onnx")
    with StopSignals(ignore_after_signal=True) as stops, errors_as_messages():
        try:
            with stops.interruptible():  # nothing is written before the outputs open
                file_prompts, all_prompts = [], []
                if phrases is None:
                    file_prompts, all_prompts = _click_prompts(point, negative, box, mask, frame, obj, prompts)
                    if png_dir is not None and max(p.obj_id for p in all_prompts) > MAX_PNG_OBJECT_ID:
                        raise RunFailed(f"--png-dir holds object ids 1 to {MAX_PNG_OBJECT_ID} (one byte per pixel)")
                outputs = output_paths(overlay, png_dir, coco, yolo_dir)
                check_clashes(_inputs(source, prompts, file_prompts, mask, model.checkpoint), outputs)
                stream = open_track_source(source, realtime)
        except Interrupted as stop:
            _stopped_before_tracking(stop)
        try:
            with stops.interruptible():
                if phrases is not None:
                    tracks = load_concept_tracks(model, phrases, score_threshold)
                else:
                    num_frames, limit = stream.length, f"{source} has {stream.length} frames"
                    if max_frames is not None and num_frames is not None and max_frames < num_frames:
                        num_frames, limit = max_frames, f"--max-frames {max_frames}"
                    check_prompts(all_prompts, stream.size, num_frames, limit)
                    if backend is Backend.onnxruntime:
                        tracker, lookahead = onnx_tracker(onnx, model), 1  # frames go one at a time: the graphs
                    else:
                        tracker = StreamTracker(model.load())
            if phrases is not None:
                sinks = open_concept_sinks(stream, tracks, overlay, png_dir, coco, yolo_dir, yolo_pieces)
            else:
                sinks = open_sinks(stream, overlay, png_dir, coco, yolo_dir, yolo_pieces)
        except BaseException as error:
            stream.close()
            if isinstance(error, Interrupted):
                _stopped_before_tracking(error)
            raise
        if phrases is not None:
            summary = run_concept_tracking(tracks, stream, sinks, max_frames, progress, stops)
        else:
            summary = run_tracking(tracker, stream, all_prompts, sinks, max_frames, progress, stops, lookahead)
        typer.echo(summary.describe())
        stop = stops.interrupted
        if stop is None and isinstance(summary.error, KeyboardInterrupt):  # Ctrl+C where no handler could be set
            stop = Interrupted(signal.SIGINT)
        if stop is not None:
            typer.echo(f"interrupted by {stop.name}: the outputs are closed and hold the frames above", err=True)
            raise typer.Exit(stop.exit_code)
        if summary.error is not None:
            fail(str(summary.error))


def _click_prompts(
    point: list[str],
    negative: list[str],
    box: Optional[str],
    mask: Optional[Path],
    frame: int,
    obj: int,
    prompts: Optional[Path],
) -> tuple[list[Prompt], list[Prompt]]:
    """The prompts of the file (--prompts) and all prompts (the file's and the flags'); a usage error for none."""
    flagged = flag_prompt(point, negative, box, mask, frame, obj)
    file_prompts = read_prompts_file(prompts) if prompts is not None else []
    all_prompts = file_prompts + ([flagged] if flagged else [])
    if not all_prompts:
        raise typer.BadParameter(
            "nothing to track: give --point, --box, --mask, --prompts or --text", param_hint="prompt"
        )
    check_unique(all_prompts)
    return file_prompts, all_prompts


def _inputs(
    source: str, prompts: Optional[Path], file_prompts: list[Prompt], mask: Optional[Path], checkpoint: Optional[Path]
) -> list[NamedPath]:
    """Every file and folder the run reads, which no output may overwrite."""
    inputs = []
    path = Path(source)
    if not source.isdigit() and not is_stream_url(source) and path.exists():
        inputs.append(NamedPath("the input folder of frames" if path.is_dir() else "the input video", path))
    if prompts is not None:
        inputs.append(NamedPath("the prompts file", prompts))
    inputs += [NamedPath(f"the mask of {p.origin}", p.mask_file) for p in file_prompts if p.mask_file is not None]
    if mask is not None:
        inputs.append(NamedPath("the --mask file", mask))
    if checkpoint is not None:
        inputs.append(NamedPath("the checkpoint", checkpoint))
    return inputs


def _stopped_before_tracking(stop: Interrupted) -> NoReturn:
    typer.echo(f"interrupted by {stop.name} before tracking started: nothing was written", err=True)
    raise typer.Exit(stop.exit_code)
