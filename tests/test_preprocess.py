"""Each named resize of preprocess.py against the implementation of the tool it is named after."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from oracle import install_torchvision_standin
from PIL import Image

import sam2rt
from sam2rt.processing.images import as_rgb_tensor
from sam2rt.processing.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZES, check_resize, model_input

CPU = torch.device("cpu")
SIZES = [64, 256]  # down- and upsampling of the 100 x 150 test image


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """Noise with smooth and sharp parts: every filter weight matters, and overshoot gets clamped."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(100, 150, 3), dtype=np.uint8)
    noise[:, :50] = np.linspace(0, 255, 50, dtype=np.uint8)[None, :, None]
    return noise


def _normalised(unit: torch.Tensor) -> torch.Tensor:
    """(3, S, S) float32 in [0, 1] -> (1, 3, S, S), normalised as every official loader does it (float32)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return ((unit - mean) / std)[None]


@pytest.mark.parametrize("size", SIZES)
def test_pil_bicubic_is_the_official_video_loader(tmp_path, picture, size):
    """Meta's JPEG-folder loader reads each file with its own function; ours must give the same tensor."""
    from sam2.utils.misc import _load_img_as_tensor

    for name, image in (("rgb.png", picture), ("gray.png", picture[..., 0])):
        Image.fromarray(image).save(tmp_path / name)
        official, height, width = _load_img_as_tensor(str(tmp_path / name), size)  # float64 / 255
        ours = model_input(as_rgb_tensor(image), size, "pil-bicubic", CPU)
        assert (height, width) == image.shape[:2]
        assert torch.equal(ours, _normalised(official.float())), name


@pytest.mark.parametrize("size", SIZES)
def test_opencv_bilinear_is_the_realtime_forks_array_path(picture, size):
    """The fork's camera predictor: cv2.resize (INTER_LINEAR by default) on the uint8 array, then / 255.0."""
    fork = torch.from_numpy(cv2.resize(picture, (size, size)) / 255.0).permute(2, 0, 1).float()
    ours = model_input(as_rgb_tensor(picture), size, "opencv-bilinear", CPU)
    assert torch.equal(ours, _normalised(fork))


@pytest.mark.parametrize("size", SIZES)
def test_bilinear_antialias_is_the_official_image_predictor(picture, size):
    """Meta's SAM2Transforms (torchvision's ToTensor, Resize, Normalize; the stand-in where torchvision is
    missing), and PIL's bilinear resize of float images, an implementation independent of torch's."""
    install_torchvision_standin()
    from sam2.utils.transforms import SAM2Transforms

    official = SAM2Transforms(resolution=size, mask_threshold=0.0)(picture)[None]
    ours = model_input(as_rgb_tensor(picture), size, "bilinear-antialias", CPU)
    assert torch.equal(ours, official)
    unit = picture.astype(np.float32) / 255
    bands = [
        Image.fromarray(np.ascontiguousarray(unit[..., c]), "F").resize((size, size), Image.BILINEAR) for c in range(3)
    ]
    pil = torch.from_numpy(np.stack([np.asarray(b) for b in bands])).float()  # (3, S, S)
    assert torch.allclose(ours, _normalised(pil), rtol=0, atol=1e-5), (ours - _normalised(pil)).abs().max()


def test_resizes_differ_enough_to_matter(picture):
    """The reason the choice is named: the three give different model inputs on the same frame."""
    inputs = [model_input(as_rgb_tensor(picture), 64, name, CPU) for name in RESIZES]
    for i in range(len(inputs)):
        for j in range(i + 1, len(inputs)):
            assert (inputs[i] - inputs[j]).abs().max() > 0.1, (RESIZES[i], RESIZES[j])


def test_float_frames_take_the_same_filter(picture):
    """A [0, 1] float frame is resized by the same filter, only without the rounding to uint8 (and, for
    bicubic, the clamping of overshoot to 0..255; OpenCV's uint8 path also uses fixed-point weights)."""
    unit = torch.from_numpy(picture).float() / 255
    level = 1 / 255 / min(IMAGENET_STD)  # one uint8 level, in normalised units
    for name in RESIZES:
        difference = model_input(as_rgb_tensor(picture), 64, name, CPU) - model_input(
            as_rgb_tensor(unit), 64, name, CPU
        )
        if name == "bilinear-antialias":
            assert torch.equal(difference, torch.zeros_like(difference))  # it divides by 255 first either way
        assert difference.abs().max() <= 2 * level, name
        assert difference.abs().mean() <= 0.5 * level, name


def test_unknown_resize_names_fail_with_the_list():
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=64)
    expected = "unknown resize 'bicubic'; the resizes are: bilinear-antialias, pil-bicubic, opencv-bilinear"
    with pytest.raises(ValueError, match=expected):
        check_resize("bicubic")
    for make in (sam2rt.StreamTracker, sam2rt.CameraPredictor, sam2rt.VideoPredictor, sam2rt.ImagePredictor):
        with pytest.raises(ValueError, match=expected):
            make(model, resize="bicubic")
    # The defaults: the official tool each class stands in for.
    assert sam2rt.VideoPredictor(model).options.resize == "pil-bicubic"
    assert sam2rt.StreamTracker(model).engine.options.resize == "bilinear-antialias"
    assert sam2rt.ImagePredictor(model).resize == "bilinear-antialias"


def test_frames_go_to_a_gpu_as_their_pixels_lie_and_come_out_laid_out_as_given():
    """`dense_upload` (what `to_device` runs for a GPU) hands the copy only contiguous tensors: a frame's (3, H, W)
    view of its (H, W, 3) pixels goes up as the pixels lie, since PyTorch copies a non-contiguous host tensor through
    a pageable temporary that waits for the GPU's queue. The result equals the input, with the input's strides
    (so the kernels after it see what they saw before); an expanded grey frame is made contiguous first."""
    from sam2rt.processing.images import dense_upload

    seen = []

    def upload(tensor):  # a stand-in for pin_memory().to("cuda", non_blocking=True)
        seen.append(tensor)
        return tensor.clone()

    pixels = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    grey = torch.from_numpy(pixels[..., 0].copy())[..., None].expand(-1, -1, 3)  # stride 0 on the channels
    for frame in (as_rgb_tensor(pixels), as_rgb_tensor(pixels)[None], as_rgb_tensor(grey), torch.arange(5.0)):
        seen.clear()
        out = dense_upload(frame, upload)
        assert torch.equal(out, frame)
        assert len(seen) == 1 and seen[0].is_contiguous()
        if frame.dim() == 3 and 0 not in frame.stride():
            assert not frame.is_contiguous() and out.stride() == frame.stride()  # a permuted view, as given
            assert seen[0].shape == (6, 10, 3)  # the pixels as they lie: no transpose on the host
