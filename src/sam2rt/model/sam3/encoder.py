"""SAM 3's fusion encoder: the image tokens attend to themselves and to the prompt (text, then exemplar tokens),
six pre-norm layers; the prompt comes out as it went in. Its layer also encodes the exemplar prompt
(`geometry.py`), the roles reversed: prompt tokens attending to the image.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import PackedAttention


class EncoderLayer(nn.Module):
    """Pre-norm layer: self-attention, cross-attention to other tokens, then a ReLU MLP, each added back.

    Positional encodings enter where SAM 3's configurations put them: the fusion encoder adds the image's to the
    queries and keys of its self-attention (`pos_in_self_attention`), the geometry encoder adds the image's to
    the keys of its cross-attention (`pos_in_cross_keys`).
    """

    def __init__(
        self,
        d_model: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        pos_in_self_attention: bool = True,
        pos_in_cross_keys: bool = False,
    ) -> None:
        super().__init__()
        self.pos_in_self_attention = pos_in_self_attention
        self.pos_in_cross_keys = pos_in_cross_keys
        self.self_attn = PackedAttention(d_model, num_heads)
        self.cross_attn_image = PackedAttention(d_model, num_heads)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tokens: Tensor,
        memory: Tensor,
        pos: Optional[Tensor] = None,
        memory_pos: Optional[Tensor] = None,
        padding: Optional[Tensor] = None,
        memory_padding: Optional[Tensor] = None,
    ) -> Tensor:
        """tokens (B, N, C) attend to themselves and to memory (B, M, C) -> (B, N, C).

        pos (B, N, C) and memory_pos (B, M, C) are their positional encodings (needed where the layer's flags use
        them); padding (B, N) and memory_padding (B, M) are True at padding, each row keeping one valid token.
        """
        normed = self.norm1(tokens)
        queries = normed + pos if self.pos_in_self_attention else normed
        tokens = tokens + self.self_attn(queries, queries, normed, key_padding_mask=padding)
        normed = self.norm2(tokens)
        keys = memory + memory_pos if self.pos_in_cross_keys else memory
        tokens = tokens + self.cross_attn_image(normed, keys, memory, key_padding_mask=memory_padding)
        return tokens + self.linear2(F.relu(self.linear1(self.norm3(tokens))))


class FusionEncoder(nn.Module):
    """The image's tokens fused with the prompt's: `num_layers` EncoderLayers, the image's positional encoding at
    their self-attention, the prompt (with its padding) as their cross-attention's keys and values."""

    def __init__(
        self, d_model: int = 256, num_heads: int = 8, dim_feedforward: int = 2048, num_layers: int = 6
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, num_heads, dim_feedforward, pos_in_self_attention=True, pos_in_cross_keys=False)
            for _ in range(num_layers)
        )

    def forward(self, image: Tensor, image_pos: Tensor, prompt: Tensor, prompt_padding: Tensor) -> Tensor:
        """image features and their positional encoding (B, C, H, W), prompt tokens (B, L, C) with prompt_padding
        (B, L) True at padding -> the fused image tokens (B, H*W, C), in raster order.

        The decoder's positional encoding of these tokens is image_pos.flatten(2).transpose(1, 2); the prompt
        leaves the encoder unchanged.
        """
        tokens = image.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        pos = image_pos.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        for layer in self.layers:
            tokens = layer(tokens, prompt, pos=pos, memory_padding=prompt_padding)
        return tokens
