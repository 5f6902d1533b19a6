"""The optimiser of Meta's fine-tuning recipe: AdamW over parameter groups with layer-wise learning-rate
decay in the image trunk, a lower learning rate for the image encoder, no weight decay on biases and
LayerNorms, a cosine schedule down to a tenth, and gradient clipping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..model.sam2 import SAM2Model

FREEZABLE = (
    "image_encoder",
    "image_encoder.trunk",
    "image_encoder.neck",
    "memory_attention",
    "memory_encoder",
    "sam_prompt_encoder",
    "sam_mask_decoder",
)


@dataclass(frozen=True)
class OptimSettings:
    lr: float = 5e-6  # peak learning rate of everything outside the image encoder
    vision_lr: float = 3e-6  # of the image encoder (trunk and neck)
    layer_decay: float = 0.9  # trunk layer l of L + 1 (trunk_layers) gets layer_decay ** (L + 1 - l) of the rate
    weight_decay: float = 0.1
    final_lr_fraction: float = 0.1  # the cosine ends at this fraction of the peak
    warmup_steps: int = 0
    grad_clip: Optional[float] = 0.1  # max L2 norm of all gradients; None: no clipping

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.vision_lr < 0:
            raise ValueError(f"learning rates must be positive, got lr={self.lr}, vision_lr={self.vision_lr}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must lie in (0, 1], got {self.layer_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}")


def freeze(model: SAM2Model, parts: list[str]) -> None:
    """Stop training the named parts (e.g. "image_encoder", "memory_attention")."""
    for part in parts:
        if part not in FREEZABLE:
            raise ValueError(f"cannot freeze {part!r}: choose from {', '.join(FREEZABLE)}")
        module = model.get_submodule(part)
        for param in module.parameters():
            param.requires_grad_(False)


def trunk_layers(model: SAM2Model) -> tuple[dict[str, int], int]:
    """The layer of each trunk parameter, by name, for layer-wise decay: the patch embedding (Hiera) or stem
    (RepViT) is layer 0, block i is layer i + 1; and the number of blocks L. Other trunk parameters are layer L + 1."""
    stem, blocks = model.image_encoder.trunk.layers()
    names = {id(param): name for name, param in model.named_parameters()}
    layers = {names[id(param)]: 0 for param in stem.parameters()}
    for index, block in enumerate(blocks):
        layers.update({names[id(param)]: index + 1 for param in block.parameters()})
    return layers, len(blocks)


def trunk_lr_scale(name: str, layers: dict[str, int], num_blocks: int, layer_decay: float) -> float:
    """Layer-wise decay in the trunk (`trunk_layers`): layer l of L + 1 gets layer_decay ** (L + 1 - l), the
    heads above the trunk scale 1. Position embeddings keep the full rate."""
    if not name.startswith("image_encoder.trunk.") or "pos_embed" in name:
        return 1.0
    return layer_decay ** (num_blocks + 1 - layers.get(name, num_blocks + 1))


def _no_weight_decay(model: nn.Module) -> set[str]:
    names = {name for name, _ in model.named_parameters() if "bias" in name}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            names.update(f"{module_name}.{param}" for param, _ in module.named_parameters(recurse=False))
    return names


def make_optimizer(model: SAM2Model, settings: OptimSettings) -> torch.optim.AdamW:
    """AdamW with one group per (learning-rate scale, weight decay); each group remembers its peak rate."""
    layers, num_blocks = trunk_layers(model)
    no_decay = _no_weight_decay(model)
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        base = settings.vision_lr if name.startswith("image_encoder.") else settings.lr
        peak = base * trunk_lr_scale(name, layers, num_blocks, settings.layer_decay)
        decay = 0.0 if name in no_decay else settings.weight_decay
        group = groups.setdefault((peak, decay), {"params": [], "lr": peak, "peak_lr": peak, "weight_decay": decay})
        group["params"].append(param)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(list(groups.values()))


def lr_factor(step: int, total_steps: int, settings: OptimSettings) -> float:
    """The schedule at `step` (0-based) as a fraction of the peak: linear warm-up, then cosine to final_lr_fraction."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(total_steps - settings.warmup_steps, 1)
    progress = min((step - settings.warmup_steps) / span, 1.0)
    end = settings.final_lr_fraction
    return end + 0.5 * (1 - end) * (1 + math.cos(math.pi * progress))


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * factor
