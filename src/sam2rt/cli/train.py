"""`sam2rt train`: fine-tune a checkpoint on a video dataset (VOS layout) or an image dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..train import ImageMaskDataset, OptimSettings, TrainConfig, VOSDataset
from ..train import train as run_training
from .common import PROGRESS, RunFailed, app, errors_as_messages
from .model_choice import MODEL_OPTIONS, ModelChoice, model_options


def _dataset(data: Path, coco: Optional[Path], frames: int, max_objects: int):
    if not data.is_dir():
        raise RunFailed(f"no such folder: {data}")
    if coco is not None:
        if not coco.is_file():
            raise RunFailed(f"no such file: {coco}")
        return ImageMaskDataset(data, max_objects, coco_json=coco)
    if (data / "JPEGImages").is_dir():
        return VOSDataset(data, frames, max_objects)
    if (data / "images").is_dir():
        return ImageMaskDataset(data, max_objects)
    raise RunFailed(
        f"{data} is neither a VOS dataset (JPEGImages/ and Annotations/) nor an image dataset "
        "(images/ and masks/); for COCO pass the image folder and --coco FILE.json"
    )


@app.command()
@model_options(speed=False)
def train(
    data: Path = typer.Argument(
        ..., help="VOS root (JPEGImages/, Annotations/), or a folder with images/ and masks/, or COCO images."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: model.pt, last.pt (for resuming), log.csv."),
    coco: Optional[Path] = typer.Option(None, "--coco", help="COCO JSON (polygons or RLE) of the images in DATA."),
    model: ModelChoice = MODEL_OPTIONS,
    steps: int = typer.Option(
        TrainConfig.steps, "--steps", min=1, help="Optimizer steps in all (a resumed run continues)."
    ),
    batch_size: int = typer.Option(TrainConfig.batch_size, "--batch-size", min=1, help="Clips per step (per GPU)."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames per video clip."),
    max_objects: int = typer.Option(3, "--max-objects", min=1, help="Objects per clip at most."),
    lr: float = typer.Option(OptimSettings.lr, "--lr", min=0.0, help="Peak learning rate outside the image encoder."),
    vision_lr: float = typer.Option(
        OptimSettings.vision_lr, "--vision-lr", min=0.0, help="Peak learning rate of the image encoder."
    ),
    freeze: list[str] = typer.Option(
        [], "--freeze", help="Part to keep fixed, repeatable: image_encoder, image_encoder.trunk, memory_attention, ..."
    ),
    precision: str = typer.Option(
        TrainConfig.precision, "--precision", help="bf16 (autocast, as Meta trains) or fp32."
    ),
    activation_checkpointing: bool = typer.Option(
        False, "--activation-checkpointing", help="Recompute activations in backward: less memory, more time."
    ),
    save_every: int = typer.Option(TrainConfig.save_every, "--save-every", min=1, help="Steps between checkpoints."),
    log_every: int = typer.Option(TrainConfig.log_every, "--log-every", min=1, help="Steps between rows of log.csv."),
    seed: int = typer.Option(TrainConfig.seed, "--seed", help="Seed of the clip and prompt sampling."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to OUT/tensorboard (needs tensorboard)."),
    progress: Optional[bool] = PROGRESS,
) -> None:
    """Fine-tune SAM 2 with SAM2Train's recipe (simulated clicks, boxes and masks; corrections; the official loss).

    Writes OUT/model.pt in the official format ({"model": state_dict}), loadable by sam2rt and by
    Meta's code. Run it again with the same OUT to resume. Several GPUs: torchrun --nproc_per_node N.
    """
    import sys

    if precision not in ("bf16", "fp32"):
        raise typer.BadParameter(f"expected bf16 or fp32, got {precision!r}", param_hint="--precision")
    with errors_as_messages():
        try:
            config = TrainConfig(
                out_dir=out,
                steps=steps,
                batch_size=batch_size,
                precision=precision,
                activation_checkpointing=activation_checkpointing,
                freeze=list(freeze),
                save_every=save_every,
                log_every=log_every,
                seed=seed,
                progress=sys.stderr.isatty() if progress is None else progress,
                tensorboard=tensorboard,
                optim=OptimSettings(lr=lr, vision_lr=vision_lr),
            )
            dataset = _dataset(data, coco, frames, max_objects)
            result = run_training(model.load(), dataset, config)
        except (ValueError, RuntimeError) as error:
            raise RunFailed(str(error)) from None
    typer.echo(f"trained {result.steps_done} steps, last loss {result.final_loss:.4f}")
    typer.echo(f"weights: {result.checkpoint}  log: {result.log}")
