"""How much the resize matters: mask logits of VideoPredictor on a JPEG folder, per resize, against the official
SAM2VideoPredictor reading the same folder itself (same perturbed random weights, one click on frame 0).

    PYTHONPATH=src .venv/bin/python benchmarks/resize_logits.py ../shared/data/videos/bedroom --sizes 256 1024

Prints max |difference| / max(1, largest |official logit|), the parity tests' measure (1e-4 passes).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracle helpers: same weights into both implementations

from oracle import oracle_model, our_model  # noqa: E402

import sam2rt  # noqa: E402
from sam2rt.processing.preprocess import RESIZES  # noqa: E402

VARIANT = "sam2.1_hiera_tiny"
CLICK = [[210, 350]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of numbered JPEG frames")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    shutil.copy(sorted(args.folder.glob("*.jpg"))[0], folder / "00000.jpg")  # the clicked frame is all it takes
    for size in args.sizes:
        official = oracle_model(VARIANT, size, video=True, fill_hole_area=0)
        state = official.init_state(video_path=str(folder))
        _, _, theirs = official.add_new_points_or_box(state, 0, 1, points=CLICK, labels=[1])
        scale = max(1.0, theirs.abs().max().item())
        for resize in RESIZES:
            ours = sam2rt.VideoPredictor(our_model(VARIANT, size), fill_hole_area=0, resize=resize)
            _, _, mine = ours.add_new_points_or_box(ours.init_state(str(folder)), 0, 1, points=CLICK, labels=[1])
            print(f"{size:>5} {resize:>20}  {(mine - theirs).abs().max().item() / scale:.2e}", flush=True)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
