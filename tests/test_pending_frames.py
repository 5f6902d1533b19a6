"""Results on their way to the CPU (tracking.download): what arrives is the result, overlaps to the highest logit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2rt.tracking.download import start_download
from sam2rt.tracking.stream import FrameResult

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def expected_frame(logits: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Masks and the object id per pixel, pixel by pixel in numpy."""
    masks = logits > 0
    labels = np.zeros(logits.shape[1:], np.int32)
    for y, x in zip(*np.nonzero(masks.any(0))):
        labels[y, x] = ids[int(np.argmax(logits[:, y, x]))]
    return masks, labels


@pytest.mark.parametrize("device", DEVICES)
# 300 objects: more owners than a byte holds; ids from 250: owners in a byte, ids past it (no table lookup)
@pytest.mark.parametrize("objects, first_id", [(1, 7), (3, 7), (3, 250), (300, 7)])
def test_the_pending_frame_is_the_result(device, objects, first_id):
    generator = torch.Generator().manual_seed(objects)
    shift = 0.5 if objects < 10 else 3.0  # overlaps, and pixels of no object
    logits = torch.randn(objects, 24, 40, generator=generator) - shift
    scores = torch.randn(objects, generator=generator)
    ids = [first_id + 3 * i for i in range(objects)]
    pending = start_download(FrameResult(5, ids, logits.to(device), scores.to(device)))
    image = np.zeros((24, 40, 3), np.uint8)
    tracked = pending.tracked(5, "00005", image)
    masks, labels = expected_frame(logits.numpy(), ids)
    assert tracked.object_ids == ids and tracked.index == 5 and tracked.name == "00005"
    assert np.array_equal(tracked.masks, masks) and np.array_equal(tracked.labels, labels)
    assert (labels == 0).any() and len(np.unique(labels)) > min(objects, 3)  # not a trivial picture
    np.testing.assert_allclose(tracked.scores, torch.sigmoid(scores).numpy(), rtol=1e-6)


def test_no_object_gives_empty_masks_of_the_frame_size():
    tracked = start_download(FrameResult(0, [], torch.zeros(0, 1, 1), torch.zeros(0))).tracked(
        0, "0", np.zeros((6, 9, 3), np.uint8)
    )
    assert tracked.masks.shape == (0, 6, 9) and tracked.labels.shape == (6, 9) and not tracked.labels.any()


@pytest.mark.parametrize("device", DEVICES)
def test_masks_laid_out_down_their_columns_encode_as_the_usual_ones(device):
    """The server's downloads (column_major): the same masks, laid out as COCO's RLE reads them, so that their
    encoding makes no transposing copy; the RLEs equal pycocotools' own of C-ordered masks and decode back."""
    from pycocotools import mask as mask_utils

    from sam2rt.io.rle import decode_rle, encode_rle

    generator = torch.Generator().manual_seed(3)
    logits = torch.nn.functional.interpolate(torch.randn(1, 3, 6, 8, generator=generator), size=(30, 44))[0]
    ids = [4, 9, 2]
    result = FrameResult(2, ids, logits.to(device), torch.zeros(3).to(device))
    masks = start_download(result, column_major=True).tracked(2, "00002", np.zeros((30, 44, 3), np.uint8)).masks
    assert np.array_equal(masks, logits.numpy() > 0) and 0 < masks.mean() < 1
    assert masks[0].flags.f_contiguous and not masks[0].flags.c_contiguous  # down the columns, on the host too
    expected = mask_utils.encode(np.asfortranarray(np.ascontiguousarray(masks).transpose(1, 2, 0).astype(np.uint8)))
    rles = encode_rle(masks)
    assert [rle["counts"] for rle in rles] == [rle["counts"].decode("ascii") for rle in expected]
    assert all(np.array_equal(decode_rle(rle), mask) for rle, mask in zip(rles, masks))
    assert encode_rle(np.ascontiguousarray(masks)) == rles  # the usual layout encodes alike
