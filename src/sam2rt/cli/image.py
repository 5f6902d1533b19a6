"""`sam2rt image`: segment one object of an image from clicks, a box and/or a mask."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import typer
from PIL import Image, UnidentifiedImageError

from ..io.overlay import draw_overlay
from ..io.prompt_file import Prompt, PromptError, check_prompts, read_mask
from ..io.atomic import OutputError, write_atomically
from ..io.clashes import NamedPath, OutputPath, check_clashes
from ..io.sinks import prepare_file
from .common import (
    BOX,
    CHECKPOINT,
    DEVICE,
    FAST,
    IMAGE_SIZE,
    MASK,
    NEGATIVE,
    POINT,
    VARIANT,
    RunFailed,
    app,
    check_model_options,
    errors_as_messages,
    fail,
    flag_prompt,
    load_cli_model,
)

MASK_PROMPT_LOGIT = 10.0  # a binary mask given to the image predictor becomes logits of +-10


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))
    except FileNotFoundError:
        raise RunFailed(f"no such image file: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise RunFailed(f"{path} is not a readable image: {error}") from None


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
    rgb = _read_image(image_path)
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
    from ..image_predictor import ImagePredictor
    from ..prompts import mask_to_model_frame

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
def image(
    image_path: Path = typer.Argument(..., metavar="IMAGE", help="The image to segment."),
    point: list[str] = POINT,
    negative: list[str] = NEGATIVE,
    box: Optional[str] = BOX,
    mask: Optional[Path] = MASK,
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="The mask as a PNG: 255 on the object, 0 elsewhere."
    ),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="The image with the mask drawn on it."),
    everything: bool = typer.Option(
        False, "--everything", help="Segment everything (needs the mask generator: not available yet)."
    ),
    checkpoint: Optional[Path] = CHECKPOINT,
    variant: Optional[str] = VARIANT,
    image_size: int = IMAGE_SIZE,
    device: Optional[str] = DEVICE,
    fast: bool = FAST,
) -> None:
    """Segment one object of an image from clicks, a box and/or a mask."""
    if everything:
        fail("--everything needs the automatic mask generator, which this version of sam2rt does not have yet")
    check_model_options(variant, image_size)
    with errors_as_messages():
        prompt = flag_prompt(point, negative, box, None, 0, 1)
        if prompt is None and mask is None:
            raise typer.BadParameter("give --point, --negative, --box and/or --mask", param_hint="prompt")
        outputs = [OutputPath(option, path) for option, path in (("--output", output), ("--overlay", overlay)) if path]
        inputs = [NamedPath("the input image", image_path)]
        inputs += [
            NamedPath(role, path) for role, path in (("the --mask file", mask), ("the checkpoint", checkpoint)) if path
        ]
        job = _image_job(image_path, prompt, mask, outputs, inputs)
        model = load_cli_model(checkpoint, variant, image_size, device, fast)
        result, iou = _segment_image(model, job)
        typer.echo(f"mask: {int(result.sum())} pixels, predicted IoU {iou:.3f}")
        if output is not None:
            _save_image(result.astype(np.uint8) * 255, output)
            typer.echo(f"wrote mask {output}")
        if overlay is not None:
            _save_image(draw_overlay(job.rgb, result.astype(np.int32), [1]), overlay)
            typer.echo(f"wrote overlay {overlay}")


def _save_image(pixels: np.ndarray, path: Path) -> None:
    """Save atomically: the path holds the old file or the whole new one, never half an image."""
    write_atomically(path, lambda temporary: Image.fromarray(pixels).save(temporary))
