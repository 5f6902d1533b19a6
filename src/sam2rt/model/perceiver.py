"""EdgeTAM's 2D spatial perceiver: compresses a frame's spatial memory into a fixed number of tokens.

Two sets of learned latents read the memory map (B, C_mem, h, w) through the same layers. The global
latents attend to every position of the map, its sine positions added to their keys and values; they
carry no position afterwards. The grid latents are one per window of a side x side grid over the map,
each attending to its own window only; they take the sine position of their cell. The memory attention
then reads side*side + global tokens per frame instead of h*w (512 instead of 4096 at 1024 px).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..runtime.kernels import attention
from .hiera import to_windows
from .positional import rotary_tables, sine_grid
from .variants import PerceiverSpec


def _feed_forward(dim: int, expansion: int = 4) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, expansion * dim, bias=False),
        nn.GELU(),
        nn.Linear(expansion * dim, dim, bias=False),
    )


def _single_head(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """One-head attention: q (B, Nq, C), k and v (B, Nk, C) -> (B, Nq, C)."""
    return attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, 1, Nq, C) -> (B, Nq, C)


class LatentCrossAttention(nn.Module):
    """Latents (queries) read the memory tokens; both sides are normalised first."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, latents: Tensor, memory: Tensor, memory_pos: Optional[Tensor]) -> Tensor:
        """latents (B, Nq, C), memory (B, Nk, C), memory_pos (1 or B, Nk, C) or None -> (B, Nq, C)."""
        q = self.to_q(self.norm_latents(latents))
        k, v = self.to_kv(self.norm_x(memory)).chunk(2, dim=-1)
        if memory_pos is not None:  # EdgeTAM adds the positions after the projection, to keys and values alike
            memory_pos = memory_pos.to(k.dtype)  # an fp32 table; bf16 weights keep bf16 activations
            k, v = k + memory_pos, v + memory_pos
        return self.to_out(_single_head(q, k, v))


class LatentSelfAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, latents: Tensor) -> Tensor:
        normed = self.norm(latents)
        k, v = self.to_kv(normed).chunk(2, dim=-1)
        return self.to_out(_single_head(self.to_q(normed), k, v))


class PerceiverLayer(nn.Module):
    """Cross-attention to the memory and a feed-forward, then self-attention among the latents and another."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn = LatentCrossAttention(dim)
        self.ff = _feed_forward(dim)
        self.self_attn = LatentSelfAttention(dim)
        self.self_ff = _feed_forward(dim)

    def forward(self, latents: Tensor, memory: Tensor, memory_pos: Optional[Tensor]) -> Tensor:
        latents = latents + self.attn(latents, memory, memory_pos)
        latents = latents + self.ff(latents)
        latents = latents + self.self_attn(latents)
        return latents + self.self_ff(latents)


class SpatialPerceiver(nn.Module):
    def __init__(self, spec: PerceiverSpec, dim: int) -> None:
        super().__init__()
        self.grid_side = spec.grid_side
        self.latents = nn.Parameter(torch.randn(spec.global_latents, dim))
        self.latents_2d = nn.Parameter(torch.randn(spec.grid_latents, dim))
        self.layers = nn.ModuleList(PerceiverLayer(dim) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim)
        grid_pos = sine_grid(dim, spec.grid_side, spec.grid_side, device=None).flatten(1).t()  # (side*side, C)
        token_pos = torch.cat([torch.zeros(spec.global_latents, dim), grid_pos])  # (N, C)
        self.register_buffer("token_pos", token_pos[None], persistent=False)  # (1, N, C)

    def forward(self, memory: Tensor, memory_pos: Tensor) -> Tensor:
        """memory (B, C, h, w) with its sine positions (1, C, h, w) -> compressed tokens (B, N, C).

        Their positions are `token_pos` (1, N, C), the same for every frame. h and w must be multiples of the grid's side.
        """
        batch, channels, height, _ = memory.shape
        tokens = memory.flatten(2).transpose(1, 2)  # (B, h*w, C)
        pos = memory_pos.flatten(2).transpose(1, 2)  # (1, h*w, C)
        global_latents = self.latents.expand(batch, -1, -1)  # (B, N_global, C)
        for layer in self.layers:
            global_latents = layer(global_latents, tokens, pos)

        window = height // self.grid_side
        windows = to_windows(memory.permute(0, 2, 3, 1), window).flatten(1, 2)  # (B*side*side, window**2, C)
        grid_latents = self.latents_2d.repeat(batch, 1)[:, None]  # (B*side*side, 1, C): one latent per window
        for layer in self.layers:
            grid_latents = layer(grid_latents, windows, None)
        grid_latents = grid_latents.reshape(batch, -1, channels)  # (B, side*side, C), the cells in raster order
        return self.norm(torch.cat([global_latents, grid_latents], dim=1))  # (B, N, C)


def perceiver_rotary_tables(spec: PerceiverSpec, head_dim: int) -> tuple[Tensor, Tensor]:
    """Rotary tables for the keys of one compressed memory frame, (N, head_dim // 2) each: the global latents
    have no place in the frame (angle 0: not rotated), the grid latents rotate by their cell."""
    cos, sin = rotary_tables(head_dim, spec.grid_side)
    unrotated = (spec.global_latents, head_dim // 2)
    return torch.cat([torch.ones(unrotated), cos]), torch.cat([torch.zeros(unrotated), sin])
