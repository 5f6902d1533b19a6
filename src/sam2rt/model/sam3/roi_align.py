"""RoIAlign (Mask R-CNN's pooling of a feature map inside boxes), the numbers of `torchvision.ops.roi_align`,
written as two small matrix products per box instead of one bilinear sample at a time.

Each output bin averages a regular grid of bilinear samples. A sample's bilinear weights are a product of a
weight over rows and a weight over columns, and so is its validity (torchvision drops a sample lying more than
one pixel outside the map in either direction): the pooled bins of a box are `Wy @ features @ Wx^T`, where
Wy (out_h, H) gathers, for each bin row, the averaged row weights of its samples, and Wx likewise for columns.
"""

from __future__ import annotations

import torch
from torch import Tensor


def roi_align(
    features: Tensor,
    boxes: Tensor,
    output_size: int,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pool features (B, C, H, W) inside boxes (B, N, 4) -> (B, N, C, output_size, output_size).

    Boxes are x0, y0, x1, y1 in the units of the map times 1 / `spatial_scale` (a box per row of its own image;
    SAM 3 pads each image's boxes to the same count). `sampling_ratio` samples per bin and axis, or, when not
    positive, ceil(bin size) of them (torchvision's adaptive grid, its default and SAM 3's). `aligned` shifts
    the boxes by half a pixel and keeps boxes under a pixel wide as they are.
    """
    height, width = features.shape[-2:]
    # the sample positions in fp32 whatever the features' dtype: bf16 would place them a quarter pixel off at 72
    boxes = boxes.float() * spatial_scale - (0.5 if aligned else 0.0)
    x0, y0, x1, y1 = boxes.unbind(-1)  # (B, N) each
    row_weights = _axis_weights(y0, y1, output_size, height, sampling_ratio, aligned)  # (B, N, out, H)
    col_weights = _axis_weights(x0, x1, output_size, width, sampling_ratio, aligned)  # (B, N, out, W)
    row_weights, col_weights = row_weights.to(features.dtype), col_weights.to(features.dtype)
    rows_pooled = torch.einsum("bnph,bchw->bncpw", row_weights, features)
    return torch.einsum("bncpw,bnqw->bncpq", rows_pooled, col_weights)


def _axis_weights(start: Tensor, end: Tensor, bins: int, size: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """Along one axis of length `size`: boxes from `start` to `end` (B, N), in pixels of the map, cut into `bins`
    bins -> (B, N, bins, size), each bin's average of its samples' bilinear weights over the pixels."""
    extent = end - start
    if not aligned:
        extent = extent.clamp(min=1.0)  # torchvision's legacy behaviour: a box is at least a pixel
    bin_size = extent / bins
    if sampling_ratio > 0:
        per_bin = torch.full_like(bin_size, float(sampling_ratio))
    else:
        per_bin = torch.ceil(bin_size)  # 0 for an aligned empty box: no sample, a zero bin
    step = bin_size / per_bin.clamp(min=1.0)  # (B, N), the spacing of a bin's samples
    bin_start = start[..., None] + torch.arange(bins, device=start.device, dtype=start.dtype) * bin_size[..., None]

    if sampling_ratio > 0:
        sample = torch.arange(sampling_ratio, device=start.device, dtype=start.dtype).expand(*bin_start.shape, -1)
    else:
        # An adaptive grid has ceil(bin size) samples, as many as a huge box needs; only those within the
        # map's reach [-1, size] weigh anything. Their spacing exceeds half a pixel whenever a bin holds more
        # than one sample, so at most 2 * size + 3 of them are in reach: enumerate that many, from just
        # before the first in reach (a fixed count, whatever the boxes, so no shape depends on the data).
        first = torch.floor((-1.0 - bin_start) / step[..., None] - 0.5) - 1.0  # (B, N, bins)
        first = first.clamp(min=0.0)
        window = torch.arange(2 * size + 6, device=start.device, dtype=start.dtype)
        sample = first[..., None] + window  # (B, N, bins, S): indices of the samples within their bin
    position = bin_start[..., None] + (sample + 0.5) * step[..., None, None]  # (B, N, bins, S)
    counted = (sample < per_bin[..., None, None]) & (position >= -1.0) & (position <= size)
    # within reach, a sample outside the map takes the border pixel's value
    clamped = position.clamp(0.0, size - 1.0)
    pixels = torch.arange(size, device=start.device, dtype=start.dtype)
    weights = (1.0 - (clamped[..., None] - pixels).abs()).clamp(min=0.0)  # (B, N, bins, S, size)
    weights = (weights * counted[..., None]).sum(dim=-2)  # (B, N, bins, size)
    return weights / per_bin.clamp(min=1.0)[..., None, None]
