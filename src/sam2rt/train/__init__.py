"""Fine-tuning SAM 2 with SAM2Train's semantics: clips, simulated prompts and corrections, the official loss.

from sam2rt.train import TrainConfig, VOSDataset, train
model = sam2rt.load_model("sam2.1_hiera_tiny", checkpoint="sam2.1_hiera_tiny.pt", device="cuda")
train(model, VOSDataset("MOSE/train", num_frames=8, max_objects=3), TrainConfig(out_dir="runs/mose"))
"""

from .clip_forward import ClipBatch, DecoderStep, clip_forward
from .datasets import ClipSample, ImageMaskDataset, VOSDataset, collate
from .loss import LossTerms, LossWeights, clip_loss
from .optim import OptimSettings, freeze, make_optimizer
from .prompts import ClipPlan, PromptSettings, plan_clip, sample_box, sample_click
from .synthetic import make_synthetic_vos
from .trainer import TrainConfig, TrainResult, enable_activation_checkpointing, save_weights, train

__all__ = [
    "ClipBatch",
    "ClipPlan",
    "ClipSample",
    "DecoderStep",
    "ImageMaskDataset",
    "LossTerms",
    "LossWeights",
    "OptimSettings",
    "PromptSettings",
    "TrainConfig",
    "TrainResult",
    "VOSDataset",
    "clip_forward",
    "clip_loss",
    "collate",
    "enable_activation_checkpointing",
    "freeze",
    "make_optimizer",
    "make_synthetic_vos",
    "plan_clip",
    "sample_box",
    "sample_click",
    "save_weights",
    "train",
]
