"""Ultralytics' own checks on a dataset written by `sam2rt annotate` (or any YOLO-seg + COCO dataset).

    python scripts/check_with_ultralytics.py OUT/          # OUT: the folder given to `sam2rt annotate -o`

Runs, as `yolo segment train` would before training:
- `check_det_dataset` on OUT/data.yaml: the classes, and where the images and labels are;
- `verify_image_label` on every image of OUT/images with the label file Ultralytics derives from its path
  (`/images/` -> `/labels/`): a label file it rejects (negative or out-of-range class, coordinates out of
  bounds, mixed box and polygon rows) is reported with its message;
- `convert_coco` on OUT/annotations.json (with `cls91to80=False`, as for any dataset but COCO's own): the
  classes it derives from the category ids must equal our YOLO labels' classes, object for object.

Ultralytics needs a torchvision matching its torch; on a CPU-only machine without one, install it beside the
CPU torch with `pip install --no-deps ultralytics torchvision` (the checks read torchvision's version only).
Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # no downloads, no installs, no telemetry
os.environ.setdefault("YOLO_AUTOINSTALL", "False")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="the output folder of sam2rt annotate")
    root = parser.parse_args().dataset.resolve()
    from ultralytics.data.converter import convert_coco
    from ultralytics.data.utils import check_det_dataset, img2label_paths, verify_image_label

    data = check_det_dataset(str(root / "data.yaml"))
    names = data["names"]
    print(f"data.yaml: {len(names)} classes {names}; train {data['train']}")
    images = sorted(p for p in (root / "images").iterdir() if not p.name.startswith("."))
    failures = 0
    ours: dict[str, list[int]] = {}
    for image, label in zip(images, img2label_paths([str(p) for p in images])):
        result = verify_image_label((str(image), label, "", False, len(names), 0, 0, False))
        classes, message = result[1], result[-1]
        if classes is None or message:
            failures += 1
            print(f"REJECTED {image.name}: {message.strip()}")
            continue
        ours[image.stem] = [int(c) for c in classes[:, 0]]
    print(f"verify_image_label: {len(images) - failures} of {len(images)} label files accepted")

    if (root / "annotations.json").exists():
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "json").mkdir()
            (Path(folder) / "json" / "annotations.json").symlink_to(root / "annotations.json")
            save = Path(folder) / "converted"
            convert_coco(str(Path(folder) / "json"), str(save), use_segments=True, cls91to80=False)
            converted = {p.stem: p.read_text().splitlines() for p in (save / "labels" / "annotations").glob("*.txt")}
        for stem, classes in ours.items():
            theirs = [int(line.split()[0]) for line in converted.get(stem, [])]
            if sorted(theirs) != sorted(classes):
                failures += 1
                print(f"MISMATCH {stem}: convert_coco gives classes {theirs}, our labels {classes}")
        print(f"convert_coco: classes of {len(ours)} images compared with our labels")
    print("all checks passed" if not failures else f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
