"""The server's frame decoding (serve/protocol.py): OpenCV decodes RGB JPEGs and PNGs to the pixels PIL gives, other
modes go through PIL, and a broken or truncated file is refused with a message, never a traceback."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sam2rt.serve import protocol
from sam2rt.serve.protocol import FORMAT_JPEG, FORMAT_PNG, ProtocolError, decode_payload


def _picture(height: int = 72, width: int = 128) -> np.ndarray:
    """A smooth RGB picture with edges (JPEG's chroma subsampling and rounding matter on it)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, ((x // 16 + y // 16) % 2) * 200 + 20], axis=-1)
    return rgb.astype(np.uint8)


def _encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _pil_pixels(payload: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(payload)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(
    "format, code, options",
    [
        ("JPEG", FORMAT_JPEG, {"quality": 85}),  # 4:2:0, as browsers send
        ("JPEG", FORMAT_JPEG, {"quality": 95, "subsampling": 0}),
        ("PNG", FORMAT_PNG, {}),
    ],
)
def test_rgb_frames_decode_to_the_pixels_pil_gives(format, code, options, monkeypatch):
    payload = _encoded(Image.fromarray(_picture()), format, **options)
    decoded = []
    real = protocol._decode_rgb
    monkeypatch.setattr(protocol, "_decode_rgb", lambda data: decoded.append(1) or real(data))
    pixels = decode_payload(payload, code, 0, 0)
    assert decoded  # OpenCV's path was taken
    assert pixels.shape == (72, 128, 3) and pixels.dtype == np.uint8
    expected = _pil_pixels(payload)
    assert np.array_equal(pixels, expected)
    assert expected.std() > 30  # a picture, not a flat frame


def test_other_modes_go_through_pil():
    grey = Image.fromarray(_picture()[..., 0])  # mode L
    for format, code in (("PNG", FORMAT_PNG), ("JPEG", FORMAT_JPEG)):
        payload = _encoded(grey, format)
        pixels = decode_payload(payload, code, 0, 0)
        assert pixels.shape == (72, 128, 3)
        assert np.array_equal(pixels, _pil_pixels(payload))


def test_exif_orientation_is_ignored_as_pil_ignores_it():
    image = Image.fromarray(_picture())
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display": a viewer would show it 128 high
    payload = _encoded(image, "JPEG", quality=90, exif=exif.tobytes())
    pixels = decode_payload(payload, FORMAT_JPEG, 0, 0)
    assert pixels.shape == (72, 128, 3)
    assert np.array_equal(pixels, _pil_pixels(payload))


def test_truncated_or_mislabelled_frames_are_refused_with_a_message():
    payload = _encoded(Image.fromarray(_picture()), "JPEG", quality=85)
    with pytest.raises(ProtocolError, match="not a readable JPEG"):
        decode_payload(payload[: len(payload) // 2], FORMAT_JPEG, 0, 0)
    with pytest.raises(ProtocolError, match="not a PNG"):
        decode_payload(payload, FORMAT_PNG, 0, 0)
