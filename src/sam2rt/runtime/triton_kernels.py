"""Hand-written Triton kernels for elementwise work that PyTorch runs as several passes over memory.

Triton ships with PyTorch's CUDA wheels (inductor generates Triton code), so this adds no dependency; where it
cannot be imported, `runtime.kernels` keeps its PyTorch form. The kernels compute in fp32 from the tensor's
own dtype and write that dtype, as the PyTorch form does. With TRITON_INTERPRET=1 set before this module is
imported, Triton's interpreter runs them on CPU tensors (the tests' way to check them without a GPU).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU wheels of torch come without Triton
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TOKENS_PER_PROGRAM = 32
WARPS = 8


def available(x: Tensor) -> bool:
    """Whether these kernels can run on x's device: CUDA with Triton, or any device under the interpreter."""
    return triton is not None and (x.is_cuda or INTERPRETED)


if triton is not None:

    @triton.jit
    def _rotate_pairs(
        x_ptr,
        out_ptr,
        cos_ptr,
        sin_ptr,
        tokens,
        table_rows,
        x_row_stride,
        out_row_stride,
        CHANNELS: tl.constexpr,
        TOKENS: tl.constexpr,
    ):
        """One program: TOKENS tokens of one row, each read and written as one dense run of CHANNELS values (wide
        vector loads), its channel pairs rotated by the token's row of the tables."""
        row = tl.program_id(1).to(tl.int64)
        token = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)  # (TOKENS,)
        mask = (token < tokens)[:, None]
        offset = token.to(tl.int64)[:, None] * CHANNELS + tl.arange(0, CHANNELS)[None, :]  # (TOKENS, CHANNELS)
        x = tl.load(x_ptr + row * x_row_stride + offset, mask=mask).to(tl.float32)
        real, imag = tl.split(tl.reshape(x, (TOKENS, CHANNELS // 2, 2)))  # (TOKENS, CHANNELS // 2) each
        pair = (token % table_rows)[:, None] * (CHANNELS // 2) + tl.arange(0, CHANNELS // 2)[None, :]
        cos = tl.load(cos_ptr + pair, mask=mask).to(tl.float32)  # a sequence of frames repeats the table
        sin = tl.load(sin_ptr + pair, mask=mask).to(tl.float32)
        rotated = tl.reshape(tl.join(real * cos - imag * sin, real * sin + imag * cos), (TOKENS, CHANNELS))
        tl.store(out_ptr + row * out_row_stride + offset, rotated.to(out_ptr.dtype.element_ty), mask=mask)


def rows_of_tokens(x: Tensor) -> Optional[Tensor]:
    """x (..., A, B, d) as a view (R, A * B, d) whose rows are dense runs of tokens at one stride, or None where
    no such view exists. (A key sequence sliced to its frames has dense rows that are not adjacent.)"""
    if x.dim() < 3 or x.stride(-1) != 1:
        return None
    try:
        return x.flatten(-3, -2).view(-1, x.shape[-3] * x.shape[-2], x.shape[-1])
    except RuntimeError:  # x's layout is not dense within a row, or no single stride spans its rows
        return None


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor, out: Optional[Tensor] = None) -> Optional[Tensor]:
    """`runtime.kernels.apply_rotary` in one pass: channel pairs of x (..., N, d), or (..., frames, N, d), rotated
    by cos/sin (N, d // 2), into `out` (x itself allowed) or a new tensor. None, with nothing written, where the
    layouts do not fit (the caller runs the PyTorch form)."""
    table_rows, half = cos.shape
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    rows, out_rows = rows_of_tokens(x), rows_of_tokens(out)
    channels = x.shape[-1]
    if rows is None or out_rows is None or channels != 2 * half or x.shape[-2] != table_rows:
        return None
    if channels & (channels - 1):  # a block's channels are one power-of-two range
        return None
    tokens = rows.shape[1]  # whole tables: token t's row of the table is t % N
    grid = (triton.cdiv(tokens, TOKENS_PER_PROGRAM), rows.shape[0])
    _rotate_pairs[grid](
        rows,
        out_rows,
        cos.contiguous(),
        sin.contiguous(),
        tokens,
        table_rows,
        rows.stride(0),
        out_rows.stride(0),
        CHANNELS=channels,
        TOKENS=TOKENS_PER_PROGRAM,
        num_warps=WARPS,
    )
    return out
