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
    import numpy as np
    import torch
    import triton.language as tl
    from triton.runtime import interpreter

    # Triton's interpreter (3.6) casts fp32 to bf16 by dropping the low bits, where compiled kernels round to
    # nearest even, as PyTorch does: its casts round here as they do on the GPU, so bf16 sums compare exactly.
    truncating_cast = interpreter.InterpreterBuilder.cast_impl
    def rounding_cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.array(src.data, dtype=np.float32)).bfloat16().view(torch.uint16).numpy()
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        return truncating_cast(self, src, dst_type)
    interpreter.InterpreterBuilder.cast_impl = rounding_cast
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

    norm_launches = 0
    add_layer_norm = triton_kernels.add_layer_norm
    def counted_norm(*args, **kwargs):
        global norm_launches
        out = add_layer_norm(*args, **kwargs)
        norm_launches += out is not None
        return out
    triton_kernels.add_layer_norm = counted_norm

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
    before = launches
    trained = torch.randn(3, 1, 16, 16, requires_grad=True)  # with autograd: the PyTorch form, which has a backward
    report["rotary with gradients"] = kernels.apply_rotary(trained, cos, sin).requires_grad and launches == before

    blocks = triton_kernels.NORM_ROWS_PER_PROGRAM
    for channels, tokens in ((256, 2 * blocks + 3), (16, 5)):  # the model's width: 3 programs, the last partial
        norm = torch.nn.LayerNorm(channels, eps=1e-6)
        torch.nn.init.normal_(norm.weight, 1.0, 0.5), torch.nn.init.normal_(norm.bias, 0.0, 0.5)
        for dtype in (torch.float32, torch.bfloat16):
            norm = norm.to(dtype)
            for x_batch in (1, 3):  # one frame shared by 3 objects, and one per object
                x = torch.randn(x_batch, tokens, channels, dtype=dtype) * 4 + 1
                y = torch.randn(3, tokens, channels, dtype=dtype)
                with torch.no_grad():
                    total, normed = kernels.add_layer_norm(x, y, norm)
                    want = norm(x + y)
                case = f"{channels} {str(dtype).split('.')[-1]} x batch {x_batch}"
                report[f"sum equal {case}"] = torch.equal(total, x + y)
                report[f"norm {case}"] = relative(normed, want)
                report[f"norm share apart {case}"] = (normed != want).float().mean().item()
                report[f"norm dense {case}"] = normed.is_contiguous() and normed.dtype == dtype
    report["norm launches"] = norm_launches

    norm = torch.nn.LayerNorm(12)
    x, y = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    report["norm odd channels declined"] = triton_kernels.add_layer_norm(x, y, norm.weight, norm.bias, 1e-5) is None
    with torch.no_grad():
        total, normed = kernels.add_layer_norm(x, y, norm)
    report["norm odd channels"] = torch.equal(total, x + y) and torch.equal(normed, norm(x + y))
    norm = torch.nn.LayerNorm(16)
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    declined = (
        triton_kernels.add_layer_norm(x, y.bfloat16(), norm.weight, norm.bias, 1e-5),  # dtypes differ
        triton_kernels.add_layer_norm(x, torch.randn(2, 5, 32)[..., ::2], norm.weight, norm.bias, 1e-5),  # strided
        triton_kernels.add_layer_norm(x, y, None, None, 1e-5),  # no affine parameters
    )
    report["norm layouts declined"] = all(out is None for out in declined)
    before = norm_launches
    total, normed = kernels.add_layer_norm(x, y, norm)  # with autograd: the PyTorch form, which has a backward
    report["norm with gradients"] = normed.requires_grad and norm_launches == before

    def attend(attention, dtype, **tensors):  # (with the kernels, with the PyTorch forms only)
        attention = attention.to(dtype)
        inputs = {name: value.to(dtype) for name, value in tensors.items()}
        find = kernels._triton_kernels
        with torch.no_grad():
            fused = attention(**inputs, spatial_frames=3)
            kernels._triton_kernels = lambda x: None
            plain = attention(**inputs, spatial_frames=3)
        kernels._triton_kernels = find
        return fused.float(), plain.float()

    attention = MemoryAttention(d_model=16, memory_dim=8, feature_size=4, num_layers=2).eval()
    inputs = dict(image=torch.randn(1, 16, 16), image_pos=torch.randn(1, 16, 16))
    inputs.update(memory=torch.randn(2, 3 * 16 + 4, 8), memory_pos=torch.randn(2, 3 * 16 + 4, 8))
    before, before_norm = launches, norm_launches
    fused, plain = attend(attention, torch.float32, **inputs)
    report["attention launches"] = launches - before
    report["attention norm launches"] = norm_launches - before_norm
    report["attention"] = (fused - plain).abs().max().item()
    report["attention scale"] = plain.abs().max().item()
    fused, plain = attend(attention, torch.bfloat16, **inputs)
    report["attention bf16"] = relative(fused, plain)
    report["attention bf16 share apart"] = (fused != plain).float().mean().item()
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
    assert report["attention norm launches"] == 2 * 2  # per layer: the sums before norm2 and norm3
    assert report["attention scale"] > 0.1
    assert report["attention"] < 1e-5 * max(1.0, report["attention scale"])
    # bf16: a value one rounding step apart may carry into later layers; at most 2^-7 of max(1, |value|) in at most
    # 1% of the outputs (seen: equal)
    assert report["attention bf16"] <= 2**-7 and report["attention bf16 share apart"] <= 0.01


NORM_CASES = [
    f"{channels} {dtype} x batch {batch}"
    for channels in (256, 16)
    for dtype in ("float32", "bfloat16")
    for batch in (1, 3)
]


def test_residual_sum_and_layer_norm_equal_the_pytorch_form(report):
    assert report["norm launches"] == len(NORM_CASES)  # the kernel ran for each, x broadcast or not
    for case in NORM_CASES:
        assert report[f"sum equal {case}"], case  # rounded to the dtype once, as PyTorch's sum is
        assert report[f"norm dense {case}"], case
        if "float32" in case:
            assert report[f"norm {case}"] < 1e-6, case  # fp32 statistics summed in another order
        else:  # at most one bf16 rounding step (2^-7 of max(1, |value|)) in at most 1% of the elements
            assert report[f"norm {case}"] <= 2**-7 and report[f"norm share apart {case}"] <= 0.01, case


def test_residual_sums_the_kernel_cannot_take_fall_back(report):
    assert report["norm odd channels declined"] and report["norm odd channels"]
    assert report["norm layouts declined"]


def test_training_runs_the_pytorch_forms_which_have_a_backward(report):
    assert report["rotary with gradients"] and report["norm with gradients"]
