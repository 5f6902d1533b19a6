"""Multi-head attention with the parameters of `torch.nn.MultiheadAttention` (one packed input projection),
the layout of every attention in SAM 3's checkpoint, run by the runtime's kernels."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...runtime.kernels import attention
from ..layers import merge_heads, split_heads


class PackedAttention(nn.Module):
    """Batch-first attention: query (B, Nq, C), key and value (B, Nk, C) -> (B, Nq, C).

    `in_proj_weight` (3C, C) stacks the query, key and value projections, `out_proj` follows, as in
    `nn.MultiheadAttention`, so its state-dict keys load as they are.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"{num_heads} heads do not divide the attention width {embed_dim}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        bias: Optional[Tensor] = None,
    ) -> Tensor:
        """`key_padding_mask` (B, Nk) is True at padding, as torch's; `bias` (B, heads, Nq, Nk) is added to the
        scores (a relative position bias). A row must keep at least one key."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = split_heads(F.linear(query, w_q, b_q), self.num_heads)  # (B, heads, Nq, d)
        k = split_heads(F.linear(key, w_k, b_k), self.num_heads)  # (B, heads, Nk, d)
        v = split_heads(F.linear(value, w_v, b_v), self.num_heads)  # (B, heads, Nk, d)
        if bias is None:
            out = attention(q, k, v, None if key_padding_mask is None else ~key_padding_mask)
        else:
            if key_padding_mask is not None:
                padding = key_padding_mask[:, None, None, :]  # (B, 1, 1, Nk), over heads and queries
                bias = bias.masked_fill(padding, float("-inf"))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.out_proj(merge_heads(out))
