"""A COCO-format dataset file built image by image: images, annotations with RLE masks, categories.

Used by `sam2rt image --everything` (one category, "object") and `sam2rt annotate` (the labels'
classes). The file is written atomically, so an interrupted run never leaves half a JSON file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .atomic import write_atomically
from .sinks import prepare_file


class CocoDataset:
    def __init__(self, category_names: Sequence[str], description: str) -> None:
        self.description = description
        self.categories = [{"id": i, "name": name, "supercategory": "object"} for i, name in enumerate(category_names)]
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add_image(self, file_name: str, height: int, width: int) -> int:
        """Register an image; returns its id (1, 2, ...)."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)})
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
    ) -> None:
        """One mask: rle as {"size": [H, W], "counts": str}, bbox [x, y, width, height], area in pixels."""
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
        self.annotations.append(annotation)

    def write(self, path: Path) -> None:
        content = {
            "info": {"description": self.description},
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }
        prepare_file(path)
        text = json.dumps(content)
        write_atomically(path, lambda temporary: temporary.write_text(text))
