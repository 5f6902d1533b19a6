"""Mask decoder: a two-way transformer between prompt tokens and the image, then mask, IoU and object-score heads.

Output tokens are [object score, IoU, mask 0 (single), masks 1-3 (multimask)], followed by the
prompt tokens. Masks are predicted at 4x the feature resolution, using the stride-4 and stride-8
backbone features as skip connections.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
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

        # The upscaling runs channels-last: the transformer's token rows are already that layout.
        image = image_tokens.transpose(1, 2).reshape(batch, -1, height, width)  # (B, C, h, w), channels-last
        feat_s0, feat_s1 = (f.contiguous(memory_format=torch.channels_last) for f in high_res)
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        upscaled = act1(norm1(deconv1(image) + feat_s1))
        upscaled = act2(deconv2(upscaled) + feat_s0)  # (B, C/8, 4h, 4w)

        hyper_in = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, 4, C/8)
        mask_h, mask_w = upscaled.shape[-2:]
        pixels = upscaled.permute(0, 2, 3, 1).reshape(batch, mask_h * mask_w, -1)  # (B, 4h*4w, C/8)
        masks = (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2)  # (B, 4, 4h*4w)
        masks = masks.reshape(batch, num_mask_tokens, mask_h, mask_w)
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
