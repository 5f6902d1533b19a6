"""`sam2rt eval`: J&F of predicted masks against ground truth, the official way; with --model, of the model's own."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import typer

from ..io.sinks import check_writable_file, check_writable_folder
from .common import PROGRESS, RunFailed, app, errors_as_messages
from .model_choice import MODEL_OPTIONS, ModelChoice, model_options


def _frames_root(gt_dir: Path, frames_dir: Optional[Path]) -> Path:
    if not gt_dir.is_dir():
        raise RunFailed(f"no such folder: {gt_dir}")
    if frames_dir is not None:
        return frames_dir
    if (gt_dir / "JPEGImages").is_dir():
        return gt_dir / "JPEGImages"
    raise RunFailed(f"{gt_dir} has no JPEGImages folder: give the frames' folder with --frames-dir")


@app.command("eval")
@model_options
def eval_command(
    gt_dir: Path = typer.Argument(
        ..., help="Ground-truth masks: <video>/<frame>.png, or a VOS root holding Annotations/ (and JPEGImages/)."
    ),
    pred_dir: Optional[Path] = typer.Argument(
        None,
        help="Predicted masks in the same layout; with --model, where the model's are written (default: a temporary folder).",
    ),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="Write the scores (overall, per video, per object) as JSON."
    ),
    all_frames: bool = typer.Option(
        False, "--all-frames", help="Score the first and last frames too (the semi-supervised standard skips them)."
    ),
    run_model: bool = typer.Option(
        False, "--model", help="Make the predictions first: track each video from its first frame's ground-truth masks."
    ),
    frames_dir: Optional[Path] = typer.Option(
        None, "--frames-dir", help="With --model: JPEG frames <video>/<frame>.jpg (default: GT_DIR/JPEGImages)."
    ),
    model: ModelChoice = MODEL_OPTIONS,
    progress: Optional[bool] = PROGRESS,
) -> None:
    """Score video object masks with J&F (region J, boundary F) as Meta's SA-V / DAVIS benchmark does."""
    from ..evaluate import EvalError, evaluate_folders, track_vos_videos, vos_videos

    if not run_model:
        if pred_dir is None:
            raise typer.BadParameter("give PRED_DIR, or --model to make the predictions", param_hint="PRED_DIR")
        for value, name in (
            (frames_dir, "--frames-dir"),
            (model.checkpoint, "--checkpoint"),
            (model.variant, "--variant"),
        ):
            if value is not None:
                raise typer.BadParameter("runs the model: add --model", param_hint=name)
    model.check()
    with errors_as_messages():
        try:
            if json_path is not None:
                check_writable_file(json_path)
            if not run_model:
                result = evaluate_folders(gt_dir, pred_dir, all_frames)
            else:
                videos = vos_videos(_frames_root(gt_dir, frames_dir), gt_dir)  # checked before the model loads
                if pred_dir is not None:
                    check_writable_folder(pred_dir)
                loaded = model.load()
                with tempfile.TemporaryDirectory(prefix="sam2rt-eval-") as scratch:
                    out_dir = pred_dir if pred_dir is not None else Path(scratch)
                    track_vos_videos(loaded, videos, out_dir, progress)
                    result = evaluate_folders(gt_dir, out_dir, all_frames)
        except EvalError as error:
            raise RunFailed(str(error)) from None
        typer.echo(result.table())
        if json_path is not None:
            json_path.write_text(json.dumps(result.as_json(), indent=2) + "\n")
            typer.echo(f"wrote {json_path}")
        if run_model and pred_dir is not None:
            typer.echo(f"wrote the predicted masks to {pred_dir}")
