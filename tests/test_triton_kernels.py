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
    import collections
    import json
    import numpy as np
    import torch
    import torch.nn.functional as F
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
    from sam2rt.model.hiera import Hiera
    from sam2rt.model.layers import LayerNorm2d
    from sam2rt.model.memory_attention import MemoryAttention
    from sam2rt.model.memory_encoder import MaskDownSampler
    from sam2rt.model.positional import rotary_tables
    from sam2rt.model.variants import HieraSpec
    from sam2rt.runtime import kernels, triton_kernels

    def relative(got, want):  # the largest difference in units of the value's size (at least 1)
        return ((got.float() - want.float()).abs() / want.float().abs().clamp(min=1)).max().item()

    def reference(x, cos, sin):  # each pair (a, b) -> (a cos - b sin, a sin + b cos), in fp32
        pairs = x.float().unflatten(-1, (-1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)

    launches = collections.Counter()  # each kernel's launches (a wrapper's None: the PyTorch form ran)
    def count_launches(name):
        kernel = getattr(triton_kernels, name)
        def counted(*args, **kwargs):
            out = kernel(*args, **kwargs)
            launches[name] += out is not None
            if name == "add_layer_norm":  # x or y a view cropped from a padded map (Hiera's windows)
                launches["cropped"] += out is not None and not (args[0].is_contiguous() and args[1].is_contiguous())
            return out
        setattr(triton_kernels, name, counted)
    for name in ("rotate_pairs", "add_layer_norm", "channel_norm_gelu"):
        count_launches(name)

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
    report["launches"] = launches["rotate_pairs"]

    odd = torch.randn(2, 16, 12)  # 6 pairs: no power-of-two block of channels, the PyTorch form runs
    odd_cos, odd_sin = rotary_tables(12, 4)
    report["odd channels declined"] = triton_kernels.rotate_pairs(odd, odd_cos, odd_sin) is None
    report["odd channels"] = (kernels.apply_rotary(odd, odd_cos, odd_sin) - reference(odd, odd_cos, odd_sin)).abs().max().item()
    strided = torch.randn(2, 16, 32)[..., ::2]  # channels 2 apart: no dense rows
    report["strided declined"] = triton_kernels.rotate_pairs(strided, cos, sin) is None
    before = launches["rotate_pairs"]
    trained = torch.randn(3, 1, 16, 16, requires_grad=True)  # with autograd: the PyTorch form, which has a backward
    report["rotary with gradients"] = kernels.apply_rotary(trained, cos, sin).requires_grad and launches["rotate_pairs"] == before

    def random_norm(channels, eps=1e-6):  # weights near 1 and biases near 0, not the initial ones and zeros
        norm = torch.nn.LayerNorm(channels, eps=eps)
        torch.nn.init.normal_(norm.weight, 1.0, 0.5), torch.nn.init.normal_(norm.bias, 0.0, 0.5)
        return norm

    def check_norm(case, x, y, norm):  # the kernel against PyTorch's add and layer norm
        with torch.no_grad():
            total, normed = kernels.add_layer_norm(x, y, norm)
            want = norm(x + y)
        report[f"sum equal {case}"] = torch.equal(total, x + y)
        report[f"norm {case}"] = relative(normed, want)
        report[f"norm share apart {case}"] = (normed != want).float().mean().item()
        report[f"norm dense {case}"] = normed.is_contiguous() and total.is_contiguous() and normed.dtype == x.dtype
        report[f"norm shape {case}"] = normed.shape == total.shape == (x + y).shape

    # The memory attention's 256 channels and Hiera's 96 and 384 (blocks of 128 and 512, lanes past C masked): 3
    # programs, the last partial; 16, and 12 in a block of 16, 5 tokens in one program
    rows = triton_kernels.norm_rows_per_program
    widths = [(channels, 2 * rows(channels) + 3) for channels in (256, 96, 384)] + [(16, 5), (12, 5)]
    for channels, tokens in widths:
        norm = random_norm(channels)
        for dtype in (torch.float32, torch.bfloat16):
            norm = norm.to(dtype)
            for x_batch in (1, 3):  # one frame shared by 3 objects, and one per object
                x = torch.randn(x_batch, tokens, channels, dtype=dtype) * 4 + 1
                y = torch.randn(3, tokens, channels, dtype=dtype)
                check_norm(f"{channels} {str(dtype).split('.')[-1]} x batch {x_batch}", x, y, norm)

    # Hiera's maps (B, H, W, C): dense, or cropped from a map padded to its windows (lines 9 tokens apart)
    norm = random_norm(96)
    for dtype in (torch.float32, torch.bfloat16):
        norm = norm.to(dtype)
        name = str(dtype).split(".")[-1]
        dense = torch.randn(2, 5, 7, 96, dtype=dtype) * 4 + 1
        cropped = torch.randn(2, 6, 9, 96, dtype=dtype)[:, :5, :7]
        shared = torch.randn(1, 5, 7, 96, dtype=dtype)
        other_cropped = torch.randn(2, 7, 8, 96, dtype=dtype)[:, 1:6, 1:]
        maps = {"dense": (dense, cropped.contiguous()), "cropped": (dense, cropped)}
        maps.update({"shared cropped": (shared, cropped), "both cropped": (other_cropped, cropped)})
        for layout, (x, y) in maps.items():
            check_norm(f"map {layout} {name}", x, y, norm)
    report["norm cropped launches"] = launches["cropped"]
    report["norm launches"] = launches["add_layer_norm"]

    wide = torch.nn.LayerNorm(triton_kernels.NORM_MAX_CHANNELS + 1)
    x, y = torch.randn(1, 2, wide.weight.shape[0]), torch.randn(1, 2, wide.weight.shape[0])
    report["norm wide declined"] = triton_kernels.add_layer_norm(x, y, wide.weight, wide.bias, 1e-5) is None
    with torch.no_grad():
        total, normed = kernels.add_layer_norm(x, y, wide)
    report["norm wide"] = torch.equal(total, x + y) and torch.equal(normed, wide(x + y))
    norm = torch.nn.LayerNorm(16)
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    transposed = torch.randn(2, 5, 7, 16).transpose(1, 2)  # (2, 7, 5, 16): a line's tokens 7 x 16 values apart
    declined = (
        triton_kernels.add_layer_norm(x, y.bfloat16(), norm.weight, norm.bias, 1e-5),  # dtypes differ
        triton_kernels.add_layer_norm(x, torch.randn(2, 5, 32)[..., ::2], norm.weight, norm.bias, 1e-5),  # strided
        triton_kernels.add_layer_norm(x, y, None, None, 1e-5),  # no affine parameters
        triton_kernels.add_layer_norm(transposed.contiguous(), transposed, norm.weight, norm.bias, 1e-5),
        triton_kernels.add_layer_norm(x, y[:, None], norm.weight, norm.bias, 1e-5),  # 3-d and 4-d
    )
    report["norm layouts declined"] = all(out is None for out in declined)
    with torch.no_grad():
        total, normed = kernels.add_layer_norm(transposed.contiguous(), transposed, norm)
    report["norm transposed"] = torch.equal(normed, norm(transposed.contiguous() + transposed))
    before = launches["add_layer_norm"]
    total, normed = kernels.add_layer_norm(x, y, norm)  # with autograd: the PyTorch form, which has a backward
    report["norm with gradients"] = normed.requires_grad and launches["add_layer_norm"] == before

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
    before, before_norm = launches["rotate_pairs"], launches["add_layer_norm"]
    fused, plain = attend(attention, torch.float32, **inputs)
    report["attention launches"] = launches["rotate_pairs"] - before
    report["attention norm launches"] = launches["add_layer_norm"] - before_norm
    report["attention"] = (fused - plain).abs().max().item()
    report["attention scale"] = plain.abs().max().item()
    fused, plain = attend(attention, torch.bfloat16, **inputs)
    report["attention bf16"] = relative(fused, plain)
    report["attention bf16 share apart"] = (fused != plain).float().mean().item()

    # A small Hiera: widths 12, 24, 48 and 96 on maps of 16x16 to 2x2; windows that do not tile the maps of stages 3 and
    # 4 (4x4 in windows of 6, 2x2 in windows of 3), whose blocks add a map cropped from the padded one
    spec = HieraSpec(12, 1, (1, 2, 3, 2), global_attention_blocks=(5,), window_sizes=(4, 2, 6, 3), pos_embed_grid=4)
    hiera = Hiera(spec).eval()
    for module in hiera.modules():
        if isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.normal_(module.weight, 1.0, 0.5), torch.nn.init.normal_(module.bias, 0.0, 0.5)
    torch.nn.init.normal_(hiera.pos_embed, 0.0, 0.5), torch.nn.init.normal_(hiera.pos_embed_window, 0.0, 0.5)
    images = torch.randn(2, 3, 64, 64)
    find = kernels._triton_kernels
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).split(".")[-1]
        hiera = hiera.to(dtype)
        with torch.no_grad():
            before, before_cropped = launches["add_layer_norm"], launches["cropped"]
            fused = torch.cat([out.flatten() for out in hiera(images.to(dtype))]).float()
            report[f"hiera launches {name}"] = launches["add_layer_norm"] - before
            report[f"hiera cropped launches {name}"] = launches["cropped"] - before_cropped
            kernels._triton_kernels = lambda x: None
            plain = torch.cat([out.flatten() for out in hiera(images.to(dtype))]).float()
            kernels._triton_kernels = find
        report[f"hiera {name}"] = relative(fused, plain)
        report[f"hiera share apart {name}"] = (fused != plain).float().mean().item()
        report[f"hiera scale {name}"] = plain.abs().max().item()
    report["hiera blocks"] = len(hiera.blocks)


    def plain_norm(x, norm, gelu):  # LayerNorm2d then nn.GELU, as the downsampler ran them
        normed = norm(x)
        return F.gelu(normed) if gelu else normed

    def norm_in(norm, dtype):  # a copy of a LayerNorm2d with parameters of that dtype
        copy = LayerNorm2d(norm.weight.shape[0]).to(dtype)
        copy.load_state_dict(norm.state_dict())
        return copy

    def beyond_one_step(got, want):  # the largest |got - want| beyond one bf16 step of want (2^-7 of 2^e <= |want|)
        step = torch.ldexp(torch.ones_like(want.float()), torch.frexp(want.float())[1] - 8)
        return ((got.float() - want.float()).abs() - step).max().item()

    # Maps of the downsampler's widths, each 2 programs an image, the last partial (1024, 256, 64, 16 pixels a program)
    for channels, side in ((4, 33), (16, 17), (64, 9), (256, 5)):
        norm = LayerNorm2d(channels)
        torch.nn.init.normal_(norm.weight, 1.0, 0.5), torch.nn.init.normal_(norm.bias, 0.0, 0.5)
        x = torch.randn(2, channels, side, side) * 3 + 1
        for gelu in (False, True):
            case = f"{channels} gelu {gelu}"
            with torch.no_grad():
                got = kernels.layer_norm_2d(x, norm, gelu)
                report[f"channels {case} float32"] = relative(got, plain_norm(x, norm, gelu))
                bf16_norm, bf16_x = norm_in(norm, torch.bfloat16), x.bfloat16()
                got = kernels.layer_norm_2d(bf16_x, bf16_norm, gelu)
                # The kernel's arithmetic: fp32 from the bf16 values, one rounding at the end
                want = plain_norm(bf16_x.float(), norm_in(bf16_norm, torch.float32), gelu).bfloat16()
                report[f"channels {case} beyond one step"] = beyond_one_step(got, want)
                report[f"channels {case} share apart"] = (got != want).float().mean().item()
                report[f"channels {case} dense"] = got.is_contiguous() and got.dtype == torch.bfloat16
                exact = plain_norm(bf16_x.double(), norm_in(bf16_norm, torch.float64), gelu)
                pytorch_bf16 = plain_norm(bf16_x, bf16_norm, gelu)  # rounds to bf16 after each of its ops
                report[f"channels {case} error"] = (got.double() - exact).abs().mean().item()
                report[f"channels {case} pytorch bf16 error"] = (pytorch_bf16.double() - exact).abs().mean().item()
    report["channel launches"] = launches["channel_norm_gelu"]

    norm = LayerNorm2d(12)
    x = torch.randn(2, 12, 5, 5)
    report["channels odd declined"] = triton_kernels.channel_norm_gelu(x, norm.weight, norm.bias, 1e-6, True) is None
    with torch.no_grad():
        report["channels odd"] = torch.equal(kernels.layer_norm_2d(x, norm, True), plain_norm(x, norm, True))
    wide = LayerNorm2d(512)
    x = torch.randn(1, 512, 2, 2)
    report["channels wide declined"] = triton_kernels.channel_norm_gelu(x, wide.weight, wide.bias, 1e-6, True) is None
    norm = LayerNorm2d(16)
    x = torch.randn(2, 16, 6, 6)
    last, strided = x.contiguous(memory_format=torch.channels_last), x[..., ::2]
    declined = [triton_kernels.channel_norm_gelu(t, norm.weight, norm.bias, 1e-6, True) for t in (last, strided)]
    report["channels layouts declined"] = all(out is None for out in declined)
    with torch.no_grad():
        before = launches["channel_norm_gelu"]
        same = [torch.equal(kernels.layer_norm_2d(t, norm, True), plain_norm(t, norm, True)) for t in (last, strided)]
    report["channels layouts"] = all(same) and launches["channel_norm_gelu"] == before
    before = launches["channel_norm_gelu"]
    trained = kernels.layer_norm_2d(x, norm, True)  # parameters that learn, with autograd: the PyTorch form
    report["channels with gradients"] = trained.requires_grad and launches["channel_norm_gelu"] == before

    downsampler = MaskDownSampler(embed_dim=32).eval()
    for module in downsampler.encoder:
        if isinstance(module, LayerNorm2d):  # not the initial ones and zeros
            torch.nn.init.normal_(module.weight, 1.0, 0.5), torch.nn.init.normal_(module.bias, 0.0, 0.5)
    mask = torch.randn(2, 1, 64, 64) * 10  # maps (2, 4, 32, 32), (2, 16, 16, 16), (2, 64, 8, 8), (2, 256, 4, 4)
    find = kernels._triton_kernels
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        downsampler = downsampler.to(dtype)
        with torch.no_grad():
            before = launches["channel_norm_gelu"]
            fused = downsampler(mask.to(dtype)).float()
            launched = launches["channel_norm_gelu"] - before
            kernels._triton_kernels = lambda x: None
            plain = downsampler(mask.to(dtype)).float()
            kernels._triton_kernels = find
        results[dtype] = fused, plain
        report[f"downsampler launches {dtype}"] = launched
    fused, plain = results[torch.float32]
    report["downsampler"] = relative(fused, plain)
    report["downsampler scale"] = plain.abs().max().item()
    report["downsampler spread"] = plain.std().item()
    fused_bf16, plain_bf16 = results[torch.bfloat16]
    report["downsampler bf16 error"] = (fused_bf16 - fused).abs().mean().item()
    report["downsampler pytorch bf16 error"] = (plain_bf16 - fused).abs().mean().item()
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
    # per layer: the sums before norm2 and norm3, and its last sum with the next layer's norm1 (or the final norm); only
    # the first layer's norm1 runs alone
    assert report["attention norm launches"] == 2 * 3
    assert report["attention scale"] > 0.1
    assert report["attention"] < 1e-5 * max(1.0, report["attention scale"])
    # bf16: a value one rounding step apart may carry into later layers; at most 2^-7 of max(1, |value|) in at most
    # 1% of the outputs (seen: equal)
    assert report["attention bf16"] <= 2**-7 and report["attention bf16 share apart"] <= 0.01


def test_hiera_with_the_kernel_equals_without(report):
    for dtype in ("float32", "bfloat16"):
        assert report[f"hiera launches {dtype}"] == report["hiera blocks"] == 8  # each block's sum and norm2
        # stage 3's windowed block (4x4 in windows of 6) and stage 4's two (the first pools 4x4 in windows of 6 to 2x2
        # in 3s; then 2x2 in windows of 3): `out` cropped from the padded map, read where it lies
        assert report[f"hiera cropped launches {dtype}"] == 3
        assert report[f"hiera scale {dtype}"] > 0.1
    assert report["hiera float32"] < 1e-5  # relative to max(1, |value|): fp32 statistics summed in another order
    # bf16: a norm one rounding step apart carries through the blocks after it; at most 2^-7 of max(1, |value|) in at
    # most 1% of the outputs of the four stages (seen: equal)
    assert report["hiera bfloat16"] <= 2**-7 and report["hiera share apart bfloat16"] <= 0.01


NORM_CASES = [
    f"{channels} {dtype} x batch {batch}"
    for channels in (256, 96, 384, 16, 12)
    for dtype in ("float32", "bfloat16")
    for batch in (1, 3)
] + [
    f"map {layout} {dtype}"
    for layout in ("dense", "cropped", "shared cropped", "both cropped")
    for dtype in ("float32", "bfloat16")
]


def test_residual_sum_and_layer_norm_equal_the_pytorch_form(report):
    assert report["norm launches"] == len(NORM_CASES)  # the kernel ran for each: any width, x broadcast, maps cropped
    assert report["norm cropped launches"] == 3 * 2  # the maps with a cropped side, fp32 and bf16
    for case in NORM_CASES:
        assert report[f"sum equal {case}"], case  # rounded to the dtype once, as PyTorch's sum is
        assert report[f"norm dense {case}"] and report[f"norm shape {case}"], case
        if "float32" in case:
            assert report[f"norm {case}"] < 1e-6, case  # fp32 statistics summed in another order
        else:  # at most one bf16 rounding step (2^-7 of max(1, |value|)) in at most 1% of the elements
            assert report[f"norm {case}"] <= 2**-7 and report[f"norm share apart {case}"] <= 0.01, case


def test_residual_sums_the_kernel_cannot_take_fall_back(report):
    assert report["norm wide declined"] and report["norm wide"]  # more channels than a block holds
    assert report["norm layouts declined"] and report["norm transposed"]


def test_training_runs_the_pytorch_forms_which_have_a_backward(report):
    assert report["rotary with gradients"] and report["norm with gradients"]


CHANNEL_CASES = [f"{channels} gelu {gelu}" for channels in (4, 16, 64, 256) for gelu in (False, True)]


def test_layer_norm_over_channels_and_gelu_equal_the_pytorch_form(report):
    assert report["channel launches"] == 2 * len(CHANNEL_CASES)  # the kernel ran for each case, fp32 and bf16
    for case in CHANNEL_CASES:
        assert report[f"channels {case} float32"] < 1e-5, case  # fp32 statistics summed in another order
        assert report[f"channels {case} dense"], case
        # bf16 against the kernel's arithmetic done by PyTorch (fp32 from the bf16 values, rounded once): at most one
        # rounding step apart, in at most 1% of the elements (seen: 0.2% with GELU, none or 0.01% without). Beyond that
        # step, 2^-20 where GELU's negative tail (|value| < 2^-10) is tiny: 1 + erf(x / sqrt 2) cancels in fp32 in
        # both forms, its last bit 2^-24, times |x| / 2 <= 4 (seen: 2.7e-7). GELU's slope is at most 1.13: it
        # amplifies no difference of the norms'.
        assert report[f"channels {case} beyond one step"] <= 2**-20, case
        assert report[f"channels {case} share apart"] <= 0.01, case
        # PyTorch's bf16 form rounds after each of its ~10 ops (the mean, x - mean, ...): the kernel is nearer exact
        assert report[f"channels {case} error"] < report[f"channels {case} pytorch bf16 error"], case


def test_channel_norms_the_kernel_cannot_take_fall_back(report):
    assert report["channels odd declined"] and report["channels odd"]  # 12 channels: not a power of two
    assert report["channels wide declined"]  # 512 channels: more than a block holds
    assert report["channels layouts declined"] and report["channels layouts"]  # channels last, strided


def test_channel_norms_with_gradients_run_the_pytorch_form(report):
    assert report["channels with gradients"]


def test_mask_downsampler_with_the_kernel_equals_without(report):
    for dtype in ("torch.float32", "torch.bfloat16"):
        assert report[f"downsampler launches {dtype}"] == 4  # one a stage: each norm and its GELU in one call
    assert report["downsampler scale"] > 0.1 and report["downsampler spread"] > 0.01  # not a constant map
    assert report["downsampler"] < 1e-5
    # bf16: not equal to PyTorch's bf16 form (its norms round each step), nearer the fp32 result (mean |difference|)
    assert report["downsampler bf16 error"] < report["downsampler pytorch bf16 error"]
