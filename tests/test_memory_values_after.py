"""Memory cross-attention over the memory's raw values, projected after: the same result as projecting first."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam2rt.model.memory_attention import RotaryAttention
from sam2rt.model.positional import rotary_tables
from sam2rt.runtime import kernels
from sam2rt.runtime.kernels import attends_raw_values, attention_for_graphs

WIDTH, MEMORY_DIM, SIDE = 256, 64, 8


def _cross_attend(layer: RotaryAttention, values_after: bool, monkeypatch, key_mask=None):
    """The layer's output with the values-after path forced on or off; records the value projection's inputs."""
    monkeypatch.setattr(kernels, "attends_raw_values", lambda q, values_projection: values_after)
    generator = torch.Generator().manual_seed(1)
    tokens, frames, pointer_tokens = SIDE * SIDE, 3, 8
    q = torch.randn(2, tokens, WIDTH, generator=generator)
    k = torch.randn(2, frames * tokens + pointer_tokens, MEMORY_DIM, generator=generator)
    v = torch.randn(k.shape, generator=generator)
    projected_rows = []
    hook = layer.v_proj.register_forward_hook(lambda module, args, out: projected_rows.append(args[0].shape[-2]))
    try:
        with torch.inference_mode():
            out = layer(q, k, v, rotary_tables(WIDTH, SIDE), rotary_frames=frames, key_mask=key_mask)
    finally:
        hook.remove()
    return out, projected_rows


@pytest.mark.parametrize("masked", [False, True])
def test_values_after_equals_values_first(monkeypatch, masked):
    torch.manual_seed(0)
    layer = RotaryAttention(WIDTH, num_heads=1, kv_in_dim=MEMORY_DIM)
    key_mask = None
    if masked:  # the first row lacks its second frame of memory
        key_mask = torch.ones(2, 3 * SIDE * SIDE + 8, dtype=torch.bool)
        key_mask[0, SIDE * SIDE : 2 * SIDE * SIDE] = False
    first, first_rows = _cross_attend(layer, False, monkeypatch, key_mask)
    after, after_rows = _cross_attend(layer, True, monkeypatch, key_mask)
    assert first_rows == [3 * SIDE * SIDE + 8]  # projected the memory's keys' rows
    assert after_rows == [SIDE * SIDE]  # projected the attention's outputs, one per query
    scale = max(1.0, first.abs().max().item())
    assert (after - first).abs().max().item() < 1e-5 * scale


def test_values_after_on_cpu_at_inference():
    memory = RotaryAttention(WIDTH, num_heads=1, kv_in_dim=MEMORY_DIM)
    self_attention = RotaryAttention(WIDTH, num_heads=1)
    q = torch.zeros(1, 1, 4, WIDTH)  # (B, heads, N, d)
    with torch.inference_mode():
        assert attends_raw_values(q, memory.v_proj)  # blockwise attention
        assert not attends_raw_values(q, self_attention.v_proj)  # values as wide as the head: nothing to gain
        assert not attends_raw_values(q.bfloat16(), memory.v_proj)  # PyTorch's attention, which accumulates in fp32
    with torch.enable_grad():
        assert not attends_raw_values(q, memory.v_proj)  # training: PyTorch's attention, which autograd differentiates


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_values_after_in_captured_cuda_code_only():
    memory = RotaryAttention(WIDTH, num_heads=1, kv_in_dim=MEMORY_DIM).cuda()
    self_attention = RotaryAttention(WIDTH, num_heads=1).cuda()
    q = torch.zeros(1, 1, 4, WIDTH, device="cuda")  # (B, heads, N, d)
    with torch.inference_mode():
        assert not attends_raw_values(q, memory.v_proj)  # uncaptured: flash, which takes no narrower values
        with attention_for_graphs():
            assert attends_raw_values(q, memory.v_proj)
            assert not attends_raw_values(q, self_attention.v_proj)


@pytest.mark.parametrize("masked", [False, True])
def test_blockwise_attention_equals_pytorch_attention(monkeypatch, masked):
    """Several blocks of queries (the last one short), two heads, one side's batch shared, masked keys."""
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 50, 32, generator=generator)
    k = torch.randn(3, 2, 70, 32, generator=generator)
    v = torch.randn(3, 2, 70, 8, generator=generator)
    key_mask = None
    if masked:
        key_mask = torch.rand(3, 70, generator=generator) > 0.3
        key_mask[:, 0] = True  # each row keeps a key
    monkeypatch.setattr(kernels, "SCORE_BLOCK_BYTES", 16 * 70 * 4)  # blocks of 16 queries: 16, 16, 16, 2
    with torch.inference_mode():
        blockwise = kernels.attention(q, k, v, key_mask)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        expected = F.scaled_dot_product_attention(q.expand(3, -1, -1, -1), k, v, attn_mask=mask)
    assert blockwise.shape == (3, 2, 50, 8)
    assert (blockwise - expected).abs().max().item() < 1e-5


def test_blockwise_attention_keeps_autograd_on_pytorch_attention():
    q = torch.randn(1, 1, 6, 16, requires_grad=True)
    k, v = torch.randn(1, 1, 9, 16), torch.randn(1, 1, 9, 4)
    out = kernels.attention(q, k, v)
    out.sum().backward()  # blockwise attention writes in place, which autograd cannot differentiate
    assert q.grad is not None and q.grad.abs().sum() > 0
