"""How far the model input of a video file is from the official mp4 path (decord), per resize.

The official SAM2VideoPredictor reads mp4 files with decord, which scales inside FFmpeg (swscale)
while converting from YUV. sam2rt decodes with PyAV to RGB at full size and then resizes by name
(processing/preprocess.py). This prints, in uint8 levels, the max and mean |difference| of the S x S frames
from decord and from each of ours. decord is not a dependency; install it to a side folder:

    .venv/bin/pip install --no-deps --target /tmp/decord decord
    PYTHONPATH=/tmp/decord:src .venv/bin/python benchmarks/video_resize.py ../shared/data/videos/bedroom.mp4
"""

from __future__ import annotations

import argparse

import av
import numpy as np
import torch

from sam2rt.processing.preprocess import RESIZES, model_input

MEAN = np.array([0.485, 0.456, 0.406])[:, None, None]
STD = np.array([0.229, 0.224, 0.225])[:, None, None]


def levels(model_input_tensor: torch.Tensor) -> np.ndarray:
    """A normalised (1, 3, S, S) model input back to 0..255 levels, (3, S, S)."""
    return (model_input_tensor[0].double().numpy() * STD + MEAN) * 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    import decord

    with av.open(args.video) as container:
        frames = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(args.frames), container.decode(video=0))]
    full = decord.VideoReader(args.video)
    same_decode = all(np.array_equal(full[i].asnumpy(), frames[i]) for i in range(len(frames)))
    print(f"{args.video}: {len(frames)} frames; full-size decode identical to decord's: {same_decode}")
    print(f"{'size':>6} {'resize':>20} {'max |diff|':>11} {'mean |diff|':>12}  (uint8 levels, against decord)")
    for size in args.sizes:
        reader = decord.VideoReader(args.video, width=size, height=size)
        official = [reader[i].asnumpy().transpose(2, 0, 1).astype(np.float64) for i in range(len(frames))]
        for name in RESIZES:
            ours = [
                levels(model_input(torch.from_numpy(f).permute(2, 0, 1), size, name, torch.device("cpu")))
                for f in frames
            ]
            diffs = np.abs(np.stack(ours) - np.stack(official))
            print(f"{size:>6} {name:>20} {diffs.max():>11.1f} {diffs.mean():>12.3f}")


if __name__ == "__main__":
    main()
