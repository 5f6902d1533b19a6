"""Annotation files other tools read: COCO-style JSON with RLE masks, and YOLO segmentation polygons.

COCO: one "image" per frame (`id` = frame number), one "annotation" per visible object and frame
with its RLE mask (pycocotools' compressed counts), `bbox` [x, y, width, height], `area`, `score`
(probability that the object is visible) and `object_id`. The file is written when the run ends,
atomically, also when the input broke off midway.

YOLO: one text file per frame, `<folder>/<frame name>.txt`, a line per polygon:
`<object id> x1 y1 x2 y2 ...` with coordinates divided by the frame's width and height. An
object in several pieces gets a line per piece; holes are cut into their piece's polygon.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import write_atomically
from .sinks import TrackedFrame, make_folder, prepare_file

COCO_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def encode_rle(masks: np.ndarray) -> list[dict]:
    """Masks (N, H, W) bool -> N COCO RLEs {"size": [H, W], "counts": str}."""
    from pycocotools import mask as mask_utils

    columns = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))  # (H, W, N), column-major as RLE wants
    rles = mask_utils.encode(columns)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # bytes -> str for JSON
    return rles


class CocoWriter:
    """Collects each frame's annotations and writes one COCO-style JSON file at the end."""

    def __init__(self, path: Path, source: str, image_suffix: str = ".jpg") -> None:
        self.path = prepare_file(Path(path))
        self.source = source
        self.image_suffix = image_suffix
        self._images: list[dict] = []
        self._annotations: list[dict] = []

    @property
    def description(self) -> str:
        return f"COCO JSON {self.path} ({len(self._images)} frames, {len(self._annotations)} masks)"

    def write(self, frame: TrackedFrame) -> None:
        from pycocotools import mask as mask_utils

        height, width = frame.image.shape[:2]
        self._images.append(
            {
                "id": frame.index,
                "frame_index": frame.index,
                "file_name": f"{frame.name}{self.image_suffix}",
                "width": width,
                "height": height,
            }
        )
        visible = [i for i in range(len(frame.object_ids)) if frame.masks[i].any()]
        if not visible:
            return
        rles = encode_rle(frame.masks[visible])
        areas = mask_utils.area(rles)
        boxes = mask_utils.toBbox(rles)  # (N, 4) as x, y, width, height
        for slot, rle, area, box in zip(visible, rles, areas, boxes):
            self._annotations.append(
                {
                    "id": len(self._annotations) + 1,
                    "image_id": frame.index,
                    "category_id": COCO_CATEGORY["id"],
                    "object_id": frame.object_ids[slot],
                    "segmentation": rle,
                    "area": int(area),
                    "bbox": [float(v) for v in box],
                    "score": round(float(frame.scores[slot]), 6),
                    "iscrowd": 0,
                }
            )

    def close(self) -> None:
        content = {
            "info": {"description": f"sam2rt track {self.source}", "source": self.source},
            "images": self._images,
            "annotations": self._annotations,
            "categories": [COCO_CATEGORY],
        }
        write_atomically(self.path, lambda temporary: temporary.write_text(json.dumps(content)))


def mask_polygons(mask: np.ndarray, min_points: int = 3) -> list[np.ndarray]:
    """A mask (H, W) bool as polygons (P, 2) of x, y pixel coordinates, one per connected piece.

    A YOLO polygon has no holes, so each hole is joined to its piece's outline by a zero-width cut
    at their closest points; filling the polygon (cv2.fillPoly, as YOLO tools do) leaves the hole out.
    """
    import cv2

    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    links = hierarchy[0]  # (K, 4): next, previous, first child, parent
    polygons = []
    for index, contour in enumerate(contours):
        if links[index][3] != -1:
            continue  # a hole: joined to its outline below
        polygon = contour.reshape(-1, 2)  # (P, 1, 2) -> (P, 2)
        hole_index = links[index][2]
        while hole_index != -1:
            polygon = _join_hole(polygon, contours[hole_index].reshape(-1, 2))
            hole_index = links[hole_index][0]
        if len(polygon) >= min_points:
            polygons.append(polygon)
    return polygons


def _join_hole(outline: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One polygon that runs along `outline` (P, 2), around `hole` (Q, 2) and back, through their closest points."""
    distances = ((outline[:, None, :] - hole[None, :, :]) ** 2).sum(-1)  # (P, Q)
    i, j = np.unravel_index(int(distances.argmin()), distances.shape)
    return np.concatenate([outline[: i + 1], hole[j:], hole[: j + 1], outline[i:]])


def yolo_lines(object_ids: list[int], masks: np.ndarray) -> list[str]:
    """YOLO segmentation lines for masks (N, H, W): `<object id> x1 y1 ...`, coordinates in [0, 1]."""
    height, width = masks.shape[1:]
    scale = np.array([width, height], dtype=np.float64)
    lines = []
    for obj_id, mask in zip(object_ids, masks):
        for polygon in mask_polygons(mask):
            coords = (polygon / scale).reshape(-1)  # (P, 2) -> x1, y1, x2, y2, ...
            lines.append(f"{obj_id} " + " ".join(f"{value:.6f}" for value in coords))
    return lines


class YoloWriter:
    """One YOLO segmentation label file per frame; the class index is the object id."""

    def __init__(self, folder: Path) -> None:
        self.folder = make_folder(Path(folder))
        self.count = 0

    @property
    def description(self) -> str:
        return f"{self.count} YOLO label files in {self.folder}"

    def write(self, frame: TrackedFrame) -> None:
        lines = yolo_lines(frame.object_ids, frame.masks)
        text = "".join(line + "\n" for line in lines)
        write_atomically(self.folder / f"{frame.name}.txt", lambda temporary: temporary.write_text(text))
        self.count += 1

    def close(self) -> None:
        pass
