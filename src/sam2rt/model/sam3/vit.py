"""SAM 3's image trunk: a plain ViT (the Perception Encoder's, laid out as in ViTDet) over 14 px patches.

The patches get the pretraining position embedding tiled over the grid, then a LayerNorm. Every block
attends with an axial rotary encoding of its tokens' positions; most blocks attend inside non-overlapping
windows, a few over the whole grid. The global blocks squeeze their grid's positions onto a window's
(`use_interp_rope` in Meta's code), the grid of the windows the trunk was trained on.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ...runtime.kernels import apply_rotary, attention
from ..hiera import from_windows, to_windows
from ..layers import merge_heads
from ..positional import rotary_tables
from .config import VisionSpec

# (cos, sin) of a rotary encoding, each (N, head_dim // 2)
Rope = tuple[Tensor, Tensor]


def tiled_position_embedding(pos_embed: Tensor, height: int, width: int) -> Tensor:
    """The pretraining embedding repeated over a larger grid and cropped: (1, 1 + P*P, C) -> (1, H, W, C).

    Its first entry, the class token's, is dropped: the trunk has no class token.
    """
    patches = pos_embed[:, 1:]
    side = math.isqrt(patches.shape[1])
    grid = patches.reshape(1, side, side, -1)  # (1, P*P, C) -> (1, P, P, C)
    if (side, side) == (height, width):
        return grid
    rows, cols = -(-height // side), -(-width // side)
    return grid.tile(1, rows, cols, 1)[:, :height, :width]


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected to the width: (B, 3, S, S) -> (B, S/p, S/p, C)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size, bias=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).permute(0, 2, 3, 1)  # (B, C, h, w) -> (B, h, w, C)


class RotaryAttention(nn.Module):
    """Self-attention over a (B, H, W, C) grid whose queries and keys carry an axial rotary encoding."""

    def __init__(self, dim: int, num_heads: int, rotary_side: int, rotary_scale: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # Meta's checkpoint holds each block's rotary table as complex numbers; kept so that it loads as it is.
        # The forward pass reads the trunk's real tables of the same angles (no complex numbers in a graph).
        cos, sin = rotary_tables(dim // num_heads, rotary_side, position_scale=rotary_scale)
        self.register_buffer("freqs_cis", torch.complex(cos, sin))  # (side*side, head_dim // 2)

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        """x (B, H, W, C), rope (cos, sin) each (H*W, head_dim // 2) -> (B, H, W, C)."""
        batch, height, width, channels = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)  # (B, N, 3, heads, d)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
        q, k = apply_rotary(qkv[:2], *rope).unbind(0)  # queries and keys rotated together: (B, heads, N, d) each
        out = attention(q, k, qkv[2])  # (B, heads, N, d)
        out = merge_heads(out).reshape(batch, height, width, channels)  # (B, heads, N, d) -> (B, H, W, C)
        return self.proj(out)


class Mlp(nn.Module):
    """Two linear layers with an exact GELU between them."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block over a (B, H, W, C) grid; `window` > 0 attends inside windows of that side
    (the grid zero-padded at the bottom and right to whole windows), 0 over the whole grid."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window: int, rotary_side: int, rotary_scale: float
    ) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = RotaryAttention(dim, num_heads, rotary_side, rotary_scale)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        """x (B, H, W, C), rope of this block's attention (a window's or the grid's) -> (B, H, W, C)."""
        normed = self.norm1(x)
        if self.window > 0:
            height, width = x.shape[1:3]
            padded = (-(-height // self.window) * self.window, -(-width // self.window) * self.window)
            windows = to_windows(normed, self.window)  # (B * num_windows, window, window, C)
            out = from_windows(self.attn(windows, rope), self.window, padded, (height, width))  # (B, H, W, C)
        else:
            out = self.attn(normed, rope)
        x = x + out
        return x + self.mlp(self.norm2(x))


class PerceptionViT(nn.Module):
    """SAM 3's image trunk: (B, 3, S, S) normalised images -> (B, C, S/p, S/p) features of the last global block.

    Defaults are the official sizes (1008 px, 14 px patches, 72 x 72 tokens of width 1024, 32 blocks); the image
    side must be the one it is built for (the global blocks' rotary tables are made for its grid).
    """

    def __init__(
        self,
        image_size: int = 1008,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 32,
        num_heads: int = 16,
        mlp_ratio: float = 4.625,
        window_size: int = 24,
        global_blocks: tuple[int, ...] = (7, 15, 23, 31),
        pretrain_image_size: int = 336,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0 or (embed_dim // num_heads) % 4 != 0:
            raise ValueError(f"the head width {embed_dim}/{num_heads} must be a multiple of 4 (axial rotary pairs)")
        if not global_blocks or max(global_blocks) >= depth:
            raise ValueError(f"global blocks {global_blocks} must be non-empty and below the depth {depth}")
        self.grid_side = image_size // patch_size
        self.embed_dim = embed_dim
        self.last_block = max(global_blocks)  # the output; later blocks would not change it
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        pretrain_grid = pretrain_image_size // patch_size
        # The pretraining grid's embedding, behind a class token's (unused here, kept for the checkpoint).
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pretrain_grid * pretrain_grid, embed_dim))
        self.ln_pre = nn.LayerNorm(embed_dim, eps=1e-5)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

        # Global blocks squeeze their grid's positions onto a window's: rotary angles scaled by window / grid.
        global_scale = window_size / self.grid_side
        self.blocks = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, mlp_ratio, 0, self.grid_side, global_scale)
            if i in global_blocks
            else ViTBlock(embed_dim, num_heads, mlp_ratio, window_size, window_size, 1.0)
            for i in range(depth)
        )
        # One real copy of each table for all blocks, of the same angles as the blocks' `freqs_cis`.
        head_dim = embed_dim // num_heads
        window_cos, window_sin = rotary_tables(head_dim, window_size)
        global_cos, global_sin = rotary_tables(head_dim, self.grid_side, position_scale=global_scale)
        self.register_buffer("window_rope_cos", window_cos, persistent=False)  # (window*window, head_dim // 2)
        self.register_buffer("window_rope_sin", window_sin, persistent=False)
        self.register_buffer("global_rope_cos", global_cos, persistent=False)  # (grid*grid, head_dim // 2)
        self.register_buffer("global_rope_sin", global_sin, persistent=False)

    @classmethod
    def of_spec(cls, spec: VisionSpec, image_size: Optional[int] = None) -> PerceptionViT:
        """The trunk of a `VisionSpec`, for images of `image_size` (the spec's own by default)."""
        return cls(
            image_size=spec.image_size if image_size is None else image_size,
            patch_size=spec.patch_size,
            embed_dim=spec.width,
            depth=spec.depth,
            num_heads=spec.heads,
            mlp_ratio=spec.mlp_ratio,
            window_size=spec.window_size,
            global_blocks=spec.global_blocks,
            pretrain_image_size=spec.pretrain_image_size,
        )

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S), normalised -> features (B, C, S/p, S/p) (a channels-last view)."""
        x = self.patch_embed(images)  # (B, h, w, C)
        height, width = x.shape[1:3]
        if (height, width) != (self.grid_side, self.grid_side):
            raise ValueError(
                f"a {height}x{width} patch grid; this trunk is built for {self.grid_side}x{self.grid_side}"
            )
        x = self.ln_pre(x + tiled_position_embedding(self.pos_embed, height, width))
        window_rope = (self.window_rope_cos, self.window_rope_sin)
        global_rope = (self.global_rope_cos, self.global_rope_sin)
        for block in self.blocks[: self.last_block + 1]:
            x = block(x, window_rope if block.window > 0 else global_rope)
        return x.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
