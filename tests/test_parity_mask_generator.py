"""Parity of MaskGenerator with the official SAM2AutomaticMaskGenerator on a real photo.

sam2.1 tiny at image size 128 with the oracle's perturbed random weights, a few grid points. Random
weights make smooth, low-contrast logits: at the official thresholds (IoU 0.8, stability 0.95 at
cut 0 +- 1) no mask survives and at cut 0 nearly every mask covers the whole photo. The cases cut
the masks at logit 1.5 with a stability offset of 0.5, keep predicted IoUs above 0.3 and stability
scores of at least 0.005: a handful of distinct masks survive and the NMS has duplicates to drop.
The oracle's NMS comes from the test stand-in for torchvision (tests/oracle.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from media import shared_image
from oracle import install_torchvision_standin, oracle_model, our_model
from PIL import Image

import sam2rt
from sam2rt.everything.rle import decode_rle

VARIANT = "sam2.1_hiera_tiny"
IMAGE_SIZE = 128
RANDOM_WEIGHT_SETTINGS = dict(
    pred_iou_thresh=0.3, stability_score_thresh=0.005, mask_threshold=1.5, stability_score_offset=0.5
)
# case: (settings, the fewest masks the oracle keeps with them: the comparison must have something to compare)
CASES = {
    "plain-binary": (dict(points_per_side=8, output_mode="binary_mask"), 3),
    # m2m refinement turns the random-weight masks into near copies of one mask: one survives the NMS.
    "crops-m2m-coco": (
        dict(
            points_per_side=4, crop_n_layers=1, crop_n_points_downscale_factor=2, use_m2m=True, output_mode="coco_rle"
        ),
        1,
    ),
}


@pytest.fixture(scope="module")
def setup():
    install_torchvision_standin()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    photo = shared_image("truck.jpg")
    image = np.asarray(Image.fromarray(photo).resize((450, 300), Image.BILINEAR))
    return image, our_model(VARIANT, IMAGE_SIZE), oracle_model(VARIANT, IMAGE_SIZE), SAM2AutomaticMaskGenerator


def _mask(segmentation) -> np.ndarray:
    return segmentation if isinstance(segmentation, np.ndarray) else decode_rle(segmentation)


@pytest.mark.parametrize("case", list(CASES))
def test_same_masks_as_the_official_generator(setup, case):
    image, ours_model, ref_model, official = setup
    extra, fewest = CASES[case]
    settings = dict(RANDOM_WEIGHT_SETTINGS, **extra)
    ours = sam2rt.MaskGenerator(ours_model, **settings).generate(image)
    reference = official(ref_model, **settings)
    # The official predictor assumes image size 1024 for its feature map sizes; tell it ours.
    reference.predictor._bb_feat_sizes = [(IMAGE_SIZE // stride,) * 2 for stride in (4, 8, 16)]
    ref = reference.generate(image)
    assert len(ref) >= fewest, "too few masks survive for the comparison to mean much"
    assert len(ours) == len(ref)
    for mine, theirs in zip(ours, ref):
        assert set(mine) == set(theirs)
        assert type(mine["segmentation"]) is type(theirs["segmentation"])
        assert mine["area"] == theirs["area"] and mine["bbox"] == theirs["bbox"]
        a, b = _mask(mine["segmentation"]), _mask(theirs["segmentation"])
        iou = (a & b).sum() / max((a | b).sum(), 1)
        assert iou >= 0.99
        assert abs(mine["predicted_iou"] - theirs["predicted_iou"]) <= 1e-4
        assert abs(mine["stability_score"] - theirs["stability_score"]) <= 1e-4
        assert mine["crop_box"] == theirs["crop_box"]
        np.testing.assert_allclose(mine["point_coords"], theirs["point_coords"], atol=1e-3)
