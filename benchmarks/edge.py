"""EdgeTAM on a CPU: sam2rt against Meta's EdgeTAM code, and the exported tracker on onnxruntime.

    python benchmarks/edge.py                                  # 2 threads, 1024 and 512 px, 24 frames
    python benchmarks/edge.py --threads 0 --sizes 512          # every core
    python benchmarks/edge.py --onnx --sizes 512               # also `sam2rt export` + OnnxStreamTracker
    python benchmarks/edge.py --bf16 --skip-official           # also sam2rt with bf16 weights, its masks against fp32

One object clicked on frame 0 of the bedroom clip (noise frames of its size without ../shared), fp32, random
weights (the same perturbed ones in both implementations; no weights can be downloaded here). Columns: FPS over
all frames after the prompted one, and FPS once the memory is full (frames 8 on: seven memory frames, the
most EdgeTAM attends to, and pointers growing to 16 by frame 16). Meta's: its SAM2VideoPredictor
(propagate_in_video; frames preprocessed in advance, as its loader does); sam2rt: StreamTracker.step on each
raw frame; onnxruntime: OnnxStreamTracker on the same raw frames, the export made first (its time stated).
bf16: the same weights cast to bf16 as `--cpu-bf16` casts them (`runtime.to_inference_dtype`; oneDNN's bf16
kernels, fast where the CPU has AMX or AVX512-BF16), with each frame's mask IoU against the fp32 run.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # Meta's EdgeTAM code and the shared perturbed weights
sys.path.insert(0, str(ROOT / "benchmarks"))

from cli_support import variant_env  # noqa: E402
from oracle_edgetam import oracle_model, oracle_video_state, our_model  # noqa: E402
from tracking import load_frames  # noqa: E402
from visible import mask_ious  # noqa: E402

import sam2rt  # noqa: E402
from sam2rt.export.onnx_tracker import OnnxStreamTracker  # noqa: E402
from sam2rt.runtime import to_inference_dtype  # noqa: E402

CLICK = (210, 350)  # (x, y) on the bedroom clip's 960x540 frames
FULL_FROM = 8  # the first frame whose memory holds seven earlier frames
OBJECT_SCORE_SHIFT = 5.0  # the object judged present: masks with area, as a real object gives


def fps(times: list[float], first: int = 1) -> float:
    """Frames per second over frames `first`.. given each frame's seconds (frame 0 is the prompted one)."""
    spans = times[first:]
    return len(spans) / sum(spans) if spans else float("nan")


def timed_stream(tracker, frames, masks: Optional[list] = None) -> list[float]:
    """Each frame's seconds through `tracker` (StreamTracker or OnnxStreamTracker), the object clicked on frame 0;
    each frame's masks (N, H, W) bool appended to `masks` when given."""
    times = []
    for index, frame in enumerate(frames):
        start = time.perf_counter()
        result = tracker.step(frame)
        if index == 0:
            result = tracker.add_prompt(1, points=[CLICK], labels=[1])
        times.append(time.perf_counter() - start)
        if masks is not None:
            masks.append(np.asarray(result.mask_logits > 0))
    return times


def official(predictor, frames) -> list[float]:
    state = oracle_video_state(predictor, frames, "bilinear-antialias")
    start = time.perf_counter()
    predictor.add_new_points_or_box(state, 0, 1, points=[CLICK], labels=[1])
    times, last = [], start
    for _ in predictor.propagate_in_video(state):
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def export(model, size: int, scratch: Path, max_cond_frames: int) -> tuple[Path, float]:
    """`sam2rt export` of the model's weights at `size`: the folder and the seconds it took."""
    checkpoint, folder = scratch / f"edgetam-{size}.pt", scratch / f"onnx-{size}"
    torch.save({"model": model.state_dict()}, checkpoint)
    env = dict(os.environ, **variant_env("edgetam"))  # timm imports torchvision: the tests' stand-in where it lacks
    command = [sys.executable, "-m", "sam2rt", "export", "-c", str(checkpoint), "--variant", "edgetam"]
    command += ["--image-size", str(size), "--device", "cpu", "--max-cond-frames", str(max_cond_frames)]
    command += ["-o", str(folder)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return folder, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,512")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (0: every core)")
    parser.add_argument("--frames-dir", type=Path, default=ROOT.parent / "shared" / "data" / "videos" / "bedroom")
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--onnx", action="store_true", help="also export and run the tracker on onnxruntime")
    parser.add_argument(
        "--bf16", action="store_true", help="also sam2rt with bf16 weights (fast on CPUs with AMX or AVX512-BF16)"
    )
    parser.add_argument(
        "--max-cond-frames", type=int, default=8, help="the export's prompted-frame capacity (1: 7 memory frames)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = load_frames(args.frames_dir, args.frames)
    height, width = frames[0].shape[:2]
    threads = torch.get_num_threads()
    print(f"CPU, {threads} threads of {os.cpu_count()}; {len(frames)} frames of {width}x{height}; fp32", flush=True)

    rows = []
    with torch.inference_mode(), tempfile.TemporaryDirectory(prefix="sam2rt-edge-") as scratch:
        for size in [int(s) for s in args.sizes.split(",")]:
            model = our_model(size, OBJECT_SCORE_SHIFT)
            fp32_masks: list = []
            row = {
                "size": size,
                "ours": timed_stream(sam2rt.StreamTracker(model, fill_hole_area=0), frames, fp32_masks),
            }
            if args.bf16:
                bf16_model, bf16_masks = to_inference_dtype(copy.deepcopy(model)), []
                row["bf16"] = timed_stream(sam2rt.StreamTracker(bf16_model, fill_hole_area=0), frames, bf16_masks)
                row["bf16_iou"] = mask_ious(np.stack(bf16_masks), np.stack(fp32_masks))  # each frame's, each object's
                row["fp32_cover"] = float(np.mean([masks.mean() for masks in fp32_masks]))  # a weak check when ~1
            if not args.skip_official:
                row["official"] = official(oracle_model(size, OBJECT_SCORE_SHIFT, video=True, fill_hole_area=0), frames)
            if args.onnx:
                folder, seconds = export(model, size, Path(scratch), args.max_cond_frames)
                row["export_s"] = seconds
                runner = OnnxStreamTracker(folder, fill_hole_area=0, threads=args.threads or None)
                row["onnxruntime"] = timed_stream(runner, frames)
            rows.append(row)
            timed = {name: value for name, value in row.items() if isinstance(value, list)}
            print(
                size, {name: (round(fps(t), 2), round(fps(t, FULL_FROM), 2)) for name, t in timed.items()}, flush=True
            )

    print(f"\nEdgeTAM, 1 object, CPU ({threads} threads), fp32: FPS after the prompt / with full memory")
    print(f"{'size':>5} {'Meta':>13} {'sam2rt':>13} {'ratio':>6} {'onnxruntime':>13} {'vs sam2rt':>9}")
    for row in rows:
        line = f"{row['size']:>5} "
        got = (fps(row["ours"]), fps(row["ours"], FULL_FROM))
        if "official" in row:
            theirs = (fps(row["official"]), fps(row["official"], FULL_FROM))
            line += f"{theirs[0]:>6.2f} {theirs[1]:>6.2f} {got[0]:>6.2f} {got[1]:>6.2f} {got[1] / theirs[1]:>5.2f}x"
        else:
            line += f"{'':>13} {got[0]:>6.2f} {got[1]:>6.2f} {'':>6}"
        if "onnxruntime" in row:
            runtime = (fps(row["onnxruntime"]), fps(row["onnxruntime"], FULL_FROM))
            line += f" {runtime[0]:>6.2f} {runtime[1]:>6.2f} {runtime[1] / got[1]:>8.2f}x"
            line += f"  (export {row['export_s']:.0f} s)"
        print(line)
        if "bf16" in row:
            bf16, ious = (fps(row["bf16"]), fps(row["bf16"], FULL_FROM)), row["bf16_iou"]
            print(
                f"{'':>5} sam2rt bf16 weights: {bf16[0]:.2f} / {bf16[1]:.2f} FPS ({bf16[1] / got[1]:.2f}x fp32 with full"
                f" memory); mask IoU against fp32 median {np.median(ious):.3f}, min {np.min(ious):.3f}, fp32 masks"
                f" cover {row['fp32_cover']:.1%} of the frame"
            )
    if not np.isfinite([fps(row["ours"], FULL_FROM) for row in rows]).all():
        print(f"(full memory from frame {FULL_FROM}: give --frames above it)")


if __name__ == "__main__":
    main()
