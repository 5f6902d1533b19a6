"""Image files of every mode, and decompression bombs, through io/image_file.py, the API and the command line.

16-bit images are scaled to 8 bits (the issue: a 16-bit PNG was clipped to white and segmented
without a word); modes with no clear colour meaning are refused with the reason; an image that
claims more pixels than the limit is refused before decoding. The input files are never changed.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_support import assert_clean_error, clip_frames, model_args
from PIL import Image

from sam2rt.io.image_file import MAX_IMAGE_PIXELS, read_mask_image, read_rgb
from sam2rt.processing.images import ImageError, as_rgb_tensor


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)


def _save(path: Path, array: np.ndarray, mode: str = None) -> Path:
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _bomb(path: Path, width: int, height: int) -> Path:
    """A valid 1 x 1 PNG whose header claims width x height: tiny on disk, gigantic once decoded."""
    _save(path, np.zeros((1, 1), np.uint8))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the IHDR chunk's CRC
    path.write_bytes(bytes(data))
    return path


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path, gray):
    sixteen = gray.astype(np.uint16) * 257  # 255 -> 65535: the same picture at 16 bits
    expected = np.repeat(gray[..., None], 3, -1)
    assert np.array_equal(read_rgb(_save(tmp_path / "gray16.png", sixteen)), expected)
    assert np.array_equal(read_rgb(_save(tmp_path / "gray16.tif", sixteen)), expected)
    assert np.array_equal(read_rgb(_save(tmp_path / "int32.tif", sixteen.astype(np.int32), "I")), expected)
    mid = read_rgb(_save(tmp_path / "mid.png", np.full((4, 4), 40000, np.uint16)))
    assert (mid == 156).all()  # round(40000 * 255 / 65535); PIL's convert("RGB") gives 255
    # The API takes PIL images by the same rule.
    with Image.open(tmp_path / "gray16.png") as image:
        assert np.array_equal(as_rgb_tensor(image).permute(1, 2, 0).numpy(), expected)


def test_other_modes_convert_as_the_official_loaders_do(tmp_path, gray):
    """convert("RGB") (alpha dropped, palette looked up, CMYK inverted), which is what Meta's loaders apply."""
    rgb = np.stack([gray, gray[::-1], 255 - gray], -1)
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 256, gray.shape, dtype=np.uint8)
    images = {
        "la.png": Image.fromarray(np.stack([gray, alpha], -1), "LA"),
        "rgba.png": Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA"),
        "p.png": Image.fromarray(rgb).convert("P"),
        "cmyk.tif": Image.fromarray(rgb).convert("CMYK"),
        "1.png": Image.fromarray(gray > 100),
        "l.png": Image.fromarray(gray),
    }
    for name, image in images.items():
        image.save(tmp_path / name)
        with Image.open(tmp_path / name) as reread:
            assert reread.mode == image.mode, name
            official = np.asarray(reread.convert("RGB"))
        assert np.array_equal(read_rgb(tmp_path / name), official), name


@pytest.mark.parametrize(
    "values,message",
    [
        (np.full((4, 4), 7.5, np.float32), r"32-bit floats from 7\.5 to 7\.5; only values in \[0, 1\]"),
        (np.full((4, 4), -3, np.int32), "32-bit integers from -3 to -3; only 0..65535"),
    ],
)
def test_images_without_a_colour_meaning_are_refused(tmp_path, values, message):
    path = _save(tmp_path / "odd.tif", values, "F" if values.dtype == np.float32 else "I")
    with pytest.raises(ImageError, match=message):
        read_rgb(path)


def test_float_images_in_unit_range_are_scaled(tmp_path, gray):
    path = _save(tmp_path / "unit.tif", gray.astype(np.float32) / 255, "F")
    assert np.array_equal(read_rgb(path), np.repeat(gray[..., None], 3, -1))


def test_masks_of_every_mode(tmp_path):
    shape = np.zeros((6, 8), bool)
    shape[2:4, 3:6] = True
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[shape] = (1, 0, 0)  # a pixel is the object when any band is non-zero, even one too dark for "L"
    alpha = np.full((6, 8), 255, np.uint8)  # alpha everywhere: ignored
    cases = {
        "m16.png": Image.fromarray(shape.astype(np.uint16) * 300),
        "mf.tif": Image.fromarray(shape.astype(np.float32) * 0.25, "F"),
        "mla.png": Image.fromarray(np.stack([shape.astype(np.uint8) * 255, alpha], -1), "LA"),
        "mrgb.png": Image.fromarray(rgb),
        "mrgba.png": Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA"),
        "m1.png": Image.fromarray(shape),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        assert np.array_equal(read_mask_image(tmp_path / name), shape), name
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "mcmyk.tif")
    with pytest.raises(ImageError, match="has mode CMYK; masks must be grayscale, palette or RGB"):
        read_mask_image(tmp_path / "mcmyk.tif")
    Image.fromarray(np.full((6, 8), np.nan, np.float32), "F").save(tmp_path / "mnan.tif")
    with pytest.raises(ImageError, match="holds NaN or infinite values"):
        read_mask_image(tmp_path / "mnan.tif")


@pytest.mark.parametrize("width,height", [(12000, 12000), (100000, 100000)], ids=["over-ours", "over-pils-too"])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, width, height):
    """Above our limit, whether or not PIL's own (larger) limit also trips."""
    path = _bomb(tmp_path / "bomb.png", width, height)
    assert width * height > MAX_IMAGE_PIXELS and path.stat().st_size < 100
    with pytest.raises(ImageError, match=f"more than the limit of {MAX_IMAGE_PIXELS}"):
        read_rgb(path)
    with pytest.raises(ImageError, match=f"more than the limit of {MAX_IMAGE_PIXELS}"):
        read_mask_image(path)


# The command line


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_cli_image_reads_sixteen_bits_as_eight(sam2rt, tmp_path, checkpoint):
    image = clip_frames(1)[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    gray = image[..., 1]
    _save(inputs / "gray8.png", gray)
    _save(inputs / "gray16.png", gray.astype(np.uint16) * 257)
    _save(inputs / "mask16.png", (np.arange(gray.size).reshape(gray.shape) % 7 == 0).astype(np.uint16) * 2)
    before = _digest(inputs)
    outputs = {}
    for name in ("gray8", "gray16"):
        result = sam2rt(
            "image", inputs / f"{name}.png", "--point", "30,45", *model_args(checkpoint), "-o", tmp_path / f"{name}.png"
        )
        assert result.returncode == 0, result.stderr
        outputs[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
    assert np.array_equal(outputs["gray8"], outputs["gray16"]) and outputs["gray8"].any()
    result = sam2rt("image", inputs / "gray16.png", "--mask", inputs / "mask16.png", *model_args(checkpoint))
    assert result.returncode == 0, result.stderr
    assert _digest(inputs) == before


def test_cli_refuses_bombs_and_odd_images_in_one_line(sam2rt, tmp_path, checkpoint):
    bomb = _bomb(tmp_path / "bomb.png", 12000, 12000)
    odd = _save(tmp_path / "odd.tif", np.full((120, 160), 7.5, np.float32), "F")
    _save(tmp_path / "frame.png", clip_frames(1)[0])
    cmyk = tmp_path / "mask.tif"
    Image.fromarray(clip_frames(1)[0]).convert("CMYK").save(cmyk)
    before = _digest(tmp_path)
    limit = f"more than the limit of {MAX_IMAGE_PIXELS}"
    assert_clean_error(sam2rt("image", bomb, "--point", "5,5", *model_args(checkpoint)), f"{bomb} is 12000x12000")
    assert_clean_error(sam2rt("image", bomb, "--point", "5,5", *model_args(checkpoint)), limit)
    assert_clean_error(sam2rt("image", odd, "--point", "5,5", *model_args(checkpoint)), "32-bit floats from 7.5")
    frame = tmp_path / "frame.png"
    assert_clean_error(sam2rt("image", frame, "--mask", bomb, *model_args(checkpoint)), limit)
    assert_clean_error(sam2rt("image", frame, "--mask", cmyk, *model_args(checkpoint)), "has mode CMYK")
    assert _digest(tmp_path) == before


def test_cli_track_frame_folders(sam2rt, tmp_path, checkpoint):
    """A folder of 16-bit frames tracks as its 8-bit twin; a bomb among the frames stops the run before it starts."""
    frames = [frame[..., 0] for frame in clip_frames(3)]
    for name, scale, dtype in (("eight", 1, np.uint8), ("sixteen", 257, np.uint16)):
        (tmp_path / name).mkdir()
        for index, frame in enumerate(frames):
            _save(tmp_path / name / f"{index:05d}.png", frame.astype(dtype) * scale)
    before = {name: _digest(tmp_path / name) for name in ("eight", "sixteen")}
    for name in ("eight", "sixteen"):
        result = sam2rt(
            "track", tmp_path / name, "--point", "30,45", *model_args(checkpoint), "--png-dir", tmp_path / f"out-{name}"
        )
        assert result.returncode == 0, result.stderr
    assert _digest(tmp_path / "out-eight") == _digest(tmp_path / "out-sixteen")
    assert len(_digest(tmp_path / "out-eight")) == 3
    assert {name: _digest(tmp_path / name) for name in ("eight", "sixteen")} == before

    _bomb(tmp_path / "eight" / "00003.png", 12000, 12000)
    result = sam2rt(
        "track", tmp_path / "eight", "--point", "30,45", *model_args(checkpoint), "--png-dir", tmp_path / "out-bomb"
    )
    assert_clean_error(result, f"{tmp_path / 'eight' / '00003.png'} is 12000x12000")
    assert not (tmp_path / "out-bomb").exists() or not any((tmp_path / "out-bomb").iterdir())
