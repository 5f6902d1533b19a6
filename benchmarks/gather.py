"""The memory gather of one tracking step: a pool's arena indexed by slot against the same memories
stacked slot by slot (as the offline video predictor's archive is, and as streams were before the arena).

Each object has a full history (8 prompted frames, 16 tracked), the heavy case: the gather then packs
8 + 6 spatial memories and up to 23 pointers per object. Prints a table: median ms per gather over
--runs calls, after --warmup, for each object count, and the dispatcher ops each call runs.

    python benchmarks/gather.py --device cuda --image-size 1024 --objects 1 4 8
    python benchmarks/gather.py --device cpu --threads 2 --image-size 64      # host cost alone
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from image import timed  # noqa: E402
from test_memory_arena import Unpooled  # noqa: E402 - a ring seen without its arena: stacked slot by slot

from sam2rt.model.variants import ModelConfig, get_variant  # noqa: E402
from sam2rt.tracking.memory_arena import MemoryArena  # noqa: E402
from sam2rt.tracking.memory_gather import gather  # noqa: E402
from sam2rt.tracking.object_memory import RingMemory  # noqa: E402


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _rings(config: ModelConfig, objects: int, dtype: torch.dtype, device: torch.device) -> list[RingMemory]:
    arena = MemoryArena(config, 8, lambda: (dtype, device))
    rings = []
    for _ in range(objects):
        ring = RingMemory(arena)
        memory = torch.randn(config.feature_size**2, config.memory_dim, device=device).to(dtype)
        pointer = torch.randn(config.hidden_dim, device=device)
        for t in range(8):
            ring.write_conditioning(t, memory, pointer)
        for t in range(8, 24):
            ring.write_tracked(t, memory, pointer)
        rings.append(ring)
    return rings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = ModelConfig(get_variant(args.variant), args.image_size)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"{args.variant} at {args.image_size}, {device}, threads {torch.get_num_threads()}, memory {dtype}")
    print("| objects | by index ms | slot by slot ms | ratio | ops by index | ops slot by slot |")
    print("|---|---|---|---|---|---|")
    for objects in args.objects:
        rings = _rings(config, objects, dtype, device)
        frames = [24] * objects
        timings, ops = [], []
        for views in (rings, [Unpooled(ring) for ring in rings]):

            def call(views=views):
                return gather(views, frames, False, config, device)

            timings.append(timed(call, device, args.warmup, args.runs))
            with _CountOps() as counter:
                call()
            ops.append(counter.count)
        ratio = timings[1] / timings[0]
        print(f"| {objects} | {timings[0]:.3f} | {timings[1]:.3f} | {ratio:.2f}x | {ops[0]} | {ops[1]} |")


if __name__ == "__main__":
    main()
