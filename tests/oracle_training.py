"""Meta's training code (../shared/oracles/sam2-training) as the reference for the training step.

It is not installed: its folder goes on sys.path. Two of its modules pull in what the test
machines lack (tensordict, fvcore through the trainer); stand-ins for the two names the model and
the loss import from them are registered first, only for the tests.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

# SAM2_TRAINING_ORACLE points elsewhere, e.g. on a GPU machine that gets a copy of the repository only.
ORACLE_TRAINING = Path(
    os.environ.get(
        "SAM2_TRAINING_ORACLE", Path(__file__).resolve().parents[1].parent / "shared" / "oracles" / "sam2-training"
    )
)
CORE_LOSS_KEY = "core_loss"


def _install_standins() -> None:
    if "training.trainer" in sys.modules:
        return
    trainer = types.ModuleType("training.trainer")
    trainer.CORE_LOSS_KEY = CORE_LOSS_KEY
    data_utils = types.ModuleType("training.utils.data_utils")

    class BatchedVideoDatapoint:
        """What SAM2Train.forward reads of a batch: img_batch (T, V, 3, S, S), obj_to_frame_idx (T, O, 2), masks."""

        def __init__(self, img_batch: torch.Tensor, obj_to_frame_idx: torch.Tensor, masks: torch.Tensor) -> None:
            self.img_batch, self.obj_to_frame_idx, self.masks = img_batch, obj_to_frame_idx, masks

        @property
        def num_frames(self) -> int:
            return self.img_batch.shape[0]

        @property
        def flat_obj_to_img_idx(self) -> torch.Tensor:
            frame, video = self.obj_to_frame_idx.unbind(dim=-1)
            return video * self.num_frames + frame

        @property
        def flat_img_batch(self) -> torch.Tensor:
            return self.img_batch.transpose(0, 1).flatten(0, 1)  # (T, V, ...) -> (V*T, ...)

    data_utils.BatchedVideoDatapoint = BatchedVideoDatapoint
    sys.modules["training.trainer"] = trainer
    sys.modules["training.utils.data_utils"] = data_utils


def import_training():
    """(training.model.sam2, training.loss_fns, training.utils.data_utils) of Meta's training code."""
    if not ORACLE_TRAINING.is_dir():
        pytest.skip(f"needs Meta's training code at {ORACLE_TRAINING} (../shared/oracles beside the repository)")
    if str(ORACLE_TRAINING) not in sys.path:
        sys.path.insert(0, str(ORACLE_TRAINING))
    import training  # noqa: F401  (the package, so that the stand-ins attach below it)
    import training.utils  # noqa: F401

    _install_standins()
    import training.loss_fns as loss_fns
    import training.model.sam2 as train_model

    return train_model, loss_fns, sys.modules["training.utils.data_utils"]


def official_loss(loss_fns):
    """MultiStepMultiMasksAndIous with the weights and options of Meta's fine-tuning config."""
    return loss_fns.MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )


def official_train_model(variant: str, image_size: int, settings, device: str = "cpu", freeze_encoder: bool = False):
    """Meta's SAM2Train for an official variant, with the prompt options of a sam2rt PromptSettings, in train mode."""
    from oracle import config_path
    from sam2.build_sam import build_sam2

    import_training()
    overrides = [
        f"++model.image_size={image_size}",
        "model._target_=training.model.sam2.SAM2Train",
        f"++model.prob_to_use_pt_input_for_train={settings.prob_points}",
        f"++model.prob_to_use_box_input_for_train={settings.prob_box}",
        f"++model.prob_to_sample_from_gt_for_train={settings.prob_clicks_from_gt}",
        f"++model.num_frames_to_correct_for_train={settings.num_frames_to_correct}",
        f"++model.rand_frames_to_correct_for_train={settings.random_frames_to_correct}",
        f"++model.num_init_cond_frames_for_train={settings.num_init_cond_frames}",
        f"++model.rand_init_cond_frames_for_train={settings.random_init_cond_frames}",
        f"++model.add_all_frames_to_correct_as_cond={settings.corrections_as_cond}",
        f"++model.num_correction_pt_per_frame={settings.clicks_per_frame}",
        f"++model.freeze_image_encoder={freeze_encoder}",
    ]
    model = build_sam2(
        config_path(variant),
        None,
        device=device,
        mode="train",
        hydra_overrides_extra=overrides,
        apply_postprocessing=False,
    )
    return model.train()
