"""One tracking run from a cold process: start-up time, then FPS; prints one JSON line (benchmarks/tracking.py --compile
runs it once per row, each in its own process, so that no compiled code is reused from an earlier row).

    python benchmarks/startup.py --variant sam2.1_hiera_tiny --objects 1 --setting compile+graphs

Settings: graphs (sam2rt.runtime.optimize: bf16 weights, CUDA graphs), compile+graphs (optimize(compile=True)),
compile (bf16 weights and torch.compile, no graphs of ours), eager (bf16 weights alone). Times, in seconds:
- load: the model built, its weights on the GPU, the runtime settings applied;
- first masks: from the start of the process's work (load included) until the masks of the first prompted frame;
- warm-up: the frames after it (corrections included) until the memory is full (new memory lengths: compiles
  and graph captures);
then FPS over the remaining frames (with --lookahead K, the frames after the prompts are encoded K at a time,
as `sam2rt track` does on a file). With `corrections` = 8, each object is prompted on frames 0 to 7 (8
conditioning frames in its memory), as streams.py's heavy case. Dynamo's counts say what compiled: graphs
made, graph breaks, and hits of its recompile limit (a hit runs eager from then on).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from oracle import our_model  # noqa: E402
from tracking import CLICKS, load_frames, synchronize  # noqa: E402

import sam2rt  # noqa: E402
from sam2rt.runtime import to_inference_dtype, use_compile, use_cuda_graphs  # noqa: E402
from sam2rt.tracking.lookahead import encoded_ahead  # noqa: E402

SETTINGS = ("graphs", "compile+graphs", "compile", "eager")


class LimitHits(logging.Handler):
    """Counts dynamo's warnings that a function hit its recompile limit (and runs eager from then on)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "hit config." in record.getMessage():
            self.count += 1


def prepare(model, setting: str, mode: str, dynamic: bool | None):
    to_inference_dtype(model)
    if setting in ("compile+graphs", "compile"):
        use_compile(model, mode=mode, dynamic=dynamic)
    if setting in ("graphs", "compile+graphs"):
        use_cuda_graphs(model)
    return model


def run(args) -> dict:
    frames = load_frames(args.frames_dir, args.frames)
    hits = LimitHits()
    logging.getLogger("torch._dynamo").addHandler(hits)
    device = torch.device(args.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model = prepare(our_model(args.variant, args.image_size).to(device), args.setting, args.mode, args.dynamic)
        synchronize(device)
        load = time.perf_counter() - start
        tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
        first = None
        for t in range(args.corrections):  # each object prompted on frame 0, corrected on frames 1 .. corrections-1
            tracker.step(frames[t])
            for obj in range(args.objects):
                x, y = CLICKS[obj % len(CLICKS)]
                result = tracker.add_prompt(obj + 1, points=[(x + 3 * t, y + 2 * t)], labels=[1])
            result.mask_logits.cpu()  # the masks on the host: the first frame is done
            if first is None:
                first = time.perf_counter() - start
        warm_start = start + first  # the correction frames of the heavy case count as warm-up
        steady = args.corrections + args.warmup
        for frame in encoded_ahead(tracker, frames[args.corrections : steady], args.lookahead):
            tracker.step(frame)
        synchronize(device)
        warmup = time.perf_counter() - warm_start
        timed_start = time.perf_counter()
        for frame in encoded_ahead(tracker, frames[steady:], args.lookahead):
            result = tracker.step(frame)
        synchronize(device)
        fps = (len(frames) - steady) / (time.perf_counter() - timed_start)
    counters = torch._dynamo.utils.counters
    if args.masks is not None:
        np.save(args.masks, (result.mask_logits > 0).cpu().numpy())
    return {
        "load_s": round(load, 2),
        "first_masks_s": round(first, 2),
        "warmup_s": round(warmup, 2),
        "fps": round(fps, 2),
        "graphs_made": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "limit_hits": hits.count,
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--setting", choices=SETTINGS, default="compile+graphs")
    parser.add_argument("--mode", default="default", help="torch.compile mode (runtime.COMPILE_MODES)")
    parser.add_argument(
        "--static",
        dest="dynamic",
        action="store_const",
        const=False,
        default=None,
        help="dynamic=False: one compile per shape (default: dynamo's automatic dynamic sizes)",
    )
    parser.add_argument("--corrections", type=int, default=1, help="frames each object is prompted on (8: heavy)")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda", help="cpu runs the settings without graphs (a smoke test)")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20, help="frames after the prompts before timing")
    parser.add_argument("--frames-dir", type=Path, default=ROOT.parent / "shared" / "data" / "videos" / "bedroom")
    parser.add_argument(
        "--lookahead", type=int, default=1, help="frames encoded ahead in one batch (tracking.lookahead; 1: none)"
    )
    parser.add_argument("--masks", type=Path, default=None, help="save the last frame's masks (.npy) here")
    args = parser.parse_args()
    if args.frames <= args.corrections + args.warmup:
        parser.error(f"--frames must exceed the prompted and warm-up frames ({args.corrections + args.warmup})")
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
