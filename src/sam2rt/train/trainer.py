"""The training loop: sample clips, simulate prompts, forward, loss, step; checkpoints, resume, logs, DDP.

Checkpoints are Meta's format, `{"model": state_dict}` with the official keys, so that Meta's code and
sam2rt load them unchanged; `last.pt` also carries what resuming needs (optimizer, step, generators).
Several GPUs: launch with `torchrun --nproc_per_node N`; each rank draws its own clips, the prompt
choices are the same on every rank (as in SAM2Train), and gradients are averaged by DDP.
"""

from __future__ import annotations

import csv
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute

from ..io.atomic import write_atomically
from ..model.sam2 import SAM2Model
from .clip_forward import ClipBatch, clip_forward
from .datasets import ClipDataset, collate
from .loss import LossTerms, LossWeights, clip_loss
from .optim import OptimSettings, freeze, lr_factor, make_optimizer, set_learning_rates
from .prompts import PromptSettings, plan_clip

LOG_COLUMNS = ("step", "loss", "loss_mask", "loss_dice", "loss_iou", "loss_object_score", "lr", "seconds")


@dataclass
class TrainConfig:
    out_dir: Path
    steps: int = 1000
    batch_size: int = 1  # clips per step (per GPU)
    precision: str = "bf16"  # "bf16" (autocast, as Meta trains) or "fp32"
    activation_checkpointing: bool = False  # recompute trunk blocks and memory-attention layers in backward
    freeze: list[str] = field(default_factory=list)  # e.g. ["image_encoder"]
    save_every: int = 500  # steps between checkpoints (and one at the end)
    log_every: int = 10
    seed: int = 0
    progress: bool = True
    tensorboard: bool = False
    prompts: PromptSettings = field(default_factory=PromptSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.steps < 1 or self.batch_size < 1 or self.save_every < 1 or self.log_every < 1:
            raise ValueError("steps, batch_size, save_every and log_every must be at least 1")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")


@dataclass
class TrainResult:
    steps_done: int
    final_loss: float
    checkpoint: Path  # the official-format weights, {"model": state_dict}
    log: Path


class TrainingStep(nn.Module):
    """Forward and loss in one module, so that DDP sees one forward per step."""

    def __init__(self, model: SAM2Model, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, batch: ClipBatch, plan_seed: int, num_objects: float) -> LossTerms:
        prompts = self.config.prompts
        plan = plan_clip(prompts, batch.num_frames, np.random.default_rng(plan_seed))
        outputs = clip_forward(self.model, batch, plan, prompts.clicks_per_frame, prompts.corrections_as_cond)
        return clip_loss(outputs, batch.masks, self.config.loss, num_objects)


def keep_batch_norm_statistics(model: nn.Module) -> None:
    """Let the BatchNorm layers (EdgeTAM's RepViT trunk; Hiera has none) normalise by their running statistics
    while the rest trains: a step encodes the few frames of one clip, whose statistics would overwrite the
    checkpoint's. Their scales and shifts still learn. (Meta published no EdgeTAM training recipe.)"""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def enable_activation_checkpointing(model: SAM2Model) -> None:
    """Recompute each trunk block and memory-attention layer in backward instead of keeping its activations.

    Applied from outside on the module instances; the weights and their names do not change.
    """
    modules = model.image_encoder.trunk.layers()[1] + list(model.memory_attention.layers)
    for module in modules:
        forward = module.forward

        def checkpointed(*args: object, _forward=forward) -> torch.Tensor:
            if not torch.is_grad_enabled():
                return _forward(*args)
            return recompute(_forward, *args, use_reentrant=False)

        module.forward = checkpointed


def save_weights(model: SAM2Model, path: Path) -> None:
    """The official checkpoint format, written atomically."""
    _atomic_save({"model": model.state_dict()}, path)


def _atomic_save(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


def _distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group under torchrun."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(model: SAM2Model, dataset: ClipDataset, config: TrainConfig) -> TrainResult:
    """Fine-tune `model` (on its device) on clips of `dataset`; resumes from `out_dir/last.pt` when present."""
    rank, world = _distributed()
    device = model.device
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        model.to(device)
    freeze(model, config.freeze)
    if config.activation_checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    keep_batch_norm_statistics(model)
    optimizer = make_optimizer(model, config.optim)
    step_module: nn.Module = TrainingStep(model, config)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=True)

    last = config.out_dir / "last.pt"
    start = 0
    if last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    log_path = config.out_dir / "log.csv"
    writer = _CsvLog(log_path, resume=start > 0) if rank == 0 else None
    board = _tensorboard(config) if rank == 0 and config.tensorboard else None

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.precision == "bf16" else nullcontext()
    progress = _progress(config, start) if rank == 0 else None
    began, loss_value = time.perf_counter(), float("nan")
    for step in range(start, config.steps):
        # Generators from the step number: a resumed run draws what the uninterrupted one would have.
        clips = random.Random(config.seed * 1_000_003 + step * world + rank)
        batch = collate([dataset.sample(clips, model.config.image_size) for _ in range(config.batch_size)])
        batch = batch.to(device)
        num_objects = _mean_objects(batch.num_objects, device, world)
        set_learning_rates(optimizer, lr_factor(step, config.steps, config.optim))
        with autocast:
            terms = step_module(batch, _plan_seed(config, step, batch.num_frames), num_objects)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if config.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()

        loss_value = float(terms.total.detach())
        done = step + 1
        if rank == 0:
            if done % config.log_every == 0 or done == config.steps:
                row = [done, *(f"{float(v.detach()):.6g}" for v in terms)]
                row += [f"{optimizer.param_groups[0]['lr']:.3g}", f"{time.perf_counter() - began:.2f}"]
                writer.writerow(row)
                if board is not None:
                    for name, value in zip(LOG_COLUMNS[1:6], terms):
                        board.add_scalar(name, float(value.detach()), done)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss_value:.4f}")
            if done % config.save_every == 0 or done == config.steps:
                _atomic_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "step": done,
                        "config": {"steps": config.steps, "seed": config.seed},
                    },
                    last,
                )
    if rank == 0:
        save_weights(model, config.out_dir / "model.pt")
        if progress is not None:
            progress.close()
        if board is not None:
            board.close()
    model.eval()
    return TrainResult(config.steps - start, loss_value, config.out_dir / "model.pt", log_path)


def _plan_seed(config: TrainConfig, step: int, num_frames: int) -> int:
    """The seed of a step's prompt plan, the same on every rank. A plan with a mask prompt on every
    frame would supervise only the prompts themselves (no gradient at all): such draws are skipped."""
    seed = (config.seed * 1_000_003 + step) * 16
    while True:
        plan = plan_clip(config.prompts, num_frames, np.random.default_rng(seed))
        if plan.use_points or len(plan.init_cond_frames) < num_frames:
            return seed
        seed += 1


def _mean_objects(count: int, device: torch.device, world: int) -> float:
    """Objects per batch averaged over ranks, as Meta's loss normalises."""
    if world == 1:
        return float(count)
    total = torch.tensor(float(count), device=device)
    dist.all_reduce(total)
    return max(total.item() / world, 1.0)


class _CsvLog:
    def __init__(self, path: Path, resume: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (resume and path.exists())
        self.file = path.open("w" if fresh else "a", newline="")
        self.writer = csv.writer(self.file)
        if fresh:
            self.writerow(LOG_COLUMNS)

    def writerow(self, row: list | tuple) -> None:
        self.writer.writerow(row)
        self.file.flush()


def _tensorboard(config: TrainConfig) -> Optional[object]:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise RuntimeError("TensorBoard logging needs the tensorboard package (pip install tensorboard)") from error
    return SummaryWriter(str(config.out_dir / "tensorboard"))


def _progress(config: TrainConfig, start: int):
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=config.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
