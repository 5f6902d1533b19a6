"""Memory attention: conditions the current frame's features on an object's memories.

Each layer runs self-attention over the frame's tokens and cross-attention from them to the
memory: spatial memories of past frames (rotary-encoded by their position in the frame) followed
by object-pointer tokens (no rotary encoding). Rotary encodings use real cos/sin tables.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Attention, attention, blockwise_on, capturing_graphs, split_heads
from .positional import apply_rotary, rotary_tables


class RotaryAttention(Attention):
    """Attention whose queries and first `rotary_frames` frames of keys carry an axial rotary encoding."""

    def forward(  # type: ignore[override]
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rope: tuple[Tensor, Tensor],
        rotary_frames: int,
        key_mask: Optional[Tensor] = None,
    ) -> Tensor:
        # Softmax rows sum to 1, so P (X Wv^T + b) = (P X) Wv^T + b: attending over the memory's own 64
        # channels and projecting the 4096 outputs after costs a quarter of the value side's arithmetic of
        # attending over 28k projected 256-wide values, and no value projection.
        values_after = self._projects_values_after(q)
        q, k = split_heads(self.q_proj(q), self.num_heads), split_heads(self.k_proj(k), self.num_heads)
        # (B, heads, N, d); values unprojected: (B, 1, Nk, C_mem)
        v = v[:, None] if values_after else split_heads(self.v_proj(v), self.num_heads)
        cos, sin = rope
        q = apply_rotary(q, cos, sin)
        tokens_per_frame = q.shape[2]
        num_rotary = rotary_frames * tokens_per_frame
        if num_rotary > 0:
            batch, heads, _, head_dim = k.shape
            frames = k[:, :, :num_rotary].reshape(batch, heads, rotary_frames, tokens_per_frame, head_dim)
            rotated = apply_rotary(frames, cos, sin).flatten(2, 3)  # (B, heads, frames * N, d)
            k = torch.cat([rotated, k[:, :, num_rotary:]], dim=2)
        out = attention(q, k, v, key_mask)
        if values_after:
            out = self.v_proj(out)  # (B, 1, Nq, C_mem) -> (B, 1, Nq, d)
        return self.finish(out)

    def _projects_values_after(self, q: Tensor) -> bool:
        """Whether to attend over the unprojected values: one head, values narrower than it, and a fast kernel
        for values of another width than the keys. On the CPU at inference, `blockwise_attention`; on CUDA,
        cuDNN's, in captured code only: flash takes no such values, and memory-efficient attention over 64
        channels is slower than flash over 256."""
        narrower = self.v_proj.in_features < self.v_proj.out_features
        fast_kernel = capturing_graphs() if q.is_cuda else blockwise_on(q)
        return self.num_heads == 1 and narrower and fast_kernel


class MemoryAttentionLayer(nn.Module):
    def __init__(self, d_model: int, memory_dim: int, dim_feedforward: int = 2048) -> None:
        super().__init__()
        self.self_attn = RotaryAttention(d_model, num_heads=1)
        self.cross_attn_image = RotaryAttention(d_model, num_heads=1, kv_in_dim=memory_dim)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_keys: Tensor,
        rope: tuple[Tensor, Tensor],
        rotary_frames: int,
        key_mask: Optional[Tensor],
    ) -> Tensor:
        normed = self.norm1(x)
        x = x + self.self_attn(normed, normed, normed, rope, rotary_frames=1)
        x = x + self.cross_attn_image(self.norm2(x), memory_keys, memory, rope, rotary_frames, key_mask)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class MemoryAttention(nn.Module):
    def __init__(self, d_model: int, memory_dim: int, feature_size: int, num_layers: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(d_model, memory_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        cos, sin = rotary_tables(d_model, feature_size)  # one head spanning the model width
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self,
        image: Tensor,
        image_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        spatial_frames: int,
        key_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Condition image tokens on memory tokens.

        image (B, h*w, C) and image_pos (1 or B, h*w, C): the frame's features in raster order.
        memory and memory_pos (B, L, C_mem): `spatial_frames` frames of h*w spatial memory tokens,
        then object-pointer tokens. key_mask (B, L) is True for the memory tokens each row may use.
        Returns (B, h*w, C).
        """
        x = image + 0.1 * image_pos
        memory_keys = memory + memory_pos
        rope = (self.rope_cos, self.rope_sin)
        for layer in self.layers:
            x = layer(x, memory, memory_keys, rope, spatial_frames, key_mask)
        return self.norm(x)
