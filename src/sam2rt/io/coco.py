"""COCO-format files, the one writer of them: images, annotations with RLE masks, categories.

`CocoDataset` builds a file image by image: `sam2rt image --everything` (one category, "object"),
`sam2rt annotate` (the labels' classes) and, through `CocoWriter`, the frames of `sam2rt track` and of the
live app's export: one "image" per frame (`id` = frame number + 1, and `frame_index`; frames of a video or
stream also name it in `video`, as they exist as no file of their own), one "annotation" per visible object
and frame with its RLE mask, `bbox` [x, y, width, height], `area`, `score` (probability that the object is
visible) and `object_id`. Ids count from 1, categories' too (COCO's own files, CVAT and the converters to
YOLO expect that: a category 0 becomes class -1 in Ultralytics' converter). The file is written atomically,
so an interrupted run never leaves half a file, also when the input broke off midway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from .atomic import write_text_atomically
from .rle import encode_rle
from .sinks import TrackedFrame, prepare_file


class CocoDataset:
    """Classes are numbered from 0 as in YOLO labels; class i is the category with id `category_ids[i]`, by
    default i + 1 (a COCO input's own ids are kept where the classes came from one)."""

    def __init__(self, class_names: Sequence[str], info: dict, category_ids: Optional[Sequence[int]] = None) -> None:
        self.info = info
        category_ids = range(1, len(class_names) + 1) if category_ids is None else category_ids
        if len(category_ids) != len(class_names) or min(category_ids, default=1) < 1:
            raise ValueError(f"one category id from 1 per class name, got {list(category_ids)} for {class_names}")
        self.categories = [
            {"id": int(category_id), "name": str(name), "supercategory": "object"}
            for category_id, name in zip(category_ids, class_names)
        ]
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add_image(
        self,
        file_name: str,
        height: int,
        width: int,
        image_id: Optional[int] = None,
        frame_index: Optional[int] = None,
        video: Optional[str] = None,
    ) -> int:
        """Register an image; returns its id: `image_id`, else 1, 2, ... in order. A video's frames give their
        `frame_index` and the `video` they belong to."""
        image_id = len(self.images) + 1 if image_id is None else int(image_id)
        image = {"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)}
        if frame_index is not None:
            image["frame_index"] = int(frame_index)
        if video is not None:
            image["video"] = video
        self.images.append(image)
        return image_id

    def add_annotation(
        self,
        image_id: int,
        class_index: int,
        rle: dict,
        bbox: Sequence[float],
        area: int,
        score: Optional[float] = None,
        track_id: Optional[int] = None,
        object_id: Optional[int] = None,
    ) -> None:
        """One mask of class `class_index` (0-based): rle as {"size": [H, W], "counts": str}, bbox [x, y, width,
        height], area in pixels; the object it shows across a video's frames as `track_id` (annotate) or
        `object_id` (the tracker's own id)."""
        annotation = {
            "id": len(self.annotations) + 1,
            "image_id": image_id,
            "category_id": self.categories[class_index]["id"],
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
    """A sink of tracked frames: each frame's visible objects into one COCO file, written when the run ends.

    `frame_file` gives the file a frame was read from (a folder of images), or None for a frame of a video or
    stream: that one is named `<frame name>.jpg` (as the PNG masks and YOLO labels of the same frame are) and
    its entry says which video it belongs to.
    """

    def __init__(self, path: Path, source: str, frame_file: Callable[[int], Optional[str]] = lambda index: None):
        self.path = prepare_file(Path(path))
        self.source = source
        self.frame_file = frame_file
        self.dataset = CocoDataset(["object"], {"description": f"sam2rt track {source}", "source": source})

    @property
    def description(self) -> str:
        return f"COCO JSON {self.path} ({len(self.dataset.images)} frames, {len(self.dataset.annotations)} masks)"

    def write(self, frame: TrackedFrame) -> None:
        from pycocotools import mask as mask_utils

        height, width = frame.image.shape[:2]
        file_name = self.frame_file(frame.index)
        video = self.source if file_name is None else None
        file_name = file_name or f"{frame.name}.jpg"
        image_id = self.dataset.add_image(file_name, height, width, frame.index + 1, frame.index, video)
        visible = [i for i in range(len(frame.object_ids)) if frame.masks[i].any()]
        if not visible:
            return
        rles = encode_rle(frame.masks[visible])
        areas = mask_utils.area(rles)
        boxes = mask_utils.toBbox(rles)  # (N, 4) as x, y, width, height
        for slot, rle, area, box in zip(visible, rles, areas, boxes):
            object_id = frame.object_ids[slot]
            self.dataset.add_annotation(image_id, 0, rle, box, area, frame.scores[slot], object_id=object_id)

    def close(self) -> None:
        self.dataset.write(self.path)
