"""SAM 3's geometry encoder: exemplar boxes (and points) to prompt tokens.

Each box is the sum of four terms: a linear map of its coordinates, the image features pooled inside it
(RoIAlign, 7x7, then a 7x7 conv), a projected sine encoding of its centre and size, and its label's embedding
(negative or positive). Points likewise, with the features sampled at the point. Points, then boxes, then a CLS
token are joined (padding kept last), projected, and refined by three layers attending to each other and to the
image. Coordinates are normalised to [0, 1] of the image, x before y; boxes are centre x, centre y, width, height.

SAM 3's image model prompts with boxes only (an empty prompt, text alone, still gives the CLS token); points
come from the video model's clicks. Meta's encoder can also take a mask prompt (a mask encoder and a CXBlock
fuser), which the released configuration does not build: there is none here.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..positional import sine_coordinates
from .encoder import EncoderLayer
from .roi_align import roi_align


class GeometricPrompt(NamedTuple):
    """Boxes and points of a batch of prompts, batch first, each kind right-padded to a common count.

    Labels are 1 for a positive exemplar, 0 for a negative one; paddings are True at padding.
    """

    boxes: Tensor  # (B, Nb, 4) normalised centre x, centre y, width, height
    box_labels: Tensor  # (B, Nb) integer or bool
    box_padding: Tensor  # (B, Nb) bool
    points: Tensor  # (B, Np, 2) normalised x, y
    point_labels: Tensor  # (B, Np) integer or bool
    point_padding: Tensor  # (B, Np) bool

    @classmethod
    def of_boxes(
        cls, boxes: Tensor, labels: Optional[Tensor] = None, padding: Optional[Tensor] = None
    ) -> GeometricPrompt:
        """Boxes (B, Nb, 4) alone, positive and unpadded unless said (the image model's prompt; Nb may be 0)."""
        batch, count = boxes.shape[:2]
        if labels is None:
            labels = torch.ones(batch, count, dtype=torch.long, device=boxes.device)
        if padding is None:
            padding = torch.zeros(batch, count, dtype=torch.bool, device=boxes.device)
        no_points = torch.zeros(batch, 0, dtype=torch.bool, device=boxes.device)
        return cls(boxes, labels, padding, boxes.new_zeros(batch, 0, 2), no_points.long(), no_points)

    @classmethod
    def empty(cls, batch: int, device: Optional[torch.device] = None) -> GeometricPrompt:
        """No box and no point: the prompt of a text query."""
        return cls.of_boxes(torch.zeros(batch, 0, 4, device=device))


class PromptTokens(NamedTuple):
    """Prompt tokens (B, L, C) and their padding (B, L), True at padding, valid tokens first in each row."""

    tokens: Tensor
    padding: Tensor


class GeometryEncoder(nn.Module):
    """Exemplar boxes and points, with the image's features, to prompt tokens: Np + Nb + 1 per row (the CLS)."""

    def __init__(
        self,
        d_model: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 3,
        roi_size: int = 7,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.roi_size = roi_size
        self.label_embed = nn.Embedding(2, d_model)
        self.cls_embed = nn.Embedding(1, d_model)
        self.points_direct_project = nn.Linear(2, d_model)
        self.points_pool_project = nn.Linear(d_model, d_model)
        self.points_pos_enc_project = nn.Linear(d_model, d_model)
        self.boxes_direct_project = nn.Linear(4, d_model)
        self.boxes_pool_project = nn.Conv2d(d_model, d_model, roi_size)
        self.boxes_pos_enc_project = nn.Linear(d_model + 2, d_model)  # sine of the centre, then height and width
        self.final_proj = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.img_pre_norm = nn.LayerNorm(d_model)  # of the features that are pooled, not of those attended to
        self.encode = nn.ModuleList(
            EncoderLayer(d_model, num_heads, dim_feedforward, pos_in_self_attention=False, pos_in_cross_keys=True)
            for _ in range(num_layers)
        )
        self.encode_norm = nn.LayerNorm(d_model)

    def forward(self, prompt: GeometricPrompt, image: Tensor, image_pos: Tensor) -> PromptTokens:
        """prompt (batch first, see GeometricPrompt), image features and their positional encoding (B, C, H, W)
        -> PromptTokens: tokens (B, Np + Nb + 1, C) and padding (B, Np + Nb + 1), each row's valid points, its
        valid boxes, its CLS token, then its padding."""
        image_tokens = image.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        image_pos = image_pos.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        pooled_map = self.img_pre_norm(image_tokens).transpose(1, 2).reshape(image.shape)  # (B, C, H, W)

        points = self._embed_points(prompt.points, prompt.point_labels, pooled_map)
        boxes = self._embed_boxes(prompt.boxes, prompt.box_labels, pooled_map)
        tokens, padding = join_padded(points, prompt.point_padding, boxes, prompt.box_padding)
        cls = self.cls_embed.weight.expand(tokens.shape[0], 1, -1)  # (B, 1, C)
        tokens, padding = join_padded(tokens, padding, cls, padding.new_zeros(tokens.shape[0], 1))

        tokens = self.norm(self.final_proj(tokens))
        for layer in self.encode:
            tokens = layer(tokens, image_tokens, memory_pos=image_pos, padding=padding)
        return PromptTokens(self.encode_norm(tokens), padding)

    def _embed_points(self, points: Tensor, labels: Tensor, pooled_map: Tensor) -> Tensor:
        """points (B, Np, 2), labels (B, Np), the normalised features (B, C, H, W) -> (B, Np, C)"""
        grid = points[:, :, None, :].float() * 2 - 1  # (B, Np, 1, 2) in [-1, 1], x before y
        # sampled in fp32: a bf16 grid would place the points up to a seventh of a pixel off on a 72x72 map
        sampled = F.grid_sample(pooled_map.float(), grid, align_corners=False).to(pooled_map.dtype)  # (B, C, Np, 1)
        sampled = sampled.squeeze(-1).transpose(1, 2)  # (B, C, Np) -> (B, Np, C)
        x, y = points.unbind(-1)
        half = self.d_model // 2
        sine = torch.cat([sine_coordinates(x, half), sine_coordinates(y, half)], dim=-1)  # (B, Np, C), x first
        dtype = self.points_direct_project.weight.dtype  # coordinates and their sines stay fp32 until here
        return (
            self.points_direct_project(points.to(dtype))
            + self.points_pool_project(sampled)
            + self.points_pos_enc_project(sine.to(dtype))
            + self.label_embed(labels.long())
        )

    def _embed_boxes(self, boxes: Tensor, labels: Tensor, pooled_map: Tensor) -> Tensor:
        """boxes (B, Nb, 4) as cx, cy, w, h, labels (B, Nb), the normalised features (B, C, H, W) -> (B, Nb, C)"""
        batch, count = boxes.shape[:2]
        height, width = pooled_map.shape[-2:]
        cx, cy, w, h = boxes.unbind(-1)
        # corners in pixels of the feature map; scaled by Python numbers, as a tensor of them would be a host copy
        # that a CUDA graph cannot capture
        left, right = (cx - 0.5 * w) * width, (cx + 0.5 * w) * width
        top, bottom = (cy - 0.5 * h) * height, (cy + 0.5 * h) * height
        corners = torch.stack([left, top, right, bottom], dim=-1)
        pooled = roi_align(pooled_map, corners, self.roi_size)  # (B, Nb, C, roi, roi)
        pooled = self.boxes_pool_project(pooled.flatten(0, 1))  # (B*Nb, C, 1, 1)
        pooled = pooled.view(batch, count, self.d_model)  # (B*Nb, C, 1, 1) -> (B, Nb, C)
        half = self.d_model // 2
        sine = torch.cat([sine_coordinates(cy, half), sine_coordinates(cx, half), h[..., None], w[..., None]], -1)
        dtype = self.boxes_direct_project.weight.dtype  # coordinates and their sines stay fp32 until here
        return (
            self.boxes_direct_project(boxes.to(dtype))
            + pooled
            + self.boxes_pos_enc_project(sine.to(dtype))  # (B, Nb, C + 2) -> (B, Nb, C)
            + self.label_embed(labels.long())
        )


def join_padded(first: Tensor, first_padding: Tensor, second: Tensor, second_padding: Tensor) -> tuple[Tensor, Tensor]:
    """Two right-padded sequences joined row by row, still right-padded: first (B, N1, C) and second (B, N2, C),
    paddings (B, N1) and (B, N2) True at padding -> (B, N1 + N2, C) and its padding (B, N1 + N2).

    Row b holds first's valid tokens, then all of second (its padding too) from there; where second does not
    reach, first's own padding tokens, then zeros: the very values of Meta's `concat_padded_sequences`, padding
    included.
    """
    if second.shape[1] == 0:
        return first, first_padding
    batch, first_len, channels = first.shape
    second_len = second.shape[1]
    first_valid = (~first_padding).sum(dim=1)  # (B,)
    total_valid = first_valid + (~second_padding).sum(dim=1)
    positions = torch.arange(first_len + second_len, device=first.device)
    in_second = positions - first_valid[:, None]  # (B, N1 + N2): the index into second at each position
    from_second = (in_second >= 0) & (in_second < second_len)
    index = in_second.clamp(0, second_len - 1)[..., None].expand(-1, -1, channels)
    gathered = second.gather(1, index)  # (B, N1 + N2, C)
    first_padded = F.pad(first, (0, 0, 0, second_len))  # (B, N1 + N2, C), zeros after first
    joined = torch.where(from_second[..., None], gathered, first_padded)
    return joined, positions[None] >= total_valid[:, None]
