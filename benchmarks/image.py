"""Image prediction speed: sam2rt against the official SAM2ImagePredictor, in one run, same weights.

    python benchmarks/image.py --variant sam2.1_hiera_tiny --device cpu --threads 2
    python benchmarks/image.py --device cuda        # bf16 autocast for both, as the official notebooks run

Prints a table of median times (ms) and the ratio official / sam2rt (> 1: sam2rt is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracle helpers: same weights into both implementations

from oracle import install_torchvision_standin, oracle_model, our_model  # noqa: E402

import sam2rt  # noqa: E402


def load_image(path: Path) -> np.ndarray:
    if path.exists():
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))
    return np.random.default_rng(0).integers(0, 256, size=(1200, 1800, 3), dtype=np.uint8)


def timed(fn, device: torch.device, warmup: int, runs: int) -> float:
    """Median wall time of fn() in milliseconds, synchronising the GPU around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", type=Path, default=ROOT.parent / "shared" / "data" / "images" / "truck.jpg")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    install_torchvision_standin()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    ours = sam2rt.ImagePredictor(our_model(args.variant, args.image_size).to(device))
    official = SAM2ImagePredictor(oracle_model(args.variant, args.image_size).to(device))
    image = load_image(args.image)
    click = dict(point_coords=np.array([[500.0, 375.0]]), point_labels=np.array([1]), multimask_output=True)
    box = dict(box=np.array([425.0, 600.0, 700.0, 875.0]), multimask_output=False)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    rows = []
    with autocast:
        for name, predictor in (("sam2rt", ours), ("official", official)):
            predictor.set_image(image)
            rows.append(
                (
                    name,
                    timed(lambda: predictor.set_image(image), device, args.warmup, args.runs),
                    timed(lambda: predictor.predict(**click), device, args.warmup, args.runs * 4),
                    timed(lambda: predictor.predict(**box), device, args.warmup, args.runs * 4),
                )
            )

    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{args.variant} at {args.image_size}, {where}{threads}, image {image.shape[1]}x{image.shape[0]}")
    print(f"{'':10} {'set_image ms':>14} {'predict click ms':>18} {'predict box ms':>16}")
    for name, *times in rows:
        print(f"{name:10} " + " ".join(f"{t:>{w}.1f}" for t, w in zip(times, (14, 18, 16))))
    ratios = [theirs / mine for mine, theirs in zip(rows[0][1:], rows[1][1:])]
    print(f"{'ratio':10} " + " ".join(f"{r:>{w}.2f}x" for r, w in zip(ratios, (13, 17, 15))))


if __name__ == "__main__":
    main()
