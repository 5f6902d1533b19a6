"""Building blocks shared by several modules: MLP, channel LayerNorm, and the one attention function."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


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


# On CUDA, flash and memory-efficient kernels only: PyTorch's cuDNN attention, preferred by default on
# Hopper, rebuilds its execution plan for each of the many shapes SAM 2 uses (Hiera windows, global
# blocks, decoder, memory) at about 0.5 ms of CPU time per call, which dominates a tracking step.
# Captured into a CUDA graph, that CPU time is paid once per shape, and cuDNN's kernels are the fastest
# on Hopper for batches (several objects' memory attention, a single head of width 256) and 128 keys or more.
_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
_CAPTURED_BACKENDS = [SDPBackend.CUDNN_ATTENTION, *_CUDA_BACKENDS]


# A module-level count, not a ContextVar: torch.compile cannot trace ContextVar.get (a graph break in every
# attention call), while a global it reads is guarded, so compiled code follows the setting. Only one thread
# runs the model (the server's scheduler); another thread would see the preference too, which changes kernel
# choice, not results.
_graph_captures = 0


def capturing_graphs() -> bool:
    """True inside `attention_for_graphs`: code is being warmed up or captured into a CUDA graph."""
    return _graph_captures > 0


@contextmanager
def attention_for_graphs() -> Iterator[None]:
    """Within: attention prefers cuDNN's kernels, for code being warmed up and captured into CUDA graphs."""
    global _graph_captures
    _graph_captures += 1
    try:
        yield
    finally:
        _graph_captures -= 1


# One object's memory attention (a single row and head, 4096 queries over up to ~29k memory keys) gives the
# kernels too few query blocks to fill an H200; its keys cut into 4 slices run as a batch of 4 rows and are
# combined by their log-sum-exps: 0.22 ms a layer against flash's 0.38 (cuDNN, inside CUDA graphs). Its
# self-attention (4096 keys) gains only when compiled, where the combination fuses into one kernel: 52 us
# against flash's 65 (78 uncompiled).
KEY_SLICES = 4
SLICED_MIN_KEYS = 8192
SLICED_MIN_KEYS_COMPILED = 4096
# cuDNN's kernels walk keys 128 at a time: Hiera's small windows (16 to 64 keys) run faster on flash.
CUDNN_MIN_KEYS = 128


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
    """Scaled dot-product attention over heads: q and k (B, h, Nq or Nk, d), v (B, h, Nk, e) -> (B, h, Nq, e).

    `key_mask` (B, Nk) is True where a key may be attended; each row must keep at least one key.
    """
    if key_mask is not None:
        key_mask = key_mask[:, None, None, :]  # (B, 1, 1, Nk), broadcast over heads and queries
    if not q.is_cuda:
        if v.shape[-1] < q.shape[-1] and blockwise_on(q):
            return blockwise_attention(q, k, v, key_mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    captured = _graph_captures > 0
    one_row = q.shape[0] * q.shape[1] == 1
    num_keys = k.shape[2]
    min_sliced = SLICED_MIN_KEYS_COMPILED if torch.compiler.is_compiling() else SLICED_MIN_KEYS
    if captured and one_row and key_mask is None and num_keys >= min_sliced and num_keys % KEY_SLICES == 0:
        return sliced_key_attention(q, k, v, KEY_SLICES, _cudnn_attention_with_lse)
    # cuDNN wins on batches (4 objects' memory attention: 0.69 ms against flash's 1.47 on an H200), flash on one
    # row; flash cannot take values narrower than the keys (memory attention's, captured), cuDNN can.
    prefers_cudnn = q.shape[0] > 1 or v.shape[-1] != q.shape[-1]
    backends = _CAPTURED_BACKENDS if captured and prefers_cudnn and num_keys >= CUDNN_MIN_KEYS else _CUDA_BACKENDS
    with sdpa_kernel(backends, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)


def sliced_key_attention(
    q: Tensor, k: Tensor, v: Tensor, slices: int, attend: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
) -> Tensor:
    """One row's attention, q (1, 1, Nq, d) over k (1, 1, Nk, d) and v (1, 1, Nk, e), as `slices` rows over equal
    slices of the keys, combined: each slice's output weighted by its share exp(lse_i) / sum exp(lse_j) of the softmax.

    `attend(q, k, v)` returns the attention output (S, 1, Nq, e) and its log-sum-exp (S, 1, Nq).
    """
    num_keys = k.shape[2]
    key_slices = k.reshape(slices, 1, num_keys // slices, k.shape[3])  # (S, 1, Nk/S, d): consecutive keys per row
    value_slices = v.reshape(slices, 1, num_keys // slices, v.shape[3])
    out, lse = attend(q.repeat(slices, 1, 1, 1), key_slices, value_slices)
    shares = torch.softmax(lse.float(), dim=0)[..., None]  # (S, 1, Nq, 1)
    return (out.float() * shares).sum(dim=0, keepdim=True).to(q.dtype)  # (1, 1, Nq, e)


# PyTorch's CPU attention is flash-like only for values as wide as the keys. Narrower values (the memory's raw
# 64 channels) run faster as explicit products over blocks of queries, which reach matmul speed: 1024 queries
# over 7232 keys, 2 threads, 33-36 ms against 44 for flash over 256-wide values and 54 for PyTorch's own
# narrower-values path. Blocks of fewer rows are slower (43-54 ms at 128 rows); 4096 queries over 28,736 keys take
# 535 ms in blocks of 1024 rows (112 MiB), 570 in blocks of 512, 790 in blocks of 128, against flash's 693.
SCORE_BLOCK_BYTES = 128 * 2**20


def blockwise_on(q: Tensor) -> bool:
    """Whether `blockwise_attention` serves `q`'s attention: on the CPU, in fp32 (its softmax runs in the
    scores' dtype), without autograd (it writes in place)."""
    return q.device.type == "cpu" and q.dtype == torch.float32 and not torch.is_grad_enabled()


def blockwise_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
    """Attention as explicit matmuls, one block of queries at a time, the block's scores (at most
    SCORE_BLOCK_BYTES) held once and softmaxed in place: q and k (B, h, N, d), v (B, h, Nk, e) -> (B, h, Nq, e).

    `key_mask` (B, 1, 1, Nk) is True where a key may be attended.
    """
    batch = max(q.shape[0], k.shape[0])
    q, k, v = (x.expand(batch, -1, -1, -1) for x in (q, k, v))  # a side of batch 1 shared: views
    _, heads, num_queries, head_dim = q.shape
    num_keys = k.shape[2]
    rows = max(1, min(num_queries, SCORE_BLOCK_BYTES // (num_keys * q.element_size())))
    out = q.new_empty(batch, heads, num_queries, v.shape[-1])
    scores = q.new_empty(rows, num_keys)
    for b in range(batch):
        hidden = None if key_mask is None else ~key_mask[b, 0, 0]  # (Nk,) keys this row may not attend
        for h in range(heads):
            keys_t = k[b, h].transpose(0, 1)  # (d, Nk)
            for start in range(0, num_queries, rows):
                end = min(start + rows, num_queries)
                block = scores[: end - start]  # (rows, Nk)
                torch.addmm(block, q[b, h, start:end], keys_t, beta=0, alpha=head_dim**-0.5, out=block)
                if hidden is not None:
                    block.masked_fill_(hidden, float("-inf"))
                torch.ops.aten._softmax.out(block, -1, False, out=block)
                torch.mm(block, v[b, h], out=out[b, h, start:end])
    return out


def _cudnn_attention_with_lse(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """cuDNN's attention with its log-sum-exp (B, h, Nq), which the public function does not return."""
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True)[:2]
    return out, lse.reshape(q.shape[:3])


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
