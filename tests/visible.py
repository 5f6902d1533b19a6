"""Test weights whose objects are present, and mask comparisons that refuse to compare nothing.

Plain random weights judge every object absent: the object-score head says "no object", every mask
is the constant no-object logit, and a test comparing two such masks passes whatever the code under
test does. Every test that compares masks builds its model here (or with the oracle's perturbed
weights, which shift the same bias) and compares through `assert_masks_match`, which fails on a
constant, empty or full mask before it compares anything.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Union

import numpy as np
import torch

import sam2rt

VARIANT = "sam2.1_hiera_tiny"
OBJECT_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
NOISE = 0.02  # on every parameter, so that no zero-initialised one hides a wrong path
PRESENT_BIAS = 5.0  # the object-score logit's bias: objects judged present, masks with area, pieces and holes

Masks = Union[torch.Tensor, np.ndarray]


@lru_cache(maxsize=None)
def _visible_state(variant: str, image_size: int, seed: int) -> dict[str, torch.Tensor]:
    if variant == "edgetam":  # its trunk comes from timm, which imports torchvision: PyPI has no CPU build of it
        from oracle import install_torchvision_standin

        install_torchvision_standin()
    generator = torch.Generator().manual_seed(seed)
    # The initial weights come from the global generator: seeded here, so that the weights (and every mask a
    # test sees) do not depend on which tests ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = sam2rt.build_model(variant, image_size=image_size)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * NOISE)
    state = model.state_dict()
    state[OBJECT_SCORE_BIAS] = torch.full_like(state[OBJECT_SCORE_BIAS], PRESENT_BIAS)
    return {key: value.clone() for key, value in state.items()}


def visible_state_dict(variant: str = VARIANT, image_size: int = 128, seed: int = 3) -> dict[str, torch.Tensor]:
    """Random weights that give non-trivial masks (a copy: the caller may change it)."""
    return {key: value.clone() for key, value in _visible_state(variant, image_size, seed).items()}


def visible_model(variant: str = VARIANT, image_size: int = 128, seed: int = 3) -> sam2rt.SAM2Model:
    """A model of `visible_state_dict`: noise on every parameter, and objects judged present."""
    state = visible_state_dict(variant, image_size, seed)  # first: it sets up what building EdgeTAM imports
    model = sam2rt.build_model(variant, image_size=image_size)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _as_bool(masks: Masks, threshold: float) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().float().cpu().numpy()
    masks = np.asarray(masks)
    return masks if masks.dtype == bool else masks > threshold


def assert_nontrivial(masks: Masks, what: str = "masks", threshold: float = 0.0) -> None:
    """Each mask (..., H, W) of logits (cut at `threshold`) or booleans is neither empty nor full.

    Constant logits cut to an empty or a full mask, so they fail here too.
    """
    binary = _as_bool(masks, threshold)
    assert binary.ndim >= 2 and binary.size, f"{what}: no mask to compare (shape {binary.shape})"
    per_mask = binary.reshape(-1, binary.shape[-2] * binary.shape[-1])
    area = per_mask.sum(axis=1)
    empty = np.flatnonzero(area == 0)
    full = np.flatnonzero(area == per_mask.shape[1])
    assert not len(empty), f"{what}: mask(s) {empty.tolist()} are empty: nothing would be compared"
    assert not len(full), f"{what}: mask(s) {full.tolist()} cover the whole image: nothing would be compared"


def mask_ious(got: Masks, expected: Masks, threshold: float = 0.0) -> np.ndarray:
    """IoU of each pair of masks (..., H, W), flattened to (N,); two empty masks agree fully."""
    a, b = _as_bool(got, threshold), _as_bool(expected, threshold)
    assert a.shape == b.shape, f"mask shapes {a.shape} != {b.shape}"
    a, b = a.reshape(-1, a.shape[-2] * a.shape[-1]), b.reshape(-1, b.shape[-2] * b.shape[-1])
    inter, union = (a & b).sum(axis=1), (a | b).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def assert_masks_match(
    got: Masks, expected: Masks, min_iou: float, what: str = "masks", threshold: float = 0.0
) -> np.ndarray:
    """Every mask of `expected` is non-trivial, and each of `got` overlaps it with IoU >= min_iou.

    Returns the IoUs, (N,).
    """
    assert_nontrivial(expected, f"{what} (expected)", threshold)
    ious = mask_ious(got, expected, threshold)
    worst = int(ious.argmin())
    assert ious[worst] >= min_iou, (
        f"{what}: IoU {ious[worst]:.4f} < {min_iou} (mask {worst}; IoUs {np.round(ious, 4).tolist()})"
    )
    return ious
