"""The composed SAM 2 model: image encoding, mask decoding, memory conditioning and memory encoding.

EdgeTAM is this model with another trunk, two memory-attention layers, and a spatial perceiver that
compresses each memory frame; SAM 3's tracker is this model on SAM 3's vision backbone, whose 14 px patches
make a 72 x 72 feature map at 1008 px (`variants.py` says which parts a variant has).

Tensor in, tensor out; no session state. The trackers in `sam2rt.tracking` decide which memories
a frame sees and call these methods batched over objects.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import MLP
from .mask_decoder import DecoderOutput, MaskDecoder
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .neck import BackboneFeatures, ImageEncoder
from .perceiver import SpatialPerceiver, perceiver_rotary_tables
from .positional import sine_1d
from .prompt_encoder import PromptEncoder
from .sam3.tracker_backbone import Sam3TrackerImageEncoder
from .variants import ModelConfig, get_variant

NO_OBJECT_SCORE = -1024.0  # mask logit given to every pixel of an object judged absent
MASK_LOGIT_SCALE, MASK_LOGIT_BIAS = 20.0, -10.0  # binary mask -> logits of +-10, and probability -> memory input


class ImageFeatures(NamedTuple):
    embed: Tensor  # (B, C, h, w) stride-16 features (SAM 3: stride 14)
    high_res: tuple[Tensor, Tensor]  # decoder skips: (B, C/8, 4h, 4w) and (B, C/4, 2h, 2w)
    pos: Tensor  # (1, C, h, w) sine position encoding of the h x w grid


class MaskPrediction(NamedTuple):
    """The decoder's answer for one prompt (or one tracked object) per row."""

    masks: Tensor  # (B, M, 4h, 4w) candidate mask logits, NO_OBJECT_SCORE where the object is absent
    iou_scores: Tensor  # (B, M)
    best_mask: Tensor  # (B, 1, 4h, 4w) the candidate with the highest predicted IoU
    obj_ptr: Tensor  # (B, C) object pointer for the memory
    object_score_logits: Tensor  # (B, 1)


class MemoryTokens(NamedTuple):
    """An object's memory, batched over objects in fixed-size slots with validity masks."""

    spatial: Tensor  # (B, F, N, C_mem) spatial memories of F frames, N = ModelConfig.memory_tokens each
    spatial_tpos: Tensor  # (B, F) long: index into the temporal encodings (num_maskmem - 1 for prompted frames)
    spatial_valid: Optional[Tensor]  # (B, F) bool; None: every slot holds a memory
    pointers: Tensor  # (B, P, C) object pointers
    pointer_positions: Tensor  # (B, P) float: signed frame distance over the largest possible distance
    pointer_valid: Optional[Tensor]  # (B, P) bool; None: every slot holds a pointer


class SAM2Model(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        variant, dim, mem_dim = config.variant, config.hidden_dim, config.memory_dim
        size = config.feature_size
        self.image_encoder: nn.Module = (
            Sam3TrackerImageEncoder(variant.trunk, config.image_size, dim)
            if variant.is_sam3
            else ImageEncoder(variant.trunk, dim, size)
        )
        perceiver = variant.perceiver
        memory_rope = None if perceiver is None else perceiver_rotary_tables(perceiver, dim)
        self.memory_attention = MemoryAttention(dim, mem_dim, size, variant.memory_attention_layers, memory_rope)
        self.memory_encoder = MemoryEncoder(dim, mem_dim, size, mask_size=config.memory_mask_size)
        self.spatial_perceiver = None if perceiver is None else SpatialPerceiver(perceiver, mem_dim)
        self.sam_prompt_encoder = PromptEncoder(dim, size, config.image_size)
        self.sam_mask_decoder = MaskDecoder(dim)

        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, dim))  # in the checkpoints; unused at inference
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, dim))
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.obj_ptr_proj = MLP(dim, dim, dim, 3)
        if variant.is_sam21:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
            self.obj_ptr_tpos_proj = nn.Linear(dim, mem_dim)
        for name, param in self.named_parameters(recurse=False):
            nn.init.trunc_normal_(param, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.no_mem_embed.dtype

    # Images

    def encode_image(self, images: Tensor) -> ImageFeatures:
        """Normalised images (B, 3, S, S) at the model's image_size -> features."""
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}")
        if self.config.variant.is_sam3:
            backbone = self.image_encoder.tracker_features(images.to(self.dtype))
        else:
            backbone = self.image_encoder(images.to(self.dtype))
        return self.features_from_backbone(backbone)

    def features_from_backbone(self, backbone: BackboneFeatures) -> ImageFeatures:
        """The image encoder's pyramid (levels (B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w)) -> features: the two
        finer levels projected for the decoder's skips. SAM 3's concept tracker gives the pyramid its detector's
        backbone pass made (one trunk pass for both)."""
        stride4, stride8, stride16 = backbone.levels
        high_res = self.sam_mask_decoder.project_high_res(stride4, stride8)
        # A channels-last trunk (RepViT at inference) leaves channels-last levels: projected in that layout (7x
        # faster on a CPU), then made contiguous once narrow, the layout the steps after run fastest on.
        high_res = tuple(level.contiguous() for level in high_res)
        return ImageFeatures(stride16.contiguous(), high_res, backbone.pos)

    @property
    def image_pos(self) -> Tensor:
        """Sine encoding of the feature map the memory works on: (1, C, h, w)."""
        if self.config.variant.is_sam3:
            return self.image_encoder.pos_grid
        return self.image_encoder.neck.pos_grid

    def without_memory(self, embed: Tensor) -> Tensor:
        """Features of a frame segmented without memory (an image, or a first prompt): (B, C, h, w)."""
        return embed + self.no_mem_embed.reshape(1, -1, 1, 1)

    # Masks

    def decode(
        self,
        embed: Tensor,
        high_res: tuple[Tensor, Tensor],
        coords: Optional[Tensor],
        labels: Optional[Tensor],
        mask_logits: Optional[Tensor],
        multimask: bool,
    ) -> DecoderOutput:
        """Prompt encoder and mask decoder: one row per prompt set, over a shared (1, C, h, w) or per-row image.

        coords (B, N, 2) pixels of the model input and labels (B, N), or None for no points;
        mask_logits (B, 1, 4h, 4w) or None.
        """
        sparse, dense = self.sam_prompt_encoder(coords, labels, mask_logits)
        return self.sam_mask_decoder(
            embed, self.sam_prompt_encoder.dense_pe(), sparse, dense, high_res, multimask=multimask
        )

    def segment(
        self,
        embed: Tensor,
        high_res: tuple[Tensor, Tensor],
        coords: Optional[Tensor],
        labels: Optional[Tensor],
        mask_logits: Optional[Tensor],
        multimask: bool,
    ) -> MaskPrediction:
        """Decode masks for tracking: absent objects get NO_OBJECT_SCORE, the best candidate is picked,
        and an object pointer is made from its output token.

        embed (B, C, h, w): memory-conditioned features, one row per object. Without points, one
        padding point is used. mask_logits (B, 1, H, W) of any size are resized to 4h x 4w.
        """
        batch = embed.shape[0]
        if coords is None:
            coords = embed.new_zeros(batch, 1, 2)
            labels = torch.full((batch, 1), -1, dtype=torch.int32, device=embed.device)
        if mask_logits is not None:
            side = self.sam_prompt_encoder.mask_input_size
            if tuple(mask_logits.shape[-2:]) != (side, side):
                mask_logits = F.interpolate(
                    mask_logits.float(), size=(side, side), mode="bilinear", align_corners=False, antialias=True
                )
        return self.tracking_prediction(self.decode(embed, high_res, coords, labels, mask_logits, multimask), multimask)

    def tracking_prediction(self, out: DecoderOutput, multimask: bool) -> MaskPrediction:
        """The decoder's output as tracking takes it: absent objects' masks at NO_OBJECT_SCORE, the best
        candidate picked, its object pointer made (the ONNX export runs the prompt encoder itself, then this)."""
        batch = out.masks.shape[0]
        present = out.object_score_logits > 0  # (B, 1)
        masks = torch.where(present[:, :, None, None], out.masks, NO_OBJECT_SCORE).float()

        rows = torch.arange(batch, device=out.masks.device)
        best = out.iou_scores.argmax(dim=-1) if multimask else torch.zeros_like(rows)
        token = out.tokens[rows, best] if out.tokens.shape[1] > 1 else out.tokens[:, 0]
        obj_ptr = self._pointer(self.obj_ptr_proj(token), present)
        return MaskPrediction(masks, out.iou_scores, masks[rows, best][:, None], obj_ptr, out.object_score_logits)

    def mask_as_output(self, embed: Tensor, high_res: tuple[Tensor, Tensor], mask: Tensor) -> MaskPrediction:
        """Take a given binary mask (B, 1, S, S) as the prediction; the decoder only makes its object pointer.

        embed (B, C, h, w) are the frame's features without memory.
        """
        mask = mask.float()
        logits = mask * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        side = self.sam_prompt_encoder.mask_input_size
        low_res = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        pointer_source = self.segment(
            embed, high_res, None, None, self.mask_downsample(mask.to(self.dtype)), multimask=False
        )
        present = mask.flatten(1).gt(0).any(dim=1, keepdim=True)  # (B, 1)
        obj_ptr = self._pointer(pointer_source.obj_ptr, present)
        scores = present.float() * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        ious = mask.new_ones(mask.shape[0], 1)
        return MaskPrediction(low_res, ious, low_res, obj_ptr, scores)

    def _pointer(self, obj_ptr: Tensor, present: Tensor) -> Tensor:
        """Replace the pointer of an absent object by the learned no-object pointer."""
        present = present.to(obj_ptr.dtype)
        return present * obj_ptr + (1 - present) * self.no_obj_ptr

    # Memory

    def encode_memory(
        self, embed: Tensor, mask_logits: Tensor, object_score_logits: Tensor, binarize: Tensor
    ) -> Tensor:
        """A frame's spatial memory for each object, as tokens (B, N, C_mem): the memory map in raster order
        (N = h*w), or its compression by the spatial perceiver (EdgeTAM). Their positions: `memory_pos`.

        embed (1 or B, C, h, w): the frame's features without memory. mask_logits (B, 1, 4h, 4w)
        low-resolution mask logits, or (B, 1, S, S) logits at the model's input size (training
        supervises those), or at `config.memory_mask_size`. binarize (B,) bool: threshold the mask instead of
        taking its sigmoid (for masks the user shaped with prompts).
        """
        size = self.config.image_size
        high_res = mask_logits.float()
        # masks at the memory encoder's own size (SAM 3: 1152) go to it as they are, as Meta's video model gives them
        if tuple(high_res.shape[-2:]) not in ((size, size), (self.config.memory_mask_size,) * 2):
            high_res = F.interpolate(high_res, size=(size, size), mode="bilinear", align_corners=False)
        probs = torch.where(binarize[:, None, None, None], (high_res > 0).float(), torch.sigmoid(high_res))
        mask_input = probs * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        features = self.memory_encoder(embed, mask_input)  # one frame's features projected once for all objects
        if self.config.variant.is_sam21:
            absent = (object_score_logits <= 0).to(features.dtype)  # (B, 1)
            features = features + absent[:, :, None, None] * self.no_obj_embed_spatial[:, :, None, None]
        if self.spatial_perceiver is not None:
            return self.spatial_perceiver(features, self.memory_encoder.pos_grid)  # (B, N, C_mem)
        return features.flatten(2).transpose(1, 2)  # (B, C_mem, h, w) -> (B, h*w, C_mem)

    def memory_pos(self) -> Tensor:
        """Positions of one memory frame's tokens, the same for every frame: (1, N, C_mem)."""
        if self.spatial_perceiver is not None:
            return self.spatial_perceiver.token_pos
        return self.memory_encoder.pos_grid.flatten(2).transpose(1, 2)  # (1, C_mem, h, w) -> (1, h*w, C_mem)

    def condition_on_memory(self, embed: Tensor, memory: MemoryTokens) -> Tensor:
        """Features of the current frame (1 or B, C, h, w) conditioned on each object's memory: (B, C, h, w)."""
        batch, frames, tokens_per_frame, mem_dim = memory.spatial.shape
        _, channels, height, width = embed.shape
        dtype = embed.dtype
        image = embed.flatten(2).transpose(1, 2)  # (1 or B, h*w, C): one frame's features, shared by all objects
        image_pos = self.image_pos.flatten(2).transpose(1, 2).to(dtype)  # (1, h*w, C)

        spatial = memory.spatial.reshape(batch, frames * tokens_per_frame, mem_dim)  # (B, F*N, C_mem)
        frame_pos = self.memory_pos()  # (1, N, C_mem)
        tpos = self.maskmem_tpos_enc.reshape(-1, mem_dim)[memory.spatial_tpos]  # (B, F, C_mem)
        spatial_pos = (frame_pos[:, None] + tpos[:, :, None]).reshape(batch, -1, mem_dim).to(dtype)  # (B, F*N, C_mem)

        # A pointer of width C is split into C / C_mem consecutive tokens sharing one position.
        split = channels // mem_dim
        pointers = memory.pointers.reshape(batch, -1, mem_dim).to(dtype)  # (B, P*split, C_mem)
        if self.config.variant.is_sam21:
            encoded = sine_1d(memory.pointer_positions, channels).to(dtype)
            pointer_pos = self.obj_ptr_tpos_proj(encoded)  # (B, P, C_mem)
        else:
            pointer_pos = pointers.new_zeros(batch, memory.pointers.shape[1], mem_dim)
        pointer_pos = pointer_pos.repeat_interleave(split, dim=1)  # (B, P*split, C_mem)

        key_mask = None  # without padding slots, attention runs unmasked (the fastest kernels)
        if memory.spatial_valid is not None or memory.pointer_valid is not None:
            spatial_valid, pointer_valid = memory.spatial_valid, memory.pointer_valid
            if spatial_valid is None:
                spatial_valid = torch.ones(batch, frames, dtype=torch.bool, device=embed.device)
            if pointer_valid is None:
                pointer_valid = torch.ones(batch, memory.pointers.shape[1], dtype=torch.bool, device=embed.device)
            key_mask = torch.cat(
                [
                    spatial_valid.repeat_interleave(tokens_per_frame, dim=1),
                    pointer_valid.repeat_interleave(split, dim=1),
                ],
                dim=1,
            )  # (B, L)
        out = self.memory_attention(
            image,
            image_pos,
            torch.cat([spatial.to(dtype), pointers], dim=1),
            torch.cat([spatial_pos, pointer_pos], dim=1),
            spatial_frames=frames,
            key_mask=key_mask,
        )
        return out.transpose(1, 2).reshape(batch, channels, height, width)  # (B, h*w, C) -> (B, C, h, w)


def build_model(variant: str, image_size: int = 1024) -> SAM2Model:
    """A randomly initialised model of an official variant, in eval mode."""
    return SAM2Model(ModelConfig(get_variant(variant), image_size)).eval()
