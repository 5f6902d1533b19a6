"""`sam2rt track`: objects through a video, a folder of frames, a camera or a stream."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..io.prompt_file import check_prompts, check_unique, read_prompts_file
from ..io.sinks import MAX_PNG_OBJECT_ID
from .common import (
    BOX,
    CHECKPOINT,
    DEVICE,
    FAST,
    IMAGE_SIZE,
    MASK,
    NEGATIVE,
    POINT,
    PROGRESS,
    VARIANT,
    RunFailed,
    app,
    check_model_options,
    errors_as_messages,
    fail,
    flag_prompt,
    load_cli_model,
)


@app.command()
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
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
    realtime: bool = typer.Option(
        False, "--realtime", help="Play a video file as a live source: at its frame rate, dropping frames."
    ),
    checkpoint: Optional[Path] = CHECKPOINT,
    variant: Optional[str] = VARIANT,
    image_size: int = IMAGE_SIZE,
    device: Optional[str] = DEVICE,
    fast: bool = FAST,
    progress: Optional[bool] = PROGRESS,
) -> None:
    """Track objects through a video, a folder of frames, a camera or a stream."""
    from ..io.track_source import open_track_source
    from ..pipeline import check_outputs, open_sinks, run_tracking
    from ..tracking.stream import StreamTracker

    check_model_options(variant, image_size)
    with errors_as_messages():
        flagged = flag_prompt(point, negative, box, mask, frame, obj)
        all_prompts = (read_prompts_file(prompts) if prompts is not None else []) + ([flagged] if flagged else [])
        if not all_prompts:
            raise typer.BadParameter("nothing to track: give --point, --box, --mask or --prompts", param_hint="prompt")
        check_unique(all_prompts)
        if png_dir is not None and max(p.obj_id for p in all_prompts) > MAX_PNG_OBJECT_ID:
            raise RunFailed(f"--png-dir holds object ids 1 to {MAX_PNG_OBJECT_ID} (one byte per pixel)")
        stream = open_track_source(source, realtime)
        try:
            num_frames, limit = stream.length, f"{source} has {stream.length} frames"
            if max_frames is not None and num_frames is not None and max_frames < num_frames:
                num_frames, limit = max_frames, f"--max-frames {max_frames}"
            check_prompts(all_prompts, stream.size, num_frames, limit)
            check_outputs(overlay, png_dir, coco, yolo_dir)
            model = load_cli_model(checkpoint, variant, image_size, device, fast)
            sinks = open_sinks(stream, overlay, png_dir, coco, yolo_dir)
        except BaseException:
            stream.close()
            raise
        summary = run_tracking(StreamTracker(model), stream, all_prompts, sinks, max_frames, progress)
    typer.echo(summary.describe())
    if isinstance(summary.error, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    if summary.error is not None:
        fail(str(summary.error))
