"""The files of `sam2rt annotate` and `sam2rt track` read back with the tools people train and evaluate with.

pycocotools (the COCO API and COCOeval) and supervision (`DetectionDataset.from_coco`, `from_yolo`) read the
outputs as they are: the same objects, classes and names, the same masks. Ultralytics' own label checker
cannot install beside a CPU torch here: `scripts/check_with_ultralytics.py` runs it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_support import clip_frames, invoke_in_process, model_args, polygon_expressible, write_clip
from PIL import Image
from visible import assert_nontrivial, mask_ious

supervision = pytest.importorskip("supervision", reason="supervision is one of the test extras")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

# Boxes per image (YOLO: class cx cy w h), two classes; the names come from classes.txt as labelImg writes it.
BOXES = ["0 0.3 0.4 0.3 0.4", "1 0.6 0.5 0.5 0.6", "0 0.8 0.25 0.2 0.3"]
NAMES = ["red square", "green box"]
YOLO_MIN_IOU = 0.98  # one polygon per object: the one-pixel cuts joining its pieces (measured 0.983-0.999)


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("consumers")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for index, frame in enumerate(clip_frames(3)):
        Image.fromarray(frame).save(root / "images" / f"f{index}.jpg", quality=95)
        (root / "labels" / f"f{index}.txt").write_text("".join(line + "\n" for line in BOXES))
    (root / "labels" / "classes.txt").write_text("".join(name + "\n" for name in NAMES))
    args = ("annotate", root / "images", "--labels", root / "labels", "-o", root / "out", *model_args(checkpoint))
    return root / "out", args


def _run(capsys, args):
    result = invoke_in_process(capsys, *args)
    assert result.returncode == 0, result.stderr


def _coco_masks(coco: COCO) -> dict[str, list[tuple[int, np.ndarray]]]:
    """file name -> [(category id, mask)] of each annotation, in the file's order, by the COCO API."""
    by_file = {}
    for image_id, image in coco.imgs.items():
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        by_file[image["file_name"]] = [(a["category_id"], coco.annToMask(a).astype(bool)) for a in annotations]
    return by_file


def test_the_coco_api_and_cocoeval_read_annotate_output(annotated, capsys):
    out, args = annotated
    _run(capsys, args)
    coco = COCO(str(out / "annotations.json"))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [(1, "red square"), (2, "green box")]
    masks = _coco_masks(coco)
    assert sorted(masks) == ["f0.jpg", "f1.jpg", "f2.jpg"] and all(len(m) == len(BOXES) for m in masks.values())
    for annotation in coco.dataset["annotations"]:
        mask = coco.annToMask(annotation).astype(bool)
        assert_nontrivial(mask[None], f"annotation {annotation['id']}")
        assert annotation["area"] == mask.sum()
        rows, cols = np.nonzero(mask)
        x, y = cols.min(), rows.min()
        assert annotation["bbox"] == [x, y, cols.max() + 1 - x, rows.max() + 1 - y]
    # The file scored against itself, its annotations as detections: everything found, nothing else.
    results = coco.loadRes([dict(a, score=a["score"]) for a in coco.dataset["annotations"]])
    evaluation = COCOeval(coco, results, "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_supervision_reads_the_coco_and_the_yolo_dataset_alike(annotated, capsys):
    out, args = annotated
    _run(capsys, args)
    expected = _coco_masks(COCO(str(out / "annotations.json")))
    from_coco = supervision.DetectionDataset.from_coco(
        images_directory_path=str(out / "images"), annotations_path=str(out / "annotations.json"), force_masks=True
    )
    from_yolo = supervision.DetectionDataset.from_yolo(
        images_directory_path=str(out / "images"),
        annotations_directory_path=str(out / "labels"),
        data_yaml_path=str(out / "data.yaml"),
        force_masks=True,
    )
    assert from_coco.classes == from_yolo.classes == NAMES
    assert len(from_coco) == len(from_yolo) == 3
    for path, image, detections in from_coco:
        objects = expected[path.split("/")[-1]]
        np.testing.assert_array_equal(detections.class_id, [category - 1 for category, _ in objects])
        np.testing.assert_array_equal(detections.mask, np.stack([mask for _, mask in objects]))
        assert image.shape[:2] == objects[0][1].shape  # the image is there, beside its labels
    for path, _, detections in from_yolo:
        objects = expected[path.split("/")[-1]]
        # One YOLO line per object: the same objects in the same order, whatever their pieces.
        np.testing.assert_array_equal(detections.class_id, [category - 1 for category, _ in objects])
        masks = np.stack([polygon_expressible(mask) for _, mask in objects])
        assert_nontrivial(masks)
        ious = mask_ious(detections.mask, masks)
        assert ious.min() >= YOLO_MIN_IOU, f"{path}: polygon IoUs {np.round(ious, 4).tolist()}"


def test_track_output_reads_back_with_the_coco_api(tmp_path, checkpoint, capsys):
    clip = write_clip(tmp_path / "clip.mp4", count=4)
    _run(capsys, ("track", clip, "--point", "30,45", "--point", "120,100", *model_args(checkpoint),
                  "--coco", tmp_path / "masks.json"))  # fmt: skip
    coco = COCO(str(tmp_path / "masks.json"))
    assert [(image["id"], image["frame_index"], image["video"]) for image in coco.dataset["images"]] == [
        (index + 1, index, str(clip))
        for index in range(4)  # the video as the command named it
    ]
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "object", "supercategory": "object"}]
    results = coco.loadRes(coco.dataset["annotations"])
    evaluation = COCOeval(coco, results, "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert len(coco.dataset["annotations"]) >= 4 and evaluation.stats[0] == pytest.approx(1.0)
    json.dumps(coco.dataset)  # what the API loaded is plain JSON again
