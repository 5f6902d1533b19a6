"""`runtime.kernels.group_norm`'s CUDA form (statistics by a reduction over the whole GPU, one fused affine pass),
run here on the CPU against PyTorch's GroupNorm: the numbers SAM 3's pixel decoder gets on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sam2rt.runtime.kernels import group_norm, group_norm_by_reduction


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_by_reduction_is_pytorchs_group_norm(affine):
    generator = torch.Generator().manual_seed(0)
    norm = nn.GroupNorm(8, 64, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.randn(64, generator=generator))
            norm.bias.copy_(torch.randn(64, generator=generator))
    x = 3 + 2 * torch.randn(2, 64, 18, 20, generator=generator)  # (B, C, H, W), off-centre: the mean matters
    expected = norm(x)
    torch.testing.assert_close(group_norm_by_reduction(x, norm), expected, rtol=1e-5, atol=1e-5)
    # bf16 input, as on a GPU: fp32 arithmetic and one rounding, as PyTorch's kernel on bf16
    rounded = group_norm_by_reduction(x.bfloat16(), norm)
    assert rounded.dtype == torch.bfloat16
    torch.testing.assert_close(rounded.float(), norm(x.bfloat16().float()), rtol=1e-2, atol=1e-2)
    assert expected.std() > 0.5  # normalised values, not a constant


def test_group_norm_keeps_pytorchs_module_off_cuda_and_under_autograd():
    norm = nn.GroupNorm(4, 16)
    x = torch.randn(1, 16, 5, 5, requires_grad=True)
    out = group_norm(x, norm)
    out.sum().backward()  # PyTorch's GroupNorm: it has a backward
    assert x.grad is not None
    assert torch.equal(out, norm(x))
