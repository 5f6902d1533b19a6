"""SAM 3's vision backbone as the image encoder of its tracker (SAM 2's heads on SAM 3's features).

The module is the whole backbone, the detector's pyramid included, so that its parameter names are those
of `detector.backbone.vision_backbone.*` in sam3.pt and one backbone can serve the detector and the tracker.
The tracker reads the second (SAM 2) pyramid only, and only its three finest levels (Meta's `scalp=1`
drops the coarsest): 288, 144 and 72 tokens a side at 1008 px, in the layout of SAM 2's FPN neck.
"""

from __future__ import annotations

from torch import Tensor

from ..neck import BackboneFeatures
from .config import VisionSpec
from .neck import DualViTDetNeck
from .vit import PerceptionViT

TRACKER_LEVELS = 3  # the SAM 2 pyramid's levels the tracker uses: strides 14/4, 14/2 and 14


class Sam3TrackerImageEncoder(DualViTDetNeck):
    """SAM 3's ViT with both feature pyramids; `tracker_features` is what SAM 2's heads take."""

    def __init__(self, spec: VisionSpec, image_size: int, d_model: int = 256) -> None:
        trunk = PerceptionViT.of_spec(spec, image_size)
        super().__init__(trunk, d_model, scale_factors=(4.0, 2.0, 1.0, 0.5), add_sam2_neck=True)

    @property
    def pos_grid(self) -> Tensor:
        """Sine encoding of the tracker's coarsest level (the feature map the memory works on): (1, C, h, w)."""
        return self.pos_level2

    def tracker_features(self, images: Tensor) -> BackboneFeatures:
        """Normalised images (B, 3, S, S) -> the SAM 2 pyramid's levels [(B, C, 4h, 4w), (B, C, 2h, 2w),
        (B, C, h, w)] (h = S / 14) and the (1, C, h, w) position encoding of the last."""
        features = self.trunk(images)  # (B, dim, h, w)
        levels = [convs(features) for convs in self.sam2_convs[:TRACKER_LEVELS]]
        return BackboneFeatures(levels, self.pos_grid)
