"""SAM 3's segmentation head: a mask for every decoder query, as the dot product of the query's mask embedding with
per-pixel embeddings at the highest resolution of the feature pyramid.

The encoder's image tokens first attend to the prompt (a residual cross-attention); they become the coarsest level
of a small FPN-style pixel decoder that adds in the backbone's finer levels one upsampling stage at a time.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ...runtime.kernels import group_norm
from ..layers import MLP
from .attention import PackedAttention


class SegmentationOutput(NamedTuple):
    """The segmentation head's outputs, at the resolution of the finest backbone level (H0, W0)."""

    mask_logits: Tensor  # (B, Q, H0, W0) one mask per query
    semantic_logits: Tensor  # (B, 1, H0, W0) the prompted concept's semantic mask (unused by Meta's inference)


class PixelDecoder(nn.Module):
    """Coarse to fine: at each stage the coarser map is upsampled (nearest) to the next level's size, added to it,
    and passed through a 3x3 conv, GroupNorm(8) and ReLU."""

    def __init__(self, hidden_dim: int = 256, num_upsampling_stages: int = 3) -> None:
        super().__init__()
        # The official model has 3 stages but is fed 3 levels, so it runs 2: the last conv and norm load, unused.
        self.conv_layers = nn.ModuleList(
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1) for _ in range(num_upsampling_stages)
        )
        self.norms = nn.ModuleList(nn.GroupNorm(8, hidden_dim) for _ in range(num_upsampling_stages))

    def forward(self, features: list[Tensor]) -> Tensor:
        """features: (B or 1, C, Hi, Wi) from finest to coarsest, at least two (a side of batch 1 is shared by every
        row). Returns (B, C, H0, W0) at the finest level's size."""
        pixels = features[-1]
        for stage, finer in enumerate(reversed(features[:-1])):
            pixels = finer + F.interpolate(pixels, size=finer.shape[-2:], mode="nearest")
            pixels = F.relu(group_norm(self.conv_layers[stage](pixels), self.norms[stage]))
        return pixels


class MaskPredictor(nn.Module):
    """Mask logits as the dot product of each query's mask embedding (an MLP) with each pixel's embedding."""

    def __init__(self, hidden_dim: int = 256, mask_dim: int = 256) -> None:
        super().__init__()
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, queries: Tensor, pixel_embeddings: Tensor) -> Tensor:
        """queries (B, Q, C), pixel_embeddings (B, D, H, W) -> mask logits (B, Q, H, W)."""
        batch, channels, height, width = pixel_embeddings.shape
        masks = self.mask_embed(queries) @ pixel_embeddings.flatten(2)  # (B, Q, D) @ (B, D, H*W) -> (B, Q, H*W)
        return masks.unflatten(-1, (height, width))  # (B, Q, H, W)


class SegmentationHead(nn.Module):
    """Meta's UniversalSegmentationHead as the image model configures it: prompt cross-attention on the encoder's
    image tokens, the pixel decoder, the instance (mask) and semantic heads. Defaults are the official sizes."""

    def __init__(self, hidden_dim: int = 256, num_heads: int = 8, num_upsampling_stages: int = 3) -> None:
        super().__init__()
        self.pixel_decoder = PixelDecoder(hidden_dim, num_upsampling_stages)
        self.mask_predictor = MaskPredictor(hidden_dim, hidden_dim)
        self.cross_attend_prompt = PackedAttention(hidden_dim, num_heads)
        self.cross_attn_norm = nn.LayerNorm(hidden_dim)
        self.semantic_seg_head = nn.Conv2d(hidden_dim, 1, kernel_size=1)
        self.instance_seg_head = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1)

    def forward(
        self,
        backbone_features: list[Tensor],
        image: Tensor,
        queries: Tensor,
        prompt: Tensor,
        prompt_padding: Tensor,
    ) -> SegmentationOutput:
        """backbone_features: the backbone's FPN levels (B or 1, C, Hi, Wi), finest first, the coarsest of the same
        size (H, W) as the encoder's grid (it is replaced by the encoder's tokens; batch 1 is shared by every row);
        image (B, H*W, C) the encoder's image tokens in raster order; queries (B, Q, C) the decoder's last
        queries; prompt (B, P, C) with prompt_padding (B, P) True at padding.

        Returns mask logits (B, Q, H0, W0) and semantic logits (B, 1, H0, W0) at the finest level's size.
        """
        attended = self.cross_attend_prompt(
            self.cross_attn_norm(image), prompt, prompt, key_padding_mask=prompt_padding
        )
        image = image + attended  # (B, H*W, C)
        height, width = backbone_features[-1].shape[-2:]
        coarsest = image.transpose(1, 2).unflatten(-1, (height, width))  # (B, H*W, C) -> (B, C, H, W)
        pixels = self.pixel_decoder([*backbone_features[:-1], coarsest])  # (B, C, H0, W0)
        mask_logits = self.mask_predictor(queries, self.instance_seg_head(pixels))
        return SegmentationOutput(mask_logits, self.semantic_seg_head(pixels))
