"""Many objects in one stream: FPS, step latency, peak GPU memory and the share of the memory-attention FLOP floor.

    python benchmarks/objects.py --device cuda                                 # tiny and large, 1 to 128 objects
    python benchmarks/objects.py --device cuda --variants sam2.1_hiera_tiny --chunks none,8,16,32,64
    python benchmarks/objects.py --device cuda --profile 1,16,128              # GPU time per stage
    python benchmarks/objects.py --device cuda --objects 1,16 --graph-kernels 1,16   # kernels of graphed steps
    python benchmarks/objects.py --device cpu --threads 2 --image-size 256 --objects 1,4 --frames 8
    python benchmarks/objects.py --device cuda --variants edgetam --objects 1,4     # Meta's EdgeTAM at 1 object

The workload: the first --frames frames of the bedroom clip (noise frames of its size without ../shared), one
stream, every object clicked on frame 0 (clicks on a grid over the frame), no hole filling. sam2rt runs as the
commands run it by default (runtime.optimize: bf16 weights and CUDA graphs on CUDA) with the engine's objects
per chunk (--chunks: several settings, "none" = all objects in one pass). Each row first runs a warm-up stream
(every shape captured), then a fresh stream is timed step by step from frame 1, each step synchronised: FPS is
frames over their total time, p50/p99 the step latencies.

floor: the FPS at which memory attention alone would run at --peak-tflops (dense bf16; 989 for an H100 or H200
SXM), counting its arithmetic with full memory (seven frames, 16 pointers), values attended in their 64
channels; "floor share" is the measured FPS over it. Meta's predictor (SAM2VideoPredictor under bf16 autocast,
frames preprocessed in advance) runs in the same process up to --official-max-objects objects.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracle helpers: same weights into both implementations
sys.path.insert(0, str(ROOT / "benchmarks"))

import oracle_edgetam  # noqa: E402
from oracle import oracle_model, oracle_video_state, our_model  # noqa: E402
from streams import attention_kernels  # noqa: E402
from tracking import fps_propagate, load_frames, synchronize  # noqa: E402

import sam2rt  # noqa: E402
from sam2rt.model.variants import ModelConfig  # noqa: E402
from sam2rt.runtime import optimize, to_inference_dtype  # noqa: E402
from sam2rt.tracking.engine import TrackingEngine  # noqa: E402

EDGETAM_SCORE_SHIFT = 5.0  # EdgeTAM's random weights with objects present (as benchmarks/edge.py)
# Meta's EdgeTAM code tracks the objects of a video state as one batch, which its perceiver cannot take (a view of
# an expanded tensor fails from 2 objects): its figures stop at one object.
EDGETAM_OFFICIAL_MAX_OBJECTS = 1
STAGES = ("image encoder", "memory attention", "mask decoder", "memory encoder", "gather", "output")


def grid_clicks(count: int, height: int, width: int) -> list[tuple[int, int]]:
    """`count` (x, y) clicks on a grid spread over a height x width frame."""
    columns = math.ceil(math.sqrt(count * width / height))
    rows = math.ceil(count / columns)
    return [
        (int((i % columns + 0.5) * width / columns), int((i // columns + 0.5) * height / rows)) for i in range(count)
    ]


def attention_gflop(config: ModelConfig) -> float:
    """Memory attention's arithmetic for one object on one frame with full memory, in GFLOP (a multiply-add is 2)."""
    d, d_mem, hidden = config.hidden_dim, config.memory_dim, 2048
    queries = (config.image_size // 16) ** 2
    pointer_tokens = 16 * (d // d_mem)  # 16 pointers, each split into tokens of the memory's width
    keys = config.num_maskmem * config.memory_tokens + pointer_tokens
    self_attention = 4 * 2 * queries * d * d + 2 * 2 * queries * queries * d
    cross_attention = (
        2 * 2 * queries * d * d  # query and output projections
        + 2 * keys * d_mem * d  # key projection
        + 2 * queries * keys * d  # scores
        + 2 * queries * keys * d_mem  # values, attended in their own width
        + 2 * queries * d_mem * d  # the values' projection, applied to the outputs
    )
    mlp = 2 * 2 * queries * d * hidden
    return config.variant.memory_attention_layers * (self_attention + cross_attention + mlp) / 1e9


def models(variant: str, image_size: int):
    """Our model, a maker of Meta's video predictor with the same perturbed weights (SAM 2's from sam2, EdgeTAM's
    from its fork, ../shared/oracles/edgetam), and the maker of that predictor's video state."""
    if variant == "edgetam":
        ours = oracle_edgetam.our_model(image_size, EDGETAM_SCORE_SHIFT)
        official = partial(oracle_edgetam.oracle_model, image_size, EDGETAM_SCORE_SHIFT, video=True, fill_hole_area=0)
        return ours, official, oracle_edgetam.oracle_video_state
    official = partial(oracle_model, variant, image_size, video=True, fill_hole_area=0)
    return our_model(variant, image_size), official, oracle_video_state


def run_stream(model, frames, clicks) -> tuple[list[float], object]:
    """A stream with every click an object on frame 0, stepped through `frames`: each step's seconds (from
    frame 1), and the last result."""
    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    tracker.step(frames[0])
    for obj_id, click in enumerate(clicks, start=1):
        tracker.add_prompt(obj_id, points=[click], labels=[1])
    device = model.device
    times, result = [], None
    for frame in frames[1:]:
        synchronize(device)
        start = time.perf_counter()
        result = tracker.step(frame)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times, result


def tracked_up_to(model, frames, clicks) -> sam2rt.StreamTracker:
    """A stream with every click an object on frame 0, stepped through `frames` (then synchronised): the memory
    filled, ready for the steps to measure."""
    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    tracker.step(frames[0])
    for obj_id, click in enumerate(clicks, start=1):
        tracker.add_prompt(obj_id, points=[click], labels=[1])
    for frame in frames[1:]:
        tracker.step(frame)
    synchronize(model.device)
    return tracker


def stage_profile(model, frames, clicks, steps: int, kernels: int = 0) -> dict[str, float]:
    """GPU milliseconds per step of each stage, the model run eagerly (graphs hide the stages) with each stage's
    kernels under a profiler label; with `kernels`, the table of that many most costly operations is printed."""
    from torch.profiler import ProfilerActivity, profile, record_function

    def labelled(fn, label):
        def run(*args, **kwargs):
            with record_function(label):
                return fn(*args, **kwargs)

        return run

    patches = [
        (model.image_encoder, "forward", "image encoder"),
        (model.memory_attention, "forward", "memory attention"),
        (model.sam_mask_decoder, "forward", "mask decoder"),
        (model.memory_encoder, "forward", "memory encoder"),
        (TrackingEngine, "_gather", "gather"),
        (TrackingEngine, "to_video_resolution", "output"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, label in patches:
        setattr(owner, name, labelled(getattr(owner, name), label))
    try:
        tracker = tracked_up_to(model, frames[:-steps], clicks)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for frame in frames[-steps:]:
                tracker.step(frame)
            synchronize(model.device)
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    if kernels:
        sort = "self_device_time_total" if model.device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=kernels), flush=True)
    totals = {event.key: event for event in prof.key_averages()}
    gpu = model.device.type == "cuda"
    return {
        label: (totals[label].device_time_total if gpu else totals[label].cpu_time_total) / 1e3 / steps
        if label in totals
        else 0.0
        for label in STAGES
    }


KERNEL_FAMILIES = (  # (substring of a kernel's name, family), first match wins
    ("sdpa", "attention (cuDNN)"),
    ("flash", "attention (flash)"),
    ("fmha", "attention (memory-efficient)"),
    ("nvjet", "matmul"),
    ("gemm", "matmul"),
    ("layer_norm", "layer norm"),
    ("conv", "convolution"),
    ("_rotate_pairs", "rotary (Triton)"),
    ("copy", "copies"),
    ("elementwise", "other elementwise"),
    ("reduce", "reductions"),
    ("upsample", "resizing"),
)


def graphed_kernels(model, frames, clicks, steps: int, top: int) -> None:
    """The GPU kernels a graphed step replays (the graphs already captured by the rows): wall and GPU ms a step, GPU
    time by kernel family, and the `top` costliest kernels. Prints a table."""
    from torch.profiler import ProfilerActivity, profile

    tracker = tracked_up_to(model, frames[:-steps], clicks)
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        start = time.perf_counter()
        for frame in frames[-steps:]:
            tracker.step(frame)
        synchronize(model.device)
        wall = (time.perf_counter() - start) * 1e3 / steps
    kernels = [e for e in trace.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    per_step = {e.key: e.self_device_time_total / 1e3 / steps for e in kernels}
    families: dict[str, float] = {}
    for name, ms in per_step.items():
        family = next((label for key, label in KERNEL_FAMILIES if key in name.lower()), "other")
        families[family] = families.get(family, 0.0) + ms
    print(
        f"\ngraphed step, {len(clicks)} objects: wall {wall:.2f} ms (profiled), GPU kernels {sum(per_step.values()):.2f} ms"
    )
    print("  " + ", ".join(f"{family} {ms:.2f}" for family, ms in sorted(families.items(), key=lambda kv: -kv[1])))
    for name, ms in sorted(per_step.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms:7.3f} ms  {name[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="sam2.1_hiera_tiny,sam2.1_hiera_large")
    parser.add_argument("--objects", default="1,4,16,64,128")
    default_chunk = getattr(TrackingEngine, "objects_per_chunk", None)  # None before chunks existed
    parser.add_argument("--chunks", default=str(default_chunk), help="objects per chunk (none: all at once)")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=None, help="frames of the warm-up stream (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--frames-dir", type=Path, default=ROOT.parent / "shared" / "data" / "videos" / "bedroom")
    parser.add_argument("--official-max-objects", type=int, default=64, help="Meta's predictor up to this many")
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="dense bf16 peak for the floor")
    parser.add_argument("--profile", default="", help="object counts whose stages are profiled (eager, bf16)")
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--kernels", type=int, default=0, help="with --profile: print the N most costly kernels")
    parser.add_argument("--attention", default="", help="objects per batch: cross-attention per kernel (CUDA)")
    parser.add_argument("--graph-kernels", default="", help="object counts: the kernels a graphed step replays (CUDA)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = load_frames(args.frames_dir, args.frames)
    warmup = len(frames) if args.warmup is None else args.warmup + 1
    height, width = frames[0].shape[:2]
    counts = [int(n) for n in args.objects.split(",")]
    chunks = [None if c.lower() == "none" else int(c) for c in args.chunks.split(",")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; {len(frames)} frames of {width}x{height} at {args.image_size}; torch {torch.__version__}")

    rows, profiles = [], []
    with torch.inference_mode():
        for variant in args.variants.split(","):
            base, official, video_state = models(variant, args.image_size)
            base = base.to(device)
            official_max = args.official_max_objects
            if variant == "edgetam":
                official_max = min(official_max, EDGETAM_OFFICIAL_MAX_OBJECTS)
            ours = optimize(copy.deepcopy(base))  # bf16 and CUDA graphs on CUDA, as it is elsewhere
            floor_gflop = attention_gflop(ours.config)
            for objects in counts:
                clicks = grid_clicks(objects, height, width)
                for chunk in chunks:
                    TrackingEngine.objects_per_chunk = chunk
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    run_stream(ours, frames[:warmup], clicks)  # every shape the timed stream meets, captured
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    times, result = run_stream(ours, frames, clicks)
                    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                    fps = len(times) / sum(times)
                    floor_fps = args.peak_tflops * 1e3 / (objects * floor_gflop)
                    visible = int((result.object_scores > 0).sum())
                    row = [variant, objects, chunk, fps, np.percentile(times, 50) * 1e3, np.percentile(times, 99) * 1e3]
                    rows.append([*row, peak, fps / floor_fps, visible, float("nan")])
                    print(" ".join(map(str, rows[-1])), flush=True)
            if device.type == "cuda" and min(counts) <= official_max:
                ref = official().to(device)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    for row in rows:
                        if row[0] == variant and row[1] <= official_max and row[2] == chunks[0]:
                            clicks = grid_clicks(row[1], height, width)
                            row[-1] = fps_propagate(
                                ref, video_state(ref, frames, "pil-bicubic"), clicks, device, warmup - 1
                            )
                            print(f"official {variant} {row[1]}: {row[-1]:.2f}", flush=True)
                del ref
            eager = to_inference_dtype(base) if device.type == "cuda" else base  # bf16 weights, no graphs
            for objects in [int(n) for n in args.profile.split(",") if n]:
                TrackingEngine.objects_per_chunk = chunks[0]
                clicks = grid_clicks(objects, height, width)
                stages = stage_profile(eager, frames, clicks, args.profile_steps, args.kernels)
                profiles.append((variant, objects, stages))
            for objects in [int(n) for n in args.graph_kernels.split(",") if n and device.type == "cuda"]:
                TrackingEngine.objects_per_chunk = chunks[0]
                graphed_kernels(ours, frames, grid_clicks(objects, height, width), 10, max(args.kernels, 12))
            if args.attention and device.type == "cuda":
                attention_kernels(ours.config, [int(n) for n in args.attention.split(",")])
            del base, ours, eager
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print(f"\n{where}, {'bf16 + CUDA graphs' if device.type == 'cuda' else 'fp32'}, no hole filling")
    print(f"floor: memory attention alone at {args.peak_tflops:.0f} TFLOP/s")
    print(
        f"{'variant':20} {'objects':>7} {'chunk':>5} {'FPS':>7} {'p50 ms':>7} {'p99 ms':>7} {'peak GiB':>8} "
        f"{'floor share':>11} {'visible':>7} {'official':>8} {'ratio':>6}"
    )
    for variant, objects, chunk, fps, p50, p99, peak, share, visible, official in rows:
        ratio = fps / official if official == official else float("nan")
        print(
            f"{variant:20} {objects:>7} {str(chunk):>5} {fps:>7.2f} {p50:>7.1f} {p99:>7.1f} {peak:>8.2f} "
            f"{share:>10.1%} {visible:>7} {official:>8.2f} {ratio:>5.1f}x"
        )
    skipped = [n for n in counts if n > args.official_max_objects]
    if device.type == "cuda" and skipped:
        print(f"official skipped at {', '.join(map(str, skipped))} objects (over --official-max-objects)")
    if profiles:
        unit = "GPU" if device.type == "cuda" else "CPU"
        print(f"\n{unit} ms per step by stage (eager, no graphs; {args.profile_steps} steps, memory full)")
        print(f"{'variant':20} {'objects':>7} " + " ".join(f"{s:>16}" for s in STAGES))
        for variant, objects, stages in profiles:
            print(f"{variant:20} {objects:>7} " + " ".join(f"{stages[s]:>16.2f}" for s in STAGES))


if __name__ == "__main__":
    main()
