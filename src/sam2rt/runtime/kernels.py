"""The kernels behind the model's operations, and the choice among them: the runtime's side of the one seam the
model calls (`attention`, `depthwise_conv`, `apply_rotary`, `add_layer_norm`, `group_norm`, ...). Each computes the
same numbers whichever kernel runs; which one runs depends on the device, the dtype, whether code is being captured
into CUDA graphs or compiled, and on measurements noted beside each choice.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

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


def attention(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None, values_projection: Optional[nn.Linear] = None
) -> Tensor:
    """Scaled dot-product attention over heads: q and k (B, h, Nq or Nk, d), v (B, h, Nk, e) -> (B, h, Nq, e).

    `key_mask` (B, Nk) is True where a key may be attended; each row must keep at least one key. With
    `values_projection`, v holds the values before it, (B, Nk, C), and the projection is applied here: to the
    values, or to the outputs where that is faster (`attends_raw_values`).
    """
    if values_projection is not None:
        if attends_raw_values(q, values_projection):
            # Softmax rows sum to 1, so P (X Wv^T + b) = (P X) Wv^T + b: attending over the memory's own 64
            # channels and projecting the 4096 outputs after costs a quarter of the value side's arithmetic of
            # attending over 28k projected 256-wide values, and no value projection.
            return values_projection(attention(q, k, v[:, None], key_mask))  # (B, 1, Nq, C) -> (B, 1, Nq, e)
        v = values_projection(v).unflatten(-1, (q.shape[1], -1)).transpose(1, 2)  # (B, Nk, h*e) -> (B, h, Nk, e)
    if key_mask is not None:
        key_mask = key_mask[:, None, None, :]  # (B, 1, 1, Nk), broadcast over heads and queries
    if torch.compiler.is_exporting():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if key_mask is None else key_bias(key_mask, q))
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


def key_bias(key_mask: Tensor, q: Tensor) -> Tensor:
    """A boolean key mask (B, 1, 1, Nk) as scores to add: 0 where a key may be attended, the dtype's lowest
    where not. ONNX writes a boolean mask's attention with a guard against rows that mask every key, a pass over
    all the scores (IsNaN, then Where: 9% of EdgeTAM's memory attention on onnxruntime); ours never do."""
    return torch.zeros_like(key_mask, dtype=q.dtype).masked_fill(~key_mask, torch.finfo(q.dtype).min)


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


def attends_raw_values(q: Tensor, values_projection: nn.Linear) -> bool:
    """Whether attention runs over the values before `values_projection` and projects its outputs: one head,
    values narrower than it, and a fast kernel for values of another width than the keys. On the CPU at
    inference, `blockwise_attention`; on CUDA, cuDNN's, in captured code only: flash takes no such values, and
    memory-efficient attention over 64 channels is slower than flash over 256. Exported, always."""
    narrower = values_projection.in_features < values_projection.out_features
    # An exported graph's attention is plain matrix products, which take values of any width.
    fast_kernel = torch.compiler.is_exporting() or (capturing_graphs() if q.is_cuda else blockwise_on(q))
    return q.shape[1] == 1 and narrower and fast_kernel


def depthwise_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A depthwise conv of x (B, C, H, W). Compiled, as shifted products, which inductor fuses into one kernel: 17 us
    against cuDNN's 40 for 64x64x256 in bf16 on an H200 (63 against 148 for 4 objects). Eager, cuDNN's kernel.
    Exported, one Conv operator: onnxruntime ran the shifted products' 49 Slice, Mul and Add nodes 4x slower."""
    shifted = torch.compiler.is_compiling() and not torch.compiler.is_exporting()
    return depthwise_as_shifts(x, conv) if shifted else conv(x)


def depthwise_as_shifts(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """`conv(x)` for a depthwise conv (one filter per channel, odd square kernel, stride 1, "same" padding) of
    x (B, C, H, W): the sum of the shifted inputs times each tap's weights, accumulated in fp32."""
    size, (height, width) = conv.kernel_size[0], x.shape[-2:]
    assert conv.groups == conv.in_channels == conv.out_channels and conv.bias is not None, "depthwise, with bias"
    assert conv.kernel_size == (size, size) and size % 2 == 1 and conv.padding == (size // 2, size // 2)
    assert conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
    padded = F.pad(x, (size // 2,) * 4)
    weight = conv.weight.float()  # (C, 1, k, k)
    out = conv.bias.float()[None, :, None, None]
    for row in range(size):
        for col in range(size):
            tap = weight[None, :, 0, row, col, None, None]  # (1, C, 1, 1)
            out = out + padded[:, :, row : row + height, col : col + width].float() * tap
    return out.to(x.dtype)


def linear_relu(x: Tensor, linear: nn.Linear) -> Tensor:
    """`relu(linear(x))` for x (..., C_in). On CUDA the relu runs in the matmul's epilogue (cuBLASLt) instead of a
    pass of its own over the 2048-wide hidden rows: 16 x 4096 tokens 0.132 ms against 0.312, and the graphed step of
    16 objects 0.73 ms faster (tiny, bf16, H100). Equal outputs there: the relu of a rounded value is the rounding
    of its relu."""
    fused = x.is_cuda and linear.bias is not None and x.dtype == linear.weight.dtype
    if not fused or _traced() or _needs_gradients(x, linear.weight, linear.bias):
        return F.relu(linear(x))
    rows = x.reshape(-1, x.shape[-1])  # (..., C_in) -> (N, C_in)
    out = torch._addmm_activation(linear.bias, rows, linear.weight.t(), use_gelu=False)
    return out.view(*x.shape[:-1], out.shape[-1])  # (N, C_out) -> (..., C_out)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """Rotate consecutive channel pairs of x (..., N, d) by the angles of cos/sin (N, d // 2); into `out` (x's
    shape and dtype, x itself allowed: it is read before it is written) where given, else into a new tensor.

    A key sequence made of several frames of N tokens each is passed as (..., frames, N, d).
    """
    fused = None if _traced() or _needs_gradients(x, cos, sin) else _triton_kernels(x)  # no backward there
    if fused is not None:
        # One read and one write of x in its dtype: the forms below take an fp32 copy, a complex product and a
        # cast back, 4.7 ms of a 32 ms step for 16 objects (tiny, bf16, graphs, H100).
        rotated = fused.rotate_pairs(x, cos, sin, out)
        if rotated is not None:
            return rotated
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., N, d // 2, 2)
    if _traced() or cos.dtype not in (torch.float32, torch.float64):
        # Real numbers only: exported graphs hold no complex operators, and inductor fuses this form into one
        # kernel (complex numbers it leaves to eager kernels: 4 objects compiled ran 7% slower on an H200).
        real, imag = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1).flatten(-2)
    else:
        # Eager: each pair as one complex number times e^(i angle), one pass over x. The real form's strided
        # halves take 6 kernels: 4-6x slower on a CPU; tiny replayed from CUDA graphs tracks 13-15% faster so.
        complex_rotated = torch.view_as_complex(pairs) * torch.complex(cos, sin)  # (..., N, d // 2) complex
        rotated = torch.view_as_real(complex_rotated).flatten(-2)
    return rotated.type_as(x) if out is None else out.copy_(rotated)


def add_layer_norm(x: Tensor, y: Tensor, norm: nn.LayerNorm) -> tuple[Tensor, Tensor]:
    """`(x + y, norm(x + y))`: a residual sum and its layer norm, for x and y (1 or B, N, C) (x of batch 1 is one
    frame's tokens shared by every object) or Hiera's channels-last maps (B, H, W, C); the results of that shape. On
    CUDA one Triton kernel reads x and y once and writes both, where PyTorch's add writes the sum and its layer norm
    reads it back (16 objects, tiny, bf16, graphs, H100: layer norms 2.09 ms and bf16 adds about 2.4 ms of a step,
    mostly the memory attention's). (16, 4096, 256) in bf16, H100, graphed: 0.046 ms against 0.119 (0.036 against
    0.130 with x of batch 1), 2.8-3.0 TB/s. Any C up to 4096 (Hiera's 96 to 1152); a map cropped from a padded one
    (Hiera's windowed blocks) is read where it lies, a line of tokens at a time. The same sum either way; the norm's
    fp32 statistics are summed in another order: 0.002% of its bf16 values one rounding step apart (C=256)."""
    fused = None if _traced() or _needs_gradients(x, y, norm.weight, norm.bias) else _triton_kernels(x)
    if fused is not None:
        done = fused.add_layer_norm(x, y, norm.weight, norm.bias, norm.eps)
        if done is not None:
            return done
    total = x + y
    return total, norm(total)


def layer_norm_2d(x: Tensor, norm: nn.Module, gelu: bool = False) -> Tensor:
    """`norm(x)`, then exact GELU where `gelu`, for x (B, C, H, W) and `norm` a LayerNorm2d (its weight, bias and eps):
    the mask downsampler's norm and activation. On CUDA, channels first, one Triton kernel reads x once and writes
    the result, where LayerNorm2d's broadcast ops and the GELU make about ten passes over the map (four maps of 16.7M
    values for 16 objects at 1024 px; the downsampler took 2.92 ms in bf16 on an H100). fp32 statistics and one
    rounding at the end, where PyTorch's bf16 form rounds each step: bf16 results closer to exact, not equal."""
    fused = None if _traced() or _needs_gradients(x, norm.weight, norm.bias) else _triton_kernels(x)
    if fused is not None:
        done = fused.channel_norm_gelu(x, norm.weight, norm.bias, norm.eps, gelu)
        if done is not None:
            return done
    normed = norm(x)
    return F.gelu(normed) if gelu else normed


def group_norm(x: Tensor, norm: nn.GroupNorm) -> Tensor:
    """`norm(x)` for x (B, C, H, W). On CUDA at inference, each group's statistics come from a reduction that
    spreads its values over the whole GPU: PyTorch's GroupNorm kernel gives each (sample, group) pair one block, 8
    blocks for SAM 3's pixel decoder at 288 x 288 px, 1.2 ms a call (2.4 of a 33.6 ms frame on an H100)."""
    if not x.is_cuda or _traced() or _needs_gradients(x, norm.weight, norm.bias):
        return norm(x)
    return group_norm_by_reduction(x, norm)


def group_norm_by_reduction(x: Tensor, norm: nn.GroupNorm) -> Tensor:
    """GroupNorm as two reductions and one fused affine pass, in fp32 and rounded once to x's dtype, as PyTorch's
    kernel computes it: y = x * scale + shift per (sample, channel)."""
    batch, channels = x.shape[:2]
    grouped = x.reshape(batch, norm.num_groups, -1).float()  # (B, G, C/G * H * W)
    var, mean = torch.var_mean(grouped, dim=-1, unbiased=False)  # (B, G)
    rstd = torch.rsqrt(var + norm.eps)
    per_group = channels // norm.num_groups
    scale = rstd.repeat_interleave(per_group, dim=1)  # (B, C)
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if norm.affine:
        weight = norm.weight.float()
        scale, shift = scale * weight, shift * weight + norm.bias.float()
    return torch.addcmul(shift[..., None, None], x, scale[..., None, None]).to(x.dtype)  # (B, C, H, W)


def _triton_kernels(x: Tensor):
    """`runtime.triton_kernels` where its kernels can run on x's device, else None. Imported on first use on CUDA
    (or under Triton's interpreter): importing Triton costs 0.1 s of a CPU user's start."""
    if not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return None
    from . import triton_kernels

    return triton_kernels if triton_kernels.available(x) else None


def _needs_gradients(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd records an op on these tensors: the hand-written kernels have no backward (training)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _traced() -> bool:
    """Whether this code is being compiled, exported, traced or scripted rather than run."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting() or _fx_symbolic_tracing()


# Newer torch asks about fx.symbolic_trace alone (export answers is_compiling) and warns at each call of the
# older, broader question; older torch has only that one, without a warning.
_fx_trace = torch.fx._symbolic_trace
_fx_symbolic_tracing = getattr(_fx_trace, "is_fx_symbolic_tracing", _fx_trace.is_fx_tracing)
