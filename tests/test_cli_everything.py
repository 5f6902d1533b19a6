"""`sam2rt image --everything`: the COCO JSON holds the mask generator's masks; an overlay per image; clean errors."""

from __future__ import annotations

import json

import numpy as np
from cli_support import (
    IMAGE_SIZE,
    VARIANT,
    assert_clean_error,
    clip_frames,
    invoke_in_process,
    model_args,
)
from PIL import Image

import sam2rt
from sam2rt.io.rle import decode_rle

# The test checkpoint's random weights predict IoUs and stabilities far below the defaults: keep every mask.
SETTINGS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


def test_folder_to_coco_json_and_overlays(tmp_path, checkpoint, capsys):
    frames = clip_frames(2)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"image{index}.png")
    out = tmp_path / "out"
    result = invoke_in_process(
        capsys, "image", tmp_path, "--everything", *SETTINGS, *model_args(checkpoint),
        "--output", out / "masks.json", "--overlay", out / "overlays",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    coco = json.loads((out / "masks.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == ["image0.png", "image1.png"]
    model = sam2rt.load_model(VARIANT, checkpoint, device="cpu", image_size=IMAGE_SIZE)
    generator = sam2rt.MaskGenerator(model, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    for image, frame in zip(coco["images"], frames):
        expected = generator.generate(frame)
        found = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(found) == len(expected) > 0
        for annotation, record in zip(found, expected):
            np.testing.assert_array_equal(decode_rle(annotation["segmentation"]), record["segmentation"])
            assert annotation["bbox"] == record["bbox"] and annotation["area"] == record["area"]
        with Image.open(out / "overlays" / f"{image['file_name'][:-4]}.png") as overlay:
            assert overlay.size == (frame.shape[1], frame.shape[0])
            assert not np.array_equal(np.asarray(overlay), frame)  # masks were drawn


def test_everything_errors(tmp_path, checkpoint, capsys):
    Image.fromarray(clip_frames(1)[0]).save(tmp_path / "image.png")
    result = invoke_in_process(
        capsys, "image", tmp_path / "image.png", "--everything", "--point", "3,4", "-o", "x.json"
    )
    assert result.returncode == 2 and "takes no prompts" in result.stderr
    result = invoke_in_process(capsys, "image", tmp_path / "empty", "--everything", "-o", tmp_path / "m.json")
    assert_clean_error(result, "no such image file or folder")
    result = invoke_in_process(
        capsys, "image", tmp_path / "image.png", "--everything", *model_args(checkpoint), "-o", tmp_path / "m.txt"
    )
    assert_clean_error(result, "COCO JSON file")


def test_everything_never_writes_over_its_inputs(tmp_path, checkpoint, capsys):
    image = tmp_path / "image.png"
    Image.fromarray(clip_frames(1)[0]).save(image)
    before = image.read_bytes()
    result = invoke_in_process(capsys, "image", image, "--everything", *model_args(checkpoint), "-o", image)
    assert_clean_error(result, f"--output {image} is the input image {image}")
    # An overlay folder that holds the input PNGs: the overlays, named <stem>.png, would replace them.
    result = invoke_in_process(
        capsys,
        "image",
        tmp_path,
        "--everything",
        *model_args(checkpoint),
        "-o",
        tmp_path / "m.json",
        "--overlay",
        tmp_path,
    )
    assert_clean_error(result, f"--overlay {tmp_path} holds the input image {image}")
    assert image.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]  # nothing written, not even a temporary file
