"""COCO-format files, the one writer of them: images, annotations with RLE masks, categories.

`CocoDataset` builds a file image by image: `sam2rt image --everything` (one category, "object"),
`sam2rt annotate` (the labels' classes) and, through `CocoWriter`, the frames of `sam2rt track` and of the
live app's export: one "image" per frame (`id` = frame number), one "annotation" per visible object and
frame with its RLE mask, `bbox` [x, y, width, height], `area`, `score` (probability that the object is
visible) and `object_id`. The file is written atomically, so an interrupted run never leaves half a file,
also when the input broke off midway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .atomic import write_text_atomically
from .rle import encode_rle
from .sinks import TrackedFrame, prepare_file


class CocoDataset:
    def __init__(self, category_names: Sequence[str], info: dict, first_category_id: int = 0) -> None:
        self.info = info
        self.categories = [
            {"id": first_category_id + i, "name": name, "supercategory": "object"}
            for i, name in enumerate(category_names)
        ]
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add_image(
        self, file_name: str, height: int, width: int, image_id: Optional[int] = None, frame_index: Optional[int] = None
    ) -> int:
        """Register an image; returns its id: `image_id`, else 1, 2, ... in order. A video's frames give their
        `frame_index` too."""
        image_id = len(self.images) + 1 if image_id is None else int(image_id)
        image = {"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)}
        if frame_index is not None:
            image["frame_index"] = int(frame_index)
        self.images.append(image)
        return image_id

    def add_annotation(
        self,
        image_id: int,
        category_id: int,
        rle: dict,
        bbox: Sequence[float],
        area: int,
        score: Optional[float] = None,
        track_id: Optional[int] = None,
        object_id: Optional[int] = None,
    ) -> None:
        """One mask: rle as {"size": [H, W], "counts": str}, bbox [x, y, width, height], area in pixels; the object
        it shows across a video's frames as `track_id` (annotate) or `object_id` (the tracker's own id)."""
        annotation = {
            "id": len(self.annotations) + 1,
            "image_id": image_id,
            "category_id": int(category_id),
            "segmentation": rle,
            "area": int(area),
            "bbox": [float(v) for v in bbox],
            "iscrowd": 0,
        }
        if score is not None:
            annotation["score"] = round(float(score), 6)
        if track_id is not None:
            annotation["track_id"] = int(track_id)  # the same object across the frames of a video
        if object_id is not None:
            annotation["object_id"] = int(object_id)
        self.annotations.append(annotation)

    def write(self, path: Path) -> None:
        content = {
            "info": self.info,
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }
        prepare_file(path)
        text = json.dumps(content)
        write_text_atomically(path, text)


class CocoWriter:
    """A sink of tracked frames: each frame's visible objects into one COCO file, written when the run ends."""

    def __init__(self, path: Path, source: str, image_suffix: str = ".jpg") -> None:
        self.path = prepare_file(Path(path))
        self.image_suffix = image_suffix
        self.dataset = CocoDataset(["object"], {"description": f"sam2rt track {source}", "source": source}, 1)

    @property
    def description(self) -> str:
        return f"COCO JSON {self.path} ({len(self.dataset.images)} frames, {len(self.dataset.annotations)} masks)"

    def write(self, frame: TrackedFrame) -> None:
        from pycocotools import mask as mask_utils

        height, width = frame.image.shape[:2]
        image_id = self.dataset.add_image(f"{frame.name}{self.image_suffix}", height, width, frame.index, frame.index)
        visible = [i for i in range(len(frame.object_ids)) if frame.masks[i].any()]
        if not visible:
            return
        rles = encode_rle(frame.masks[visible])
        areas = mask_utils.area(rles)
        boxes = mask_utils.toBbox(rles)  # (N, 4) as x, y, width, height
        for slot, rle, area, box in zip(visible, rles, areas, boxes):
            category = self.dataset.categories[0]["id"]
            object_id = frame.object_ids[slot]
            self.dataset.add_annotation(image_id, category, rle, box, area, frame.scores[slot], object_id=object_id)

    def close(self) -> None:
        self.dataset.write(self.path)
