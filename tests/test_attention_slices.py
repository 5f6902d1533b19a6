"""One object's memory attention on CUDA runs over slices of its keys, combined by log-sum-exp: the same result."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sam2rt.runtime.kernels import SLICED_MIN_KEYS, attention, attention_for_graphs, sliced_key_attention


def _attend_with_lse(q, k, v):
    """Plain attention returning its log-sum-exp, as the cuDNN kernel does."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, Nq, Nk)
    return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)


@pytest.mark.parametrize("slices", [2, 4])
def test_slices_combine_to_whole_attention(slices):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 50, 32, generator=generator, dtype=torch.float32)
    k = torch.randn(1, 1, 64, 32, generator=generator, dtype=torch.float32)
    v = torch.randn(1, 1, 64, 32, generator=generator, dtype=torch.float32)
    k[:, :, 16:32] *= 6  # one slice with much larger scores: it must dominate by its log-sum-exp, not by count
    got = sliced_key_attention(q, k, v, slices, _attend_with_lse)
    expected = F.scaled_dot_product_attention(q, k, v)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5  # combined in float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuDNN attention)")
def test_one_row_on_cuda_uses_slices_within_bf16_noise():
    generator = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, 1, 4096, 256)
    q = torch.randn(shape, generator=generator, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 1, SLICED_MIN_KEYS * 2, 256, generator=generator, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(k.shape, generator=generator, device="cuda", dtype=torch.bfloat16)
    with attention_for_graphs():
        got = attention(q, k, v).float()
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert (got - expected).abs().max().item() < 2e-2 * expected.abs().max().item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuDNN attention)")
@pytest.mark.parametrize("rows", [1, 4])
def test_values_narrower_than_keys_on_cuda_within_bf16_noise(rows):
    """Memory attention's raw 64-wide values under 256-wide keys: cuDNN (sliced for one row) takes them."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(rows, 1, 4096, 256, generator=generator, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(rows, 1, SLICED_MIN_KEYS * 2, 256, generator=generator, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(rows, 1, SLICED_MIN_KEYS * 2, 64, generator=generator, device="cuda", dtype=torch.bfloat16)
    with attention_for_graphs():
        got = attention(q, k, v).float()
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert got.shape == (rows, 1, 4096, 64)
    assert (got - expected).abs().max().item() < 2e-2 * expected.abs().max().item()
