"""ImagePredictor through the public API: shapes, coordinate conventions, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from visible import assert_nontrivial, visible_model

import sam2rt

IMAGE_SIZE = 256


@pytest.fixture(scope="module")
def predictor():
    predictor = sam2rt.ImagePredictor(visible_model(image_size=IMAGE_SIZE))
    predictor.set_image(_image())
    return predictor


def _image(height=120, width=200):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_output_shapes_and_types(predictor):
    masks, ious, low_res = predictor.predict(point_coords=[[50, 60]], point_labels=[1])
    assert masks.shape == (3, 120, 200) and masks.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert ious.shape == (3,) and low_res.shape == (3, 64, 64)
    assert np.abs(low_res).max() <= 32.0
    masks, ious, low_res = predictor.predict(box=[[10, 10, 50, 50], [60, 20, 190, 110]], multimask_output=False)
    assert masks.shape == (2, 1, 120, 200) and ious.shape == (2, 1) and low_res.shape == (2, 1, 64, 64)
    assert predictor.get_image_embedding().shape == (1, 256, 16, 16)


def test_pil_and_array_inputs_agree(predictor):
    image = _image()
    other = sam2rt.ImagePredictor(predictor.model)
    other.set_image(Image.fromarray(image))
    assert torch.equal(other.get_image_embedding(), predictor.get_image_embedding())
    other.set_image(torch.from_numpy(image))
    assert torch.equal(other.get_image_embedding(), predictor.get_image_embedding())


def test_pixel_and_fractional_coordinates_agree(predictor):
    in_pixels = predictor.predict(point_coords=[[50, 60]], point_labels=[1], return_logits=True)
    as_fraction = predictor.predict(
        point_coords=[[50 / 200, 60 / 120]], point_labels=[1], normalize_coords=False, return_logits=True
    )
    for a, b in zip(in_pixels, as_fraction):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_threshold_turns_logits_into_masks(predictor):
    logits, _, _ = predictor.predict(point_coords=[[50, 60]], point_labels=[1], return_logits=True)
    masks, _, _ = predictor.predict(point_coords=[[50, 60]], point_labels=[1])
    assert np.array_equal(masks, (logits > 0).astype(np.float32))


def test_hole_filling_and_sprinkle_removal_change_only_small_regions(predictor):
    """They change the masks, and little of them (tests/test_parity_image.py compares them with the official)."""
    plain = predictor.predict(point_coords=[[50, 60]], point_labels=[1], return_logits=True)[0]
    cleaned = sam2rt.ImagePredictor(predictor.model, max_hole_area=40, max_sprinkle_area=40)
    cleaned.set_image(_image())
    tidy = cleaned.predict(point_coords=[[50, 60]], point_labels=[1], return_logits=True)[0]
    assert tidy.shape == plain.shape
    assert_nontrivial(plain, "the masks before")
    changed = (tidy > 0) != (plain > 0)
    assert changed.any(axis=(1, 2)).all()  # every candidate had small regions to tidy
    assert changed.mean() < 0.25  # small regions only; the big picture stays


def test_reset_and_predict_before_set_image(predictor):
    fresh = sam2rt.ImagePredictor(predictor.model)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(point_coords=[[1, 1]], point_labels=[1])
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.get_image_embedding()
    fresh.set_image(_image())
    fresh.reset_predictor()
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(box=[0, 0, 5, 5])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(point_coords=[[10, 10]]), "point_labels must be given"),
        (dict(point_labels=[1]), "point_coords must be given"),
        (dict(point_coords=[[250, 10]], point_labels=[1]), r"\(x=250, y=10\) lies outside the 200x120 image"),
        (dict(point_coords=[[10, -1]], point_labels=[1]), "lies outside"),
        (dict(point_coords=[[0.5, 1.5]], point_labels=[1], normalize_coords=False), r"outside \[0, 1\]"),
        (dict(point_coords=[[10, 10, 3]], point_labels=[1]), "shape"),
        (dict(point_coords=[[10, 10], [20, 20]], point_labels=[1]), "one label per point"),
        (dict(point_coords=[[10, 10]], point_labels=[7]), "labels must be 1 \\(foreground\\) or 0"),
        (dict(point_coords=[[float("nan"), 10]], point_labels=[1]), "NaN"),
        (dict(point_coords="here", point_labels=[1]), "must be numeric"),
        (dict(box=[50, 10, 20, 30]), "x0 <= x1"),
        (dict(box=[10, 10, 20]), "box must have shape"),
        (dict(box=[10, 10, 300, 30]), "box corner .* lies outside"),
        (dict(box=[[1, 1, 5, 5], [2, 2, 6, 6]], point_coords=[[3, 3]], point_labels=[1]), "batch sizes must match"),
        (dict(mask_input=np.zeros((1, 32, 32))), r"mask_input must be low-resolution logits of shape \(1, 64, 64\)"),
    ],
)
def test_bad_prompts_raise_clear_errors(predictor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)


@pytest.mark.parametrize(
    "image,error,message",
    [
        ([[1, 2, 3]], TypeError, "numpy array, torch tensor or PIL image"),
        (np.zeros((10, 10, 4), dtype=np.uint8), ValueError, r"shape \(H, W, 3\)"),
        (np.zeros((0, 10, 3), dtype=np.uint8), ValueError, "empty"),
        (np.zeros((10, 10, 3), dtype=bool), TypeError, "uint8"),
        (np.zeros((10, 10, 3), dtype=object), TypeError, "uint8"),
    ],
)
def test_bad_images_raise_clear_errors(predictor, image, error, message):
    with pytest.raises(error, match=message):
        sam2rt.ImagePredictor(predictor.model).set_image(image)


def test_grayscale_is_accepted(predictor):
    other = sam2rt.ImagePredictor(predictor.model)
    other.set_image(np.zeros((40, 30), dtype=np.uint8))
    assert other.predict(point_coords=[[5, 5]], point_labels=[1])[0].shape == (3, 40, 30)


def test_single_and_batch_modes_are_not_mixed(predictor):
    batch = sam2rt.ImagePredictor(predictor.model)
    with pytest.raises(TypeError, match="list of images"):
        batch.set_image_batch(_image())
    batch.set_image_batch([_image(), _image(60, 80)])
    with pytest.raises(RuntimeError, match="predict_batch"):
        batch.predict(point_coords=[[1, 1]], point_labels=[1])
    with pytest.raises(ValueError, match="1 entries for 2 images"):
        batch.predict_batch(point_coords_batch=[[[1, 1]]], point_labels_batch=[[1]])
    with pytest.raises(RuntimeError, match="set_image_batch"):
        predictor.predict_batch(point_coords_batch=[[[1, 1]]], point_labels_batch=[[1]])
    masks, _, _ = batch.predict_batch(box_batch=[[0, 0, 10, 10], [5, 5, 70, 50]])
    assert [m.shape for m in masks] == [(3, 120, 200), (3, 60, 80)]
