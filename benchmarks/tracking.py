"""Tracking speed: frames per second for 1 and 4 objects, sam2rt against the official video predictor.

    python benchmarks/tracking.py --device cuda                                  # tiny and large at 1024, bf16
    python benchmarks/tracking.py --device cpu --threads 2 --image-size 512 --frames 16

Same weights, same frames (the first N frames of the bedroom clip, decoded up front), no hole
filling on either side. Columns:
- official: SAM2VideoPredictor.propagate_in_video, frames preprocessed and on the device in advance;
- video: sam2rt VideoPredictor.propagate_in_video, preprocessing each frame from RGB uint8 on the fly;
- stream: sam2rt StreamTracker.step on each raw RGB frame (a new stream prompted on frame 0 after a warm-up one,
  timed from frame 1 as the official restarts from frame 0);
- stream bf16: the same with bf16 weights (sam2rt.runtime.to_inference_dtype) instead of autocast;
- +graphs: bf16 weights, and the image encoder and memory attention replayed from CUDA graphs
  (sam2rt.runtime.use_cuda_graphs; graphs are captured during the warm-up frames).
On CUDA the first three run under bf16 autocast with TF32 matmuls, as the official benchmark runs.
Ratios are sam2rt FPS over official FPS (> 1: sam2rt is faster).

    python benchmarks/tracking.py --compile                                      # start-up and FPS, compiled or not
    python benchmarks/tracking.py --compile --rows tiny:1,tiny:4,large:1,tiny:1:8 \
        --settings graphs,compile+graphs,compile+graphs/warm,compile+graphs/max-autotune-no-cudagraphs

With --compile, another table: each row (VARIANT:OBJECTS[:CONDITIONING FRAMES]) under each setting
(SETTING[/MODE][/static][/warm][/aheadK], settings as in benchmarks/startup.py; aheadK: frames encoded K at a
time) runs in its own process, with an empty inductor and Triton cache (/warm: a second launch, the cache of a
first one kept; --keep-cache: one cache for every row of a setting, each row but the first starting from the
kernels of those before), and reports start-up (load, first masks, warm-up), FPS, what dynamo compiled, and
how far the last frame's masks agree with the first setting's (IoU).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracle helpers: same weights into both implementations

from oracle import oracle_model, oracle_video_state, our_model  # noqa: E402

import sam2rt  # noqa: E402
from sam2rt.io.sources import open_frames  # noqa: E402
from sam2rt.runtime import to_inference_dtype, use_cuda_graphs  # noqa: E402

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


def fps_propagate(predictor, state, clicks, device: torch.device, warmup: int) -> float:
    """Prompt an object at each (x, y) of `clicks` on frame 0, then time a propagation through the whole clip."""
    for obj, click in enumerate(clicks):
        predictor.add_new_points_or_box(state, 0, obj + 1, points=[click], labels=[1])
    for _ in predictor.propagate_in_video(state, max_frame_num_to_track=warmup):
        pass
    synchronize(device)
    start = time.perf_counter()
    for _ in predictor.propagate_in_video(state, start_frame_idx=0):
        pass
    synchronize(device)
    return (state["num_frames"] - 1) / (time.perf_counter() - start)  # frame 0 is prompted, not tracked


def fps_stream(model, frames, objects: int, device: torch.device, warmup: int) -> float:
    """As fps_propagate times the official: after a warm-up run, a new run timed from its prompted frame 0
    through the whole clip (memories filling up as they do there)."""

    def prompted() -> sam2rt.StreamTracker:
        tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
        tracker.step(frames[0])
        for obj in range(objects):
            tracker.add_prompt(obj + 1, points=[CLICKS[obj]], labels=[1])
        return tracker

    warm = prompted()
    for frame in frames[1 : warmup + 1]:
        warm.step(frame)
    tracker = prompted()
    synchronize(device)
    start = time.perf_counter()
    for frame in frames[1:]:
        tracker.step(frame)
    synchronize(device)
    return (len(frames) - 1) / (time.perf_counter() - start)


def _setting_command(setting: str, row: str, frames_dir: Path, masks: Path) -> tuple[list[str], bool]:
    """The startup.py command line of one setting of one row, and whether it runs twice (a warm second launch)."""
    name, *options = setting.split("/")
    size, objects, *corrections = row.split(":")
    command = [sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--setting", name]
    command += ["--variant", f"sam2.1_hiera_{size}", "--objects", objects, "--corrections", *(corrections or ["1"])]
    command += ["--frames-dir", str(frames_dir), "--masks", str(masks)]
    for option in options:
        if option == "static":
            command.append("--static")
        elif option.startswith("ahead"):
            command += ["--lookahead", option.removeprefix("ahead")]
        elif option != "warm":
            command += ["--mode", option]
    return command, "warm" in options


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def compile_table(args) -> None:
    """Start-up and FPS per row and setting, each run in a fresh process (see the module's docstring)."""
    print(
        f"{'row':24} {'setting':48} {'load':>6} {'1st masks':>9} {'warm-up':>8} {'FPS':>7} "
        f"{'graphs':>6} {'breaks':>6} {'limit hits':>10} {'IoU':>5}",
        flush=True,
    )
    for row in args.rows.split(","):
        reference = None
        for setting in args.settings.split(","):
            with tempfile.TemporaryDirectory(prefix="sam2rt-compile-") as scratch:
                masks = Path(scratch) / "masks.npy"
                command, warm = _setting_command(setting, row, args.frames_dir, masks)
                command += ["--frames", str(args.frames), "--image-size", str(args.image_size), "--device", args.device]
                cache = Path(scratch) if args.keep_cache is None else args.keep_cache / setting.replace("/", "-")
                env = {
                    **os.environ,
                    "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor",
                    "TRITON_CACHE_DIR": f"{cache}/triton",
                }
                try:
                    for _ in range(2 if warm else 1):
                        done = subprocess.run(
                            command, env=env, capture_output=True, text=True, timeout=args.row_timeout
                        )
                except subprocess.TimeoutExpired:
                    print(f"{row:24} {setting:48} stopped after {args.row_timeout:.0f} s", flush=True)
                    continue
                if done.returncode != 0:
                    print(f"{row:24} {setting:48} failed: {done.stderr.strip().splitlines()[-3:]}", flush=True)
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                mask = np.load(masks)
            reference = mask if reference is None else reference
            print(
                f"{row:24} {setting:48} {result['load_s']:>6.1f} {result['first_masks_s']:>9.1f} "
                f"{result['warmup_s']:>8.1f} {result['fps']:>7.1f} {result['graphs_made']:>6} "
                f"{result['graph_breaks']:>6} {result['limit_hits']:>10} {_iou(mask, reference):>5.3f}",
                flush=True,
            )


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
    parser.add_argument("--compile", action="store_true", help="the start-up table instead (see above)")
    parser.add_argument("--rows", default="tiny:1,tiny:4,large:1,tiny:1:8", help="with --compile")
    parser.add_argument("--settings", default="graphs,compile+graphs", help="with --compile")
    parser.add_argument("--row-timeout", type=float, default=600, help="with --compile: seconds per process")
    parser.add_argument(
        "--keep-cache",
        type=Path,
        default=None,
        help="with --compile: compile caches kept in this folder, shared by the rows of a setting (and later runs)",
    )
    args = parser.parse_args()
    if args.compile:
        compile_table(args)
        return

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
                        ref_state = oracle_video_state(ref, frames, "pil-bicubic")  # the official loader's resize
                        official = fps_propagate(ref, ref_state, CLICKS[:objects], device, args.warmup)
                    video_predictor = sam2rt.VideoPredictor(ours, fill_hole_area=0)
                    state = video_predictor.init_state(frames)
                    video = fps_propagate(video_predictor, state, CLICKS[:objects], device, args.warmup)
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
