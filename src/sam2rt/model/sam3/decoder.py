"""SAM 3's DETR decoder: object queries, each with a reference box, refined layer by layer against the prompt and
the image, beside a presence token that says whether the concept is in the image at all.

Each layer: self-attention over the presence token and the queries, cross-attention to the prompt tokens,
cross-attention to the image biased by each query's box (the box relative position bias, "boxRPB"), a feed-forward;
all post-norm. After each layer the box head moves every reference box by an offset in logit space.

Inference only. DAC (the duplicated one-to-many queries of training) is off at inference in Meta's model
(`apply_dac = dac and training`), so it is not here; the presence logits are not clamped (Meta's clamp discards its
result).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import MLP
from ..positional import sine_coordinates
from .attention import PackedAttention


class DecoderOutput(NamedTuple):
    """What the image model uses from the decoder: the last layer's outputs."""

    queries: Tensor  # (B, Q, C) the last layer's normed query states
    boxes: Tensor  # (B, Q, 4) the refined boxes, (cx, cy, w, h) in [0, 1] of the image
    presence_logits: Tensor  # (B, 1) whether the prompted concept is present in the image


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x kept above `eps`."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) centre, width, height -> (..., 4) corners x0, y0, x1, y1."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_sine_embedding(boxes: Tensor, channels: int, temperature: float = 10000.0) -> Tensor:
    """Sine encoding of (cx, cy, w, h) boxes in [0, 1]: (..., 4) -> (..., 2 * channels), in fp32.

    Each coordinate takes channels // 2 features (`sine_coordinates`), in the order cy, cx, w, h (y before x, as
    DETR's grids).
    """
    cx, cy, w, h = boxes.unbind(-1)
    return torch.cat([sine_coordinates(coord, channels // 2, temperature) for coord in (cy, cx, w, h)], dim=-1)


def log_scaled(deltas: Tensor) -> Tensor:
    """Signed log2 scale of offsets in [-1, 1] to about [-1, 1], finer near 0: sign(8d) log2(|8d| + 1) / 3."""
    scaled = deltas * 8
    return torch.sign(scaled) * torch.log2(scaled.abs() + 1.0) / math.log2(8)


class DecoderLayer(nn.Module):
    """Self-attention, prompt cross-attention, image cross-attention and a feed-forward, each with a residual and
    a LayerNorm after it."""

    def __init__(self, d_model: int = 256, num_heads: int = 8, dim_feedforward: int = 2048) -> None:
        super().__init__()
        self.cross_attn = PackedAttention(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.ca_text = PackedAttention(d_model, num_heads)
        self.catext_norm = nn.LayerNorm(d_model)
        self.self_attn = PackedAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tokens: Tensor,
        token_pos: Tensor,
        prompt: Tensor,
        prompt_padding: Tensor,
        image: Tensor,
        image_pos: Tensor,
        image_bias: Tensor,
    ) -> Tensor:
        """tokens and token_pos (B, N, C): the presence token and the queries with their positions; prompt (B, P, C)
        with prompt_padding (B, P) True at padding; image and image_pos (B, HW, C); image_bias (B, heads, N, HW)
        added to the image attention's scores. Returns the tokens (B, N, C)."""
        with_pos = tokens + token_pos
        tokens = self.norm2(tokens + self.self_attn(with_pos, with_pos, tokens))
        attended = self.ca_text(tokens + token_pos, prompt, prompt, key_padding_mask=prompt_padding)
        tokens = self.catext_norm(tokens + attended)
        attended = self.cross_attn(tokens + token_pos, image + image_pos, image, bias=image_bias)
        tokens = self.norm1(tokens + attended)
        return self.norm3(tokens + self.linear2(F.relu(self.linear1(tokens))))


class TransformerDecoder(nn.Module):
    """DETR decoder with box refinement, the box relative position bias and a presence token.

    Defaults are the official SAM 3 sizes (256 wide, 8 heads, 6 layers, 200 queries).
    """

    def __init__(
        self,
        d_model: int = 256,
        num_heads: int = 8,
        num_layers: int = 6,
        num_queries: int = 200,
        dim_feedforward: int = 2048,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.num_heads = num_heads
        self.layers = nn.ModuleList(DecoderLayer(d_model, num_heads, dim_feedforward) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.reference_points = nn.Embedding(num_queries, 4)
        self.boxRPB_embed_x = MLP(2, d_model, num_heads, 2)
        self.boxRPB_embed_y = MLP(2, d_model, num_heads, 2)
        self.presence_token = nn.Embedding(1, d_model)
        self.presence_token_head = MLP(d_model, d_model, 1, 3)
        self.presence_token_out_norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)

    def box_position_bias(self, boxes: Tensor, height: int, width: int) -> Tensor:
        """Each query's attention bias over the image grid from where each cell lies relative to its box, with a zero
        row in front for the presence token: boxes (B, Q, 4) cx, cy, w, h in [0, 1] -> (B, heads, 1 + Q, H*W).

        The bias is separable, a term from the cell's row plus one from its column, so the MLPs run on the
        H + W offsets only and the grid is their broadcast sum.
        """
        batch, num_queries, _ = boxes.shape
        corners = box_cxcywh_to_xyxy(boxes)  # (B, Q, 4)
        rows = torch.arange(height, dtype=boxes.dtype, device=boxes.device) / height
        cols = torch.arange(width, dtype=boxes.dtype, device=boxes.device) / width
        # offsets of each row (column) from the box's top and bottom (left and right) edges
        row_offsets = rows[None, None, :, None] - corners[:, :, None, 1::2]  # (B, Q, H, 2)
        col_offsets = cols[None, None, :, None] - corners[:, :, None, 0::2]  # (B, Q, W, 2)
        dtype = self.boxRPB_embed_y.layers[0].weight.dtype  # offsets in the boxes' precision, the MLPs in theirs
        row_bias = self.boxRPB_embed_y(log_scaled(row_offsets).to(dtype))  # (B, Q, H, heads)
        col_bias = self.boxRPB_embed_x(log_scaled(col_offsets).to(dtype))  # (B, Q, W, heads)
        # the presence token attends without bias: a zero row in front of the queries
        row_bias = F.pad(row_bias.permute(0, 3, 1, 2), (0, 0, 1, 0))  # (B, heads, 1 + Q, H)
        col_bias = F.pad(col_bias.permute(0, 3, 1, 2), (0, 0, 1, 0))  # (B, heads, 1 + Q, W)
        bias = row_bias[..., :, None] + col_bias[..., None, :]  # (B, heads, 1 + Q, H, W)
        return bias.flatten(3)  # (B, heads, 1 + Q, H*W)

    def forward(
        self,
        image: Tensor,
        image_pos: Tensor,
        feature_size: tuple[int, int],
        prompt: Tensor,
        prompt_padding: Tensor,
    ) -> DecoderOutput:
        """image (B, H*W, C): the encoder's image tokens in raster order, with image_pos (B, H*W, C) their position
        encoding; feature_size (H, W) of that grid; prompt (B, P, C) the prompt tokens (text, geometry) with
        prompt_padding (B, P) True at padding. Returns the last layer's queries (B, Q, C), boxes (B, Q, 4) as
        (cx, cy, w, h) in [0, 1] of the image, and presence logits (B, 1)."""
        batch = image.shape[0]
        height, width = feature_size
        queries = self.query_embed.weight[None].expand(batch, -1, -1)  # (B, Q, C)
        presence = self.presence_token.weight[None].expand(batch, -1, -1)  # (B, 1, C)
        tokens = torch.cat((presence, queries), dim=1)  # (B, 1 + Q, C): the presence token first
        dtype = tokens.dtype
        # boxes stay fp32 under bf16 weights: a bf16 coordinate is off by up to 4 px of a 1008 px image
        boxes = self.reference_points.weight.float().sigmoid()[None].expand(batch, -1, -1)  # (B, Q, 4)
        for layer in self.layers:
            query_pos = self.ref_point_head(box_sine_embedding(boxes, self.d_model).to(dtype))  # (B, Q, C)
            token_pos = F.pad(query_pos, (0, 0, 1, 0))  # (B, 1 + Q, C), no position for the presence token
            bias = self.box_position_bias(boxes, height, width)
            tokens = layer(tokens, token_pos, prompt, prompt_padding, image, image_pos, bias)
            queries = self.norm(tokens[:, 1:])  # (B, Q, C)
            boxes = (inverse_sigmoid(boxes) + self.bbox_embed(queries).float()).sigmoid()
        presence_logits = self.presence_token_head(self.presence_token_out_norm(tokens[:, :1]))  # (B, 1, 1)
        return DecoderOutput(queries, boxes, presence_logits.squeeze(-1))
