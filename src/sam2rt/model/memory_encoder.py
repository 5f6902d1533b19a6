"""Memory encoder: fuses a frame's features with its predicted mask into a compact spatial memory.

The mask (at the input resolution) is downsampled by 16 with strided convolutions, added to the
projected image features, mixed by two ConvNeXt blocks and projected to the memory width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        return self.encoder(mask)


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
        # Compiled, the depthwise conv as shifted products, which inductor fuses into one kernel: 17 us against
        # cuDNN's 40 for 64x64x256 in bf16 on an H200 (63 against 148 for 4 objects). Eager, cuDNN's kernel.
        # (torch.export traces the same branch: the exported graph holds the shifted products too.)
        y = depthwise_as_shifts(x, self.dwconv) if torch.compiler.is_compiling() else self.dwconv(x)
        y = self.norm(y).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def depthwise_as_shifts(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """`conv(x)` for a depthwise conv (one filter per channel, odd square kernel, stride 1, "same" padding) of
    x (B, C, H, W): the sum of the shifted inputs times each tap's weights, accumulated in fp32."""
    size, (height, width) = conv.kernel_size[0], x.shape[-2:]
    assert conv.groups == conv.in_channels == conv.out_channels and conv.bias is not None, "depthwise, with bias"
    assert conv.kernel_size == (size, size) and size % 2 == 1 and conv.padding == (size // 2, size // 2)
    assert conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
    padded = F.pad(x, (size // 2,) * 4)
    weight = conv.weight.float()  # (C, 1, k, k)
    out = conv.bias.float()[None, :, None, None]
    for row in range(size):
        for col in range(size):
            tap = weight[None, :, 0, row, col, None, None]  # (1, C, 1, 1)
            out = out + padded[:, :, row : row + height, col : col + width].float() * tap
    return out.to(x.dtype)


class Fuser(nn.Module):
    def __init__(self, dim: int, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, feature_size: int) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        pos = sine_grid(out_dim, feature_size, feature_size, device=None)
        self.register_buffer("pos_grid", pos[None], persistent=False)  # (1, C_mem, h, w)

    def forward(self, image_features: Tensor, mask: Tensor) -> Tensor:
        """image_features (B, C, h, w) and a mask already scaled for memory (B, 1, 16h, 16w) -> (B, C_mem, h, w)."""
        x = self.pix_feat_proj(image_features) + self.mask_downsampler(mask.to(image_features.dtype))
        return self.out_proj(self.fuser(x))
