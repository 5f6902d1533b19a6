"""Mask decoder: a two-way transformer between prompt tokens and the image, then mask, IoU and object-score heads.

Output tokens are [object score, IoU, mask 0 (single), masks 1-3 (multimask)], followed by the
prompt tokens. Masks are predicted at 4x the feature resolution, using the stride-4 and stride-8
backbone features as skip connections.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import MLP, Attention, LayerNorm2d

NUM_MULTIMASK = 3
STABILITY_DELTA = 0.05  # logit offset for the stability score of the single-mask output
STABILITY_THRESHOLD = 0.98  # below it, the single mask falls back to the best multimask output


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, tokens -> image, MLP on tokens, image -> tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, num_layers=2)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """queries (B, N, C); keys (B or 1, h*w, C): one image shared by every row until it meets the
        queries. Returns queries (B, N, C) and keys (B, h*w, C)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        keys_with_pe = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys_with_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys_with_pe, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0)) for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """image (B or 1, C, h, w), image_pe (1, C, h, w), tokens (B, N, C) -> tokens (B, N, C), image (B, h*w, C).

        An image of batch 1 is shared by all B rows: its projections in the first layer are made once.
        """
        # Contiguous token rows: the elementwise work over B x h*w x C below runs on dense memory.
        keys = image.flatten(2).transpose(1, 2).contiguous()  # (B or 1, h*w, C)
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()  # (1, h*w, C)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class DecoderOutput(NamedTuple):
    masks: Tensor  # (B, M, 4h, 4w) mask logits; M = 3 with multimask output, else 1
    iou_scores: Tensor  # (B, M) predicted IoU of each mask
    tokens: Tensor  # (B, M, C) output tokens from which object pointers are made
    object_score_logits: Tensor  # (B, 1) > 0 when the object is judged present


def stability_scores(mask_logits: Tensor, delta: float = STABILITY_DELTA) -> Tensor:
    """IoU between the masks thresholded at +delta and -delta: (..., H, W) -> (...)."""
    flat = mask_logits.flatten(-2)
    inner = (flat > delta).sum(-1).float()
    outer = (flat > -delta).sum(-1).float()
    return torch.where(outer > 0, inner / outer, 1.0)


class MaskDecoder(nn.Module):
    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        num_mask_tokens = NUM_MULTIMASK + 1
        self.transformer = TwoWayTransformer(dim=dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, num_mask_tokens, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)

    def project_high_res(self, stride4: Tensor, stride8: Tensor) -> tuple[Tensor, Tensor]:
        """Project the stride-4 and stride-8 backbone levels once per image for the upscaling skips."""
        return self.conv_s0(stride4), self.conv_s1(stride8)

    def _upscaled_masks(
        self, image_tokens: Tensor, high_res: tuple[Tensor, Tensor], hyper_in: Tensor, height: int, width: int
    ) -> Tensor:
        """image_tokens (B, h*w, C), hyper_in (B, M, C/8) -> mask logits (B, M, 4h, 4w).

        A transposed convolution of kernel 2 and stride 2 maps each input pixel on its own 2 x 2 output
        pixels: a matmul per token row. So every token row becomes its 4 x 4 output pixels by two
        matmuls with the skips, norm and activations in between, in the row layout the transformer
        left, and only the M masks are rearranged into images at the end.
        """
        batch, pixels, _ = image_tokens.shape
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        mid, out = deconv1.out_channels, deconv2.out_channels
        feat_s0, feat_s1 = high_res  # (1 or B, C/8, 4h, 4w), (1 or B, C/4, 2h, 2w)

        # weight (C_in, C_out, 2, 2) -> (C_in, 4 * C_out): sub-pixel (a, b) major, channel minor
        weight1 = deconv1.weight.permute(0, 2, 3, 1).reshape(deconv1.in_channels, 4 * mid)
        skip1 = feat_s1.unflatten(2, (height, 2)).unflatten(4, (width, 2))  # (b, C/4, h, 2, w, 2)
        skip1 = skip1.permute(0, 2, 4, 3, 5, 1).reshape(-1, pixels, 4, mid)  # (b, h*w, 4, C/4)
        x = (image_tokens @ weight1).view(batch, pixels, 4, mid) + (skip1 + deconv1.bias)
        x = act1(F.layer_norm(x, (mid,), norm1.weight, norm1.bias, norm1.eps))  # (B, h*w, 4, C/4)

        weight2 = deconv2.weight.permute(0, 2, 3, 1).reshape(mid, 4 * out)
        skip0 = feat_s0.unflatten(2, (height, 2, 2)).unflatten(5, (width, 2, 2))  # (b, C/8, h, 2, 2, w, 2, 2)
        skip0 = skip0.permute(0, 2, 5, 3, 6, 4, 7, 1).reshape(-1, pixels, 4, 4, out)  # (b, h*w, 4, 4, C/8)
        x = act2((x @ weight2).view(batch, pixels, 4, 4, out) + (skip0 + deconv2.bias))

        num_masks = hyper_in.shape[1]
        masks = x.view(batch, pixels * 16, out) @ hyper_in.transpose(1, 2)  # (B, h*w*16, M)
        # rows are (i, j, a, b, a2, b2): output pixel (4i + 2a + a2, 4j + 2b + b2)
        masks = masks.view(batch, height, width, 2, 2, 2, 2, num_masks)
        return masks.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(batch, num_masks, 4 * height, 4 * width)

    def forward(
        self,
        image_embed: Tensor,
        image_pe: Tensor,
        sparse: Tensor,
        dense: Tensor,
        high_res: tuple[Tensor, Tensor],
        multimask: bool,
    ) -> DecoderOutput:
        """image_embed and dense (B or 1, C, h, w) are broadcast over the B prompts (rows of `sparse`);
        high_res from `project_high_res`. Many prompts on one image without mask prompts (segment
        everything) share the image's first-layer work."""
        batch = sparse.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens[None].expand(batch, -1, -1), sparse], dim=1)  # (B, 6 + N, C)
        image = image_embed + dense  # (B or 1, C, h, w)
        height, width = image.shape[-2:]

        tokens, image_tokens = self.transformer(image, image_pe.to(image.dtype), tokens)
        num_mask_tokens = NUM_MULTIMASK + 1
        mask_tokens = tokens[:, 2 : 2 + num_mask_tokens]  # (B, 4, C)

        hyper_in = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, 4, C/8)
        masks = self._upscaled_masks(image_tokens, high_res, hyper_in, height, width)
        iou = self.iou_prediction_head(tokens[:, 1])  # (B, 4)
        object_score_logits = self.pred_obj_score_head(tokens[:, 0])  # (B, 1)

        if multimask:
            return DecoderOutput(masks[:, 1:], iou[:, 1:], mask_tokens[:, 1:], object_score_logits)
        if self.training:  # the fallback below is an inference heuristic; training supervises token 0 itself
            return DecoderOutput(masks[:, :1], iou[:, :1], mask_tokens[:, :1], object_score_logits)
        # A single mask: token 0, unless it is unstable, then the multimask output with the best IoU.
        # The object pointer always comes from token 0.
        best = iou[:, 1:].argmax(dim=-1) + 1  # (B,)
        rows = torch.arange(batch, device=masks.device)
        stable = stability_scores(masks[:, 0]) >= STABILITY_THRESHOLD  # (B,)
        chosen = torch.where(stable, torch.zeros_like(best), best)
        return DecoderOutput(
            masks[rows, chosen][:, None], iou[rows, chosen][:, None], mask_tokens[:, :1], object_score_logits
        )
