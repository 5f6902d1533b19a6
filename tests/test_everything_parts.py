"""The mask generator's parts against plain references: boxes around masks, greedy NMS, COCO run lengths."""

from __future__ import annotations

import numpy as np
import torch
from oracle import _reference_batched_nms
from pycocotools import mask as mask_utils

from sam2rt.images.boxes import batched_nms, masks_to_boxes
from sam2rt.images.crops import crop_boxes
from sam2rt.io.rle import coco_rle, decode_rle, mask_run_lengths, uncompressed_rle


def _random_masks(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    blobs = torch.rand(count, 1, height // 4, width // 4, generator=generator) > 0.7
    masks = torch.nn.functional.interpolate(blobs.float(), size=(height, width), mode="nearest")[:, 0] > 0
    masks[0] = False  # an empty mask
    masks[1] = True  # a full one: its runs start with a zero count
    return masks


def test_boxes_around_masks():
    masks = _random_masks(12, 37, 53)
    boxes = masks_to_boxes(masks)
    for mask, box in zip(masks, boxes.tolist()):
        ys, xs = np.nonzero(mask.numpy())
        expected = [0, 0, 0, 0] if len(xs) == 0 else [xs.min(), ys.min(), xs.max(), ys.max()]
        assert box == expected


def test_nms_matches_the_greedy_reference_with_ties_and_groups():
    generator = torch.Generator().manual_seed(1)
    for trial in range(5):
        corners = torch.randint(0, 60, (200, 2, 2), generator=generator).float()
        boxes = torch.cat([corners.min(1).values, corners.max(1).values + 1], dim=1)  # (N, 4) x0 y0 x1 y1
        scores = torch.randint(0, 8, (200,), generator=generator).float()  # many ties
        groups = torch.randint(0, 1 + trial, (200,), generator=generator)
        kept = batched_nms(boxes, scores, groups, 0.5)
        assert kept.tolist() == _reference_batched_nms(boxes, scores, groups, 0.5).tolist()
        assert 0 < len(kept) < 200


def test_run_lengths_are_pycocotools_encodings():
    masks = _random_masks(9, 30, 41)
    fortran = np.asfortranarray(masks.numpy().transpose(1, 2, 0).astype(np.uint8))  # (H, W, N)
    expected = mask_utils.encode(fortran)
    for mask, lengths, reference in zip(masks.numpy(), mask_run_lengths(masks), expected):
        assert lengths.sum() == mask.size
        assert coco_rle(lengths, mask.shape)["counts"] == reference["counts"].decode()
        np.testing.assert_array_equal(decode_rle(uncompressed_rle(lengths, mask.shape)), mask)
        np.testing.assert_array_equal(decode_rle(coco_rle(lengths, mask.shape)), mask)


def test_crop_layers_cover_the_image():
    crops = crop_boxes((300, 450), 2, 512 / 1500)
    assert [c.layer for c in crops] == [0] + [1] * 4 + [2] * 16
    assert crops[0].box == (0, 0, 450, 300)
    for layer in (1, 2):
        boxes = [c.box for c in crops if c.layer == layer]
        assert min(b[0] for b in boxes) == 0 and max(b[2] for b in boxes) == 450
        assert min(b[1] for b in boxes) == 0 and max(b[3] for b in boxes) == 300
