"""`sam2rt annotate`: detection boxes -> masks -> a YOLO segmentation dataset and/or COCO JSON with RLE."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import RunFailed, app, errors_as_messages
from .model_choice import MODEL_OPTIONS, ModelChoice, model_options

FORMATS = ("yolo", "coco")


@app.command()
@model_options
def annotate(
    images: Path = typer.Argument(..., help="Folder of images, or a video (with --labels on key frames)."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="Folder of YOLO detection labels, <image stem>.txt: class cx cy w h (0..1)."
    ),
    coco: Optional[Path] = typer.Option(None, "--coco", help="COCO JSON with the detections (bbox in pixels)."),
    detector: Optional[str] = typer.Option(
        None, "--detector", help="Ultralytics detector weights (needs the ultralytics package)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder: labels/*.txt and/or annotations.json."),
    formats: list[str] = typer.Option(["yolo", "coco"], "--format", help="yolo and/or coco (repeatable)."),
    ray: bool = typer.Option(False, "--ray", help="Spread the images over a Ray cluster (needs sam2rt[ray])."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="With --ray: the cluster to join (default: RAY_ADDRESS, else a local one)."
    ),
    workers: int = typer.Option(2, "--workers", help="With --ray: model copies (one per GPU or CPU worker)."),
    model: ModelChoice = MODEL_OPTIONS,
) -> None:
    """Turn detection boxes into masks; finished images are skipped when the run is started again."""
    from ..annotate import images as annotation
    from ..annotate.ray import annotate_on_ray
    from ..annotate.videos import is_video
    from ..io.sinks import check_writable_folder

    sources = [value for value in (labels, coco, detector) if value is not None]
    if workers <= 0:
        raise typer.BadParameter(f"must be positive, got {workers}", param_hint="--workers")
    if len(sources) != 1:
        raise typer.BadParameter("give exactly one of --labels, --coco and --detector", param_hint="--labels")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise typer.BadParameter(f"unknown format {unknown[0]!r}; the formats are yolo and coco", param_hint="--format")
    with errors_as_messages():
        try:
            check_writable_folder(output)
            if is_video(images):
                _annotate_video(images, labels, output, formats, model)
                return
            class_names = None
            if labels is not None:
                items = annotation.yolo_items(images, labels)
            elif coco is not None:
                items, class_names = annotation.coco_items(coco, images)
            else:
                items = annotation.detector_items(images, detector)
            todo = annotation.pending(items, output)
            if len(todo) < len(items):
                typer.echo(f"resuming: {len(items) - len(todo)} of {len(items)} images already done")
            annotation.check_items(todo)
            if todo and ray:
                spec = _model_spec(model)
                for name, count in annotate_on_ray(todo, spec, output, "yolo" in formats, ray_address, workers):
                    typer.echo(f"{name}: {count} masks")
            elif todo:
                segmenter = annotation.BoxSegmenter(model.load())
                for item in todo:
                    record = annotation.annotate_item(item, segmenter, output, "yolo" in formats)
                    typer.echo(f"{item.image.name}: {len(record['annotations'])} masks")
            if "coco" in formats:
                records = annotation.finished_records(items, output)
                count = annotation.write_coco(
                    records, class_names or annotation.class_names_of(records), output / "annotations.json"
                )
                typer.echo(f"wrote {output / 'annotations.json'} ({len(items)} images, {count} masks)")
        except annotation.LabelError as error:
            raise RunFailed(str(error)) from None


def _model_spec(model: ModelChoice):
    """The model options as each Ray worker loads them (the variant read from the checkpoint, as locally)."""
    from ..annotate.ray import ModelSpec

    model.check()
    # Resolved here, as for a local run: workers then reserve a GPU exactly when the run would use one, and
    # --compile is refused before any worker starts rather than in each of them. A worker sees only the GPU
    # Ray gives it, so a CUDA index means nothing there.
    device = model.target_device()
    return ModelSpec(
        None if model.checkpoint is None else str(model.checkpoint),
        model.variant_name(),
        model.image_size,
        "cuda" if device.type == "cuda" else str(device),
        model.fast,
        model.compile,
    )


def _annotate_video(video: Path, labels: Optional[Path], output: Path, formats: list[str], model: ModelChoice) -> None:
    """A video with YOLO boxes on key frames: tracks and labels for every frame."""
    from ..annotate import images as annotation
    from ..annotate.videos import annotate_video, video_done, video_records

    if labels is None:
        raise RunFailed("a video is annotated from --labels: a folder of key frame labels <frame number>.txt")
    if video_done(video, output):
        typer.echo(f"resuming: {video.name} already done")
        records = video_records(video, output)
    else:
        records = annotate_video(video, labels, model.load(), output, "yolo" in formats)
        typer.echo(f"{video.name}: {len(records)} frames")
    if "coco" in formats:
        count = annotation.write_coco(records, annotation.class_names_of(records), output / "annotations.json")
        typer.echo(f"wrote {output / 'annotations.json'} ({len(records)} frames, {count} masks)")
