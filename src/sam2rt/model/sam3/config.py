"""SAM 3's sizes as frozen dataclasses: the official model (`SAM3`), and smaller ones for tests.

The official checkpoint has one architecture; every width, depth and count of it is here once, and each part's
module takes its numbers from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VisionSpec:
    """The Perception Encoder ViT: patches of `patch_size` over a square image, windowed attention but in
    `global_blocks`, rotary positions, and the absolute position embedding of its pretraining size tiled."""

    image_size: int = 1008
    patch_size: int = 14
    width: int = 1024
    depth: int = 32
    heads: int = 16
    mlp_ratio: float = 4.625
    window_size: int = 24
    global_blocks: tuple[int, ...] = (7, 15, 23, 31)
    pretrain_image_size: int = 336

    @property
    def grid(self) -> int:
        """Side of the token grid (72 at 1008 px)."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TextSpec:
    """The CLIP-style causal text transformer; its tokens are projected to the detector's width."""

    width: int = 1024
    heads: int = 16
    layers: int = 24
    context_length: int = 32
    vocab_size: int = 49408


@dataclass(frozen=True)
class Sam3Spec:
    """The detector: the backbone above, then the prompt's geometry encoder, the fusion encoder, the DETR decoder
    with its presence token, the dot-product scorer and the segmentation head, all `d_model` wide."""

    vision: VisionSpec = field(default_factory=VisionSpec)
    text: TextSpec = field(default_factory=TextSpec)
    d_model: int = 256
    heads: int = 8
    feedforward: int = 2048
    geometry_layers: int = 3
    encoder_layers: int = 6
    decoder_layers: int = 6
    queries: int = 200
    roi_size: int = 7
    upsampling_stages: int = 3
    neck_scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)

    @property
    def image_size(self) -> int:
        return self.vision.image_size


SAM3 = Sam3Spec()  # the official checkpoint's sizes (facebook/sam3, sam3.pt)
