"""`sam2rt annotate`: boxes -> masks -> YOLO segmentation labels and COCO JSON; clear errors on bad labels; resuming."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from cli_support import (
    IMAGE_SIZE,
    VARIANT,
    assert_clean_error,
    clip_frames,
    invoke_in_process,
    model_args,
    polygon_expressible,
)
from PIL import Image

import sam2rt
from sam2rt.io.rle import decode_rle

BOXES = [(0, "0 0.3 0.4 0.3 0.4"), (1, "1 0.6 0.5 0.5 0.6")]


@pytest.fixture()
def dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    frames = clip_frames(2)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "images" / f"f{index}.png")
        (tmp_path / "labels" / f"f{index}.txt").write_text("".join(line + "\n" for _, line in BOXES))
    return tmp_path, frames


def _predictor_masks(checkpoint, frame) -> np.ndarray:
    predictor = sam2rt.ImagePredictor(sam2rt.load_model(VARIANT, checkpoint, device="cpu", image_size=IMAGE_SIZE))
    predictor.set_image(frame)
    height, width = frame.shape[:2]
    boxes = []
    for _, line in BOXES:
        cx, cy, w, h = (float(v) for v in line.split()[1:])
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    masks, _, _ = predictor.predict(box=np.array(boxes), multimask_output=False)
    return masks[:, 0] > 0


def test_yolo_and_coco_outputs_decode_to_the_predictors_masks_and_resume(dataset, checkpoint, capsys):
    root, frames = dataset
    args = ("annotate", root / "images", "--labels", root / "labels", "-o", root / "out", *model_args(checkpoint))
    result = invoke_in_process(capsys, *args)
    assert result.returncode == 0, result.stderr
    expected = _predictor_masks(checkpoint, frames[0])
    assert all(0 < m.sum() < m.size for m in expected)
    coco = json.loads((root / "out" / "annotations.json").read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "0"), (2, "1")]  # ids from 1, as COCO's
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert [a["category_id"] for a in first] == [1, 2]
    for annotation, mask in zip(first, expected):
        np.testing.assert_array_equal(decode_rle(annotation["segmentation"]), mask)
    lines = (root / "out" / "labels" / "f0.txt").read_text().splitlines()
    assert [int(line.split()[0]) for line in lines] == [0, 1]  # one line per object, whatever its pieces
    height, width = frames[0].shape[:2]
    for line, mask in zip(lines, expected):
        drawn = np.zeros((height, width), np.uint8)
        polygon = (np.array(line.split()[1:], float).reshape(-1, 2) * [width, height]).round().astype(np.int32)
        cv2.fillPoly(drawn, [polygon], 1)
        expressible = polygon_expressible(mask)
        iou = (drawn.astype(bool) & expressible).sum() / (drawn.astype(bool) | expressible).sum()
        assert iou > 0.9, f"class {line.split()[0]}: polygon IoU {iou:.3f}"
    # A dataset the YOLO trainers take as it is: images/ beside labels/ (hard links), data.yaml with the classes.
    for index in range(2):
        assert (root / "out" / "images" / f"f{index}.png").samefile(root / "images" / f"f{index}.png")
    data = (root / "out" / "data.yaml").read_text()
    assert "train: images" in data and "path:" not in data  # relative to the file: the dataset can move
    assert 'names:\n  0: "0"\n  1: "1"\n' in data

    # An interrupted run: the second image never finished. Running again does only that one.
    second = (root / "out" / "labels" / "f1.txt").read_text()
    (root / "out" / ".parts" / "f1.json").unlink()
    (root / "out" / "labels" / "f1.txt").unlink()
    done = (root / "out" / ".parts" / "f0.json").stat().st_mtime_ns
    result = invoke_in_process(capsys, *args)
    assert result.returncode == 0, result.stderr
    assert "resuming: 1 of 2 images already done" in result.stdout and "f0.png" not in result.stdout
    assert (root / "out" / ".parts" / "f0.json").stat().st_mtime_ns == done
    assert (root / "out" / "labels" / "f1.txt").read_text() == second
    assert json.loads((root / "out" / "annotations.json").read_text()) == coco


def test_coco_detections_input(dataset, checkpoint, capsys):
    root, frames = dataset
    height, width = frames[0].shape[:2]
    detections = {
        "images": [{"id": 7, "file_name": "f1.png", "height": height, "width": width}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [40, 30, 50, 40]}],
        "categories": [{"id": 3, "name": "square"}],
    }
    (root / "dets.json").write_text(json.dumps(detections))
    result = invoke_in_process(
        capsys, "annotate", root / "images", "--coco", root / "dets.json", "-o", root / "out", "--format", "coco",
        *model_args(checkpoint),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    coco = json.loads((root / "out" / "annotations.json").read_text())
    assert coco["categories"][0]["name"] == "square" and len(coco["annotations"]) == 1
    assert coco["categories"][0]["id"] == coco["annotations"][0]["category_id"] == 3  # the detections' own id
    assert not (root / "out" / "labels").exists() and not (root / "out" / "images").exists()


def _subfolder_detections(root, frames) -> list[str]:
    """Two images of one name in two subfolders, given by a COCO detections JSON: their file_names."""
    names = ["train/a/0001.png", "train/b/0001.png"]
    for name, frame in zip(names, frames):
        (root / "images" / name).parent.mkdir(parents=True)
        Image.fromarray(frame).save(root / "images" / name)
    detections = {
        "images": [{"id": index + 1, "file_name": name} for index, name in enumerate(names)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [40, 30, 50, 40]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [60, 30, 50, 40]},
        ],
        "categories": [{"id": 1, "name": "square"}],
    }
    (root / "dets.json").write_text(json.dumps(detections))
    return names


def test_coco_images_of_one_name_in_subfolders_keep_their_own_outputs(dataset, checkpoint, capsys):
    root, frames = dataset
    names = _subfolder_detections(root, frames)
    args = ("annotate", root / "images", "--coco", root / "dets.json", "-o", root / "out", *model_args(checkpoint))
    result = invoke_in_process(capsys, *args)
    assert result.returncode == 0, result.stderr
    coco = json.loads((root / "out" / "annotations.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == names  # the input's names: tools map them back
    masks = [decode_rle(a["segmentation"]) for a in coco["annotations"]]
    assert len(masks) == 2 and all(0 < m.sum() < m.size for m in masks) and (masks[0] != masks[1]).any()
    for name in names:  # labels/ and .parts/ mirror images/, as the YOLO trainers look for them
        stem = name.removesuffix(".png")
        assert (root / "out" / "images" / name).samefile(root / "images" / name)
        assert len((root / "out" / "labels" / f"{stem}.txt").read_text().splitlines()) == 1
        assert json.loads((root / "out" / ".parts" / f"{stem}.json").read_text())["file_name"] == name
    assert not (root / "out" / "labels" / "0001.txt").exists() and not (root / "out" / "images" / "0001.png").exists()

    done = {p: p.stat().st_mtime_ns for p in (root / "out" / ".parts").rglob("*.json")}
    result = invoke_in_process(capsys, *args)
    assert result.returncode == 0, result.stderr
    assert "resuming: 2 of 2 images already done" in result.stdout and "masks\n" not in result.stdout
    assert {p: p.stat().st_mtime_ns for p in (root / "out" / ".parts").rglob("*.json")} == done
    assert json.loads((root / "out" / "annotations.json").read_text()) == coco


@pytest.mark.parametrize(
    ("file_names", "message"),
    [
        (["../x.png"], "file_name '../x.png' must lie inside the images folder"),
        (["a/../../x.png"], "must lie inside the images folder (no absolute path, no '..')"),
        (["/tmp/x.png"], "file_name '/tmp/x.png' must lie inside the images folder"),
        (["f0.png", "f0.png"], "file_name 'f0.png' is listed twice"),
        (["f0.png", "./f0.png"], "'./f0.png' and 'f0.png' would share outputs"),
    ],
)
def test_coco_file_names_outside_the_folder_or_twice_are_refused(dataset, capsys, file_names, message):
    root, _ = dataset
    images = [{"id": index, "file_name": name} for index, name in enumerate(file_names)]
    (root / "dets.json").write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    result = invoke_in_process(capsys, "annotate", root / "images", "--coco", root / "dets.json", "-o", root / "out")
    assert_clean_error(result, message)
    assert "dets.json" in result.stderr and not (root / "out").exists()


@pytest.mark.parametrize("source", ["--labels", "--text"])
def test_images_of_one_name_but_the_suffix_are_refused_before_anything_is_written(dataset, capsys, source):
    """photo.png and photo.jpg would read one label file and write one labels/photo.txt and one record: refused,
    naming both, before any output exists (the second would silently overwrite the first)."""
    root, _ = dataset
    Image.open(root / "images" / "f0.png").convert("RGB").save(root / "images" / "f0.jpg")
    given = ("--labels", root / "labels") if source == "--labels" else ("--text", "square")
    result = invoke_in_process(capsys, "annotate", root / "images", *given, "-o", root / "out")
    assert_clean_error(result, "the image 'f0.png' and 'f0.jpg' would share outputs")
    assert not (root / "out").exists()


def test_class_names_from_the_labels_classes_txt_and_copied_images(dataset, checkpoint, capsys):
    root, _ = dataset
    (root / "labels" / "classes.txt").write_text("red square\ngreen: box\n")
    args = ("annotate", root / "images", "--labels", root / "labels", "-o", root / "out", "--copy-images")
    result = invoke_in_process(capsys, *args, *model_args(checkpoint))
    assert result.returncode == 0, result.stderr
    coco = json.loads((root / "out" / "annotations.json").read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "red square"), (2, "green: box")]
    assert 'names:\n  0: "red square"\n  1: "green: box"\n' in (root / "out" / "data.yaml").read_text()
    copy = root / "out" / "images" / "f0.png"
    assert (
        not copy.samefile(root / "images" / "f0.png") and copy.read_bytes() == (root / "images" / "f0.png").read_bytes()
    )
    assert "images copied" in result.stdout

    (root / "labels" / "classes.txt").write_text("red square\n")  # class 1 is labelled but not named
    result = invoke_in_process(capsys, "annotate", root / "images", "--labels", root / "labels", "-o", root / "out2",
                               *model_args(checkpoint))  # fmt: skip
    assert_clean_error(result, "f0.txt: class 1 is labelled, but only 1 class names are given")
    assert not (root / "out2").exists()  # refused before any work

    result = invoke_in_process(capsys, "annotate", root / "images", "--labels", root / "labels", "-o", root,
                               *model_args(checkpoint))  # fmt: skip
    assert_clean_error(result, "the masks' labels would overwrite the boxes in")


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.2", "f1.txt, line 2: expected '<class> <cx> <cy> <width> <height>'"),
        ("1 0.9 0.5 0.4 0.2", "f1.txt, line 2: the box '1 0.9 0.5 0.4 0.2' lies outside the image"),
        ("x 0.5 0.5 0.2 0.2", "f1.txt, line 2: expected"),
    ],
)
def test_bad_yolo_labels_name_the_file_and_line(dataset, checkpoint, capsys, line, message):
    root, _ = dataset
    (root / "labels" / "f1.txt").write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    result = invoke_in_process(
        capsys, "annotate", root / "images", "--labels", root / "labels", "-o", root / "out", *model_args(checkpoint)
    )
    assert_clean_error(result, message)


def test_missing_image_and_missing_detector(dataset, checkpoint, capsys):
    root, _ = dataset
    detections = {"images": [{"id": 1, "file_name": "gone.png"}], "annotations": [], "categories": []}
    (root / "dets.json").write_text(json.dumps(detections))
    result = invoke_in_process(capsys, "annotate", root / "images", "--coco", root / "dets.json", "-o", root / "out")
    assert_clean_error(result, "missing image")
    result = invoke_in_process(capsys, "annotate", root / "images", "--detector", "yolo11n.pt", "-o", root / "out")
    assert_clean_error(result, "needs the ultralytics package")


@pytest.mark.parametrize("source", ["images", "video", "ray"])
def test_compile_on_cpu_is_refused_before_anything_is_written(dataset, checkpoint, capsys, source):
    from cli_support import write_clip

    root, _ = dataset
    target = write_clip(root / "clip.mp4", count=2) if source == "video" else root / "images"
    extra = ["--ray"] if source == "ray" else []
    result = invoke_in_process(
        capsys, "annotate", target, "--labels", root / "labels", "-o", root / "out", "--compile", *extra,
        *model_args(checkpoint),
    )  # fmt: skip
    assert_clean_error(result, "--compile needs a CUDA device, and the model would run on cpu")
    assert not (root / "out").exists() or not any((root / "out").rglob("*.txt"))


def test_video_key_frames_start_and_correct_tracks(tmp_path, checkpoint, capsys):
    from cli_support import write_clip

    video = write_clip(tmp_path / "clip.mp4", count=4)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "0.txt").write_text("0 0.3 0.4 0.3 0.4\n")
    (tmp_path / "keys" / "00002.txt").write_text("1 0.7 0.5 0.3 0.4\n")
    args = ("annotate", video, "--labels", tmp_path / "keys", "-o", tmp_path / "out", *model_args(checkpoint))
    result = invoke_in_process(capsys, *args)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == [f"clip_{i:05d}.txt" for i in range(4)]
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert len(coco["images"]) == 4
    # Each frame is an image of the dataset: the file its labels and COCO entry name exists.
    frame_files = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert frame_files == [image["file_name"] for image in coco["images"]] == [f"clip_{i:05d}.jpg" for i in range(4)]
    assert "train: images" in (tmp_path / "out" / "data.yaml").read_text()
    tracks = [(a["image_id"], a["track_id"], a["category_id"]) for a in coco["annotations"]]
    assert {(1, 1, 1), (2, 1, 1), (3, 1, 1), (3, 2, 2), (4, 2, 2)} <= set(tracks)  # object 2 starts on frame 2
    assert not any(image_id < 3 and track == 2 for image_id, track, _ in tracks)
    # The first frame's mask is the tracker's answer to the box.
    model = sam2rt.load_model(VARIANT, checkpoint, device="cpu", image_size=IMAGE_SIZE)
    tracker = sam2rt.StreamTracker(model)
    from sam2rt.io.sources import open_frames

    frames = open_frames(video)
    tracker.step(frames[0])
    height, width = frames[0].shape[:2]
    first = tracker.add_prompt(1, box=[0.15 * width, 0.2 * height, 0.45 * width, 0.6 * height])
    annotation = next(a for a in coco["annotations"] if a["image_id"] == 1)
    np.testing.assert_array_equal(decode_rle(annotation["segmentation"]), first.masks[0].numpy())
    again = invoke_in_process(capsys, *args)
    assert again.returncode == 0 and "resuming: clip.mp4 already done" in again.stdout
