"""`sam2rt image`: segment one object of an image from clicks, a box and/or a mask."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import typer
from PIL import Image

from ..io.atomic import OutputError, write_atomically
from ..io.clashes import NamedPath, OutputPath, check_clashes
from ..io.overlay import draw_overlay
from ..io.prompt_file import Prompt, PromptError, check_prompts, make_prompt, read_mask
from ..io.sinks import prepare_file
from .common import (
    BOX,
    MASK,
    NEGATIVE,
    POINT,
    app,
    errors_as_messages,
    flag_prompt,
    parse_numbers,
    read_image,
)
from .concepts import (
    SCORE_THRESHOLD,
    TEXT,
    check_threshold,
    coco_of,
    load_concept_predictor,
    parse_phrases,
    summary,
    write_label_png,
)
from .everything import EverythingSettings, image_files, labels_of, segment_everything
from .model_choice import MODEL_OPTIONS, ModelChoice, model_options

MASK_PROMPT_LOGIT = 10.0  # a binary mask given to the image predictor becomes logits of +-10


def _check_image_output(path: Path) -> None:
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:  # PIL reads some it cannot write
        raise OutputError(f"cannot write {path}: unknown image file extension {path.suffix!r} (use .png or .jpg)")
    prepare_file(path)


class _ImageJob(NamedTuple):
    rgb: np.ndarray  # (H, W, 3) uint8
    prompt: Optional[Prompt]  # clicks and/or box
    mask: Optional[np.ndarray]  # (H, W) bool


def _image_job(
    image_path: Path,
    prompt: Optional[Prompt],
    mask_path: Optional[Path],
    outputs: list[OutputPath],
    inputs: list[NamedPath],
) -> _ImageJob:
    """Read and check everything the image command needs, before the model is loaded."""
    check_clashes(inputs, outputs)
    rgb = read_image(image_path)
    size = rgb.shape[:2]
    if prompt is not None:
        check_prompts([prompt], size, None, "")
    mask = read_mask(mask_path, "--mask") if mask_path is not None else None
    if mask is not None and mask.shape != size:
        raise PromptError(f"--mask is {mask.shape[1]}x{mask.shape[0]} but the image is {size[1]}x{size[0]}")
    for output in outputs:
        _check_image_output(output.path)
    return _ImageJob(rgb, prompt, mask)


def _segment_image(model, job: _ImageJob) -> tuple[np.ndarray, float]:
    """The best mask (H, W) bool for the job's prompts, and its predicted IoU."""
    from ..images.predictor import ImagePredictor
    from ..processing.prompts import mask_to_model_frame

    mask_input = None
    if job.mask is not None:
        side = model.sam_prompt_encoder.mask_input_size
        binary = mask_to_model_frame(job.mask, side, model.device)[0]  # (1, side, side) 0/1
        mask_input = ((binary * 2 - 1) * MASK_PROMPT_LOGIT).cpu().numpy()
    prompt = job.prompt
    # One click is ambiguous: ask for three candidates and keep the best, as the official notebooks do.
    single_click = prompt is not None and prompt.box is None and len(prompt.points) == 1 and job.mask is None
    predictor = ImagePredictor(model)
    predictor.set_image(job.rgb)
    masks, ious, _ = predictor.predict(
        point_coords=None if prompt is None else prompt.points,
        point_labels=None if prompt is None else prompt.labels,
        box=None if prompt is None else prompt.box,
        mask_input=mask_input,
        multimask_output=single_click,
    )
    best = int(np.argmax(ious))
    return masks[best] > 0, float(ious[best])


@app.command()
@model_options
def image(
    image_path: Path = typer.Argument(
        ..., metavar="IMAGE", help="The image to segment (with --everything: an image or a folder of images)."
    ),
    point: list[str] = POINT,
    negative: list[str] = NEGATIVE,
    box: Optional[str] = BOX,
    mask: Optional[Path] = MASK,
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help="The mask as a PNG: 255 on the object, 0 elsewhere (with --everything: the COCO JSON file).",
    ),
    overlay: Optional[Path] = typer.Option(
        None, "--overlay", help="The image with the mask drawn on it (with --everything and a folder: a folder)."
    ),
    everything: bool = typer.Option(
        False, "--everything", help="Segment everything: every mask of the image(s), as COCO JSON with RLE."
    ),
    points_per_side: int = typer.Option(32, "--points-per-side", help="--everything: grid points per side."),
    pred_iou_thresh: float = typer.Option(0.8, "--pred-iou-thresh", help="--everything: least predicted IoU."),
    stability_thresh: float = typer.Option(
        0.95, "--stability-score-thresh", help="--everything: least stability score."
    ),
    crop_n_layers: int = typer.Option(0, "--crop-n-layers", help="--everything: layers of crops (0: none)."),
    text: Optional[str] = TEXT,
    score_threshold: float = SCORE_THRESHOLD,
    model: ModelChoice = MODEL_OPTIONS,
) -> None:
    """Segment one object of an image from clicks, a box and/or a mask, every instance of a phrase (--text, SAM 3),
    or everything in images (--everything)."""
    if text is not None:
        if everything or point or negative or mask is not None:
            raise typer.BadParameter("--text takes no clicks, --mask or --everything (a --box is an exemplar)")
        _segment_concepts(
            image_path, parse_phrases(text), box, output, overlay, check_threshold(score_threshold), model
        )
        return
    model.check()
    if everything:
        if point or negative or box is not None or mask is not None:
            raise typer.BadParameter("--everything takes no prompts", param_hint="--everything")
        if output is None:
            raise typer.BadParameter("--everything needs --output FILE.json", param_hint="--output")
        if points_per_side <= 0 or crop_n_layers < 0:
            raise typer.BadParameter("must be positive (and --crop-n-layers 0 or more)", param_hint="--points-per-side")
        settings = EverythingSettings(points_per_side, pred_iou_thresh, stability_thresh, crop_n_layers)
        with errors_as_messages():
            images = image_files(image_path)  # bad inputs fail before the model loads
            check_clashes(
                [NamedPath("the input image", path) for path in images]
                + ([NamedPath("the checkpoint", model.checkpoint)] if model.checkpoint else []),
                [OutputPath("--output", output)]
                + ([OutputPath("--overlay", overlay, folder_suffix=".png")] if overlay else []),
            )
            segment_everything(model.load(), image_path, output, overlay, settings)
        return
    with errors_as_messages():
        prompt = flag_prompt(point, negative, box, None, 0, 1)
        if prompt is None and mask is None:
            raise typer.BadParameter("give --point, --negative, --box and/or --mask", param_hint="prompt")
        outputs = [OutputPath(option, path) for option, path in (("--output", output), ("--overlay", overlay)) if path]
        inputs = [NamedPath("the input image", image_path)]
        inputs += [
            NamedPath(role, path)
            for role, path in (("the --mask file", mask), ("the checkpoint", model.checkpoint))
            if path
        ]
        job = _image_job(image_path, prompt, mask, outputs, inputs)
        result, iou = _segment_image(model.load(), job)
        typer.echo(f"mask: {int(result.sum())} pixels, predicted IoU {iou:.3f}")
        if output is not None:
            _save_image(result.astype(np.uint8) * 255, output)
            typer.echo(f"wrote mask {output}")
        if overlay is not None:
            _save_image(draw_overlay(job.rgb, result.astype(np.int32), [1]), overlay)
            typer.echo(f"wrote overlay {overlay}")


def _segment_concepts(
    image_path: Path,
    phrases: list[str],
    box: Optional[str],
    output: Optional[Path],
    overlay: Optional[Path],
    score_threshold: float,
    model: ModelChoice,
) -> None:
    """--text: every instance of each phrase (with the --box exemplar, if any): a COCO JSON file (a category per
    phrase) or a PNG of instance numbers, and an overlay."""
    corners = parse_numbers(box, 4, "--box", "X0,Y0,X1,Y1") if box is not None else None
    with errors_as_messages():
        outputs = [OutputPath(option, path) for option, path in (("--output", output), ("--overlay", overlay)) if path]
        inputs = [NamedPath("the input image", image_path)]
        if model.checkpoint is not None:
            inputs.append(NamedPath("the checkpoint", model.checkpoint))
        check_clashes(inputs, outputs)
        rgb = read_image(image_path)
        if output is not None and output.suffix.lower() == ".json":
            prepare_file(output)
        elif output is not None:
            _check_image_output(output)
        if overlay is not None:
            _check_image_output(overlay)
        if corners is not None:
            check_prompts([make_prompt(0, 1, None, None, corners, None, "--box")], rgb.shape[:2], None, "")
        predictor = load_concept_predictor(model, score_threshold)
        predictor.set_image(rgb)
        found = predictor.predict(phrases, None if corners is None else [corners])
        typer.echo(summary(found))
        masks = np.concatenate([instances.masks for instances in found]) if found else np.zeros((0, *rgb.shape[:2]))
        if output is not None and output.suffix.lower() == ".json":
            dataset = coco_of(found, image_path.name, rgb.shape[:2], f"sam2rt image --text {','.join(phrases)}")
            dataset.write(output)
            typer.echo(f"wrote {output} ({len(masks)} instances)")
        elif output is not None:
            write_label_png(masks, rgb.shape[:2], output)
            typer.echo(f"wrote instance numbers {output}")
        if overlay is not None:
            labels = labels_of(masks) if len(masks) else np.zeros(rgb.shape[:2], np.int32)
            _save_image(draw_overlay(rgb, labels, list(range(1, len(masks) + 1))), overlay)
            typer.echo(f"wrote overlay {overlay}")


def _save_image(pixels: np.ndarray, path: Path) -> None:
    """Save atomically: the path holds the old file or the whole new one, never half an image."""
    write_atomically(path, lambda temporary: Image.fromarray(pixels).save(temporary))
