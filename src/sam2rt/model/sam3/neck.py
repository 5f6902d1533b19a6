"""SAM 3's vision backbone: the ViT trunk and its simple feature pyramid (ViTDet's), once or twice.

The pyramid is made from the trunk's single stride-14 map alone: transposed convs up by 4 and 2, the map
itself, and a max-pool down by 2, each followed by a 1x1 and a 3x3 conv to the model width. The optional
second pyramid (`sam2_convs`, same layout, its own weights) feeds the SAM 2-style tracker and the
interactive predictor; the detector uses the first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Optional

from torch import Tensor, nn

from ..positional import sine_grid
from .vit import PerceptionViT


class VisionFeatures(NamedTuple):
    """The pyramid's levels, highest resolution first, and their sine position encodings (equal for both
    pyramids). With the official sizes: 288, 144, 72 and 36 tokens a side, 256 channels."""

    levels: list[Tensor]  # (B, d_model, H_i, W_i) per scale factor
    pos: list[Tensor]  # (B, d_model, H_i, W_i) per level: expanded views of one (1, ...) grid
    sam2_levels: Optional[list[Tensor]]  # the second pyramid's levels, as `levels`; None without it
    sam2_pos: Optional[list[Tensor]]  # as `pos`; None without the second pyramid


def pyramid_level(scale: float, dim: int, d_model: int) -> nn.Sequential:
    """The convs that take the trunk's (B, dim, h, w) map to one level (B, d_model, scale*h, scale*w)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if scale == 4.0:
        layers["dconv_2x2_0"] = nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)
        layers["gelu"] = nn.GELU()
        layers["dconv_2x2_1"] = nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2)
        level_dim = dim // 4
    elif scale == 2.0:
        layers["dconv_2x2"] = nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)
        level_dim = dim // 2
    elif scale == 1.0:
        level_dim = dim
    elif scale == 0.5:
        layers["maxpool_2x2"] = nn.MaxPool2d(kernel_size=2, stride=2)
        level_dim = dim
    else:
        raise ValueError(f"scale factor {scale} is not one of 4, 2, 1, 0.5")
    layers["conv_1x1"] = nn.Conv2d(level_dim, d_model, kernel_size=1)
    layers["conv_3x3"] = nn.Conv2d(d_model, d_model, kernel_size=3, padding=1)
    return nn.Sequential(layers)


def _level_side(grid_side: int, scale: float) -> int:
    """The side of a level made from a grid_side map: transposed convs multiply it, the max-pool floors it."""
    return grid_side * int(scale) if scale >= 1 else grid_side // 2


class DualViTDetNeck(nn.Module):
    """Images (B, 3, S, S) -> VisionFeatures: the trunk, then one or two feature pyramids of width d_model.

    The trunk is a submodule (`trunk.*` keys, as in Meta's checkpoint); defaults are the official sizes.
    """

    def __init__(
        self,
        trunk: Optional[PerceptionViT] = None,
        d_model: int = 256,
        scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5),
        add_sam2_neck: bool = False,
    ) -> None:
        super().__init__()
        self.trunk = trunk if trunk is not None else PerceptionViT()
        dim = self.trunk.embed_dim
        self.convs = nn.ModuleList(pyramid_level(scale, dim, d_model) for scale in scale_factors)
        self.sam2_convs = (
            nn.ModuleList(pyramid_level(scale, dim, d_model) for scale in scale_factors) if add_sam2_neck else None
        )
        # The levels' encodings depend on their sizes only: made once, for the trunk's grid.
        for index, scale in enumerate(scale_factors):
            side = _level_side(self.trunk.grid_side, scale)
            self.register_buffer(
                f"pos_level{index}", sine_grid(d_model, side, side, device=None)[None], persistent=False
            )

    def _position_encodings(self, levels: list[Tensor]) -> list[Tensor]:
        """The cached (1, C, H_i, W_i) grids, in the levels' dtype, as (B, C, H_i, W_i) views."""
        encodings = []
        for index, level in enumerate(levels):
            pos = getattr(self, f"pos_level{index}").to(level.dtype)
            encodings.append(pos.expand(level.shape[0], -1, -1, -1))  # (1, C, H, W) -> (B, C, H, W), a view
        return encodings

    def forward(self, images: Tensor) -> VisionFeatures:
        """images (B, 3, S, S), normalised, S the trunk's image size -> VisionFeatures (see its fields' shapes)."""
        features = self.trunk(images)  # (B, dim, h, w)
        levels = [convs(features) for convs in self.convs]
        pos = self._position_encodings(levels)
        if self.sam2_convs is None:
            return VisionFeatures(levels, pos, None, None)
        sam2_levels = [convs(features) for convs in self.sam2_convs]
        return VisionFeatures(levels, pos, sam2_levels, pos)
