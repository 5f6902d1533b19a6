"""Auto-annotation of a video: boxes on key frames start tracks and correct them; labels for every frame.

Key frames are YOLO label files named by frame number (`0.txt`, `00012.txt`, ...). On a key frame,
each box goes to the tracked object of its class whose current mask box overlaps it best (IoU of
at least MATCH_IOU), as a correction, or else starts a new object. Between key frames the
StreamTracker carries every object. Each frame is written as `images/<video>_<frame>.jpg`, the image its
labels and COCO entry name (a trainer needs the picture beside its labels). The video's record in `.parts/`
is written when it is done.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..images.boxes import box_iou, masks_to_boxes
from ..io.atomic import write_atomically, write_text_atomically
from ..io.sinks import make_folder
from ..io.yolo import yolo_lines
from .images import PARTS, Detection, Item, LabelError, image_record, read_yolo_boxes

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
MATCH_IOU = 0.5


def key_frames(labels: Path, num_frames: int) -> dict[int, Path]:
    """Frame number -> label file, for every `<number>.txt` of the folder `labels`."""
    if not labels.is_dir():
        raise LabelError(f"no such label folder: {labels}")
    keys = {}
    for path in sorted(labels.glob("*.txt")):
        if not path.stem.isdigit():
            raise LabelError(f"{path}: video label files are named by frame number, e.g. 00012.txt")
        if int(path.stem) >= num_frames:
            raise LabelError(f"{path}: frame {int(path.stem)} is past the end of the video ({num_frames} frames)")
        keys[int(path.stem)] = path
    if not keys:
        raise LabelError(f"no key frame labels (<frame number>.txt) in {labels}")
    return keys


def annotate_video(video: Path, labels: Path, model, output: Path, yolo: bool, per_piece: bool = False) -> list[dict]:
    """Track the key frames' boxes through `video`; returns one record per frame (also written to .parts)."""
    from PIL import Image

    from ..io.sources import open_frames
    from ..tracking.stream import StreamTracker

    frames = open_frames(video)
    keys = key_frames(labels, len(frames))
    for path in keys.values():
        read_yolo_boxes(path, frames[0].shape[:2])  # every key frame checked before the work
    tracker = StreamTracker(model)
    classes: dict[int, int] = {}  # object id -> class
    records = []
    for index in range(len(frames)):
        rgb = frames[index]
        result = tracker.step(rgb)
        if index in keys:
            for detection in read_yolo_boxes(keys[index], rgb.shape[:2]):
                obj_id = _match(detection.class_id, detection.box, result, classes)
                if obj_id is None:
                    obj_id = max(classes, default=0) + 1
                    classes[obj_id] = detection.class_id
                result = tracker.add_prompt(obj_id, box=list(detection.box))
        masks = result.masks.cpu().numpy()
        class_ids = [classes[obj_id] for obj_id in result.object_ids]
        name = f"{video.stem}_{index:05d}"
        picture = Image.fromarray(rgb)
        write_atomically(make_folder(output / "images") / f"{name}.jpg", lambda t: picture.save(t, "JPEG", quality=95))
        if yolo:
            lines = yolo_lines(class_ids, masks, per_piece)
            write_text_atomically(
                make_folder(output / "labels") / f"{name}.txt", "".join(line + "\n" for line in lines)
            )
        scores = torch.sigmoid(result.object_scores.float()).cpu().numpy()
        detections = [Detection(c, (0.0, 0.0, 0.0, 0.0)) for c in class_ids]  # image_record reads the class
        record = image_record(Item(Path(f"{name}.jpg")), rgb, detections, masks, scores)
        for annotation, obj_id in zip(record["annotations"], result.object_ids):
            annotation["track_id"] = obj_id
        records.append(record)
    write_text_atomically(make_folder(output / PARTS) / f"{video.stem}.json", json.dumps({"frames": records}))
    return records


def _match(class_id: int, box: tuple, result, classes: dict[int, int]):
    """The tracked object of this class whose mask box overlaps `box` best, if by at least MATCH_IOU."""
    if not result.object_ids:
        return None
    boxes = masks_to_boxes(result.masks).float()  # (N, 4)
    candidate = torch.tensor([box], dtype=torch.float32, device=boxes.device)
    overlaps = box_iou(torch.cat([candidate, boxes]))[0, 1:].nan_to_num(0.0)
    same_class = torch.tensor([classes[o] == class_id for o in result.object_ids], device=boxes.device)
    overlaps = torch.where(same_class, overlaps, torch.zeros_like(overlaps))
    best = int(overlaps.argmax())
    return result.object_ids[best] if float(overlaps[best]) >= MATCH_IOU else None


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def video_done(video: Path, output: Path) -> bool:
    return (output / PARTS / f"{video.stem}.json").exists()


def video_records(video: Path, output: Path) -> list[dict]:
    return json.loads((output / PARTS / f"{video.stem}.json").read_text())["frames"]
