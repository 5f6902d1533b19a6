"""torch.compile as a runtime option: compiled modules compute what eager ones do, and keep compiled code for
every memory length a stream meets (dynamo's default of 8 compiles per function would fall back to eager)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

import sam2rt
from sam2rt.runtime import optimize, use_compile
from sam2rt.runtime.compile import RECOMPILE_LIMIT
from sam2rt.runtime.kernels import depthwise_as_shifts

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test counts its own compiles; dynamo's caches and counters are process-wide."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _memory_inputs(model, batch: int, frames: int, pointers: int, padded: bool, seed: int):
    """Arguments of the memory attention: image tokens and `frames` frames of memory plus pointer tokens."""
    config = model.config
    tokens, width, mem_dim = config.feature_size**2, config.hidden_dim, config.memory_dim
    length = frames * tokens + pointers * (width // mem_dim)
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, tokens, width, generator=generator)
    image_pos = torch.randn(1, tokens, width, generator=generator)
    memory = torch.randn(batch, length, mem_dim, generator=generator)
    memory_pos = torch.randn(batch, length, mem_dim, generator=generator)
    key_mask = None
    if padded:  # the first row lacks its second frame, as an object prompted one frame later would
        key_mask = torch.ones(batch, length, dtype=torch.bool)
        key_mask[0, tokens : 2 * tokens] = False
    return image, image_pos, memory, memory_pos, frames, key_mask


def _attend(model, inputs) -> torch.Tensor:
    image, image_pos, memory, memory_pos, frames, key_mask = inputs
    return model.memory_attention(image, image_pos, memory, memory_pos, spatial_frames=frames, key_mask=key_mask)


def test_inductor_memory_attention_equals_eager():
    """Inductor's CPU code for the memory attention of tiny (fp32, 256 px), against the eager module."""
    torch.manual_seed(0)
    eager = sam2rt.build_model("sam2.1_hiera_tiny", image_size=256)
    compiled = use_compile(copy.deepcopy(eager))
    inputs = _memory_inputs(eager, batch=2, frames=3, pointers=4, padded=True, seed=0)
    with torch.inference_mode():
        expected, got = _attend(eager, inputs), _attend(compiled, inputs)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames == 1  # compiled whole: one graph, no graph break
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-4 * scale


def test_every_memory_length_stays_compiled():
    """dynamic=False compiles once per memory length: 12 lengths, more than dynamo's default limit of 8."""
    torch.manual_seed(0)
    eager = sam2rt.build_model("sam2.1_hiera_tiny", image_size=128)
    del eager.memory_attention.layers[1:]  # one layer of four: the same code, a quarter of the tracing time
    compiled = use_compile(copy.deepcopy(eager), dynamic=False, backend="eager")
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT
    shapes = [(frames, pointers, frames > 2) for frames, pointers in zip(range(1, 8), range(1, 8))]
    shapes += [(7, pointers, True) for pointers in range(8, 13)]
    with torch.inference_mode():
        for seed, (frames, pointers, padded) in enumerate(shapes):
            inputs = _memory_inputs(eager, batch=2, frames=frames, pointers=pointers, padded=padded, seed=seed)
            # Traced by dynamo, not generated: equal up to fp32 rounding (bit for bit on torch 2.13, not on 2.11).
            torch.testing.assert_close(_attend(compiled, inputs), _attend(eager, inputs), rtol=1e-5, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == len(shapes)  # none ran eager


def test_compiled_memory_encoder_runs_its_depthwise_convs_as_shifted_products():
    """Traced by dynamo, the fuser's depthwise convs become shifted products (one fused kernel under inductor);
    the output equals the eager module's, which runs them as convolutions."""
    torch.manual_seed(0)
    encoder = sam2rt.build_model("sam2.1_hiera_tiny", image_size=128).memory_encoder
    with torch.no_grad():
        for block in encoder.fuser.layers:
            block.gamma.fill_(1.0)  # the trained scale lets the convs' output through; the initial 1e-6 would hide it
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(encoder.forward, backend=recording_backend, dynamic=False)
    features, mask = torch.randn(2, 256, 8, 8), torch.randn(2, 1, 128, 128)
    with torch.inference_mode():
        expected, got = encoder(features, mask), compiled(features, mask)
        fused = encoder.pix_feat_proj(features) + encoder.mask_downsampler(mask)
        assert (encoder.fuser(fused) - fused).abs().max() > 0.1  # the blocks change what they are given
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    convs = [node for graph in graphs for node in graph.graph.nodes if node.target is torch.conv2d]
    groups = [node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1) for node in convs]
    assert len(convs) == 7 and set(groups) == {1}  # the downsampler's 5, the two projections; no depthwise


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_depthwise_convs_as_shifted_products_equal_the_conv(dtype):
    """Called directly: fp32 equals the conv to rounding; bf16 input and weights (accumulated in fp32, rounded
    once) stay within bf16's rounding of the fp32 result."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, kernel_size=7, padding=3, groups=16)
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        expected = conv(x)
        got = depthwise_as_shifts(x.to(dtype), conv.to(dtype)).float()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < tolerance * max(1.0, expected.abs().max().item())


def test_depthwise_as_shifts_refuses_other_convs():
    with pytest.raises(AssertionError):
        depthwise_as_shifts(torch.randn(1, 4, 8, 8), torch.nn.Conv2d(4, 4, kernel_size=3, padding=1))  # not depthwise
    with pytest.raises(AssertionError):
        depthwise_as_shifts(torch.randn(1, 4, 8, 8), torch.nn.Conv2d(4, 4, kernel_size=3, stride=2, groups=4))


def test_automatic_dynamic_compiles_few_graphs():
    """By default the sizes that change become symbolic: a growing memory costs two compiles, not one per length."""
    eager = sam2rt.build_model("sam2.1_hiera_tiny", image_size=128)
    compiled = use_compile(copy.deepcopy(eager), backend="eager")
    with torch.inference_mode():
        for frames in range(1, 8):
            _attend(compiled, _memory_inputs(eager, batch=1, frames=frames, pointers=frames, padded=False, seed=0))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # the first shapes, then symbolic sizes


def test_bad_compile_requests():
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=64)
    with pytest.raises(ValueError, match="compile mode must be one of"):
        use_compile(model, mode="reduce-overhead")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="compile needs the model on a CUDA device"):
            optimize(model, compile=True)


def test_cli_compile_needs_cuda(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the error of a machine without CUDA")
    from cli_support import assert_clean_error, invoke_in_process, write_clip  # PyAV: not on every GPU machine

    clip = write_clip(tmp_path / "clip.mp4", 2)  # a valid input: the refusal is about the device alone
    result = invoke_in_process(capsys, "track", clip, "--point", "5,5", "--compile", "--device", "cpu")
    assert_clean_error(result, "--compile needs a CUDA device, and the model would run on cpu")
    picture = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(picture)
    args = ("image", picture, "--everything", "-o", tmp_path / "masks.json", "--compile", "--device", "cpu")
    assert_clean_error(invoke_in_process(capsys, *args), "--compile needs a CUDA device")
    assert not (tmp_path / "masks.json").exists()


@cuda
def test_compiled_graphs_track_like_eager():
    """bf16 weights, compiled and replayed from graphs (`optimize(compile=True)`, the --compile of the commands),
    against fp32 eager: the same masks within bf16 noise, on weights whose objects are present."""
    from test_runtime import _track, assert_tracks_alike
    from visible import visible_model

    model = visible_model(image_size=256).cuda()
    with torch.inference_mode():
        reference = _track(model, count=12)
        fast = _track(optimize(copy.deepcopy(model), compile=True), count=12, memory_dtype=None)
    assert len(fast) == len(reference) == 15
    assert_tracks_alike(fast, reference, "compiled + graphs")
