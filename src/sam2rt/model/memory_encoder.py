"""Memory encoder: fuses a frame's features with its predicted mask into a compact spatial memory.

The mask (at the input resolution) is downsampled by 16 with strided convolutions, added to the
projected image features, mixed by two ConvNeXt blocks and projected to the memory width. Where 16 times
the feature map is not the input size (SAM 3: 14 px patches, 1008 px -> 72 x 72), the mask is first resized
to 16 times the feature map (1152), so that the convolutions land on the feature map's grid.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime.kernels import depthwise_conv, layer_norm_2d
from .layers import LayerNorm2d
from .positional import sine_grid


class MaskDownSampler(nn.Module):
    """Four 3x3 stride-2 convolutions (each with LayerNorm and GELU), channels x4 each, then a 1x1 projection."""

    def __init__(self, embed_dim: int = 256, num_layers: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(num_layers):
            layers += [
                nn.Conv2d(channels, channels * 4, kernel_size=3, stride=2, padding=1),
                LayerNorm2d(channels * 4),
                nn.GELU(),
            ]
            channels *= 4
        layers.append(nn.Conv2d(channels, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, mask: Tensor) -> Tensor:
        *stages, projection = self.encoder
        x = mask
        # (conv, norm, GELU) triples: the norm and its exact GELU in one call (one kernel on CUDA). The nn.GELU
        # modules stay in the Sequential, which keeps the parameters' indices (encoder.0, .1, .3, ... .12).
        for index in range(0, len(stages), 3):
            conv, norm = stages[index], stages[index + 1]
            x = layer_norm_2d(conv(x), norm, gelu=True)
        return projection(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 conv, LayerNorm, pointwise MLP, layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = depthwise_conv(x, self.dwconv)
        y = self.norm(y).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


class Fuser(nn.Module):
    def __init__(self, dim: int, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        # Channels last, which the blocks keep (their permutes to (B, H, W, C) are then views): cuDNN's depthwise 7x7
        # conv over 16 objects' 256x64x64 maps takes 0.17 ms against 0.58 channels first, and the two blocks 1.71 ms
        # against 3.24, the conversion included (bf16, H100); on 2 CPU threads the blocks run 3-6% faster.
        x = x.contiguous(memory_format=torch.channels_last)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, feature_size: int, mask_size: Optional[int] = None) -> None:
        """`mask_size`: the side masks are resized to before the downsampler (16 x feature_size); None: as given."""
        super().__init__()
        self.mask_size = mask_size
        self.mask_downsampler = MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        pos = sine_grid(out_dim, feature_size, feature_size, device=None)
        self.register_buffer("pos_grid", pos[None], persistent=False)  # (1, C_mem, h, w)

    def forward(self, image_features: Tensor, mask: Tensor) -> Tensor:
        """image_features (1 or B, C, h, w) and a mask already scaled for memory (B, 1, S, S) -> (B, C_mem, h, w).

        S is 16h, or any size when the encoder has a `mask_size` (the mask is resized to it, antialiased).
        """
        size = self.mask_size
        if size is not None and tuple(mask.shape[-2:]) != (size, size):
            mask = F.interpolate(mask.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = self.pix_feat_proj(image_features) + self.mask_downsampler(mask.to(image_features.dtype))
        return self.out_proj(self.fuser(x))
