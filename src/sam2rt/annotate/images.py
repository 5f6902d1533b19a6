"""Auto-annotation: detection boxes -> masks -> a YOLO segmentation dataset and/or COCO JSON with RLE.

Boxes come from YOLO label files (`<class> <cx> <cy> <w> <h>`, fractions of the image) or from a
COCO detections JSON (`bbox` [x, y, width, height] in pixels). Each image's boxes are segmented
together by the image predictor, one mask per box. Finished images are recorded one by one in
`<output>/.parts/`, so an interrupted run resumes where it stopped; the COCO file is assembled
from those records at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import NamedTuple, Optional, Sequence

import numpy as np

from ..io.atomic import write_text_atomically
from ..io.rle import encode_rle
from ..io.sinks import make_folder
from ..io.yolo import yolo_lines

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PARTS = ".parts"


class LabelError(ValueError):
    """A label file or a detections file that cannot be used: the message names the file and line."""


class Detection(NamedTuple):
    class_id: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass
class Item:
    """One image to annotate and where its boxes come from."""

    image: Path
    label_file: Optional[Path] = None  # YOLO boxes; None with COCO detections or a detector
    detections: Optional[list[Detection]] = None  # from a COCO file
    file_name: Optional[str] = None  # its path in the images folder as the input names it; None: the file's name

    @property
    def relative_name(self) -> str:
        """The image's name relative to the images folder, as given (a COCO file_name may hold subfolders)."""
        return self.file_name if self.file_name is not None else self.image.name

    @property
    def name(self) -> str:
        """The relative name without its suffix: its label file and record mirror the image's subfolders."""
        return str(PurePosixPath(self.relative_name).with_suffix(""))


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            return picture.height, picture.width
    except FileNotFoundError:
        raise LabelError(f"missing image {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise LabelError(f"{path} is not a readable image: {error}") from None


def read_yolo_boxes(path: Path, image_hw: tuple[int, int]) -> list[Detection]:
    """Boxes of a YOLO detection label file; an empty or missing file means no objects."""
    if not path.exists():
        return []
    height, width = image_hw
    detections = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {number}"
        try:
            class_id = int(fields[0])
            cx, cy, w, h = (float(value) for value in fields[1:5])
        except ValueError:
            class_id, cx = -1, float("nan")
        if len(fields) != 5 or class_id < 0 or not np.isfinite([cx, cy, w, h]).all():
            raise LabelError(f"{where}: expected '<class> <cx> <cy> <width> <height>', got {line.strip()!r}")
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if w <= 0 or h <= 0 or min(x0, y0) < -1e-6 or max(x1, y1) > 1 + 1e-6:
            raise LabelError(f"{where}: the box {line.strip()!r} lies outside the image (coordinates are 0..1)")
        box = (max(x0, 0.0) * width, max(y0, 0.0) * height, min(x1, 1.0) * width, min(y1, 1.0) * height)
        detections.append(Detection(class_id, box))
    return detections


def yolo_items(images: Path, labels: Path) -> list[Item]:
    """Every image of the folder `images`, with its label file `<labels>/<stem>.txt`."""
    files = image_files(images)
    if not labels.is_dir():
        raise LabelError(f"no such label folder: {labels}")
    if not files:
        raise LabelError(f"no images in {images}")
    return [Item(path, labels / f"{path.stem}.txt") for path in files]


def image_files(images: Path) -> list[Path]:
    """The image files of the folder `images`, sorted; refused when two would share a label file and a record
    (photo.jpg and photo.png), before anything reads or writes them."""
    if not images.is_dir():
        raise LabelError(f"no such image folder: {images}")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    check_distinct(images, [Item(path) for path in files], "image")
    return files


def coco_items(path: Path, images: Path) -> tuple[list[Item], list[str], list[int]]:
    """Images and boxes of a COCO detections JSON (images, annotations with bbox, categories), the class names
    and the categories' ids (kept in the masks' COCO file; renumbered from 1 where one is below 1)."""
    try:
        content = json.loads(path.read_text())
        files = {entry["id"]: entry["file_name"] for entry in content["images"]}
        categories = sorted(content.get("categories", []), key=lambda c: c["id"])
    except FileNotFoundError:
        raise LabelError(f"no such detections file: {path}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise LabelError(f"{path}: not a COCO detections file ({error})") from None
    class_ids = {category["id"]: index for index, category in enumerate(categories)}
    boxes: dict[int, list[Detection]] = {image_id: [] for image_id in files}
    for index, annotation in enumerate(content.get("annotations", [])):
        where = f"{path}, annotation {index} (id {annotation.get('id')})"
        try:
            x, y, w, h = (float(v) for v in annotation["bbox"])
            image_id, category = annotation["image_id"], annotation["category_id"]
        except (KeyError, TypeError, ValueError):
            raise LabelError(f"{where}: needs image_id, category_id and bbox [x, y, width, height]") from None
        if image_id not in files:
            raise LabelError(f"{where}: image_id {image_id} is not among the images")
        if category not in class_ids:
            raise LabelError(f"{where}: category_id {category} is not among the categories")
        boxes[image_id].append(Detection(class_ids[category], (x, y, x + w, y + h)))
    items = []
    for image_id, name in files.items():
        check_file_name(path, image_id, name)
        item = Item(images / name, detections=boxes[image_id], file_name=name)
        height, width = image_size(item.image)
        for detection in item.detections:
            x0, y0, x1, y1 = detection.box
            if x1 <= x0 or y1 <= y0 or x0 < 0 or y0 < 0 or x1 > width + 1e-3 or y1 > height + 1e-3:
                raise LabelError(f"{path}: a box of {name} lies outside its {width}x{height} image: {detection.box}")
        items.append(item)
    check_distinct(path, items)
    ids = [int(category["id"]) for category in categories]
    if min(ids, default=1) < 1:
        ids = list(range(1, len(ids) + 1))
    return items, [str(category.get("name", category["id"])) for category in categories], ids


def check_file_name(path: Path, image_id, name) -> None:
    """A file_name inside the images folder: an absolute one or one with `..` would put outputs outside <output>."""
    where = f"{path}, image id {image_id}"
    if not isinstance(name, str) or not name:
        raise LabelError(f"{where}: file_name must be a path relative to the images folder, got {name!r}")
    parsed = PureWindowsPath(name)  # both separators, and drive letters, wherever this runs
    if parsed.anchor or ".." in parsed.parts:
        raise LabelError(
            f"{where}: file_name {name!r} must lie inside the images folder (no absolute path, no '..'): its "
            "label file and record would be written outside the output folder"
        )


def check_distinct(path: Path, items: Sequence[Item], what: str = "image file_name") -> None:
    """Two images that would share a label file and a record (the same name but for the suffix: photo.jpg and
    photo.png): the second would overwrite the first. `what` names an item in the message."""
    seen: dict[str, Item] = {}
    for item in items:
        earlier = seen.setdefault(item.name, item)
        if earlier is not item:
            other = earlier.relative_name
            same = "is listed twice" if other == item.relative_name else f"and {other!r} would share outputs"
            raise LabelError(f"{path}: the {what} {item.relative_name!r} {same}: each image needs its own")


class BoxSegmenter:
    """One mask per box, all boxes of an image in one batch of the image predictor."""

    def __init__(self, model) -> None:
        from ..images.predictor import ImagePredictor

        self.predictor = ImagePredictor(model)

    def __call__(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks (N, H, W) bool and predicted IoUs (N,) for boxes (N, 4) x0, y0, x1, y1."""
        if len(boxes) == 0:
            return np.zeros((0, *rgb.shape[:2]), bool), np.zeros(0, np.float32)
        self.predictor.set_image(rgb)
        masks, ious, _ = self.predictor.predict(box=boxes, multimask_output=False)
        masks = masks.reshape(len(boxes), *rgb.shape[:2])  # (N, 1, H, W) or (1, H, W) -> (N, H, W)
        return masks > 0, ious.reshape(len(boxes))

    def annotate(self, item: Item, rgb: np.ndarray) -> tuple[list[Detection], np.ndarray, np.ndarray]:
        """The item's boxes (its label file's or its own), their masks and predicted IoUs."""
        detections = item.detections if item.label_file is None else read_yolo_boxes(item.label_file, rgb.shape[:2])
        boxes = np.array([d.box for d in detections], dtype=np.float32).reshape(-1, 4)
        masks, ious = self(rgb, boxes)
        return list(detections), masks, ious


class ConceptSegmenter:
    """Every instance of each phrase (SAM 3), the phrase's index as its class: no boxes of one's own needed."""

    def __init__(self, predictor, phrases: Sequence[str]) -> None:
        self.predictor = predictor  # an images.concepts.ConceptPredictor
        self.phrases = list(phrases)

    def annotate(self, item: Item, rgb: np.ndarray) -> tuple[list[Detection], np.ndarray, np.ndarray]:
        """The instances found: a detection (class, box) each, their masks (N, H, W) and scores (N,)."""
        self.predictor.set_image(rgb)
        found = self.predictor.predict(self.phrases)
        detections = [
            Detection(class_id, tuple(float(v) for v in box))
            for class_id, instances in enumerate(found)
            for box in instances.boxes
        ]
        masks = np.concatenate([instances.masks for instances in found])
        return detections, masks, np.concatenate([instances.scores for instances in found])


def image_record(item: Item, rgb: np.ndarray, detections: Sequence[Detection], masks, ious) -> dict:
    """What a finished image leaves in `.parts`: its size and its annotations with RLE masks (`category_id`
    holding the class index from 0, as in the YOLO labels)."""
    from pycocotools import mask as mask_utils

    rles = encode_rle(masks) if len(masks) else []
    annotations = [
        {
            "category_id": detection.class_id,
            "segmentation": rle,
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "area": int(mask_utils.area(rle)),
            "score": round(float(iou), 6),
        }
        for detection, rle, iou in zip(detections, rles, ious)
    ]
    return {"file_name": item.relative_name, "height": rgb.shape[0], "width": rgb.shape[1], "annotations": annotations}


def part_path(output: Path, item: Item) -> Path:
    return output / PARTS / f"{item.name}.json"


def annotate_item(item: Item, segmenter, output: Path, yolo: bool, per_piece: bool = False) -> dict:
    """Segment one image (a BoxSegmenter's boxes, or a ConceptSegmenter's phrases); write its YOLO label file (a
    line per object, or `per_piece`), then its record (the mark that it is done)."""
    from PIL import Image

    try:
        with Image.open(item.image) as picture:
            rgb = np.asarray(picture.convert("RGB"))
    except FileNotFoundError:
        raise LabelError(f"missing image {item.image}") from None
    except OSError as error:
        raise LabelError(f"{item.image} is not a readable image: {error}") from None
    detections, masks, ious = segmenter.annotate(item, rgb)
    if yolo:
        lines = yolo_lines([d.class_id for d in detections], masks, per_piece)
        text = "".join(line + "\n" for line in lines)
        label_path = output / "labels" / f"{item.name}.txt"
        write_text_atomically(make_folder(label_path.parent) / label_path.name, text)
    record = image_record(item, rgb, detections, masks, ious)
    record_path = part_path(output, item)
    write_text_atomically(make_folder(record_path.parent) / record_path.name, json.dumps(record))
    return record


def pending(items: Sequence[Item], output: Path) -> list[Item]:
    """The items without a finished record: what a resumed run still has to do."""
    return [item for item in items if not part_path(output, item).exists()]


def write_coco(
    records: Sequence[dict], class_names: Sequence[str], path: Path, category_ids: Optional[Sequence[int]] = None
) -> int:
    """The COCO JSON of finished image records, in their order; returns the number of masks."""
    from ..io.coco import CocoDataset

    # no paths in info: the same file wherever it is made
    dataset = CocoDataset(class_names, {"description": "sam2rt annotate"}, category_ids)
    for record in records:
        image_id = dataset.add_image(record["file_name"], record["height"], record["width"])
        for a in record["annotations"]:
            dataset.add_annotation(
                image_id, a["category_id"], a["segmentation"], a["bbox"], a["area"], a["score"], a.get("track_id")
            )
    dataset.write(path)
    return len(dataset.annotations)


def check_same_phrases(output: Path, phrases: Sequence[str]) -> None:
    """A run of concept prompts resumes only with its phrases: their order is the records' class numbers. The
    first run writes them down in `.parts`."""
    path = output / PARTS / "phrases.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before != list(phrases):
            raise LabelError(
                f"{output} was annotated with --text {','.join(before)!r}: resume with the same phrases, or give "
                "another --output"
            )
    else:
        write_text_atomically(make_folder(output / PARTS) / "phrases.json", json.dumps(list(phrases)))


def folder_items(images: Path) -> list[Item]:
    """Every image of the folder `images`, with no boxes (a concept prompt finds them)."""
    return [Item(path) for path in image_files(images)]


def detector_items(images: Path, weights: str) -> tuple[list[Item], list[str]]:
    """Boxes from an Ultralytics detector (the user's weights) for every image of the folder `images`, and the
    detector's class names."""
    try:
        from ultralytics import YOLO
    except ImportError:
        raise LabelError(
            "--detector needs the ultralytics package, which is not installed (pip install ultralytics)"
        ) from None
    files = image_files(images)  # checked before the detector runs on any
    detector = YOLO(weights)
    items = []
    for path in files:
        result = detector(str(path), verbose=False)[0]
        boxes = result.boxes.xyxy.cpu().numpy()  # (N, 4) pixels
        classes = result.boxes.cls.cpu().numpy().astype(int)
        items.append(Item(path, detections=[Detection(int(c), tuple(map(float, b))) for c, b in zip(classes, boxes)]))
    names = detector.names  # {class index: name}
    return items, [str(names[index]) for index in sorted(names)]


def finished_records(items: Sequence[Item], output: Path) -> list[dict]:
    return [json.loads(part_path(output, item).read_text()) for item in items]


def check_items(items: Sequence[Item], class_names: Optional[Sequence[str]] = None) -> None:
    """Read every image header and label file before any work: a bad label (or a class past `class_names`,
    where the classes are named) fails the run at once."""
    for item in items:
        size = image_size(item.image)
        if item.label_file is None:
            continue
        for detection in read_yolo_boxes(item.label_file, size):
            if class_names is not None and detection.class_id >= len(class_names):
                raise LabelError(
                    f"{item.label_file}: class {detection.class_id} is labelled, but only {len(class_names)} "
                    "class names are given"
                )
