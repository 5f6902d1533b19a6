"""The Triton kernels of `runtime.triton_kernels`, run on the CPU by Triton's interpreter (TRITON_INTERPRET=1, set
before Triton is imported, hence a subprocess): the same numbers as the PyTorch forms they replace on CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

CHECKS = textwrap.dedent(
    """
    import json
    import torch
    from sam2rt.model.memory_attention import MemoryAttention
    from sam2rt.model.positional import rotary_tables
    from sam2rt.runtime import kernels, triton_kernels

    def relative(got, want):  # the largest difference in units of the value's size (at least 1)
        return ((got.float() - want.float()).abs() / want.float().abs().clamp(min=1)).max().item()

    def reference(x, cos, sin):  # each pair (a, b) -> (a cos - b sin, a sin + b cos), in fp32
        pairs = x.float().unflatten(-1, (-1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)

    launches = 0
    rotate_pairs = triton_kernels.rotate_pairs
    def counted(*args, **kwargs):
        global launches
        out = rotate_pairs(*args, **kwargs)
        launches += out is not None
        return out
    triton_kernels.rotate_pairs = counted

    torch.manual_seed(0)
    cos, sin = rotary_tables(16, 4)  # 16 tokens, 8 pairs
    report = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).split(".")[-1]
        queries = torch.randn(3, 1, 16, 16, dtype=dtype)
        got = kernels.apply_rotary(queries, cos, sin)
        report[f"queries {name}"] = relative(got, reference(queries, cos, sin))
        keys = torch.randn(2, 1, 3 * 16 + 5, 16, dtype=dtype)  # 3 frames of 16 tokens, then 5 pointer tokens
        pointers = keys[:, :, 48:].clone()
        frames = keys[:, :, :48].unflatten(2, (3, 16))  # (B, 1, frames, N, d): rows 53 tokens apart
        expected = reference(frames, cos, sin)
        written = kernels.apply_rotary(frames, cos, sin, out=frames)
        report[f"frames in place {name}"] = relative(written, expected)
        report[f"pointers kept {name}"] = torch.equal(keys[:, :, 48:], pointers)
        report[f"written in place {name}"] = written.data_ptr() == keys.data_ptr()
    report["launches"] = launches

    odd = torch.randn(2, 16, 12)  # 6 pairs: no power-of-two block of channels, the PyTorch form runs
    odd_cos, odd_sin = rotary_tables(12, 4)
    report["odd channels declined"] = triton_kernels.rotate_pairs(odd, odd_cos, odd_sin) is None
    report["odd channels"] = (kernels.apply_rotary(odd, odd_cos, odd_sin) - reference(odd, odd_cos, odd_sin)).abs().max().item()
    strided = torch.randn(2, 16, 32)[..., ::2]  # channels 2 apart: no dense rows
    report["strided declined"] = triton_kernels.rotate_pairs(strided, cos, sin) is None

    attention = MemoryAttention(d_model=16, memory_dim=8, feature_size=4, num_layers=2).eval()
    image, image_pos = torch.randn(1, 16, 16), torch.randn(1, 16, 16)
    memory, memory_pos = torch.randn(2, 3 * 16 + 4, 8), torch.randn(2, 3 * 16 + 4, 8)
    with torch.no_grad():
        before = launches
        fused = attention(image, image_pos, memory, memory_pos, spatial_frames=3)
        report["attention launches"] = launches - before
        kernels._triton_kernels = lambda x: None  # the PyTorch forms only
        plain = attention(image, image_pos, memory, memory_pos, spatial_frames=3)
    report["attention"] = (fused - plain).abs().max().item()
    report["attention scale"] = plain.abs().max().item()
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def report() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", CHECKS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_rotation_equals_the_pytorch_form(report):
    assert report["queries float32"] < 1e-6
    assert report["frames in place float32"] < 1e-6
    # bf16 in, fp32 arithmetic, bf16 out: at most one rounding step apart (bf16 keeps 8 bits: 2^-7 of the value)
    assert report["queries bfloat16"] <= 2**-7 and report["frames in place bfloat16"] <= 2**-7


def test_key_frames_rotate_where_they_lie_and_pointer_tokens_stay(report):
    for dtype in ("float32", "bfloat16"):
        assert report[f"pointers kept {dtype}"]
        assert report[f"written in place {dtype}"]
    assert report["launches"] == 4  # the kernel ran for each call above, not the PyTorch form


def test_layouts_the_kernel_cannot_take_fall_back(report):
    assert report["odd channels declined"] and report["strided declined"]
    assert report["odd channels"] < 1e-6


def test_memory_attention_with_the_kernel_equals_without(report):
    assert report["attention launches"] == 2 * 4  # per layer: queries and keys of the self- and the cross-attention
    assert report["attention scale"] > 0.1
    assert report["attention"] < 1e-5 * max(1.0, report["attention scale"])
