"""SAM 3's detector: a text phrase and/or exemplar boxes -> every matching instance's score, box and mask.

The image is encoded once (`encode_image`), each phrase once (`encode_text`); `detect` then runs the prompt's
parts for any number of prompts on one image: the geometry encoder turns exemplar boxes into tokens, the fusion
encoder lets the image's tokens read the prompt, the DETR decoder's queries find instances (a box each, refined
layer by layer) and its presence token says whether the concept is in the image at all, the dot-product scorer
scores each query against the prompt, and the segmentation head gives each query a mask.

Submodules carry the names of Meta's `Sam3Image` (`backbone.*`, `transformer.*`, `geometry_encoder.*`,
`segmentation_head.*`, `dot_prod_scoring.*`), the `detector.*` keys of the official `sam3.pt`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .config import SAM3, Sam3Spec
from .decoder import TransformerDecoder
from .encoder import FusionEncoder
from .geometry import GeometricPrompt, GeometryEncoder
from .neck import DualViTDetNeck
from .scoring import DotProductScoring
from .segmentation import SegmentationHead
from .text import TextEncoder, TextFeatures
from .vit import PerceptionViT


class ImageFeatures(NamedTuple):
    """One image's (or a batch's) pyramid as the detector reads it: levels finest first (288, 144 and 72 tokens a
    side at 1008 px), each (B, C, Hi, Wi), and their position encodings, the same shapes."""

    levels: list[Tensor]
    pos: list[Tensor]


class Detections(NamedTuple):
    """Every query's answer for each prompt: the caller keeps those whose `scores` pass a threshold."""

    logits: Tensor  # (B, Q) the scorer's logits
    presence_logits: Tensor  # (B, 1) whether the concept is in the image at all
    boxes: Tensor  # (B, Q, 4) centre x, centre y, width, height in [0, 1] of the image
    mask_logits: Tensor  # (B, Q, H0, W0) at the finest level (288 x 288 at 1008 px)

    @property
    def scores(self) -> Tensor:
        """(B, Q) probability that each query is an instance of the prompt: its own score times the presence."""
        return self.logits.sigmoid() * self.presence_logits.sigmoid()


class Backbone(nn.Module):
    """The image and text encoders, side by side (Meta's `backbone.vision_backbone`, `backbone.language_backbone`)."""

    def __init__(self, spec: Sam3Spec, add_sam2_neck: bool = False) -> None:
        super().__init__()
        trunk = PerceptionViT.of_spec(spec.vision)
        self.vision_backbone = DualViTDetNeck(trunk, spec.d_model, spec.neck_scales, add_sam2_neck)
        text = spec.text
        self.language_backbone = TextEncoder(
            spec.d_model, text.width, text.heads, text.layers, text.context_length, text.vocab_size
        )


class Transformer(nn.Module):
    """The fusion encoder and the DETR decoder (Meta's `transformer.encoder`, `transformer.decoder`)."""

    def __init__(self, spec: Sam3Spec) -> None:
        super().__init__()
        self.encoder = FusionEncoder(spec.d_model, spec.heads, spec.feedforward, spec.encoder_layers)
        self.decoder = TransformerDecoder(spec.d_model, spec.heads, spec.decoder_layers, spec.queries, spec.feedforward)


class Sam3Detector(nn.Module):
    """SAM 3's image model for concept prompts (text, exemplar boxes, or both)."""

    def __init__(self, spec: Sam3Spec = SAM3, tracker_neck: bool = False) -> None:
        """`tracker_neck`: the backbone also makes the second pyramid, the one SAM 3's tracker reads."""
        super().__init__()
        self.spec = spec
        self.backbone = Backbone(spec, add_sam2_neck=tracker_neck)
        self.transformer = Transformer(spec)
        self.geometry_encoder = GeometryEncoder(
            spec.d_model, spec.heads, spec.feedforward, spec.geometry_layers, spec.roi_size
        )
        self.segmentation_head = SegmentationHead(spec.d_model, spec.heads, spec.upsampling_stages)
        self.dot_prod_scoring = DotProductScoring(spec.d_model, spec.d_model, spec.feedforward)

    def encode_image(self, images: Tensor) -> ImageFeatures:
        """images (B, 3, S, S) normalised to [-1, 1] -> the pyramid's levels but its coarsest (which the detector
        never reads: Meta's `scalp=1`)."""
        features = self.backbone.vision_backbone(images)
        return ImageFeatures(features.levels[:-1], features.pos[:-1])

    def encode_text(self, token_ids: Tensor) -> TextFeatures:
        """token_ids (N, L) from `processing.text.TextTokenizer` -> TextFeatures (memory (N, L, C), padding)."""
        return self.backbone.language_backbone(token_ids)

    def detect(
        self,
        image: ImageFeatures,
        text: TextFeatures,
        geometry: Optional[GeometricPrompt] = None,
    ) -> Detections:
        """Instances of B prompts on one image: `image` of batch 1 (shared) or B, `text` of batch B (a phrase per
        prompt; for boxes alone, the phrase "visual" as Meta's processor gives), `geometry` the exemplar boxes of
        each prompt (none: a text prompt)."""
        text_memory, text_padding = text.memory, text.padding_mask  # (B, L, C), (B, L)
        batch = text_memory.shape[0]
        features, pos = image.levels[-1], image.pos[-1]  # (1 or B, C, H, W) each: the 72 x 72 level
        features, pos = features.expand(batch, -1, -1, -1), pos.expand(batch, -1, -1, -1)
        if geometry is None:
            geometry = GeometricPrompt.empty(batch, device=text_memory.device)
        exemplars = self.geometry_encoder(geometry, features, pos)
        # The prompt is the phrase's tokens, then the exemplars' (each part keeps its own padding).
        prompt = torch.cat((text_memory, exemplars.tokens.to(text_memory.dtype)), dim=1)  # (B, L + G, C)
        prompt_padding = torch.cat((text_padding, exemplars.padding), dim=1)  # (B, L + G)

        tokens = self.transformer.encoder(features, pos, prompt, prompt_padding)  # (B, H*W, C)
        tokens_pos = pos.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        decoded = self.transformer.decoder(tokens, tokens_pos, features.shape[-2:], prompt, prompt_padding)
        logits = self.dot_prod_scoring(decoded.queries, prompt, prompt_padding)  # (B, Q)
        masks = self.segmentation_head(image.levels, tokens, decoded.queries, prompt, prompt_padding)
        return Detections(logits, decoded.presence_logits, decoded.boxes, masks.mask_logits)
