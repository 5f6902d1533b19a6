"""The official SAM 2, SAM 2.1, EdgeTAM and SAM 3 tracker variants as a table of frozen dataclasses.

A SAM 2 variant differs from another only by its Hiera trunk and by the release it belongs to;
everything else (widths of the heads, memory sizes) is the same in every released checkpoint
and lives in the model code as a constant. EdgeTAM is SAM 2 with a RepViT trunk (from timm), two
memory-attention layers instead of four, and a spatial perceiver that compresses each frame's memory
to a fixed number of tokens. SAM 3's tracker is SAM 2.1's heads on SAM 3's ViT (14 px patches: a 72 x 72
feature map at 1008 px) and its second (SAM 2) feature pyramid. Sizes that depend on the input resolution
are derived from `image_size` by `ModelConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from .sam3.config import VisionSpec


@dataclass(frozen=True)
class HieraSpec:
    """The Hiera image trunk: four stages, each halving the resolution and doubling the width."""

    embed_dim: int  # width of stage 1; stage i has embed_dim * 2**i
    num_heads: int  # heads of stage 1; doubled at each stage like the width
    stages: tuple[int, int, int, int]  # blocks per stage
    global_attention_blocks: tuple[int, ...]  # blocks that attend globally instead of in windows
    window_sizes: tuple[int, int, int, int] = (8, 4, 14, 7)  # attention window per stage
    pos_embed_grid: int = 14  # side of the learned background position embedding

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.stages)))


@dataclass(frozen=True)
class RepVitSpec:
    """A RepViT trunk built by timm (its own module, without pretrained weights); its widths are timm's."""

    timm_name: str  # e.g. "repvit_m1.dist_in1k"


@dataclass(frozen=True)
class PerceiverSpec:
    """EdgeTAM's 2D spatial perceiver: each memory frame becomes `global_latents` tokens that attend to the
    whole frame, then `grid_latents` tokens, one per window of a square grid over the frame."""

    global_latents: int = 256
    grid_latents: int = 256  # a square number: the grid's side is its root
    depth: int = 2

    @property
    def grid_side(self) -> int:
        return math.isqrt(self.grid_latents)

    @property
    def tokens(self) -> int:
        """Tokens of one compressed memory frame."""
        return self.global_latents + self.grid_latents


@dataclass(frozen=True)
class Variant:
    name: str  # e.g. "sam2.1_hiera_tiny"
    release: str  # "sam2", "sam2.1", "edgetam" or "sam3"
    trunk: Union[HieraSpec, RepVitSpec, VisionSpec]  # VisionSpec: SAM 3's ViT (its image_size is ModelConfig's)
    memory_attention_layers: int = 4
    perceiver: Optional[PerceiverSpec] = None  # None: memories keep the h*w tokens of the feature map

    @property
    def is_sam21(self) -> bool:
        """SAM 2.1 adds an occlusion embedding to spatial memories and a temporal encoding of object pointers
        (SAM 3's tracker has both)."""
        return self.release in ("sam2.1", "sam3")

    @property
    def is_sam3(self) -> bool:
        """SAM 3's tracker: its image encoder is SAM 3's vision backbone (ViT and two feature pyramids)."""
        return isinstance(self.trunk, VisionSpec)

    @property
    def backbone_stride(self) -> int:
        """Pixels per token of the feature map the decoder and memory use: 16, or SAM 3's ViT patch (14)."""
        return self.trunk.patch_size if isinstance(self.trunk, VisionSpec) else 16

    @property
    def checkpoint_filename(self) -> str:
        return f"{self.name}.pt"


_TINY = HieraSpec(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_attention_blocks=(5, 7, 9), pos_embed_grid=7)
_SMALL = HieraSpec(
    embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_attention_blocks=(7, 10, 13), pos_embed_grid=7
)
_BASE_PLUS = HieraSpec(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_attention_blocks=(12, 16, 20))
_LARGE = HieraSpec(
    embed_dim=144,
    num_heads=2,
    stages=(2, 6, 36, 4),
    global_attention_blocks=(23, 33, 43),
    window_sizes=(8, 4, 16, 8),
    pos_embed_grid=7,
)

VARIANTS: dict[str, Variant] = {
    f"{release}_hiera_{size}": Variant(f"{release}_hiera_{size}", release, trunk)
    for release in ("sam2", "sam2.1")
    for size, trunk in (("tiny", _TINY), ("small", _SMALL), ("base_plus", _BASE_PLUS), ("large", _LARGE))
}
# EdgeTAM's model flags are SAM 2.0's (no occlusion embedding, no temporal encoding of object pointers).
VARIANTS["edgetam"] = Variant(
    "edgetam", "edgetam", RepVitSpec("repvit_m1.dist_in1k"), memory_attention_layers=2, perceiver=PerceiverSpec()
)
# SAM 3's tracker (the `tracker.*` keys of sam3.pt) on SAM 3's vision backbone, trained at 1008 px:
# `ModelConfig(SAM3_TRACKER, 1008)`. Not in VARIANTS yet: its checkpoint is sam3.pt, whose keys need the map of
# checkpoints/sam3_tracker_keys.py, and the downloads and commands that list VARIANTS know SAM 2's files only.
SAM3_TRACKER = Variant("sam3", "sam3", VisionSpec())


def get_variant(name: str) -> Variant:
    """Look a variant up by its official name (`sam2.1_hiera_tiny`, `sam2_hiera_large`, `edgetam`, ...)."""
    try:
        return VARIANTS[name]
    except KeyError:
        known = ", ".join(VARIANTS)
        raise ValueError(f"unknown variant {name!r}; the variants are: {known}") from None


@dataclass(frozen=True)
class ModelConfig:
    """A variant at a given input resolution, with the sizes derived from it."""

    variant: Variant
    image_size: int = 1024

    # Constants shared by every released checkpoint.
    hidden_dim = 256  # width of the prompt encoder, mask decoder and memory attention
    memory_dim = 64  # width of the spatial memories and of the object-pointer tokens
    num_maskmem = 7  # one conditioning slot + 6 recent frames
    max_obj_ptrs = 16  # object pointers the memory attention may see

    def __post_init__(self) -> None:
        multiple = 2 * self.backbone_stride  # 32 for SAM 2's trunks, 28 for SAM 3's ViT
        if self.image_size <= 0 or self.image_size % multiple != 0:
            raise ValueError(f"image_size must be a positive multiple of {multiple}, got {self.image_size}")
        perceiver = self.variant.perceiver
        if perceiver is not None and self.feature_size % perceiver.grid_side != 0:
            side = perceiver.grid_side * self.backbone_stride
            raise ValueError(
                f"{self.variant.name} needs an image_size that is a multiple of {side}, got {self.image_size}"
            )

    @property
    def backbone_stride(self) -> int:
        """Pixels per token of the lowest-resolution feature map the decoder and memory use (16; SAM 3: 14)."""
        return self.variant.backbone_stride

    @property
    def feature_size(self) -> int:
        """Side of the feature map the decoder and memory use (64 at 1024; SAM 3: 72 at 1008)."""
        return self.image_size // self.backbone_stride

    @property
    def memory_mask_size(self) -> int:
        """Side a mask is resized to before the memory encoder's four stride-2 convs: 16 x the feature map (the
        image size for SAM 2; 1152 for SAM 3 at 1008)."""
        return 16 * self.feature_size

    @property
    def memory_tokens(self) -> int:
        """Tokens of one frame's spatial memory: the h*w feature map, or the perceiver's compressed tokens."""
        perceiver = self.variant.perceiver
        return self.feature_size**2 if perceiver is None else perceiver.tokens

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's mask logits (256 at 1024; SAM 3: 288 at 1008)."""
        return 4 * self.feature_size
