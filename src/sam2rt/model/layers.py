"""Building blocks shared by several modules: MLP, channel LayerNorm, heads, multi-head attention.

The attention itself is the runtime's (`runtime.kernels.attention`): which kernel runs is its choice."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime.kernels import attention


class MLP(nn.Module):
    """`num_layers` linear layers with an activation between them (none after the last)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(dims[:-1], dims[1:]))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        x = self.layers[-1](x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # Channels last (the memory encoder's blocks), the channels lie last once permuted, a view: one fused
            # kernel, 0.09 ms against 0.31 for the ops below over 16 objects' 256x64x64 maps (bf16, H100).
            normed = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
            return normed.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W), channels last still
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)"""
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, num_heads, channels // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)"""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class Attention(nn.Module):
    """Multi-head attention with separate projections; the projected width may be reduced by `downsample_rate`."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, kv_in_dim: Optional[int] = None):
        super().__init__()
        internal_dim = embedding_dim // downsample_rate
        if internal_dim % num_heads != 0:
            raise ValueError(f"{num_heads} heads do not divide the attention width {internal_dim}")
        kv_in_dim = kv_in_dim or embedding_dim
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(kv_in_dim, internal_dim)
        self.v_proj = nn.Linear(kv_in_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)

    def project(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project (B, N, C) inputs and split them into heads: (B, heads, N, d) each."""
        return (
            split_heads(self.q_proj(q), self.num_heads),
            split_heads(self.k_proj(k), self.num_heads),
            split_heads(self.v_proj(v), self.num_heads),
        )

    def finish(self, out: Tensor) -> Tensor:
        """(B, heads, N, d) -> (B, N, C)"""
        return self.out_proj(merge_heads(out))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (B or 1, Nq, C), k and v (B or 1, Nk, C): a side of batch 1 is shared by every row, projected once."""
        if self.num_heads > 1 and k.shape[1] <= FEW_TOKENS:
            return self._attend_few_keys(q, k, v)
        if self.num_heads > 1 and q.shape[1] <= FEW_TOKENS:
            return self._attend_few_queries(q, k, v)
        q, k, v = self.project(q, k, v)
        batch = max(q.shape[0], k.shape[0])
        q, k, v = (x.expand(batch, -1, -1, -1) for x in (q, k, v))  # stride-0 views, nothing copied
        return self.finish(attention(q, k, v))

    # The mask decoder's prompt tokens (a handful) meet the image's 4096 tokens in both directions, for
    # hundreds of prompts at once when segmenting everything. Attention kernels pad the short side to
    # a block of 64-128 rows and waste most of their work there (1 ms a call for 256 prompts on an
    # H200). With every head's few rows laid on the diagonal of one matrix, each direction is two plain
    # matmuls over the untransposed projections, and the output projection folds into the values.

    def _attend_few_keys(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Many queries over at most FEW_TOKENS keys: q (B or 1, Nq, C), k and v (B or 1, Nk, C) -> (B, Nq, C)."""
        heads, num_keys = self.num_heads, k.shape[1]
        keys = block_diagonal_heads(self.k_proj(k), heads)  # (B, heads * Nk, heads * d)
        scale = (keys.shape[-1] // heads) ** -0.5
        scores = self.q_proj(q) @ (keys.transpose(1, 2) * scale)  # (B, Nq, heads * Nk)
        probs = torch.softmax(scores.unflatten(-1, (heads, num_keys)), dim=-1).flatten(-2)
        # rows of values already projected out: (B, heads * Nk, C)
        values_out = block_diagonal_heads(self.v_proj(v), heads) @ self.out_proj.weight.t()
        out = probs @ values_out  # (B, Nq, C)
        return out + self.out_proj.bias.to(out.dtype)  # under autocast, as out_proj's own output dtype

    def _attend_few_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """At most FEW_TOKENS queries over many keys: q (B or 1, Nq, C), k and v (B or 1, Nk, C) -> (B, Nq, C)."""
        heads, num_queries = self.num_heads, q.shape[1]
        queries = block_diagonal_heads(self.q_proj(q), heads)  # (B, heads * Nq, heads * d)
        head_dim = queries.shape[-1] // heads
        scores = (queries * head_dim**-0.5) @ self.k_proj(k).transpose(1, 2)  # (B, heads * Nq, Nk)
        # every head's queries against all values: (B, heads * Nq, heads * d); its own head is on the diagonal
        out = torch.softmax(scores, dim=-1) @ self.v_proj(v)
        out = out.unflatten(1, (heads, num_queries)).unflatten(-1, (heads, head_dim))  # (B, h, Nq, h, d)
        out = out.diagonal(dim1=1, dim2=3)  # (B, Nq, d, heads)
        return self.out_proj(out.transpose(-1, -2).flatten(-2))  # (B, Nq, C)


# A side of at most this many tokens takes the block-diagonal path of Attention.
FEW_TOKENS = 16


def block_diagonal_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, heads * d) -> (B, heads * N, heads * d): head h's rows at rows h*N.., its columns at h*d.., zeros elsewhere."""
    batch, tokens, channels = x.shape
    per_head = x.view(batch, tokens, heads, channels // heads)  # (B, N, h, d)
    eye = torch.eye(heads, dtype=x.dtype, device=x.device)
    return torch.einsum("bnhd,hg->bhngd", per_head, eye).reshape(batch, heads * tokens, channels)
