"""Positional encodings: 2D sine grids, 1D sine, random Fourier features, and axial rotary tables.

The rotary encoding takes real cos/sin tables. Traced or compiled, it is written with real numbers
only, so the memory attention exports (ONNX included) and inductor fuses it; run eagerly, it
multiplies complex numbers, which is one pass over the keys instead of six kernels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _sine_frequencies(num_feats: int, temperature: float, device: torch.device) -> Tensor:
    """Divisors shared by consecutive (sin, cos) pairs: temperature ** (2 * (i // 2) / num_feats)."""
    index = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


def sine_grid(channels: int, height: int, width: int, device: torch.device, temperature: float = 10000.0) -> Tensor:
    """Normalised 2D sine encoding of a (height, width) grid: (channels, H, W).

    The first half of the channels encodes y and the second half x; within each half,
    channels alternate sin and cos of the same frequency.
    """
    num_feats = channels // 2
    scale = 2 * math.pi
    eps = 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    freqs = _sine_frequencies(num_feats, temperature, device)

    def encode(coord: Tensor) -> Tensor:
        angles = coord[:, None] / freqs  # (L, num_feats)
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)  # (L, num_feats)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)  # (H, W, F)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)  # (H, W, F)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)  # (C, H, W)


def sine_coordinates(coords: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine encoding of normalised coordinates: (...,) -> (..., num_feats), sin and cos of coord * 2 pi / f
    interleaved, for num_feats / 2 frequencies f (the per-axis encoding of `sine_grid`). Computed in fp32."""
    freqs = _sine_frequencies(num_feats, temperature, coords.device)
    angles = (coords.float() * (2 * math.pi))[..., None] / freqs  # (..., num_feats), equal in consecutive pairs
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """1D sine encoding, all sines then all cosines: (...,) -> (..., dim)."""
    freqs = _sine_frequencies(dim // 2, temperature, positions.device)
    angles = positions.unsqueeze(-1) / freqs
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of coordinates in [0, 1], used for prompts and the decoder's dense grid."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def encode(self, coords: Tensor) -> Tensor:
        """(..., 2) in [0, 1], x before y -> (..., 2 * num_pos_feats)"""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, height: int, width: int) -> Tensor:
        """Encoding of the centres of a (height, width) grid: (C, H, W)."""
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        coords = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)  # (H, W, 2), x before y
        return self.encode(coords).permute(2, 0, 1)  # (C, H, W)

    def points(self, coords: Tensor, image_size: int) -> Tensor:
        """Pixel coordinates (B, N, 2) of a square image of side `image_size` -> (B, N, C)."""
        return self.encode(coords.float() / image_size)


def rotary_tables(
    head_dim: int, side: int, theta: float = 10000.0, position_scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Axial rotary angles for a side x side grid in raster order: cos and sin, each (side*side, head_dim // 2).

    The first quarter of the channel pairs rotates with the x position, the second with y. Positions are
    multiplied by `position_scale` (SAM 3's ViT squeezes its global grid onto the window it was trained on).
    """
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    index = torch.arange(side * side, dtype=torch.float32)
    x = (index % side) * position_scale
    y = torch.div(index, side, rounding_mode="floor") * position_scale
    angles = torch.cat([torch.outer(x, freqs), torch.outer(y, freqs)], dim=-1)  # (N, head_dim // 2)
    return angles.cos(), angles.sin()
