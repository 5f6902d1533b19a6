"""`sam2rt image` end to end: the mask it writes is the image predictor's, for clicks, boxes and mask prompts."""

from __future__ import annotations

import numpy as np
import pytest
from cli_support import IMAGE_SIZE, VARIANT, clip_frames, model_args, run_sam2rt
from media import shared_path
from PIL import Image

import sam2rt
from sam2rt.processing.prompts import mask_to_model_frame


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return sam2rt.ImagePredictor(sam2rt.load_model(VARIANT, checkpoint, device="cpu", image_size=IMAGE_SIZE))


def _expected(predictor, image, multimask, **prompts) -> np.ndarray:
    predictor.set_image(image)
    masks, ious, _ = predictor.predict(multimask_output=multimask, **prompts)
    best = masks[int(np.argmax(ious))] > 0
    assert 0 < best.sum() < best.size  # a mask with something in it and something out of it, or the test proves little
    return best


def test_click_writes_the_predictors_best_mask_and_an_overlay(tmp_path, checkpoint, predictor):
    image = clip_frames(1)[0]
    Image.fromarray(image).save(tmp_path / "image.png")
    result = run_sam2rt(
        "image", tmp_path / "image.png", "--point", "30,45", *model_args(checkpoint),
        "--output", tmp_path / "out" / "mask.png", "--overlay", tmp_path / "out" / "overlay.jpg",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = _expected(predictor, image, True, point_coords=[[30, 45]], point_labels=[1])
    with Image.open(tmp_path / "out" / "mask.png") as mask:
        assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
        np.testing.assert_array_equal(np.asarray(mask) > 0, expected)
    assert f"mask: {int(expected.sum())} pixels" in result.stdout
    with Image.open(tmp_path / "out" / "overlay.jpg") as overlay:
        assert overlay.size == (160, 120)


def test_box_negative_click_and_mask_prompt(tmp_path, checkpoint, predictor):
    image = np.asarray(Image.open(shared_path("images/truck.jpg")).convert("RGB"))
    height, width = image.shape[:2]
    hint = np.zeros((height, width), np.uint8)
    hint[300:600, 400:1200] = 255
    Image.fromarray(hint).save(tmp_path / "hint.png")
    result = run_sam2rt(
        "image", shared_path("images/truck.jpg"), "--box", "75,275,1725,850", "--negative", "500,375",
        "--mask", tmp_path / "hint.png", *model_args(checkpoint), "--output", tmp_path / "mask.png",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    side = predictor.model.sam_prompt_encoder.mask_input_size
    mask_input = (mask_to_model_frame(hint, side, predictor.device)[0] * 20 - 10).numpy()  # 0/1 -> -10/+10 logits
    expected = _expected(
        predictor, image, False, point_coords=[[500, 375]], point_labels=[0], box=[75, 275, 1725, 850],
        mask_input=mask_input,
    )  # fmt: skip
    with Image.open(tmp_path / "mask.png") as mask:
        np.testing.assert_array_equal(np.asarray(mask) > 0, expected)
