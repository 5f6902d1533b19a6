"""Memory attention: conditions the current frame's features on an object's memories.

Each layer runs self-attention over the frame's tokens and cross-attention from them to the
memory: spatial memories of past frames (rotary-encoded by their position in the frame) followed
by object-pointer tokens (no rotary encoding). Rotary encodings use real cos/sin tables.

SAM 2's memory frames are feature maps of the frame's own size, their keys rotated as the queries are;
EdgeTAM's are the perceiver's compressed tokens, which bring their own key tables (`memory_rope`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..runtime.kernels import add_layer_norm, apply_rotary, attention, linear_relu
from .layers import Attention, split_heads
from .positional import rotary_tables


class RotaryAttention(Attention):
    """Attention whose queries and first `rotary_frames` frames of keys carry an axial rotary encoding.

    `rope` holds the queries' tables, `key_rope` those of one frame of keys (its length is the frame's
    token count); None: key frames are laid out like the queries, with the same tables.
    """

    def forward(  # type: ignore[override]
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rope: tuple[Tensor, Tensor],
        rotary_frames: int,
        key_mask: Optional[Tensor] = None,
        key_rope: Optional[tuple[Tensor, Tensor]] = None,
    ) -> Tensor:
        q, k = split_heads(self.q_proj(q), self.num_heads), split_heads(self.k_proj(k), self.num_heads)  # (B, h, N, d)
        q = apply_rotary(q, *rope)
        if q.shape[0] < k.shape[0]:  # one frame's queries for every object's keys: projected and rotated once
            q = q.expand(k.shape[0], -1, -1, -1).contiguous()  # (1, h, N, d) -> (B, h, N, d)
        key_cos, key_sin = key_rope or rope
        tokens_per_frame = key_cos.shape[0]
        num_rotary = rotary_frames * tokens_per_frame
        if num_rotary > 0:
            frames = k[:, :, :num_rotary].unflatten(2, (rotary_frames, tokens_per_frame))  # (B, heads, frames, N, d)
            if torch.is_grad_enabled():
                k = torch.cat([apply_rotary(frames, key_cos, key_sin).flatten(2, 3), k[:, :, num_rotary:]], dim=2)
            else:  # rotated where they lie: no copy of the whole key sequence (1.9 GB a layer at 128 objects)
                apply_rotary(frames, key_cos, key_sin, out=frames)
        return self.finish(attention(q, k, v, key_mask, values_projection=self.v_proj))


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
        normed: Tensor,
        memory: Tensor,
        memory_keys: Tensor,
        rope: tuple[Tensor, Tensor],
        memory_rope: Optional[tuple[Tensor, Tensor]],
        rotary_frames: int,
        key_mask: Optional[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """The layer on the residual stream x (1 or B, N, C) and its `norm1(x)`, `normed`, which the caller computed
        with the sum that made x. Returns the stream before the layer's last residual sum and the MLP's output to add
        to it (both (B, N, C)): the caller adds them with the norm after them, the next layer's norm1 or the final
        norm, in one pass."""
        # Each residual sum and the norm after it in one pass over the (B, N, C) tokens on CUDA.
        x, normed = add_layer_norm(x, self.self_attn(normed, normed, normed, rope, rotary_frames=1), self.norm2)
        attended = self.cross_attn_image(normed, memory_keys, memory, rope, rotary_frames, key_mask, memory_rope)
        x, normed = add_layer_norm(x, attended, self.norm3)  # x of batch 1 (the first layer) broadcast over objects
        return x, self.linear2(linear_relu(normed, self.linear1))


class MemoryAttention(nn.Module):
    def __init__(
        self,
        d_model: int,
        memory_dim: int,
        feature_size: int,
        num_layers: int = 4,
        memory_rope: Optional[tuple[Tensor, Tensor]] = None,
    ) -> None:
        """`memory_rope`: cos and sin tables (N, d_model // 2) for the keys of one spatial memory frame of N
        tokens; None: memory frames are feature maps laid out like the frame (h*w tokens, the same tables)."""
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(d_model, memory_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        cos, sin = rotary_tables(d_model, feature_size)  # one head spanning the model width
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.shares_rope = memory_rope is None
        if memory_rope is not None:
            self.register_buffer("memory_rope_cos", memory_rope[0], persistent=False)
            self.register_buffer("memory_rope_sin", memory_rope[1], persistent=False)

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

        image and image_pos (1 or B, h*w, C): the frame's features in raster order. One frame for all objects
        (batch 1): what does not depend on the memory yet (the first layer's self-attention, its queries of the
        memory) is computed once.
        memory and memory_pos (B, L, C_mem): `spatial_frames` frames of spatial memory tokens (h*w each, or
        the length of `memory_rope`), then object-pointer tokens. key_mask (B, L) is True for the memory tokens each row may use.
        Returns (B, h*w, C).
        """
        # Dense tokens: the frame's features arrive as a transposed view of its (C, h, w) map, whose layout every
        # later sum would inherit, each layer norm then copying its input first (16 objects, H100, eager bf16:
        # 1.2 ms of copies a step, and the residual sums on the strided kernels, 1.4 ms).
        x = (image + 0.1 * image_pos).contiguous()  # (1 or B, h*w, C)
        memory_keys = memory + memory_pos
        rope = (self.rope_cos, self.rope_sin)
        memory_rope = None if self.shares_rope else (self.memory_rope_cos, self.memory_rope_sin)
        # Each layer's last sum and the norm that reads it, the next layer's norm1 or the final norm, in one call.
        norms = [layer.norm1 for layer in self.layers] + [self.norm]
        normed = norms[0](x)
        for layer, next_norm in zip(self.layers, norms[1:]):
            x, update = layer(x, normed, memory, memory_keys, rope, memory_rope, spatial_frames, key_mask)
            x, normed = add_layer_norm(x, update, next_norm)
        return normed
