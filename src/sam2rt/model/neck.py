"""FPN neck over the trunk's stages (Hiera, or EdgeTAM's RepViT), and the image encoder that joins the two.

The neck projects every stage to the model width. Only the stride-16 level receives top-down
features (from the stride-32 level, upsampled by nearest neighbour); the stride-32 level itself
is dropped from the output, and the stride-4 and stride-8 levels are plain projections.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Union

import torch.nn.functional as F
from torch import Tensor, nn

from .hiera import Hiera
from .positional import sine_grid
from .repvit import RepVit
from .variants import HieraSpec, RepVitSpec


class BackboneFeatures(NamedTuple):
    """Image features at strides 4, 8 and 16 (highest resolution first), and the stride-16 position encoding."""

    levels: list[Tensor]  # [(B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w)]
    pos: Tensor  # (1, C, h, w)


class FpnNeck(nn.Module):
    def __init__(self, trunk_dims: tuple[int, ...], d_model: int, feature_size: int) -> None:
        super().__init__()
        # Ordered from the lowest resolution (widest) stage to the highest, as in the checkpoints.
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(dim, d_model, kernel_size=1))) for dim in reversed(trunk_dims)
        )
        pos = sine_grid(d_model, feature_size, feature_size, device=None)
        self.register_buffer("pos_grid", pos[None], persistent=False)  # (1, C, h, w)

    def forward(self, stages: list[Tensor]) -> BackboneFeatures:
        stride4, stride8, stride16, stride32 = stages
        top = self.convs[0](stride32)
        upsampled = F.interpolate(top, scale_factor=2.0, mode="nearest")
        level16 = self.convs[1](stride16) + upsampled
        level8 = self.convs[2](stride8)
        level4 = self.convs[3](stride4)
        return BackboneFeatures([level4, level8, level16], self.pos_grid)


class ImageEncoder(nn.Module):
    def __init__(self, spec: Union[HieraSpec, RepVitSpec], d_model: int, feature_size: int) -> None:
        super().__init__()
        if isinstance(spec, RepVitSpec):
            self.trunk: nn.Module = RepVit(spec)
            stage_dims = self.trunk.stage_dims
        else:
            self.trunk, stage_dims = Hiera(spec), spec.stage_dims
        self.neck = FpnNeck(stage_dims, d_model, feature_size)

    def forward(self, images: Tensor) -> BackboneFeatures:
        return self.neck(self.trunk(images))
