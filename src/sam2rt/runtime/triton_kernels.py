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
# Layer norm rows of C=256: a bf16 row is 512 bytes, one 16-byte load per lane of one warp, so a row's mean and
# variance are sums within a warp (shuffles, no shared memory). 8 rows over 4 warps: 2 loads of each input in flight
# a lane, 8192 programs for (16, 4096, 256). Every choice of 4-32 rows and 1-8 warps ran within 2% of the others at
# 16 and 64 objects (2.8-3.0 TB/s, H100), 8 rows were among the fastest everywhere and the fastest at one object
# (2.7 us against 3.0 for 16 rows: more programs for 4096 tokens).
# Other widths (Hiera's 96 to 1152 channels) take a block of the next power of two, its lanes beyond C masked (no
# bytes moved), and as many rows as keep C=256's block of NORM_PROGRAM_ELEMENTS values: each lane then holds the same
# 16 fp32 values of each live tensor (x, y, the sum, its deviations) whatever C is, the register use measured at
# C=256, where 8 rows of a wide C would spill (768 channels: 64 values a lane) and 8 rows of a narrow one would leave
# a lane one load in flight. 128 channels (96, 112) take 16 rows, 512 (288 to 448) 4, 1024 (576 to 896) 2, 2048
# (1152, 44% of its lanes idle) one. At most NORM_MAX_CHANNELS: one row of 4096 channels, 32 values a lane. Untimed
# at widths other than 256 (written without a GPU): the benchmark's --norm-elements tries other blocks.
NORM_PROGRAM_ELEMENTS = 2048
NORM_WARPS = 4
NORM_MAX_CHANNELS = 4096
NORM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # computed in fp32: wider ones would lose bits
# Layer norm over the channels of a channels-first map (the mask downsampler's 4, 16, 64 and 256 channels): a block is
# C channels x P pixels, each channel's P pixels one dense run (a channel's plane is H*W apart from the next), so a
# warp's loads stay coalesced whatever C is. P = CHANNEL_NORM_ELEMENTS // C keeps a block at 4096 values whatever C
# is (32 fp32 registers a lane for x over 4 warps): 1024 pixels of 4 channels, 16 of 256.
# Each of the downsampler's maps is then 256 programs an object (4096 for 16 objects), and C=256's dense runs of 16
# bf16 pixels are 32 bytes, one memory sector. Untimed choices (written without a GPU): the benchmark's --elements
# and --warps try others.
CHANNEL_NORM_ELEMENTS = 4096
CHANNEL_NORM_WARPS = 4
CHANNEL_NORM_MAX_CHANNELS = 256  # the downsampler's widest; wider would take fewer pixels than a sector a run


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

    @triton.jit
    def _add_layer_norm(
        x_ptr,
        y_ptr,
        sum_ptr,
        normed_ptr,
        weight_ptr,
        bias_ptr,
        tokens,
        x_image_stride,
        x_line_stride,
        y_image_stride,
        y_line_stride,
        eps,
        CHANNELS: tl.constexpr,
        BLOCK: tl.constexpr,
        TOKENS: tl.constexpr,
    ):
        """One program: TOKENS tokens of one line of one image, each a dense run of CHANNELS values in x, y and both
        outputs (a line: one dense run of tokens, all of an image's or one line of a map whose lines lie apart).
        BLOCK, the power of two at or above CHANNELS, is the block's width: its lanes beyond CHANNELS load zeros,
        count in no statistic and store nothing. The sum is rounded to the outputs' dtype before it is normalised, so
        the norm sees what PyTorch's would."""
        image = tl.program_id(2).to(tl.int64)
        line = tl.program_id(1).to(tl.int64)
        token = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)  # (TOKENS,)
        channel = tl.arange(0, BLOCK)
        if BLOCK == CHANNELS:  # every lane a channel: the token mask alone, as before masked lanes existed
            mask = (token < tokens)[:, None]
        else:
            mask = (token < tokens)[:, None] & (channel < CHANNELS)[None, :]  # (TOKENS, BLOCK)
        offset = token.to(tl.int64)[:, None] * CHANNELS + channel[None, :]  # (TOKENS, BLOCK)
        x_at = x_ptr + image * x_image_stride + line * x_line_stride + offset
        y_at = y_ptr + image * y_image_stride + line * y_line_stride + offset
        if BLOCK == CHANNELS:  # the tokens past the line's end are never stored: any value does
            x, y = tl.load(x_at, mask=mask), tl.load(y_at, mask=mask)
        else:  # zeros in the lanes past C, which the sums below read
            x, y = tl.load(x_at, mask=mask, other=0.0), tl.load(y_at, mask=mask, other=0.0)
        total = (x.to(tl.float32) + y.to(tl.float32)).to(sum_ptr.dtype.element_ty)  # PyTorch's add: one rounding
        out_offset = (image * tl.num_programs(1) + line) * tokens * CHANNELS + offset  # dense (B, lines, tokens, C)
        tl.store(sum_ptr + out_offset, total, mask=mask)
        total = total.to(tl.float32)
        mean = tl.sum(total, axis=1) / CHANNELS  # (TOKENS,): masked lanes hold zeros
        centered = total - mean[:, None]
        if BLOCK != CHANNELS:
            centered = tl.where(mask, centered, 0.0)  # masked lanes would add mean^2 each to the variance
        variance = tl.sum(centered * centered, axis=1) / CHANNELS  # two passes over registers: no Welford needed
        if BLOCK == CHANNELS:
            weight = tl.load(weight_ptr + channel).to(tl.float32)
            bias = tl.load(bias_ptr + channel).to(tl.float32)
        else:
            weight = tl.load(weight_ptr + channel, mask=channel < CHANNELS, other=0.0).to(tl.float32)
            bias = tl.load(bias_ptr + channel, mask=channel < CHANNELS, other=0.0).to(tl.float32)
        normed = centered * tl.rsqrt(variance + eps)[:, None] * weight[None, :] + bias[None, :]
        tl.store(normed_ptr + out_offset, normed.to(normed_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _channel_norm_gelu(
        x_ptr,
        out_ptr,
        weight_ptr,
        bias_ptr,
        pixels,
        eps,
        CHANNELS: tl.constexpr,
        PIXELS: tl.constexpr,
        GELU: tl.constexpr,
    ):
        """One program: PIXELS pixels of one image of a channels-first map, all CHANNELS values of each (one dense run
        of pixels per channel, planes `pixels` apart), normalised over the channels, then exact GELU if asked."""
        image = tl.program_id(1).to(tl.int64)
        pixel = tl.program_id(0).to(tl.int64) * PIXELS + tl.arange(0, PIXELS)  # (PIXELS,)
        mask = (pixel < pixels)[None, :]
        channel = tl.arange(0, CHANNELS)
        offset = (image * CHANNELS + channel[:, None]) * pixels + pixel[None, :]  # (CHANNELS, PIXELS)
        x = tl.load(x_ptr + offset, mask=mask).to(tl.float32)
        mean = tl.sum(x, axis=0) / CHANNELS  # (PIXELS,)
        centered = x - mean[None, :]
        variance = tl.sum(centered * centered, axis=0) / CHANNELS  # biased, as LayerNorm2d's
        weight = tl.load(weight_ptr + channel).to(tl.float32)
        bias = tl.load(bias_ptr + channel).to(tl.float32)
        normed = centered * tl.rsqrt(variance + eps)[None, :] * weight[:, None] + bias[:, None]
        if GELU:  # exact, as nn.GELU(): x/2 (1 + erf(x / sqrt 2)), on the fp32 value (one rounding, at the store)
            normed = 0.5 * normed * (1.0 + tl.math.erf(normed * 0.7071067811865476))
        tl.store(out_ptr + offset, normed.to(out_ptr.dtype.element_ty), mask=mask)


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


def norm_rows_per_program(channels: int) -> int:
    """Tokens a program of `add_layer_norm` takes at C channels: NORM_PROGRAM_ELEMENTS values of its padded block."""
    return max(1, NORM_PROGRAM_ELEMENTS // triton.next_power_of_2(channels))


def _token_lines(x: Tensor, y: Tensor) -> Optional[tuple[int, int, tuple[int, int], tuple[int, int]]]:
    """x and y (1 or B, N, C) or (1 or B, H, W, C) read as lines of dense tokens: (lines an image, tokens a line, and
    for x and y their (image stride, line stride)), or None where a token's channels or a line's tokens are not one
    dense run. All of an image's tokens are one line where both are dense; a map cropped from a padded one (Hiera's
    windows) keeps each of its H lines of W tokens dense, its lines padded_W * C apart: read where they lie. A side of
    batch 1 is shared by every image: image stride 0."""
    channels = x.shape[-1]
    if any(t.stride(-1) != 1 or t.stride(-2) != channels for t in (x, y)):
        return None
    if x.dim() == 3 or all(t.stride(1) == t.shape[2] * channels for t in (x, y)):
        lines, tokens = 1, x.shape[1:-1].numel()  # (B, N, C), or (B, H, W, C) dense as (B, H*W, C)
        line_strides = (0, 0)
    else:
        lines, tokens = x.shape[1], x.shape[2]
        line_strides = (x.stride(1), y.stride(1))
    image_strides = [t.stride(0) if t.shape[0] > 1 else 0 for t in (x, y)]
    return lines, tokens, (image_strides[0], line_strides[0]), (image_strides[1], line_strides[1])


def add_layer_norm(
    x: Tensor, y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> Optional[tuple[Tensor, Tensor]]:
    """`runtime.kernels.add_layer_norm` in one pass: the sum s = x + y of x and y (1 or B, N, C) or (1 or B, H, W, C),
    a side of batch 1 shared by every image of the other, rounded to their dtype as PyTorch's sum is, and the layer
    norm of s over its C channels (fp32 statistics of the rounded sum); both new dense tensors of that dtype and of
    shape (B, N, C) or (B, H, W, C). Each token's C channels must be dense, and each image's tokens one dense run or
    (4-d) lines of W dense tokens at one stride. None, with nothing written, where the layouts do not fit or C is
    beyond NORM_MAX_CHANNELS (the caller runs the PyTorch form)."""
    if x.dim() not in (3, 4) or y.dim() != x.dim() or x.dtype != y.dtype or x.dtype not in NORM_DTYPES:
        return None
    batch, channels = max(x.shape[0], y.shape[0]), x.shape[-1]
    if x.shape[0] not in (1, batch) or y.shape[0] not in (1, batch) or y.shape[1:] != x.shape[1:]:
        return None
    if not 0 < channels <= NORM_MAX_CHANNELS or batch * x.shape[1:-1].numel() == 0:  # a token: one block's row
        return None
    if weight is None or bias is None or weight.shape != (channels,) or bias.shape != (channels,):
        return None
    if any(t.device != x.device for t in (y, weight, bias)):
        return None
    layout = _token_lines(x, y)
    if layout is None or max(batch, layout[0]) > 65535:  # the grid's second and third axes: lines and images
        return None
    lines, tokens, (x_image_stride, x_line_stride), (y_image_stride, y_line_stride) = layout
    total = torch.empty((batch, *x.shape[1:]), dtype=x.dtype, device=x.device)
    normed = torch.empty_like(total)
    rows_per_program = norm_rows_per_program(channels)
    grid = (triton.cdiv(tokens, rows_per_program), lines, batch)
    _add_layer_norm[grid](
        x,
        y,
        total,
        normed,
        weight.contiguous(),
        bias.contiguous(),
        tokens,
        x_image_stride,
        x_line_stride,
        y_image_stride,
        y_line_stride,
        eps,
        CHANNELS=channels,
        BLOCK=triton.next_power_of_2(channels),
        TOKENS=rows_per_program,
        num_warps=NORM_WARPS,
    )
    return total, normed


def channel_norm_gelu(x: Tensor, weight: Tensor, bias: Tensor, eps: float, gelu: bool) -> Optional[Tensor]:
    """`runtime.kernels.layer_norm_2d` in one pass: the layer norm of x (B, C, H, W), dense channels first, over its C
    channels (fp32 statistics, biased variance), scaled by weight and shifted by bias (C,), then exact GELU where
    `gelu`; a new dense tensor of x's dtype. None, with nothing written, where x does not fit: C not a power of two
    up to CHANNEL_NORM_MAX_CHANNELS, another layout (channels last takes `F.layer_norm`), another dtype."""
    if x.dim() != 4 or x.dtype not in NORM_DTYPES or not x.is_contiguous() or x.numel() == 0:
        return None
    batch, channels, height, width = x.shape
    if channels & (channels - 1) or channels > CHANNEL_NORM_MAX_CHANNELS:  # a pixel's channels: one block's column
        return None
    if weight.shape != (channels,) or bias.shape != (channels,) or any(t.device != x.device for t in (weight, bias)):
        return None
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    pixels = height * width
    pixels_per_program = max(1, CHANNEL_NORM_ELEMENTS // channels)
    grid = (triton.cdiv(pixels, pixels_per_program), batch)
    _channel_norm_gelu[grid](
        x,
        out,
        weight.contiguous(),
        bias.contiguous(),
        pixels,
        eps,
        CHANNELS=channels,
        PIXELS=pixels_per_program,
        GELU=gelu,
        num_warps=CHANNEL_NORM_WARPS,
    )
    return out
