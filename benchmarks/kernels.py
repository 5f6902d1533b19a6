"""The memory attention's residual sum and layer norm: PyTorch's `x + y` then `F.layer_norm` against the one Triton
kernel of `runtime.triton_kernels.add_layer_norm`, bf16, tokens (B, 4096, 256), x of batch 1 (the first layer: one
frame for all objects) or B. CUDA only.

    PYTHONPATH=src python benchmarks/kernels.py [--objects 1 16 64]

ms: the mean of `--calls` calls replayed from a CUDA graph, timed by CUDA events. GB/s: the bytes each call must move (x and y
read, the sum and the norm written) over that time; PyTorch's two kernels move more (its norm reads the sum back).
Apart: the largest |difference| of the norms, and the share of their elements that differ; sums equal: whether the sums are bit-identical.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

TOKENS, CHANNELS = 4096, 256


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels.py needs a CUDA GPU (with Triton); none is visible here.")
    from sam2rt.runtime import triton_kernels

    if not triton_kernels.available(torch.empty(0, device="cuda")):
        sys.exit("Triton cannot be imported: the kernel cannot run.")
    torch.manual_seed(0)
    weight = torch.randn(CHANNELS, device="cuda", dtype=torch.bfloat16) * 0.5 + 1
    bias = torch.randn(CHANNELS, device="cuda", dtype=torch.bfloat16) * 0.5
    eps = 1e-5
    print(f"{torch.cuda.get_device_name()}, bf16, tokens (B, {TOKENS}, {CHANNELS})")
    print(
        f"{'B':>4} {'x batch':>7} {'torch ms':>9} {'GB/s':>6} {'triton ms':>9} {'GB/s':>6} {'speed-up':>8} {'apart':>8} {'% apart':>8}  sums equal"
    )
    for batch in args.objects:
        for x_batch in sorted({1, batch}):
            x = torch.randn(x_batch, TOKENS, CHANNELS, device="cuda", dtype=torch.bfloat16) * 4
            y = torch.randn(batch, TOKENS, CHANNELS, device="cuda", dtype=torch.bfloat16)

            def pytorch():
                total = x + y
                return total, F.layer_norm(total, (CHANNELS,), weight, bias, eps)

            def fused():
                return triton_kernels.add_layer_norm(x, y, weight, bias, eps)

            (want_sum, want), (got_sum, got) = pytorch(), fused()
            moved = (x.numel() + 3 * y.numel()) * x.element_size()  # read x and y, write the sum and the norm
            torch_ms, triton_ms = milliseconds(pytorch, args.calls), milliseconds(fused, args.calls)
            apart = (got.float() - want.float()).abs().max().item()
            share = (got != want).float().mean().item() * 100
            print(
                f"{batch:>4} {x_batch:>7} {torch_ms:>9.4f} {moved / torch_ms / 1e6:>6.0f} {triton_ms:>9.4f} "
                f"{moved / triton_ms / 1e6:>6.0f} {torch_ms / triton_ms:>7.2f}x {apart:>8.2e} {share:>8.4f}  {torch.equal(got_sum, want_sum)}"
            )


if __name__ == "__main__":
    main()
