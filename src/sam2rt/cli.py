"""The `sam2rt` command: models, download, image, track.

Exit codes: 0 success; 1 a bad input or a failure, told in one line `error: ...` on stderr
(missing or unreadable files, corrupt videos, cameras that do not open, prompts outside the frame
or past the end, malformed prompts files, wrong checkpoints, outputs that cannot be written);
2 a wrong command line (unknown option, malformed value), told by typer with the usage; 130 Ctrl+C.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple, NoReturn, Optional

import numpy as np
import typer
from PIL import Image, UnidentifiedImageError

from . import checkpoints
from .checkpoints import CheckpointError
from .io.live import SourceError
from .io.overlay import draw_overlay
from .io.prompt_file import Prompt, PromptError, check_prompts, check_unique, make_prompt, read_mask, read_prompts_file
from .io.sinks import MAX_PNG_OBJECT_ID, OutputError, prepare_file
from .io.video_file import VideoReadError
from .variants import VARIANTS

DEFAULT_VARIANT = "sam2.1_hiera_tiny"
MASK_PROMPT_LOGIT = 10.0  # a binary mask given to the image predictor becomes logits of +-10

app = typer.Typer(
    name="sam2rt",
    help="SAM 2 for live video: segment and track any object in images, videos, cameras and streams.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Options shared by the commands that run the model, and the prompt flags of `image` and `track`.
CHECKPOINT = typer.Option(
    None, "--checkpoint", "-c", help="Checkpoint file (.pt or .safetensors); its variant is read from it."
)
VARIANT = typer.Option(
    None,
    "--variant",
    help=f"Model variant; without --checkpoint, from the cache, downloaded when missing (default: {DEFAULT_VARIANT}).",
)
IMAGE_SIZE = typer.Option(
    1024, "--image-size", help="Model input side in pixels, a multiple of 32 (the checkpoints are trained at 1024)."
)
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (default: cuda when available).")
POINT = typer.Option([], "--point", "-p", help="X,Y pixel on the object (repeatable).")
NEGATIVE = typer.Option([], "--negative", "-n", help="X,Y pixel not on the object (repeatable).")
BOX = typer.Option(None, "--box", "-b", help="X0,Y0,X1,Y1 box around the object.")
MASK = typer.Option(None, "--mask", "-m", help="Image file the size of the frame, non-zero on the object.")
PROGRESS = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: on a terminal).")
FAST = typer.Option(
    True, "--fast/--exact", help="On CUDA: bf16 weights and CUDA graphs (--exact: fp32 weights, no graphs)."
)


class RunFailed(Exception):
    """Raised inside a command to end it with `error: <message>` and exit code 1."""


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {' '.join(message.split())}", err=True)  # one line, whatever the message held
    raise typer.Exit(code)


@contextmanager
def _errors_as_messages() -> Iterator[None]:
    """Bad inputs end the command with one line on stderr and exit code 1, never a traceback."""
    try:
        yield
    except (CheckpointError, PromptError, SourceError, OutputError, VideoReadError, RunFailed) as error:
        _fail(str(error))
    except FileNotFoundError as error:
        _fail(str(error) if error.filename is None else f"no such file: {error.filename}")
    except OSError as error:  # unreadable files and folders: the system's reason and the path say it all
        _fail(str(error) if error.filename is None else f"{error.filename}: {error.strerror}")


def _numbers(text: str, count: int, option: str, form: str) -> list[float]:
    """`"12,34"` -> [12.0, 34.0], or a usage error that shows the expected form."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(np.isfinite(values)):
        raise typer.BadParameter(f"expected {form} (pixels), got {text!r}", param_hint=option)
    return values


def _flag_prompt(
    points: list[str], negatives: list[str], box: Optional[str], mask: Optional[Path], frame: int, obj_id: int
) -> Optional[Prompt]:
    """The prompt given by --point/--negative/--box/--mask, if any."""
    if not points and not negatives and box is None and mask is None:
        return None
    clicks = [_numbers(p, 2, "--point", "X,Y") for p in points] + [
        _numbers(n, 2, "--negative", "X,Y") for n in negatives
    ]
    labels = [1] * len(points) + [0] * len(negatives)
    corners = _numbers(box, 4, "--box", "X0,Y0,X1,Y1") if box is not None else None
    origin = "the command line"
    mask_array = read_mask(mask, origin) if mask is not None else None
    return make_prompt(frame, obj_id, clicks or None, labels or None, corners, mask_array, origin)


def _device(name: Optional[str]):
    import torch

    if name is None:
        return checkpoints.default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RunFailed(f"unknown device {name!r} (expected cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunFailed(f"device {name} was asked for, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RunFailed(f"device {name} was asked for, but MPS is not available here")
    return device


def _check_variant(variant: Optional[str], hint: str) -> None:
    if variant is not None and variant not in VARIANTS:
        raise typer.BadParameter(
            f"unknown variant {variant!r}; the variants are: {', '.join(VARIANTS)}", param_hint=hint
        )


def _check_model_options(variant: Optional[str], image_size: int) -> None:
    """Usage errors in the model options, found before any work."""
    _check_variant(variant, "--variant")
    if image_size <= 0 or image_size % 32:
        raise typer.BadParameter(f"must be a positive multiple of 32, got {image_size}", param_hint="--image-size")


def _load_model(checkpoint: Optional[Path], variant: Optional[str], image_size: int, device: Optional[str], fast: bool):
    from .runtime import optimize

    _check_model_options(variant, image_size)
    target = _device(device)
    if checkpoint is not None and variant is None:
        variant = checkpoints.checkpoint_variant(checkpoint)
    model = checkpoints.load_model(variant or DEFAULT_VARIANT, checkpoint, target, image_size)
    return optimize(model) if fast else model


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))
    except FileNotFoundError:
        raise RunFailed(f"no such image file: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise RunFailed(f"{path} is not a readable image: {error}") from None


def _check_image_output(path: Path) -> None:
    if path.suffix.lower() not in Image.registered_extensions():
        raise OutputError(f"cannot write {path}: unknown image file extension {path.suffix!r} (use .png or .jpg)")
    prepare_file(path)


class _ImageJob(NamedTuple):
    rgb: np.ndarray  # (H, W, 3) uint8
    prompt: Optional[Prompt]  # clicks and/or box
    mask: Optional[np.ndarray]  # (H, W) bool


def _image_job(image_path: Path, prompt: Optional[Prompt], mask_path: Optional[Path], outputs: list[Path]) -> _ImageJob:
    """Read and check everything the image command needs, before the model is loaded."""
    rgb = _read_image(image_path)
    size = rgb.shape[:2]
    if prompt is not None:
        check_prompts([prompt], size, None, "")
    mask = read_mask(mask_path, "--mask") if mask_path is not None else None
    if mask is not None and mask.shape != size:
        raise PromptError(f"--mask is {mask.shape[1]}x{mask.shape[0]} but the image is {size[1]}x{size[0]}")
    for path in outputs:
        _check_image_output(path)
    return _ImageJob(rgb, prompt, mask)


def _segment_image(model, job: _ImageJob) -> tuple[np.ndarray, float]:
    """The best mask (H, W) bool for the job's prompts, and its predicted IoU."""
    from .image_predictor import ImagePredictor
    from .prompts import mask_to_model_frame

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


# Commands


@app.command()
def models() -> None:
    """The model variants, and which checkpoints are in the cache."""
    folder = checkpoints.cache_dir()
    typer.echo(f"cache: {folder}  (set SAM2RT_CACHE to move it)")
    typer.echo(f"{'variant':<24}{'cached':<10}{'size':>10}  file or download address")
    for name in VARIANTS:
        path = checkpoints.cached_checkpoint(name)
        part = path.with_name(path.name + ".part")
        if path.is_file():
            state, size, where = "yes", f"{path.stat().st_size / 2**20:.0f} MiB", str(path)
        elif part.is_file():
            state, size, where = (
                "partial",
                f"{part.stat().st_size / 2**20:.0f} MiB",
                f"`sam2rt download {name}` resumes",
            )
        else:
            state, size, where = "no", "", checkpoints.download_url(name)
        typer.echo(f"{name:<24}{state:<10}{size:>10}  {where}")


@app.command()
def download(
    variant: str = typer.Argument(..., help=f"One of: {', '.join(VARIANTS)}."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="File or folder to save it to (default: the cache)."
    ),
    sha256: Optional[str] = typer.Option(
        None, "--sha256", help="Expected sha256; else <file>.sha256 beside it, if any."
    ),
    force: bool = typer.Option(False, "--force", help="Download again even if the file is there."),
    progress: Optional[bool] = PROGRESS,
) -> None:
    """Download an official checkpoint: resumable, verified (it must load as VARIANT), saved atomically."""
    _check_variant(variant, "VARIANT")
    with _errors_as_messages():
        destination = output if output is not None else checkpoints.cached_checkpoint(variant)
        if destination.is_dir():
            destination = destination / checkpoints.cached_checkpoint(variant).name
        if destination.is_file() and not force:
            typer.echo(f"{variant} is already at {destination} (--force downloads it again)")
            return
        path = checkpoints.download_checkpoint(variant, destination, sha256=sha256, progress=progress)
    typer.echo(f"{variant} saved to {path}")


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
        _fail("--everything needs the automatic mask generator, which this version of sam2rt does not have yet")
    _check_model_options(variant, image_size)
    with _errors_as_messages():
        prompt = _flag_prompt(point, negative, box, None, 0, 1)
        if prompt is None and mask is None:
            raise typer.BadParameter("give --point, --negative, --box and/or --mask", param_hint="prompt")
        job = _image_job(image_path, prompt, mask, [path for path in (output, overlay) if path is not None])
        model = _load_model(checkpoint, variant, image_size, device, fast)
        result, iou = _segment_image(model, job)
        typer.echo(f"mask: {int(result.sum())} pixels, predicted IoU {iou:.3f}")
        try:
            if output is not None:
                Image.fromarray(result.astype(np.uint8) * 255).save(output)
                typer.echo(f"wrote mask {output}")
            if overlay is not None:
                Image.fromarray(draw_overlay(job.rgb, result.astype(np.int32), [1])).save(overlay)
                typer.echo(f"wrote overlay {overlay}")
        except OSError as error:
            raise OutputError(f"cannot write the output: {error}") from None


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
    from .io.track_source import open_track_source
    from .pipeline import check_outputs, open_sinks, run_tracking
    from .tracking.stream import StreamTracker

    _check_model_options(variant, image_size)
    with _errors_as_messages():
        flagged = _flag_prompt(point, negative, box, mask, frame, obj)
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
            model = _load_model(checkpoint, variant, image_size, device, fast)
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
        _fail(str(summary.error))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
