"""Reading image files, in one place: frame folders, `sam2rt image`, mask prompts.

Opening an image reads its header only; an image of more than MAX_IMAGE_PIXELS pixels is refused
before anything is decoded (a small PNG can claim gigapixels: a decompression bomb). Unusual
modes are converted by rule, never clipped: 16-bit values are scaled to 8 bits, alpha is dropped
(as `convert("RGB")` drops it in the official loaders), and what has no clear meaning as a colour
image (32-bit floats outside [0, 1], negative integers) is refused with the reason.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import numpy as np
from PIL import Image

MAX_IMAGE_PIXELS = 2**27  # 134 megapixels: a 16384 x 8192 panorama; 8K video frames are 33 megapixels

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = {"LA": "L", "La": "L", "PA": "P", "RGBA": "RGB", "RGBa": "RGB"}  # mode without its alpha band
_SINGLE_BAND_MODES = ("1", "L", "P", "I", "F", *_SIXTEEN_BIT_MODES)
_SIXTEEN_BIT_MAX = 65535


class ImageFileError(ValueError):
    """An image that cannot be used: unreadable, too large, or of a mode with no clear colour meaning."""


def check_pixels(size: tuple[int, int], what: str) -> None:
    """Refuse a (width, height) of more than MAX_IMAGE_PIXELS pixels."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageFileError(
            f"{what} is {width}x{height} = {width * height} pixels, more than the limit of {MAX_IMAGE_PIXELS} "
            "(a decompression bomb?)"
        )


@contextmanager
def open_image(path: Union[str, Path]) -> Iterator[Image.Image]:
    """An image file opened lazily (header read, nothing decoded) after the pixel limit is checked."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Our limit is the one that counts; PIL's own warning would only add noise below it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageFileError(f"{path} has more than the limit of {MAX_IMAGE_PIXELS} pixels ({error})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageFileError(f"{path} is not a readable image: {error}") from None
    with image:
        check_pixels(image.size, str(path))
        yield image


def _load(image: Image.Image, path: Path) -> None:
    """Decode the pixels; a corrupt or truncated file fails here with its reason."""
    try:
        image.load()
    except Exception as error:  # PIL's decoders raise many types on damaged data; each means a bad file
        raise ImageFileError(f"{path} could not be decoded: {error}") from None


def rgb_from_image(image: Image.Image, what: str = "the image") -> np.ndarray:
    """A PIL image as H x W x 3 uint8 RGB, converted by rule (see the module docstring)."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > _SIXTEEN_BIT_MAX):
            raise ImageFileError(
                f"{what} holds 32-bit integers from {values.min()} to {values.max()}; "
                "only 0..65535 (16-bit images) can be converted to colours"
            )
        gray = np.round(values * (255 / _SIXTEEN_BIT_MAX)).astype(np.uint8)  # 65535 -> 255, not clipped at 255
        return np.repeat(gray[..., None], 3, axis=-1)  # (H, W) -> (H, W, 3)
    if mode == "F":
        values = np.asarray(image)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ImageFileError(
                f"{what} holds 32-bit floats from {np.nanmin(values)} to {np.nanmax(values)}; "
                "only values in [0, 1] can be converted to colours"
            )
        gray = np.round(values * 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)  # (H, W) -> (H, W, 3)
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as error:
        raise ImageFileError(f"{what} has mode {mode}, which cannot be converted to RGB: {error}") from None


def mask_from_image(image: Image.Image, what: str = "the mask") -> np.ndarray:
    """A PIL image as a mask (H, W) bool: a pixel is the object when its value (palette index for indexed
    images; any colour band for RGB) is not zero. Alpha is ignored; other colour spaces are refused."""
    mode = image.mode
    values = np.asarray(image)
    if mode in _ALPHA_MODES:
        values = values[..., :-1]  # (H, W, B) without its last band, the alpha
        mode = _ALPHA_MODES[mode]
    if mode == "F" and not np.isfinite(values).all():
        raise ImageFileError(f"{what} holds NaN or infinite values")
    if mode in _SINGLE_BAND_MODES:
        return values.reshape(values.shape[:2]) != 0
    if mode == "RGB":
        return (values != 0).any(axis=-1)
    raise ImageFileError(
        f"{what} has mode {mode}; masks must be grayscale, palette or RGB images (with or without alpha)"
    )


def read_rgb(path: Union[str, Path]) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB."""
    path = Path(path)
    with open_image(path) as image:
        _load(image, path)
        return rgb_from_image(image, str(path))


def read_mask_image(path: Union[str, Path]) -> np.ndarray:
    """An image file as a mask (H, W) bool, non-zero pixels on the object."""
    path = Path(path)
    with open_image(path) as image:
        _load(image, path)
        return mask_from_image(image, str(path))


def image_file_size(path: Union[str, Path]) -> tuple[int, int]:
    """An image's (height, width) from its header, or the reason it cannot be read; nothing is decoded."""
    with open_image(path) as image:
        return image.size[1], image.size[0]
