"""Reading image files, in one place: frame folders, `sam2rt image`, mask prompts.

Opening an image reads its header only; an image of more than MAX_IMAGE_PIXELS pixels is refused
before anything is decoded (a small PNG can claim gigapixels: a decompression bomb). Decoded pixels
become RGB or a mask by the rules of processing/images.py.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import numpy as np
from PIL import Image

from ..processing.images import ImageError, mask_from_image, rgb_from_image

MAX_IMAGE_PIXELS = 2**27  # 134 megapixels: a 16384 x 8192 panorama; 8K video frames are 33 megapixels


def check_pixels(size: tuple[int, int], what: str) -> None:
    """Refuse a (width, height) of more than MAX_IMAGE_PIXELS pixels."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
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
        raise ImageError(f"{path} has more than the limit of {MAX_IMAGE_PIXELS} pixels ({error})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageError(f"{path} is not a readable image: {error}") from None
    with image:
        check_pixels(image.size, str(path))
        yield image


def _load(image: Image.Image, path: Path) -> None:
    """Decode the pixels; a corrupt or truncated file fails here with its reason."""
    try:
        image.load()
    except Exception as error:  # PIL's decoders raise many types on damaged data; each means a bad file
        raise ImageError(f"{path} could not be decoded: {error}") from None


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
