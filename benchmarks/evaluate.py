"""J&F scoring speed and agreement: sam2rt's evaluate_folders against Meta's sav_benchmark.py, same folders.

    python benchmarks/evaluate.py                              # 4 videos x 30 frames of 480x854, 3 objects
    python benchmarks/evaluate.py --videos 2 --frames 10 --processes 2

Makes DAVIS-layout ground truth and perturbed predictions in a temporary folder, scores them with
both (the official tool with `--processes` worker processes, sam2rt in this one) and prints the
times and the largest difference of J&F, J and F. Needs ../shared/oracles/sam2-training and
scikit-image (the `test` extra).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the helpers that make VOS folders and import the official tool

from vos_data import import_reference, moving_objects, perturb, save_labels  # noqa: E402

from sam2rt.evaluate import evaluate_folders  # noqa: E402


def make_folders(root: Path, videos: int, frames: int, objects: int, size: tuple[int, int]) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for v in range(videos):
        for t, labels in enumerate(moving_objects(size, frames, objects, seed=v)):
            save_labels(root / "gt" / f"video{v:02d}" / f"{t:05d}.png", labels)
            save_labels(root / "pred" / f"video{v:02d}" / f"{t:05d}.png", perturb(labels, rng, shift=4, noise=0.002))
    return root / "gt", root / "pred"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 854), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--processes", type=int, default=1, help="worker processes of the official tool")
    args = parser.parse_args()

    official = import_reference("sav_dataset/utils/sav_benchmark.py", "sav_benchmark")
    with tempfile.TemporaryDirectory() as folder:
        gt, pred = make_folders(Path(folder), args.videos, args.frames, args.objects, tuple(args.size))
        start = time.perf_counter()
        result = evaluate_folders(gt, pred)
        ours_seconds = time.perf_counter() - start
        start = time.perf_counter()
        jf, j, f, _ = official.benchmark([str(gt)], [str(pred)], num_processes=args.processes, verbose=False)
        official_seconds = time.perf_counter() - start

    scored = args.videos * max(args.frames - 2, 0)
    print(f"{args.videos} videos x {args.frames} frames of {args.size[1]}x{args.size[0]}, {args.objects} objects")
    print(f"sam2rt:   {ours_seconds:6.2f} s ({scored / ours_seconds:6.1f} frames/s), 1 process")
    print(
        f"official: {official_seconds:6.2f} s ({scored / official_seconds:6.1f} frames/s), {args.processes} processes"
    )
    differences = [
        abs(a - b) for a, b in zip((result.scores.jf, result.scores.j, result.scores.f), (jf[0], j[0], f[0]))
    ]
    print(
        f"J&F {result.scores.jf:.4f}  J {result.scores.j:.4f}  F {result.scores.f:.4f}; largest |difference| {max(differences):.2e}"
    )


if __name__ == "__main__":
    main()
