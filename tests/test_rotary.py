"""The axial rotary encoding: eager (complex numbers) and compiled (real pairs) forms rotate every channel pair alike."""

from __future__ import annotations

import math

import pytest
import torch

from sam2rt.model.memory_attention import RotaryAttention
from sam2rt.model.positional import rotary_tables
from sam2rt.runtime.kernels import apply_rotary


def _rotated_pair_by_pair(x, cos, sin):
    """Each channel pair (x0, x1) of each token times its 2 x 2 rotation matrix, one at a time."""
    out = torch.empty_like(x)
    for token in range(x.shape[-2]):
        for pair in range(x.shape[-1] // 2):
            c, s = cos[token, pair], sin[token, pair]
            x0, x1 = x[..., token, 2 * pair], x[..., token, 2 * pair + 1]
            out[..., token, 2 * pair] = c * x0 - s * x1
            out[..., token, 2 * pair + 1] = s * x0 + c * x1
    return out


@pytest.mark.parametrize("compiled", [False, True])
def test_rotary_rotates_each_pair_by_its_angle(compiled):
    cos, sin = rotary_tables(head_dim=8, side=3)
    assert cos.shape == sin.shape == (9, 4)
    assert torch.allclose(cos**2 + sin**2, torch.ones_like(cos))
    x = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(0))  # (B, frames, N, d): frames share angles
    rotate = torch.compile(apply_rotary, backend="eager", fullgraph=True) if compiled else apply_rotary
    got = rotate(x, cos, sin)
    assert (got - _rotated_pair_by_pair(x, cos, sin)).abs().max().item() < 1e-5
    # a rotation keeps each pair's length
    lengths = x.unflatten(-1, (-1, 2)).norm(dim=-1)
    assert torch.allclose(got.unflatten(-1, (-1, 2)).norm(dim=-1), lengths, atol=1e-5)


def test_rotary_angles_follow_x_then_y():
    cos, sin = rotary_tables(head_dim=8, side=3)
    angles = torch.atan2(sin, cos)  # (9, 4): pairs 0-1 turn with x, pairs 2-3 with y
    token = 1 * 3 + 2  # row y = 1, column x = 2
    assert math.isclose(angles[token, 0].item(), 2.0, abs_tol=1e-5)  # the first frequency is 1
    assert math.isclose(angles[token, 2].item(), 1.0, abs_tol=1e-5)


class _Rotary(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cos, self.sin = rotary_tables(head_dim=8, side=3)

    def forward(self, x):
        return apply_rotary(x, self.cos, self.sin)


def _graph_of(tracer: str, module: torch.nn.Module, x: torch.Tensor):
    """(the graph as text, the traced callable) of each way torch turns code into a graph."""
    if tracer == "jit.trace":
        traced = torch.jit.trace(module, (x,))
        return str(traced.graph), traced
    if tracer == "fx.symbolic_trace":
        traced = torch.fx.symbolic_trace(module)
        return traced.code, traced
    exported = torch.export.export(module, (x,))
    return str(exported.graph), exported.module()


@pytest.mark.parametrize("tracer", ["jit.trace", "fx.symbolic_trace", "export"])
def test_a_traced_rotary_holds_no_complex_operators(tracer):
    module, x = _Rotary(), torch.randn(1, 9, 8)
    graph, traced = _graph_of(tracer, module, x)
    assert "complex" not in graph  # exported graphs (ONNX) have no complex operators
    assert "view_as_real" not in graph and "stack" in graph  # the real form was traced
    assert (traced(x) - module(x)).abs().max().item() < 1e-6


def test_rotation_in_place_equals_a_new_tensor():
    cos, sin = rotary_tables(head_dim=8, side=3)
    x = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(1))
    expected = apply_rotary(x, cos, sin)
    written = x.clone()
    assert apply_rotary(written, cos, sin, out=written) is written
    assert torch.equal(written, expected)


def test_keys_rotated_in_place_at_inference_equal_the_differentiable_path():
    """At inference the memory's key frames are rotated where they lie; with autograd, into a new sequence with
    the unrotated pointer tokens after them: the same attention either way (its kernels differ, values-after on
    the CPU at inference)."""
    torch.manual_seed(0)
    layer = RotaryAttention(8, num_heads=1, kv_in_dim=4)
    rope = rotary_tables(head_dim=8, side=3)
    queries, keys = torch.randn(2, 9, 8), torch.randn(2, 3 * 9 + 5, 4)  # 3 frames of 9 tokens, 5 pointer tokens
    with torch.no_grad():
        in_place = layer(queries, keys, keys, rope, rotary_frames=3)
    with torch.enable_grad():
        differentiable = layer(queries, keys, keys, rope, rotary_frames=3)
    assert differentiable.requires_grad
    torch.testing.assert_close(in_place, differentiable.detach(), rtol=1e-5, atol=1e-6)  # other kernels: rounding
