"""Hiera: the hierarchical ViT image trunk (https://arxiv.org/abs/2306.00989) as used by SAM 2.

Four stages; the first block of stages 2-4 max-pools its queries by 2 (halving the resolution)
and doubles the width. Most blocks attend inside windows; a few attend globally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime.kernels import add_layer_norm, attention
from .layers import MLP, merge_heads, split_heads
from .variants import HieraSpec


def _pad_to_multiple(x: Tensor, window: int) -> Tensor:
    """Zero-pad (B, H, W, C) at the bottom and right so that H and W are multiples of `window`."""
    height, width = x.shape[1:3]
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def to_windows(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * num_windows, window, window, C), after padding H and W to the window."""
    x = _pad_to_multiple(x, window)
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)


def from_windows(windows: Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Inverse of `to_windows`: (B * num_windows, window, window, C) -> (B, H, W, C), padding removed."""
    padded_h, padded_w = padded_hw
    rows, cols = padded_h // window, padded_w // window
    batch = windows.shape[0] // (rows * cols)
    x = windows.reshape(batch, rows, cols, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return x[:, : hw[0], : hw[1], :]


def _max_pool_hw(x: Tensor, stride: int) -> Tensor:
    """Max-pool the spatial dims of (B, H, W, C) by `stride`."""
    x = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride)  # (B, C, H', W')
    return x.permute(0, 2, 3, 1)  # (B, H', W', C)


class MultiScaleAttention(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, query_stride: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query_stride = query_stride  # 1: no pooling
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, height * width, 3, -1).unbind(2)  # each (B, H*W, C_out)
        if self.query_stride > 1:
            q = _max_pool_hw(q.reshape(batch, height, width, -1), self.query_stride)  # (B, H', W', C_out)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, -1)  # (B, H'*W', C_out)
        out = attention(*(split_heads(t, self.num_heads) for t in (q, k, v)))  # (B, heads, H'*W', d)
        out = merge_heads(out).reshape(batch, height, width, -1)  # (B, H', W', C_out)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, window: int, query_stride: int) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window = window  # 0: global attention
        self.query_stride = query_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, query_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, 4 * dim_out, dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        x_norm = self.norm1(x)
        shortcut = x
        if self.dim != self.dim_out:
            shortcut = self.proj(x_norm)
            if self.query_stride > 1:
                shortcut = _max_pool_hw(shortcut, self.query_stride)

        if self.window > 0:
            padded = _pad_to_multiple(x_norm, self.window)
            out = self.attn(to_windows(x_norm, self.window))
            # Query pooling shrinks each window (and the padded map) by the stride.
            out_window = self.window // self.query_stride
            padded_hw = (padded.shape[1] // self.query_stride, padded.shape[2] // self.query_stride)
            out = from_windows(out, out_window, padded_hw, tuple(shortcut.shape[1:3]))
        else:
            out = self.attn(x_norm)

        # The residual sum and norm2 in one pass on CUDA. `out` is a view cropped from the padded map where the windows
        # did not tile it (tiny, small, base+ at 1024 px: stage 3's 64x64 in windows of 14, stage 4's 32x32 in 7s);
        # the kernel reads its lines where they lie, as PyTorch's add does: no copy either way.
        x, normed = add_layer_norm(shortcut, out, self.norm2)
        return x + self.mlp(normed)


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)


class Hiera(nn.Module):
    def __init__(self, spec: HieraSpec) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(spec.embed_dim)
        grid = spec.pos_embed_grid
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.embed_dim, grid, grid))
        first_window = spec.window_sizes[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, spec.embed_dim, first_window, first_window))

        self.stage_ends = [sum(spec.stages[: i + 1]) - 1 for i in range(len(spec.stages))]
        self.blocks = nn.ModuleList()
        stage, dim, heads = 0, spec.embed_dim, spec.num_heads
        for index in range(sum(spec.stages)):
            # The first block of a stage still uses the previous stage's window, at the input resolution.
            window = 0 if index in spec.global_attention_blocks else spec.window_sizes[stage]
            starts_stage = index - 1 in self.stage_ends
            dim_out, query_stride = dim, 1
            if starts_stage:
                stage += 1
                dim_out, heads, query_stride = dim * 2, heads * 2, 2
            self.blocks.append(MultiScaleBlock(dim, dim_out, heads, window, query_stride))
            dim = dim_out

    def _position_embedding(self, height: int, width: int) -> Tensor:
        """Interpolated background embedding plus the tiled per-window embedding: (1, H, W, C)."""
        pos = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        window = self.pos_embed_window.shape[-1]
        pos = pos + self.pos_embed_window.tile(1, 1, height // window, width // window)
        return pos.permute(0, 2, 3, 1)  # (1, C, H, W) -> (1, H, W, C)

    def layers(self) -> tuple[nn.Module, list[nn.Module]]:
        """The patch embedding, then the blocks in order: the layers of layer-wise learning-rate decay and of
        activation checkpointing."""
        return self.patch_embed, list(self.blocks)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, S, S) -> the output of each stage, highest resolution first: (B, C_i, S/4/2**i, S/4/2**i)."""
        x = self.patch_embed(images)
        # Dense (B, H, W, C): the conv's map permuted is a channels-first layout that every later sum would keep,
        # each layer norm then copying its input first.
        x = (x + self._position_embedding(x.shape[1], x.shape[2])).contiguous()
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W)
        return outputs
