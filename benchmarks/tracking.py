"""Tracking speed: frames per second for 1 and 4 objects, sam2rt against the official video predictor.

    python benchmarks/tracking.py --device cuda                                  # tiny and large at 1024, bf16
    python benchmarks/tracking.py --device cpu --threads 2 --image-size 512 --frames 8

Same weights, same frames (the first N frames of the bedroom clip, decoded up front), no hole
filling on either side. Columns:
- official: SAM2VideoPredictor.propagate_in_video, frames preprocessed and on the device in advance;
- video: sam2rt VideoPredictor.propagate_in_video, preprocessing each frame from RGB uint8 on the fly;
- stream: sam2rt StreamTracker.step on each raw RGB frame;
- stream bf16: the same with bf16 weights (sam2rt.runtime.to_inference_dtype) instead of autocast;
- +graphs: bf16 weights, and the image encoder and memory attention replayed from CUDA graphs
  (sam2rt.runtime.use_cuda_graphs; graphs are captured during the warm-up frames).
On CUDA the first three run under bf16 autocast with TF32 matmuls, as the official benchmark runs.
Ratios are sam2rt FPS over official FPS (> 1: sam2rt is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracle helpers: same weights into both implementations

import sam2rt  # noqa: E402
from sam2rt.runtime import to_inference_dtype, use_cuda_graphs  # noqa: E402
from oracle import oracle_model, oracle_video_state, our_model  # noqa: E402
from sam2rt.io.sources import open_frames  # noqa: E402

CLICKS = [(210, 350), (560, 250), (700, 420), (400, 150)]  # one per object, on frame 0 (960x540 frames)


def load_frames(folder: Path, count: int) -> list[np.ndarray]:
    if folder.exists():
        frames = open_frames(folder)
        return [frames[i] for i in range(min(count, len(frames)))]
    rng = np.random.default_rng(0)  # no media: noise frames, same size as the bedroom clip
    return [rng.integers(0, 256, size=(540, 960, 3), dtype=np.uint8) for _ in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fps_propagate(predictor, state, objects: int, device: torch.device, warmup: int) -> float:
    """Prompt `objects` objects on frame 0, then time a propagation through the whole clip."""
    for obj in range(objects):
        predictor.add_new_points_or_box(state, 0, obj + 1, points=[CLICKS[obj]], labels=[1])
    for _ in predictor.propagate_in_video(state, max_frame_num_to_track=warmup):
        pass
    synchronize(device)
    start = time.perf_counter()
    for _ in predictor.propagate_in_video(state, start_frame_idx=0):
        pass
    synchronize(device)
    return (state["num_frames"] - 1) / (time.perf_counter() - start)  # frame 0 is prompted, not tracked


def fps_stream(model, frames, objects: int, device: torch.device, warmup: int) -> float:
    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    tracker.step(frames[0])
    for obj in range(objects):
        tracker.add_prompt(obj + 1, points=[CLICKS[obj]], labels=[1])
    for frame in frames[1 : warmup + 1]:
        tracker.step(frame)
    synchronize(device)
    start = time.perf_counter()
    for frame in frames[1:]:
        tracker.step(frame)
    synchronize(device)
    return (len(frames) - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="sam2.1_hiera_tiny,sam2.1_hiera_large")
    parser.add_argument("--objects", default="1,4")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5, help="frames propagated before timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--frames-dir", type=Path, default=ROOT.parent / "shared" / "data" / "videos" / "bedroom")
    parser.add_argument("--skip-official", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    frames = load_frames(args.frames_dir, args.frames)
    object_counts = [int(n) for n in args.objects.split(",")]

    rows = []
    with torch.inference_mode():
        for variant in args.variants.split(","):
            ours = our_model(variant, args.image_size).to(device)
            # No hole filling on either side: the official one needs a CUDA extension its wheel is built without.
            ref = None
            if not args.skip_official:
                ref = oracle_model(variant, args.image_size, video=True, fill_hole_area=0).to(device)
            for objects in object_counts:
                with autocast:
                    official = float("nan")
                    if ref is not None:
                        official = fps_propagate(ref, oracle_video_state(ref, frames), objects, device, args.warmup)
                    video_predictor = sam2rt.VideoPredictor(ours, fill_hole_area=0)
                    state = video_predictor.init_state(frames)
                    video = fps_propagate(video_predictor, state, objects, device, args.warmup)
                    stream = fps_stream(ours, frames, objects, device, args.warmup)
                row = [variant, objects, official, video, stream]
                if device.type == "cuda":
                    fast = to_inference_dtype(copy.deepcopy(ours))
                    row.append(fps_stream(fast, frames, objects, device, args.warmup))
                    graphed = use_cuda_graphs(fast)
                    row.append(fps_stream(graphed, frames, objects, device, max(args.warmup, 20)))
                rows.append(row)
                print(" ".join(map(str, row)), flush=True)
            del ours, ref
            if device.type == "cuda":
                torch.cuda.empty_cache()

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"\nFPS at {args.image_size}, {len(frames)} frames, {where}, {precision}")
    header = f"{'variant':22} {'objects':>7} {'official':>9} {'video':>7} {'stream':>7} {'ratio':>6}"
    print(header + (f" {'stream bf16':>12} {'ratio':>6} {'+graphs':>8} {'ratio':>6}" if device.type == "cuda" else ""))
    for variant, objects, official, video, stream, *fast in rows:
        line = f"{variant:22} {objects:>7} {official:>9.2f} {video:>7.2f} {stream:>7.2f} {stream / official:>5.2f}x"
        if fast:
            line += f" {fast[0]:>12.2f} {fast[0] / official:>5.2f}x {fast[1]:>8.2f} {fast[1] / official:>5.2f}x"
        print(line)


if __name__ == "__main__":
    main()
