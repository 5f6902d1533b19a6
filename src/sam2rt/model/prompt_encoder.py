"""Prompt encoder: points and box corners to sparse tokens, a mask to a dense embedding.

Point labels: 1 positive click, 0 negative click, 2 and 3 the top-left and bottom-right box
corners, -1 padding. Coordinates are pixels of the model's square input (x before y).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .layers import LayerNorm2d
from .positional import PositionEmbeddingRandom

NUM_POINT_LABELS = 4  # negative, positive, box top-left, box bottom-right


class PromptEncoder(nn.Module):
    def __init__(self, embed_dim: int, feature_size: int, image_size: int, mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.feature_size = feature_size
        self.image_size = image_size
        self.mask_input_size = 4 * feature_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(NUM_POINT_LABELS))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> Tensor:
        """Positional encoding of the feature grid: (1, C, h, w)."""
        return self.pe_layer.grid(self.feature_size, self.feature_size)[None]

    def embed_points(self, coords: Tensor, labels: Tensor) -> Tensor:
        """(B, N, 2) pixel coordinates and (B, N) labels -> (B, N + 1, C), with one padding point appended."""
        batch = coords.shape[0]
        coords = torch.cat([coords + 0.5, coords.new_zeros(batch, 1, 2)], dim=1)  # pixel centres, plus padding
        labels = torch.cat([labels, labels.new_full((batch, 1), -1)], dim=1)
        embedding = self.pe_layer.points(coords, self.image_size)
        label_embeddings = torch.cat([e.weight for e in self.point_embeddings])  # (4, C)
        labelled = embedding + label_embeddings[labels.clamp(min=0).long()]
        is_padding = (labels == -1).unsqueeze(-1)
        embedded = torch.where(is_padding, self.not_a_point_embed.weight.expand_as(embedding), labelled)
        return embedded.to(self.not_a_point_embed.weight.dtype)  # the Fourier features are computed in fp32

    def forward(
        self, coords: Optional[Tensor], labels: Optional[Tensor], mask: Optional[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Sparse tokens (B, N + 1, C), or (B, 0, C) without points, and the dense embedding (B, C, h, w).

        `mask` holds mask logits (B, 1, 4h, 4w) or is None; without it the dense embedding is the same
        for every row and comes as one (1, C, h, w), so that the decoder can share its work on the image.
        """
        if coords is not None:
            sparse = self.embed_points(coords, labels)
        else:
            rows = mask.shape[0] if mask is not None else 1
            sparse = self.no_mask_embed.weight.new_zeros(rows, 0, self.embed_dim)
        if mask is not None:
            dense = self.mask_downscaling(mask.to(self.no_mask_embed.weight.dtype))
        else:
            size = self.feature_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, size, size)
        return sparse, dense
