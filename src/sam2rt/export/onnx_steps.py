"""The steps of a tracking pass as modules of plain tensor inputs, the form an exported graph takes.

Each wraps the model's own methods (nothing is computed differently from the PyTorch engine) and turns
what the engine decides in Python into inputs: a mask prompt or none is a `has_mask` flag per object,
empty memory slots are validity masks over a fixed number of slots. What stays a Python choice (several
candidate masks or one) is a separate graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..model.sam2 import MemoryTokens, SAM2Model


class ImageEncoderStep(nn.Module):
    """Normalised images (B, 3, S, S) -> features (B, C, h, w), the same without memory (a first prompt's),
    and the decoder's skips (B, C/8, 4h, 4w) and (B, C/4, 2h, 2w)."""

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        features = self.model.encode_image(images)
        high_res_s4, high_res_s8 = features.high_res
        return features.embed, self.model.without_memory(features.embed), high_res_s4, high_res_s8


class MaskDecoderStep(nn.Module):
    """The prompt encoder and mask decoder, as `SAM2Model.segment` runs them for tracking and prompts.

    embed (B, C, h, w): each object's features (conditioned on its memory, or without memory);
    high_res_s4, high_res_s8 (1, ...): the frame's skips, shared by every object;
    coords (B, N, 2) in model pixels with labels (B, N) int32 (-1: no point, as tracking passes);
    mask_logits (B, 1, 4h, 4w), read only where has_mask (B,) bool is set.
    -> best_mask (B, 1, 4h, 4w), obj_ptr (B, C), object_score_logits (B, 1).
    """

    def __init__(self, model: SAM2Model, multimask: bool) -> None:
        super().__init__()
        self.model = model
        self.multimask = multimask

    def forward(
        self,
        embed: Tensor,
        high_res_s4: Tensor,
        high_res_s8: Tensor,
        coords: Tensor,
        labels: Tensor,
        mask_logits: Tensor,
        has_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        prompts = self.model.sam_prompt_encoder
        sparse = prompts.embed_points(coords, labels)  # (B, N + 1, C)
        # Both dense embeddings are made, one kept per object: the graph has no branch on whether a mask came.
        from_mask = prompts.mask_downscaling(mask_logits)  # (B, C, h, w)
        no_mask = prompts.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        dense = torch.where(has_mask[:, None, None, None], from_mask, no_mask)  # (B, C, h, w)
        decoded = self.model.sam_mask_decoder(
            embed, prompts.dense_pe(), sparse, dense, (high_res_s4, high_res_s8), multimask=self.multimask
        )
        prediction = self.model.tracking_prediction(decoded, self.multimask)
        return prediction.best_mask, prediction.obj_ptr, prediction.object_score_logits


class MaskPromptStep(nn.Module):
    """A mask given as an object's segmentation, as `SAM2Model.mask_as_output` takes it: embed (1, C, h, w) the
    frame's features, the frame's skips, mask (B, 1, S, S) 0/1 at the model's input size -> low-resolution logits
    (B, 1, 4h, 4w), obj_ptr (B, C), object_score_logits (B, 1)."""

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, embed: Tensor, high_res_s4: Tensor, high_res_s8: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        prediction = self.model.mask_as_output(embed, (high_res_s4, high_res_s8), mask)
        return prediction.best_mask, prediction.obj_ptr, prediction.object_score_logits


class MemoryAttentionStep(nn.Module):
    """The frame's features (1, C, h, w) conditioned on each object's memory -> (B, C, h, w).

    The memory comes in a fixed number of slots, as `tracking.memory_gather.gather` packs it: spatial (B, F, N,
    C_mem) with spatial_tpos (B, F) int64 and spatial_valid (B, F) bool; pointers (B, P, C) with
    pointer_positions (B, P) float and pointer_valid (B, P) bool. Empty slots are masked out of the attention.
    """

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        embed: Tensor,
        spatial: Tensor,
        spatial_tpos: Tensor,
        spatial_valid: Tensor,
        pointers: Tensor,
        pointer_positions: Tensor,
        pointer_valid: Tensor,
    ) -> Tensor:
        memory = MemoryTokens(spatial, spatial_tpos, spatial_valid, pointers, pointer_positions, pointer_valid)
        return self.model.condition_on_memory(embed, memory)


class MemoryEncoderStep(nn.Module):
    """Each object's new spatial memory of the frame: embed (1, C, h, w) the frame's features, mask_logits
    (B, 1, 4h, 4w), object_score_logits (B, 1), binarize (B,) bool (a mask the user shaped with prompts)
    -> tokens (B, N, C_mem), the layout the memory's slots hold."""

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, embed: Tensor, mask_logits: Tensor, object_score_logits: Tensor, binarize: Tensor) -> Tensor:
        return self.model.encode_memory(embed, mask_logits, object_score_logits, binarize)
