"""End-to-end parity of ImagePredictor with the official SAM2ImagePredictor on a real photo (sam2.1 tiny, 1024)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media import shared_image
from oracle import (
    assert_close_logits,
    assert_close_scores,
    install_connected_components_standin,
    install_torchvision_standin,
    oracle_model,
    our_model,
)

import sam2rt

VARIANT = "sam2.1_hiera_tiny"


@pytest.fixture(scope="module")
def predictors():
    install_torchvision_standin()
    install_connected_components_standin()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = shared_image("truck.jpg")
    ours = sam2rt.ImagePredictor(our_model(VARIANT))
    ref = SAM2ImagePredictor(oracle_model(VARIANT))
    ours.set_image(image)
    ref.set_image(image)
    return ours, ref, image


def test_embedding(predictors):
    ours, ref, _ = predictors
    assert_close_logits(ours.get_image_embedding(), ref.get_image_embedding(), what="embedding")


CASES = {
    "click": dict(point_coords=np.array([[500.0, 375.0]]), point_labels=np.array([1])),
    "clicks": dict(point_coords=np.array([[500.0, 375.0], [1125.0, 625.0]]), point_labels=np.array([1, 0])),
    "box": dict(box=np.array([425.0, 600.0, 700.0, 875.0])),
    "box+click": dict(
        box=np.array([425.0, 600.0, 700.0, 875.0]), point_coords=np.array([[575.0, 750.0]]), point_labels=np.array([0])
    ),
    "boxes": dict(
        box=np.array([[75.0, 275.0, 1725.0, 850.0], [425.0, 600.0, 700.0, 875.0], [1240.0, 675.0, 1400.0, 750.0]])
    ),
    "normalized": dict(point_coords=np.array([[0.3, 0.5]]), point_labels=np.array([1]), normalize_coords=False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("multimask_output", [True, False])
def test_predict(predictors, case, multimask_output):
    ours, ref, _ = predictors
    kwargs = dict(CASES[case], multimask_output=multimask_output, return_logits=True)
    masks, ious, low_res = ours.predict(**kwargs)
    ref_masks, ref_ious, ref_low_res = ref.predict(**kwargs)
    assert_close_logits(torch.from_numpy(masks), torch.from_numpy(ref_masks), what="masks")
    assert_close_scores(torch.from_numpy(ious), torch.from_numpy(ref_ious), what="iou")
    assert_close_logits(torch.from_numpy(low_res), torch.from_numpy(ref_low_res), what="low-res logits")


@pytest.mark.parametrize(
    "case,holes,sprinkles", [("click", 50, 0), ("click", 0, 50), ("click", 50, 50), ("boxes", 200, 10)]
)
def test_small_holes_and_sprinkles(predictors, case, holes, sprinkles):
    """max_hole_area and max_sprinkle_area, alone and together, against the official post-processing (its
    connected components from the OpenCV stand-in of its CUDA extension); they must change the masks."""
    ours, ref, _ = predictors
    kwargs = dict(CASES[case], multimask_output=True, return_logits=True)
    plain = ref.predict(**kwargs)[0]
    ours.max_hole_area, ours.max_sprinkle_area = holes, sprinkles
    ref._transforms.max_hole_area, ref._transforms.max_sprinkle_area = holes, sprinkles
    try:
        masks, ious, low_res = ours.predict(**kwargs)
        ref_masks, ref_ious, ref_low_res = ref.predict(**kwargs)
    finally:
        ours.max_hole_area = ours.max_sprinkle_area = ref._transforms.max_hole_area = (
            ref._transforms.max_sprinkle_area
        ) = 0
    assert ((ref_masks > 0) != (plain > 0)).sum() > 1000, "the post-processing changed nothing to compare"
    assert_close_logits(torch.from_numpy(masks), torch.from_numpy(ref_masks), what="masks")
    assert_close_scores(torch.from_numpy(ious), torch.from_numpy(ref_ious), what="iou")
    assert_close_logits(torch.from_numpy(low_res), torch.from_numpy(ref_low_res), what="low-res logits")


def test_mask_input_and_binary_masks(predictors):
    """A previous low-resolution answer fed back as mask_input, with thresholded masks."""
    ours, ref, image = predictors
    first = dict(CASES["click"], multimask_output=True)
    _, ious, low_res = ours.predict(**first)
    _, ref_ious, ref_low_res = ref.predict(**first)
    best = int(np.argmax(ref_ious))
    kwargs = dict(CASES["clicks"], mask_input=ref_low_res[best : best + 1], multimask_output=False)
    masks, ious, _ = ours.predict(**kwargs)
    ref_masks, ref_ious, _ = ref.predict(**kwargs)
    assert masks.shape == (1, *image.shape[:2]) and masks.dtype == ref_masks.dtype
    assert_close_scores(torch.from_numpy(ious), torch.from_numpy(ref_ious), what="iou")
    with_logits = ours.predict(**kwargs, return_logits=True)[0]
    ref_logits = ref.predict(**kwargs, return_logits=True)[0]
    assert_close_logits(torch.from_numpy(with_logits), torch.from_numpy(ref_logits), what="mask logits")
    near_zero = np.abs(ref_logits) < 1e-3  # pixels whose sign rounding may flip
    assert np.array_equal(masks[~near_zero], ref_masks[~near_zero])


def test_mask_input_only(predictors):
    ours, ref, _ = predictors
    low_res = np.random.default_rng(0).normal(size=(1, 256, 256)).astype(np.float32) * 5
    masks, ious, _ = ours.predict(mask_input=low_res, multimask_output=True, return_logits=True)
    ref_masks, ref_ious, _ = ref.predict(mask_input=low_res, multimask_output=True, return_logits=True)
    assert_close_logits(torch.from_numpy(masks), torch.from_numpy(ref_masks), what="masks")
    assert_close_scores(torch.from_numpy(ious), torch.from_numpy(ref_ious), what="iou")


def test_batch_of_images(predictors):
    ours, ref, image = predictors
    second = np.ascontiguousarray(image[::2, ::2])
    ours_batch = sam2rt.ImagePredictor(ours.model)
    ours_batch.set_image_batch([image, second])
    ref.set_image_batch([image, second])
    try:
        kwargs = dict(
            point_coords_batch=[np.array([[500.0, 375.0]]), np.array([[250.0, 180.0]])],
            point_labels_batch=[np.array([1]), np.array([1])],
            box_batch=[None, np.array([50.0, 100.0, 300.0, 400.0])],
            multimask_output=True,
            return_logits=True,
        )
        masks, ious, low_res = ours_batch.predict_batch(**kwargs)
        ref_masks, ref_ious, ref_low_res = ref.predict_batch(**kwargs)
    finally:
        ref.set_image(image)
    assert [m.shape[-2:] for m in masks] == [image.shape[:2], second.shape[:2]]
    for mine, theirs in zip(masks + ious + low_res, ref_masks + ref_ious + ref_low_res, strict=True):
        assert_close_logits(torch.from_numpy(mine), torch.from_numpy(theirs))
