"""`sam2rt export`: the streaming tracker's steps as ONNX graphs, for `sam2rt track --backend onnxruntime` and
`sam2rt.export.onnx_tracker.OnnxStreamTracker` (onnxruntime alone, no PyTorch)."""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path

import typer

from ..tracking.options import STREAM_OPTIONS
from .common import RunFailed, app, errors_as_messages
from .model_choice import MODEL_OPTIONS, ModelChoice, model_options


@app.command()
@model_options(speed=False)
def export(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the ONNX graphs and their manifest."),
    max_cond_frames: int = typer.Option(
        STREAM_OPTIONS.max_cond_frames,
        "--max-cond-frames",
        min=1,
        help="Prompted frames kept per object: with the recent frames, the memory's fixed number of slots.",
    ),
    model: ModelChoice = MODEL_OPTIONS,
) -> None:
    """Export the tracker's steps (image encoder, prompt encoder and mask decoder, memory attention, memory encoder)
    to ONNX, fp32, with a dynamic object count and the memory in fixed slots."""
    model.check()
    with errors_as_messages():
        missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
        if missing:
            raise RunFailed(f"exporting needs {' and '.join(missing)}: pip install 'sam2rt[onnx]'")
        from ..export.onnx_export import export_onnx

        if model.device not in (None, "cpu"):
            raise RunFailed(f"the export runs on the CPU, in fp32; --device {model.device} does not apply")
        if output.exists() and not output.is_dir():
            raise RunFailed(f"--output {output} is a file, not a folder")
        loaded = dataclasses.replace(model, device="cpu").load()
        start = time.monotonic()
        manifest = export_onnx(loaded, output, max_cond_frames)
    smaller = "".join(f" (and {f} and {p} for objects prompted once)" for f, p in manifest.memory_capacities[:-1])
    typer.echo(
        f"exported {manifest.variant} at {manifest.image_size} px to {output} in {time.monotonic() - start:.0f} s: "
        f"memory of {manifest.memory_frames} frames and {manifest.pointer_slots} pointers per object{smaller}, "
        f"opset {manifest.opset}"
    )
