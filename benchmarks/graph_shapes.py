"""Which CUDA-graph shapes a workload meets, and on which frame: found on the CPU, no GPU needed.

    python benchmarks/graph_shapes.py                        # the live case: 3 objects, a correction every 20 frames
    python benchmarks/graph_shapes.py --frames 200 --correct-every 60 --objects 1

With CUDA graphs every new key of a graphed step (its inputs' shapes and dtypes, which inputs are given) is a
capture, 0.1-0.2 s on an H100, on the frame that meets it. This runs the workload eagerly on the CPU with the
graphed steps replaced by recorders under the same keys (`runtime.graphs`' own), shape buckets on as under graphs,
and prints each new key with the frame it first came on and the shapes of its tensors. Steps called inside
another graphed step are not keys of their own: the outer graph takes them in, as on the GPU. Random weights
(objects present); 720p noise frames; tiny at --image-size (the keys' structure does not depend on the size).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the perturbed weights with objects present
sys.path.insert(0, str(ROOT / "benchmarks"))

from graph_keys import KeyRecorder, record_graph_keys  # noqa: E402
from tracking import CLICKS  # noqa: E402
from visible import visible_model  # noqa: E402

import sam2rt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=130)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--correct-every", type=int, default=20, help="frames between corrections (0: none)")
    parser.add_argument("--fill-hole-area", type=int, default=8, help="the commands' default")
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()

    torch.set_num_threads(2)
    model = record_graph_keys(visible_model(image_size=args.image_size))  # steps recorded, not captured
    generator = torch.Generator().manual_seed(0)
    frames = [(torch.rand(720, 1280, 3, generator=generator) * 255).to(torch.uint8).numpy() for _ in range(8)]
    clicks = [CLICKS[obj % len(CLICKS)] for obj in range(args.objects)]
    tracker = sam2rt.StreamTracker(model, fill_hole_area=args.fill_hole_area)
    KeyRecorder.moment = "0"
    tracker.step(frames[0])
    for obj, click in enumerate(clicks):
        tracker.add_prompt(obj + 1, points=[click], labels=[1])
    corrections = 0
    for t in range(1, args.frames + 1):
        KeyRecorder.moment = str(t)
        tracker.step(frames[t % len(frames)])
        if args.correct_every and t % args.correct_every == 0:
            corrections += 1
            KeyRecorder.moment = f"{t} (correction)"
            obj = corrections % args.objects
            x, y = clicks[obj]
            tracker.add_prompt(obj + 1, points=[(x + 3 * corrections, y + 2 * corrections)], labels=[1])

    print(f"tiny at {args.image_size}, {args.objects} object(s), a correction every {args.correct_every} frames")
    print("| frame | graphed step | its tensors' shapes |\n|---|---|---|")
    for frame, name, shapes in KeyRecorder.new_keys:
        print(f"| {frame} | {name} | {', '.join(str(list(shape)) for shape in shapes)} |")
    print(f"{len(KeyRecorder.new_keys)} keys, each a CUDA graph captured on the frame it first came on")


if __name__ == "__main__":
    main()
