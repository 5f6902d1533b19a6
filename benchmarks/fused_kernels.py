"""Triton kernels of `runtime.triton_kernels` against the PyTorch forms they replace, bf16, CUDA only:

- add: the memory attention's residual sum and layer norm, `x + y` then `F.layer_norm`, against `add_layer_norm`;
  tokens (B, 4096, 256), x of batch 1 (the first layer: one frame for all objects) or B (`--objects`).
- hiera: the same at the widths of Hiera's blocks (the sum before norm2), maps (B, H, W, C) of tiny and small (96 to
  768 channels), base+ (112) and large (144, 1152) at 1024 px; "cropped": `out` a view cropped from the map padded to
  its windows (stage 3's 64x64 in windows of 14, stage 4's 32x32 in 7s), as Hiera adds it.
  With `--norm-elements`, one row for each block size (values a program, padded channels x tokens) the kernel tries.
- channels: the mask downsampler's LayerNorm2d and GELU over its four maps at 1024 px, (B, 4, 512, 512),
  (B, 16, 256, 256), (B, 64, 128, 128) and (B, 256, 64, 64), against `channel_norm_gelu` (`--downsampler-objects`);
  with `--elements` and `--warps`, one row for each block size (values a program) and warp count the kernel tries.
- downsampler: the whole MaskDownSampler over masks (B, 1, 1024, 1024), with the kernel and without.

    PYTHONPATH=src python benchmarks/fused_kernels.py [--objects 1 16 64] [--downsampler-objects 1 16]
        [--tables add hiera channels downsampler] [--elements 2048 4096 8192] [--warps 4 8]
        [--norm-elements 1024 2048 4096]

ms: the mean of `--calls` calls replayed from a CUDA graph, timed by CUDA events. GB/s: the bytes each call must move
(add, hiera: x and y read, the sum and the norm written; channels: the map read and written once) over that time;
PyTorch's kernels move more (its norm reads the sum back; LayerNorm2d makes about ten passes). Apart: the largest
|difference| of the outputs, and the share of their elements that differ; sums equal: whether the sums are
bit-identical. Error: the mean |difference| from the same computed in fp32 (channels: from the bf16 map; downsampler:
fp32 weights and arithmetic throughout), where PyTorch's bf16 LayerNorm2d rounds after each op and the kernel once.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

TOKENS, CHANNELS = 4096, 256
# (B, side, C, padded side or None) of Hiera's sums at 1024 px: tiny and small's four stages (96 to 768 channels), the
# blocks whose windows pad the map, base+'s first stage and large's first and last
HIERA_MAPS = [
    (1, 256, 96, None),
    (1, 128, 192, None),
    (1, 64, 384, None),
    (8, 64, 384, None),
    (1, 64, 384, 70),
    (8, 64, 384, 70),
    (1, 32, 768, None),
    (8, 32, 768, None),
    (8, 32, 768, 35),
    (1, 256, 112, None),
    (1, 256, 144, None),
    (1, 32, 1152, None),
]
DOWNSAMPLER_MAPS = [(4, 512), (16, 256), (64, 128), (256, 64)]  # (channels, side) of each stage at 1024 px


def milliseconds(call, calls: int) -> float:
    """Mean ms of `call` over `calls` calls replayed from one CUDA graph, as a tracking step replays them: GPU time,
    without the launches' CPU time (Triton's Python launch is slower than PyTorch's)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: Triton compiles, the allocator fills
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            call()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


NORM_HEADER = (
    f"{'values':>6} {'torch ms':>9} {'GB/s':>6} {'triton ms':>9} {'GB/s':>6} {'speed-up':>8} {'apart':>8} "
    f"{'% apart':>8}  sums equal"
)


def norm_rows(x, y, eps: float, args) -> list[str]:
    """One line for each `--norm-elements` (values a program of the kernel): PyTorch's `x + y` and layer norm against
    `add_layer_norm`, bf16, weights near 1 and biases near 0."""
    from sam2rt.runtime import triton_kernels

    channels = x.shape[-1]
    weight = torch.randn(channels, device="cuda", dtype=torch.bfloat16) * 0.5 + 1
    bias = torch.randn(channels, device="cuda", dtype=torch.bfloat16) * 0.5

    def pytorch():
        total = x + y
        return total, F.layer_norm(total, (channels,), weight, bias, eps)

    def fused():
        return triton_kernels.add_layer_norm(x, y, weight, bias, eps)

    want_sum, want = pytorch()
    torch_ms = milliseconds(pytorch, args.calls)
    moved = (x.numel() + 3 * y.numel()) * x.element_size()  # read x and y, write the sum and the norm
    default = triton_kernels.NORM_PROGRAM_ELEMENTS
    lines = []
    for values in args.norm_elements or [default]:
        triton_kernels.NORM_PROGRAM_ELEMENTS = values
        got_sum, got = fused()
        triton_ms = milliseconds(fused, args.calls)
        apart = (got.float() - want.float()).abs().max().item()
        share = (got != want).float().mean().item() * 100
        lines.append(
            f"{values:>6} {torch_ms:>9.4f} {moved / torch_ms / 1e6:>6.0f} {triton_ms:>9.4f} "
            f"{moved / triton_ms / 1e6:>6.0f} {torch_ms / triton_ms:>7.2f}x {apart:>8.2e} {share:>8.4f}  "
            f"{torch.equal(got_sum, want_sum)}"
        )
    triton_kernels.NORM_PROGRAM_ELEMENTS = default
    return lines


def add_layer_norm_table(args) -> None:
    print(f"{torch.cuda.get_device_name()}, bf16, tokens (B, {TOKENS}, {CHANNELS})")
    print(f"{'B':>4} {'x batch':>7} {NORM_HEADER}")
    for batch in args.objects:
        for x_batch in sorted({1, batch}):
            x = torch.randn(x_batch, TOKENS, CHANNELS, device="cuda", dtype=torch.bfloat16) * 4
            y = torch.randn(batch, TOKENS, CHANNELS, device="cuda", dtype=torch.bfloat16)
            for line in norm_rows(x, y, 1e-5, args):
                print(f"{batch:>4} {x_batch:>7} {line}")


def hiera_table(args) -> None:
    print(f"\n{torch.cuda.get_device_name()}, bf16, Hiera's residual sum and norm2, maps (B, H, W, C)")
    print(f"{'B':>4} {'map':>14} {'out':>12} {NORM_HEADER}")
    for batch, side, channels, padded_side in HIERA_MAPS:
        x = torch.randn(batch, side, side, channels, device="cuda", dtype=torch.bfloat16) * 4
        if padded_side is None:
            y = torch.randn_like(x)
        else:  # (B, padded, padded, C)[:, :side, :side]: lines padded_side * C values apart
            padded = torch.randn(batch, padded_side, padded_side, channels, device="cuda", dtype=torch.bfloat16)
            y = padded[:, :side, :side]
        layout = "dense" if padded_side is None else f"cropped {padded_side}"
        for line in norm_rows(x, y, 1e-6, args):
            print(f"{batch:>4} {f'{side}x{side}x{channels}':>14} {layout:>12} {line}")


@contextmanager
def pytorch_forms_only() -> Iterator[None]:
    """Within: `runtime.kernels` finds no Triton kernels and runs its PyTorch forms."""
    from sam2rt.runtime import kernels

    find = kernels._triton_kernels
    kernels._triton_kernels = lambda x: None
    try:
        yield
    finally:
        kernels._triton_kernels = find


def random_norm(channels: int):
    """A LayerNorm2d of weights near 1 and biases near 0 (not its initial ones and zeros), bf16 on CUDA."""
    from sam2rt.model.layers import LayerNorm2d

    norm = LayerNorm2d(channels)
    torch.nn.init.normal_(norm.weight, 1.0, 0.5), torch.nn.init.normal_(norm.bias, 0.0, 0.5)
    return norm.to("cuda", torch.bfloat16)


def channel_norm_table(args) -> None:
    from sam2rt.runtime import kernels, triton_kernels

    elements = args.elements or [triton_kernels.CHANNEL_NORM_ELEMENTS]
    warps = args.warps or [triton_kernels.CHANNEL_NORM_WARPS]
    print(f"\n{torch.cuda.get_device_name()}, bf16, the mask downsampler's LayerNorm2d + GELU")
    print(
        f"{'B':>4} {'map':>16} {'values':>6} {'warps':>5} {'torch ms':>9} {'GB/s':>6} {'triton ms':>9} {'GB/s':>6} "
        f"{'speed-up':>8} {'apart':>8} {'% apart':>8} {'err torch':>9} {'err triton':>10}"
    )
    for batch in args.downsampler_objects:
        for channels, side in DOWNSAMPLER_MAPS:
            norm = random_norm(channels)
            x = torch.randn(batch, channels, side, side, device="cuda", dtype=torch.bfloat16) * 3 + 1
            with torch.no_grad():

                def pytorch():
                    return F.gelu(norm(x))

                def fused():
                    return kernels.layer_norm_2d(x, norm, gelu=True)

                exact = F.gelu(norm.float()(x.float()))
                norm.bfloat16()
                want = pytorch()
                torch_ms = milliseconds(pytorch, args.calls)
                moved = 2 * x.numel() * x.element_size()  # the map read and written once
                shape = f"{channels}x{side}x{side}"
                for values in elements:
                    for warp_count in warps:
                        triton_kernels.CHANNEL_NORM_ELEMENTS, triton_kernels.CHANNEL_NORM_WARPS = values, warp_count
                        got = fused()
                        triton_ms = milliseconds(fused, args.calls)
                        apart = (got.float() - want.float()).abs().max().item()
                        share = (got != want).float().mean().item() * 100
                        torch_error, triton_error = [(out.float() - exact).abs().mean().item() for out in (want, got)]
                        print(
                            f"{batch:>4} {shape:>16} {values:>6} {warp_count:>5} {torch_ms:>9.4f} "
                            f"{moved / torch_ms / 1e6:>6.0f} {triton_ms:>9.4f} {moved / triton_ms / 1e6:>6.0f} "
                            f"{torch_ms / triton_ms:>7.2f}x {apart:>8.2e} {share:>8.4f} "
                            f"{torch_error:>9.2e} {triton_error:>10.2e}"
                        )
    triton_kernels.CHANNEL_NORM_ELEMENTS, triton_kernels.CHANNEL_NORM_WARPS = elements[0], warps[0]


def downsampler_table(args) -> None:
    from sam2rt.model.layers import LayerNorm2d
    from sam2rt.model.memory_encoder import MaskDownSampler

    downsampler = MaskDownSampler(CHANNELS).eval()
    for module in downsampler.encoder:
        if isinstance(module, LayerNorm2d):
            torch.nn.init.normal_(module.weight, 1.0, 0.5), torch.nn.init.normal_(module.bias, 0.0, 0.5)
    downsampler = downsampler.to("cuda", torch.bfloat16)  # the fp32 reference takes the same (bf16) weights
    print(f"\n{torch.cuda.get_device_name()}, bf16, MaskDownSampler, masks (B, 1, 1024, 1024)")
    print(
        f"{'B':>4} {'torch ms':>9} {'triton ms':>9} {'speed-up':>8} {'apart':>8} {'mean apart':>10} "
        f"{'err torch':>9} {'err triton':>10}"
    )
    for batch in args.downsampler_objects:
        mask = torch.randn(batch, 1, 1024, 1024, device="cuda") * 10
        with torch.no_grad():
            exact = downsampler.float()(mask)
            downsampler.bfloat16()
            masks = mask.bfloat16()

            def pytorch():
                with pytorch_forms_only():
                    return downsampler(masks)

            def fused():
                return downsampler(masks)

            want, got = pytorch(), fused()
            torch_ms, triton_ms = milliseconds(pytorch, args.calls), milliseconds(fused, args.calls)
        difference = (got.float() - want.float()).abs()
        apart, mean_apart = difference.max().item(), difference.mean().item()
        torch_error, triton_error = [(out.float() - exact).abs().mean().item() for out in (want, got)]
        print(
            f"{batch:>4} {torch_ms:>9.4f} {triton_ms:>9.4f} {torch_ms / triton_ms:>7.2f}x "
            f"{apart:>8.2e} {mean_apart:>10.2e} {torch_error:>9.2e} {triton_error:>10.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 16, 64], help="add: batches of tokens")
    parser.add_argument("--downsampler-objects", type=int, nargs="+", default=[1, 16], help="channels, downsampler")
    parser.add_argument("--tables", nargs="+", choices=["add", "hiera", "channels", "downsampler"])
    parser.add_argument("--norm-elements", type=int, nargs="+", help="add, hiera: values a program (powers of two)")
    parser.add_argument("--elements", type=int, nargs="+", help="channels: values a program (powers of two)")
    parser.add_argument("--warps", type=int, nargs="+", help="channels: warps a program")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/fused_kernels.py needs a CUDA GPU (with Triton); none is visible here.")
    from sam2rt.runtime import triton_kernels

    if not triton_kernels.available(torch.empty(0, device="cuda")):
        sys.exit("Triton cannot be imported: the kernels cannot run.")
    torch.manual_seed(0)
    tables = args.tables or ["add", "hiera", "channels", "downsampler"]
    if "add" in tables:
        add_layer_norm_table(args)
    if "hiera" in tables:
        hiera_table(args)
    if "channels" in tables:
        channel_norm_table(args)
    if "downsampler" in tables:
        downsampler_table(args)


if __name__ == "__main__":
    main()
