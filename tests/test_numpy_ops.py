"""The ONNX runner's numpy image operations against PyTorch's, which the engine runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam2rt.export import numpy_ops
from sam2rt.processing.preprocess import model_input
from sam2rt.processing.prompts import mask_to_model_frame

SIZES = [
    ((540, 960), (1024, 1024)),
    ((540, 960), (256, 256)),
    ((256, 256), (540, 960)),
    ((7, 5), (3, 11)),
    ((9, 9), (9, 4)),
]


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("source, target", SIZES)
def test_resize_equals_torch_bilinear(source, target, antialias):
    images = np.random.default_rng(0).random((2, *source), dtype=np.float32)
    got = numpy_ops.resize(images, target, antialias)
    expected = F.interpolate(torch.from_numpy(images)[None], size=target, mode="bilinear", antialias=antialias)[0]
    assert got.shape == (2, *target)
    # torch computes its source coordinates in float32: 2e-5 apart at most, enlarging 256 to 540
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=5e-5)


@pytest.mark.parametrize("image_size", [1024, 256])
def test_model_input_equals_the_engines(image_size):
    rgb = np.random.default_rng(1).integers(0, 256, (540, 960, 3), dtype=np.uint8)
    got = numpy_ops.model_input(rgb, image_size)
    expected = model_input(
        torch.from_numpy(rgb).permute(2, 0, 1), image_size, "bilinear-antialias", torch.device("cpu")
    )
    assert got.shape == (1, 3, image_size, image_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "shape, image_size", [((120, 160), 128), ((540, 960), 1024), ((100, 100), 256), ((64, 64), 64)]
)
def test_mask_input_equals_the_engines(shape, image_size):
    mask = np.zeros(shape, dtype=np.uint8)
    mask[shape[0] // 4 : shape[0] // 2 + 3, shape[1] // 3 : shape[1] // 2 + 5] = 7  # any non-zero value is the object
    got = numpy_ops.mask_input(mask, image_size)
    expected = mask_to_model_frame(mask, image_size, torch.device("cpu")).numpy()
    assert got.shape == (1, 1, image_size, image_size) and got.dtype == np.float32
    assert 0 < got.sum() < got.size
    np.testing.assert_array_equal(got, expected)
