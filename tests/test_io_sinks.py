"""The outputs one by one: overlay video, DAVIS PNG, COCO RLE, YOLO polygons, and closing them all."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from cli_support import decode_video
from PIL import Image
from pycocotools import mask as mask_utils

from sam2rt.io.coco import CocoWriter
from sam2rt.io.overlay import OverlayVideoWriter, draw_overlay, object_color, video_rate
from sam2rt.io.sinks import OutputError, PngMaskWriter, SinkSet, TrackedFrame, davis_palette
from sam2rt.io.yolo import YoloWriter, mask_polygons, yolo_lines
from sam2rt.tracking.run import check_outputs


def _frame(index: int, size=(31, 45), ids=(1, 7)) -> TrackedFrame:
    height, width = size
    image = np.full((height, width, 3), 40, np.uint8)
    masks = np.zeros((len(ids), height, width), bool)
    masks[0, 5:20, 5:25] = True
    masks[0, 10:14, 10:14] = False  # a hole
    if len(ids) > 1:
        masks[1, 18:30, 20:44] = True  # overlaps the first object's corner
    labels = np.zeros((height, width), np.int32)
    for obj_id, mask in zip(ids, masks):
        labels[mask & (labels == 0)] = obj_id
    return TrackedFrame(index, f"{index:05d}", image, list(ids), masks, np.full(len(ids), 0.9), labels)


def test_overlay_colours_the_objects_and_leaves_the_rest():
    frame = _frame(0)
    drawn = draw_overlay(frame.image, frame.labels, frame.object_ids)
    assert drawn.shape == frame.image.shape and drawn.dtype == np.uint8
    assert (drawn[:4] == 40).all() and (drawn[:, :4] == 40).all()  # far from the objects and their ids
    inside = drawn[8, 7].astype(int)  # inside object 1, away from its outline and its id
    assert np.abs(inside - (40 * 0.5 + np.array(object_color(1)) * 0.5)).max() <= 1
    assert object_color(1) != object_color(2) and object_color(1) != object_color(7)


def test_overlay_video_with_odd_size_is_padded_and_keeps_its_rate(tmp_path):
    writer = OverlayVideoWriter(tmp_path / "sub" / "overlay.mp4", 29.97002997, (31, 45))
    for index in range(5):
        writer.write(_frame(index))
    writer.close()
    assert decode_video(tmp_path / "sub" / "overlay.mp4") == (5, (32, 46), video_rate(29.97002997))
    assert video_rate(29.97002997).denominator == 1001 and video_rate(None) == 30
    boxes = _top_level_boxes(tmp_path / "sub" / "overlay.mp4")
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart: playable while it downloads


def _top_level_boxes(path) -> list[str]:
    """The types of an MP4 file's top-level boxes, in file order (each: 4-byte size, 4-byte type)."""
    data, boxes, at = path.read_bytes(), [], 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8].decode("latin-1")
        if size == 1:  # a 64-bit size follows the type
            size = int.from_bytes(data[at + 8 : at + 16], "big")
        boxes.append(kind)
        at += size if size else len(data)
    return boxes


def test_png_masks_hold_the_object_ids(tmp_path):
    writer = PngMaskWriter(tmp_path / "png")
    writer.write(_frame(3))
    with Image.open(tmp_path / "png" / "00003.png") as png:
        assert png.mode == "P" and png.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
        np.testing.assert_array_equal(np.asarray(png), _frame(3).labels)
    assert davis_palette()[3 * 7 : 3 * 8] == [128, 128, 128]
    with pytest.raises(OutputError, match="PNG masks hold object ids 1 to 255, got 300"):
        writer.write(_frame(4, ids=(300,)))


def test_coco_rle_round_trip(tmp_path):
    writer = CocoWriter(tmp_path / "masks.json", "clip.mp4")
    writer.write(_frame(0))
    writer.write(_frame(1, ids=(1,)))
    writer.close()
    coco = json.loads((tmp_path / "masks.json").read_text())
    assert [(a["image_id"], a["object_id"]) for a in coco["annotations"]] == [(1, 1), (1, 7), (2, 1)]
    # Ids from 1; a video's frames exist as no file of their own: their entries name the video and the frame.
    assert coco["images"][1] == {
        "id": 2, "file_name": "00001.jpg", "height": 31, "width": 45, "frame_index": 1, "video": "clip.mp4"
    }  # fmt: skip
    first = coco["annotations"][0]
    np.testing.assert_array_equal(mask_utils.decode(first["segmentation"]).astype(bool), _frame(0).masks[0])
    assert first["bbox"] == [5.0, 5.0, 20.0, 15.0] and first["area"] == 15 * 20 - 16
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]


def test_coco_entries_of_a_folders_frames_name_their_files(tmp_path):
    writer = CocoWriter(tmp_path / "masks.json", "frames/", frame_file=lambda index: f"shot_{index}.png")
    writer.write(_frame(4))
    writer.close()
    image = json.loads((tmp_path / "masks.json").read_text())["images"][0]
    assert image == {"id": 5, "file_name": "shot_4.png", "height": 31, "width": 45, "frame_index": 4}


@pytest.mark.parametrize("shape", ["ring", "two pieces", "thin line"])
def test_polygons_fill_back_to_the_mask(shape):
    mask = np.zeros((60, 80), bool)
    if shape == "ring":
        cv2.circle(mask.view(np.uint8), (40, 30), 20, 1, -1)
        cv2.circle(mask.view(np.uint8), (40, 30), 8, 0, -1)
    elif shape == "two pieces":
        mask[5:20, 5:30] = True
        mask[30:55, 40:75] = True
        mask[35:45, 50:60] = False
    else:
        mask[20:22, 10:70] = True
    polygons = mask_polygons(mask)
    assert len(polygons) == (2 if shape == "two pieces" else 1)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(filled, [p.astype(np.int32) for p in polygons], 1)
    iou = (filled.astype(bool) & mask).sum() / (filled.astype(bool) | mask).sum()
    assert iou > 0.97, iou


def test_yolo_lines_are_normalised(tmp_path):
    writer = YoloWriter(tmp_path / "labels")
    writer.write(_frame(2))
    lines = (tmp_path / "labels" / "00002.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "7"]
    values = np.array([float(v) for line in lines for v in line.split()[1:]])
    assert values.min() >= 0 and values.max() <= 1


def _pieces_mask() -> np.ndarray:
    """Three pieces, one of them with a hole, and a speck far away."""
    mask = np.zeros((60, 80), bool)
    mask[5:20, 5:30] = True
    mask[30:55, 40:75] = True
    mask[35:45, 50:60] = False
    mask[8:14, 60:66] = True
    mask[57:59, 2:4] = True
    return mask


def _filled(polygon_line: str, size: tuple[int, int]) -> np.ndarray:
    """A YOLO line back to pixels as the YOLO tools draw it: denormalised, rounded, cv2.fillPoly."""
    height, width = size
    coords = np.array([float(v) for v in polygon_line.split()[1:]]).reshape(-1, 2) * [width, height]  # -> (P, 2)
    filled = np.zeros(size, np.uint8)
    cv2.fillPoly(filled, [np.round(coords).astype(np.int32)], 1)
    return filled.astype(bool)


def test_yolo_writes_one_line_per_object_its_pieces_joined():
    mask = _pieces_mask()
    (line,) = yolo_lines([3], mask[None])
    filled = _filled(line, mask.shape)
    assert line.split()[0] == "3"
    assert (filled & mask).sum() == mask.sum()  # every piece, the hole left out ...
    seams = filled & ~mask
    # ... but for one-pixel cuts along the shortest gaps (38 + 14 + 16 rows or columns, and 6 to the hole)
    assert 0 < seams.sum() <= 80 and not seams[36:44, 51:59].any()
    assert len(mask_polygons(mask)) == 4


def test_yolo_per_piece_writes_a_line_per_piece():
    mask = _pieces_mask()
    lines = yolo_lines([3], mask[None], per_piece=True)
    assert len(lines) == 4 and {line.split()[0] for line in lines} == {"3"}
    union = np.logical_or.reduce([_filled(line, mask.shape) for line in lines])
    assert (union == mask).all()
    assert yolo_lines([1, 2], np.zeros((2, 60, 80), bool)) == []  # an empty mask has no line


def test_closing_closes_every_output_even_when_one_fails(tmp_path):
    class Broken:
        description = "broken"

        def write(self, frame):
            pass

        def close(self):
            raise OutputError("disk full")

    coco = CocoWriter(tmp_path / "masks.json", "clip.mp4")
    sinks = SinkSet([Broken(), coco])
    sinks.write(_frame(0))
    error = sinks.close()
    assert isinstance(error, OutputError) and (tmp_path / "masks.json").exists()


def test_outputs_are_checked_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for overlay, png_dir, coco, yolo_dir, message in [
        (tmp_path / "overlay.avi", None, None, None, "the overlay video must end in .mp4, .mov, .mkv, got overlay.avi"),
        (blocker / "overlay.mp4", None, None, None, f"cannot use {blocker} as a folder: it is a file"),
        (None, blocker, None, None, f"cannot use {blocker} as a folder: it is a file"),
        (None, blocker / "deeper" / "png", None, None, f"cannot create the folder {blocker / 'deeper' / 'png'}"),
        (None, None, tmp_path, None, f"cannot write {tmp_path}: it is a folder"),
        (None, None, None, blocker, f"cannot use {blocker} as a folder: it is a file"),
    ]:
        with pytest.raises(OutputError, match=re.escape(message)):
            check_outputs(overlay, png_dir, coco, yolo_dir)
    check_outputs(tmp_path / "new" / "overlay.mp4", tmp_path / "png", tmp_path / "new" / "masks.json", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # checking creates nothing
