"""`sam2rt annotate`: detection boxes -> masks -> a YOLO segmentation dataset and/or COCO JSON with RLE."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import RunFailed, app, errors_as_messages
from .concepts import SCORE_THRESHOLD, check_threshold, load_concept_predictor, parse_phrases
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
    output: Path = typer.Option(
        ..., "--output", "-o", help="Output folder: images/, labels/*.txt and data.yaml, and/or annotations.json."
    ),
    formats: list[str] = typer.Option(["yolo", "coco"], "--format", help="yolo and/or coco (repeatable)."),
    copy_images: bool = typer.Option(
        False, "--copy-images", help="Copy the images into OUT/images (default: hard links where possible)."
    ),
    yolo_pieces: bool = typer.Option(
        False, "--yolo-pieces", help="A YOLO line per piece of a mask, not one per object (pieces joined)."
    ),
    ray: bool = typer.Option(False, "--ray", help="Spread the images over a Ray cluster (needs sam2rt[ray])."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="With --ray: the cluster to join (default: RAY_ADDRESS, else a local one)."
    ),
    workers: int = typer.Option(2, "--workers", help="With --ray: model copies (one per GPU or CPU worker)."),
    text: Optional[str] = typer.Option(
        None, "--text", "-t", help="Instead of boxes: every instance of these phrases (SAM 3), e.g. 'car,person'."
    ),
    score_threshold: float = SCORE_THRESHOLD,
    model: ModelChoice = MODEL_OPTIONS,
) -> None:
    """Turn detection boxes, or concept prompts (--text), into masks; finished images are skipped when the run is
    started again."""
    from ..annotate import images as annotation
    from ..annotate.dataset import class_names, place_images, read_class_names, write_data_yaml
    from ..annotate.ray import annotate_on_ray
    from ..annotate.videos import is_video
    from ..io.sinks import check_writable_folder

    sources = [value for value in (labels, coco, detector, text) if value is not None]
    if workers <= 0:
        raise typer.BadParameter(f"must be positive, got {workers}", param_hint="--workers")
    if len(sources) != 1:
        raise typer.BadParameter("give exactly one of --labels, --coco, --detector and --text", param_hint="--labels")
    phrases = parse_phrases(text) if text is not None else None
    if phrases is not None and ray:
        raise typer.BadParameter("--text runs in this process; --ray is for box prompts", param_hint="--ray")
    check_threshold(score_threshold)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise typer.BadParameter(f"unknown format {unknown[0]!r}; the formats are yolo and coco", param_hint="--format")
    with errors_as_messages():
        try:
            check_writable_folder(output)
            if labels is not None and "yolo" in formats and (output / "labels").resolve() == labels.resolve():
                raise RunFailed(f"the masks' labels would overwrite the boxes in {labels}: give another --output")
            if is_video(images) and phrases is not None:
                raise RunFailed("--text annotates a folder of images; a video's concepts are tracked by `sam2rt track`")
            if is_video(images):
                _annotate_video(images, labels, output, formats, yolo_pieces, model)
                return
            category_ids = None
            if labels is not None:
                items, given_names = annotation.yolo_items(images, labels), read_class_names(labels)
            elif coco is not None:
                items, given_names, category_ids = annotation.coco_items(coco, images)
            elif detector is not None:
                items, given_names = annotation.detector_items(images, detector)
            else:
                items, given_names = annotation.folder_items(images), phrases
                annotation.check_same_phrases(output, phrases)
            todo = annotation.pending(items, output)
            if len(todo) < len(items):
                typer.echo(f"resuming: {len(items) - len(todo)} of {len(items)} images already done")
            annotation.check_items(todo, given_names)
            if todo and ray:
                spec = _model_spec(model)
                yolo = "yolo" in formats
                for name, count in annotate_on_ray(todo, spec, output, yolo, yolo_pieces, ray_address, workers):
                    typer.echo(f"{name}: {count} masks")
            elif todo and phrases is not None:
                segmenter = annotation.ConceptSegmenter(load_concept_predictor(model, score_threshold), phrases)
                for item in todo:
                    record = annotation.annotate_item(item, segmenter, output, "yolo" in formats, yolo_pieces)
                    typer.echo(f"{item.relative_name}: {len(record['annotations'])} masks")
            elif todo:
                segmenter = annotation.BoxSegmenter(model.load())
                for item in todo:
                    record = annotation.annotate_item(item, segmenter, output, "yolo" in formats, yolo_pieces)
                    typer.echo(f"{item.relative_name}: {len(record['annotations'])} masks")
            records = annotation.finished_records(items, output)
            names = class_names(records, given_names)
            if "yolo" in formats:
                copied = place_images(
                    [(item.image, item.relative_name) for item in items], output / "images", copy_images
                )
                how = "copied" if copied == len(items) else f"linked ({copied} copied)" if copied else "linked"
                typer.echo(f"wrote {write_data_yaml(output, names)} ({len(names)} classes; images {how})")
            if "coco" in formats:
                count = annotation.write_coco(records, names, output / "annotations.json", category_ids)
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
        model.cpu_bf16,
    )


def _annotate_video(
    video: Path, labels: Optional[Path], output: Path, formats: list[str], yolo_pieces: bool, model: ModelChoice
) -> None:
    """A video with YOLO boxes on key frames: tracks and labels for every frame, and its frames as images."""
    from ..annotate import images as annotation
    from ..annotate.dataset import class_names, read_class_names, write_data_yaml
    from ..annotate.videos import annotate_video, video_done, video_records

    if labels is None:
        raise RunFailed("a video is annotated from --labels: a folder of key frame labels <frame number>.txt")
    if video_done(video, output):
        typer.echo(f"resuming: {video.name} already done")
        records = video_records(video, output)
    else:
        records = annotate_video(video, labels, model.load(), output, "yolo" in formats, yolo_pieces)
        typer.echo(f"{video.name}: {len(records)} frames")
    names = class_names(records, read_class_names(labels))
    if "yolo" in formats:
        typer.echo(f"wrote {write_data_yaml(output, names)} ({len(names)} classes; frames in {output / 'images'})")
    if "coco" in formats:
        count = annotation.write_coco(records, names, output / "annotations.json")
        typer.echo(f"wrote {output / 'annotations.json'} ({len(records)} frames, {count} masks)")
