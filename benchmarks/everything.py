"""Segment-everything speed: sam2rt's MaskGenerator against the official SAM2AutomaticMaskGenerator, one run.

    python benchmarks/everything.py --image ../shared/data/images/truck.jpg
    python benchmarks/everything.py --variants sam2.1_hiera_tiny --device cpu --runs 1 --no-official

Both get the same random (perturbed) weights; sam2rt runs with runtime.optimize (bf16 weights, CUDA
graphs), the official generator under bf16 autocast as its notebooks run it. Random weights predict
IoUs near 0.5, so at the default thresholds (0.8, 0.95) no mask survives the first filter: the
"default" row times the encoder and the decoding of the 32 x 32 grid. The "all masks" row sets both
thresholds to 0, so that every one of the 3072 masks is upscaled, scored, boxed, NMS-ed and encoded,
a heavier load than real weights give (they keep a few hundred). The "like real" row sets thresholds at
which about 1 in 6 candidates survive both filters, as with real weights (see like_real_thresholds).

Prints ms per image (median), the time from loading the weights to the first image's masks, and the
peak GPU memory of each row (sam2rt) or generator (official).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracle helpers: same weights into both implementations

from oracle import install_torchvision_standin, oracle_model, our_model, perturbed_weights  # noqa: E402

import sam2rt  # noqa: E402
from sam2rt.runtime import optimize  # noqa: E402

WORKLOADS = ("default", "like real", "all masks")
ALL_MASKS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def like_real_thresholds(model, image: np.ndarray, points_per_side: int) -> dict:
    """Thresholds at which random weights keep about as many candidates as real weights do.

    Real checkpoints keep a few hundred of the 3072 candidates of a photo (the official post-processing
    then dominates its time); random weights keep none at the defaults. Here a third of the candidates
    pass the predicted-IoU filter and half of those the stability filter: about 1 in 6.
    """
    records = sam2rt.MaskGenerator(model, points_per_side=points_per_side, box_nms_thresh=1.0, **ALL_MASKS).generate(
        image
    )
    ious = np.array([r["predicted_iou"] for r in records])
    iou_thresh = float(np.quantile(ious, 2 / 3))
    stability = np.array([r["stability_score"] for r in records if r["predicted_iou"] > iou_thresh])
    return {"pred_iou_thresh": iou_thresh, "stability_score_thresh": float(np.quantile(stability, 0.5))}


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.exists():
        raise SystemExit(f"no image at {path}; give one with --image")
    return np.asarray(Image.open(path).convert("RGB"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, runs: int) -> tuple[float, int]:
    """Median ms of fn() and the number of masks of its last call."""
    for _ in range(warmup):
        fn()
    times, count = [], 0
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        count = len(fn())
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), count


def peak_memory(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else "-"


def run_ours(variant: str, image: np.ndarray, device: torch.device, args) -> list[str]:
    lines = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    model = optimize(our_model(variant, args.image_size).to(device), compile=args.compile)
    common = {"points_per_side": args.points_per_side}
    first = sam2rt.MaskGenerator(model, points_per_batch=args.points_per_batch[0], **common).generate(image)
    sync(device)
    who = "sam2rt+compile" if args.compile else "sam2rt"
    lines.append(f"  {who} first image {time.perf_counter() - start:.2f} s (weights to masks, {len(first)} masks)")
    args.settings["like real"] = like_real_thresholds(model, image, args.points_per_side)
    lines.append(f"  like-real thresholds: {args.settings['like real']}")
    for name in args.workloads:
        settings = args.settings[name]
        for batch in args.points_per_batch:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            generator = sam2rt.MaskGenerator(model, points_per_batch=batch, **common, **settings)
            ms, count = timed(lambda g=generator: g.generate(image), device, args.warmup, args.runs)
            lines.append(
                f"  {who:8} {name:10} points_per_batch {batch:4}: {ms:8.1f} ms/image, {count} masks, "
                f"peak {peak_memory(device)}"
            )
    del model
    return lines


def official_generator(model, image_size: int, **settings):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(model, **settings)
    if image_size != 1024:  # the official predictor assumes 1024 for its feature map sizes
        generator.predictor._bb_feat_sizes = [(image_size // stride,) * 2 for stride in (4, 8, 16)]
    return generator


def run_official(variant: str, image: np.ndarray, device: torch.device, args) -> list[str]:
    lines = []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        sync(device)
        start = time.perf_counter()
        model = oracle_model(variant, args.image_size).to(device)
        common = {"points_per_side": args.points_per_side}
        first = official_generator(model, args.image_size, **common).generate(image)
        sync(device)
        lines.append(f"  official first image {time.perf_counter() - start:.2f} s ({len(first)} masks)")
        for name in args.workloads:
            if (name == "all masks" and args.skip_official_all_masks) or name not in args.settings:
                continue
            generator = official_generator(model, args.image_size, **common, **args.settings[name])
            runs = args.runs if name == "default" else 1  # its Python RLE loop makes this one slow
            ms, count = timed(lambda g=generator: g.generate(image), device, min(args.warmup, 1), runs)
            lines.append(f"  official {name:10} points_per_batch   64: {ms:8.1f} ms/image, {count} masks")
    lines.append(f"  official peak memory {peak_memory(device)}")
    return lines


def check_against_official(image: np.ndarray, device: torch.device) -> str:
    """fp32 on the device, both sides, tiny, thresholds where random-weight masks survive: do the masks agree?"""
    settings = {
        "points_per_side": 16,
        "pred_iou_thresh": 0.3,
        "stability_score_thresh": 0.005,
        "mask_threshold": 1.5,
        "stability_score_offset": 0.5,
    }
    variant = "sam2.1_hiera_tiny"
    ours = sam2rt.MaskGenerator(our_model(variant).to(device), **settings).generate(image)
    ref = official_generator(oracle_model(variant).to(device), 1024, **settings).generate(image)
    ious = [
        (a["segmentation"] & b["segmentation"]).sum() / max((a["segmentation"] | b["segmentation"]).sum(), 1)
        for a, b in zip(ours, ref)
    ]
    score = max((abs(a["predicted_iou"] - b["predicted_iou"]) for a, b in zip(ours, ref)), default=0.0)
    return (
        f"fp32 check, tiny: {len(ours)} masks vs official {len(ref)}, least mask IoU "
        f"{min(ious, default=1.0):.4f}, largest predicted-IoU difference {score:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["sam2.1_hiera_tiny", "sam2.1_hiera_large"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image", type=Path, default=ROOT.parent / "shared" / "data" / "images" / "truck.jpg")
    parser.add_argument("--points-per-batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--check", action="store_true", help="first compare fp32 masks with the official's")
    parser.add_argument("--compile", action="store_true", help="sam2rt with torch.compile under its CUDA graphs")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument(
        "--skip-official-all-masks", action="store_true", help="its Python RLE loop takes 30-80 s an image"
    )
    args = parser.parse_args()
    args.settings = {"default": {}, "all masks": ALL_MASKS}  # "like real" is measured per variant

    device = torch.device(args.device)
    install_torchvision_standin()
    image = load_image(args.image)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"segment everything, image {image.shape[1]}x{image.shape[0]}, {where}, torch {torch.__version__}")
    if args.check:
        try:
            print(check_against_official(image, device), flush=True)
        except Exception:
            traceback.print_exc()
    for variant in args.variants:
        side = args.points_per_side
        print(f"{variant} at {args.image_size}, {side} x {side} points:", flush=True)
        args.settings.pop("like real", None)  # thresholds of the previous variant do not carry over
        perturbed_weights(variant, args.image_size)  # made once, before the clocks: "first image" starts from weights
        runners = [run_ours] if args.no_official else [run_ours, run_official]
        for runner in runners:
            try:
                for line in runner(variant, image, device, args):
                    print(line, flush=True)
            except Exception:  # one failing side must not lose the other's numbers
                traceback.print_exc()


if __name__ == "__main__":
    main()
