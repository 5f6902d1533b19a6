"""The mask decoder's fast paths compute what the plain formulation does: attention with a short side as
block-diagonal matmuls, and the upscaling as per-pixel matmuls instead of transposed convolutions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam2rt.model import layers
from sam2rt.model.layers import FEW_TOKENS, Attention, block_diagonal_heads
from sam2rt.model.mask_decoder import MaskDecoder


def _plain_attention(module: Attention, q, k, v):
    """Projections, scaled dot-product attention over heads, output projection: no shortcut."""
    q, k, v = module.project(q, k, v)
    batch = max(q.shape[0], k.shape[0])
    q, k, v = (x.expand(batch, -1, -1, -1) for x in (q, k, v))
    return module.finish(F.scaled_dot_product_attention(q, k, v))


def test_block_diagonal_heads_places_each_head_on_the_diagonal():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)  # 4 heads of width 2
    blocks = block_diagonal_heads(x, 4)
    assert blocks.shape == (2, 12, 8)
    for head in range(4):
        rows, cols = slice(head * 3, head * 3 + 3), slice(head * 2, head * 2 + 2)
        assert torch.equal(blocks[:, rows, cols], x[:, :, cols])
        outside = blocks[:, rows].clone()
        outside[:, :, cols] = 0
        assert not outside.any()


@pytest.mark.parametrize(
    "q_shape, kv_shape",
    [
        ((3, 300, 64), (3, 7, 64)),  # image -> tokens: few keys
        ((1, 300, 64), (3, 7, 64)),  # the same with one image shared by every row
        ((3, 7, 64), (3, 300, 64)),  # tokens -> image: few queries
        ((3, 7, 64), (1, 300, 64)),  # the same over a shared image
        ((3, 7, 64), (3, 7, 64)),  # tokens among themselves
        ((3, FEW_TOKENS, 64), (3, 300, 64)),  # the largest short side still takes the fast path
    ],
)
def test_attention_with_a_short_side_equals_plain_attention(q_shape, kv_shape, monkeypatch):
    def no_kernel(*args, **kwargs):
        raise AssertionError("a short side must not reach the attention kernels")

    monkeypatch.setattr(layers, "attention", no_kernel)
    generator = torch.Generator().manual_seed(1)
    module = Attention(64, num_heads=8, downsample_rate=2)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    q = torch.randn(q_shape, generator=generator) * 2
    kv = torch.randn(kv_shape, generator=generator) * 2
    expected = _plain_attention(module, q, kv, kv)
    got = module(q, kv, kv)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())


def test_a_side_just_longer_than_few_tokens_takes_the_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(
        layers,
        "attention",
        lambda q, k, v, key_mask=None: calls.append(q.shape) or F.scaled_dot_product_attention(q, k, v),
    )
    module = Attention(64, num_heads=8, downsample_rate=2)
    module(torch.randn(2, FEW_TOKENS + 1, 64), torch.randn(2, 300, 64), torch.randn(2, 300, 64))
    assert calls == [(2, 8, FEW_TOKENS + 1, 4)]


@pytest.mark.parametrize(
    "q_shape, kv_shape",
    [((2, 50, 32), (2, 5, 32)), ((2, 5, 32), (2, 50, 32)), ((1, 50, 32), (2, 5, 32)), ((2, 5, 32), (1, 50, 32))],
)
def test_attention_with_a_short_side_passes_gradients_like_plain_attention(q_shape, kv_shape):
    generator = torch.Generator().manual_seed(2)
    module = Attention(32, num_heads=4, downsample_rate=2)
    q = torch.randn(q_shape, generator=generator, requires_grad=True)
    kv = torch.randn(kv_shape, generator=generator, requires_grad=True)
    module(q, kv, kv).square().sum().backward()
    fast = [q.grad.clone(), kv.grad.clone()] + [p.grad.clone() for p in module.parameters()]
    q.grad = kv.grad = None
    module.zero_grad()
    _plain_attention(module, q, kv, kv).square().sum().backward()
    plain = [q.grad, kv.grad] + [p.grad for p in module.parameters()]
    for a, b in zip(fast, plain):
        assert (a - b).abs().max().item() < 1e-4 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("shared_skips", [True, False])
def test_upscaling_by_matmuls_equals_transposed_convolutions(shared_skips):
    generator = torch.Generator().manual_seed(3)
    decoder = MaskDecoder(dim=64)
    with torch.no_grad():
        for parameter in decoder.output_upscaling.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    batch, height, width = 3, 5, 6
    tokens = torch.randn(batch, height * width, 64, generator=generator)  # (B, h*w, C)
    skip_batch = 1 if shared_skips else batch
    feat_s0 = torch.randn(skip_batch, 8, 4 * height, 4 * width, generator=generator)
    feat_s1 = torch.randn(skip_batch, 16, 2 * height, 2 * width, generator=generator)
    hyper_in = torch.randn(batch, 4, 8, generator=generator)

    deconv1, norm1, act1, deconv2, act2 = decoder.output_upscaling
    image = tokens.transpose(1, 2).reshape(batch, 64, height, width)  # (B, C, h, w)
    upscaled = act2(deconv2(act1(norm1(deconv1(image) + feat_s1))) + feat_s0)  # (B, C/8, 4h, 4w)
    expected = torch.einsum("bmc,bchw->bmhw", hyper_in, upscaled)

    got = decoder._upscaled_masks(tokens, (feat_s0, feat_s1), hyper_in, height, width)
    assert got.shape == (batch, 4, 4 * height, 4 * width)
    assert (got - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())


def test_a_short_side_keeps_the_autocast_dtype():
    module = Attention(64, num_heads=8, downsample_rate=2)
    image, tokens = torch.randn(2, 300, 64), torch.randn(2, 7, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _plain_attention(module, image, tokens, tokens).dtype
        assert module(image, tokens, tokens).dtype == module(tokens, image, image).dtype == plain == torch.bfloat16
