"""Training data: videos in the VOS layout and images with instance masks, sampled as clips.

A sample is a clip of T frames (T = 1 for an image) with up to K objects, resized to the model's
square input: frames normalised as the predictors normalise them, masks resized by nearest
neighbour. As in Meta's sampler, a video clip starts at a random frame and its objects are drawn
among those visible on its first frame; the same random horizontal flip applies to a whole clip.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..processing.preprocess import model_input
from .clip_forward import ClipBatch

_CPU = torch.device("cpu")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_DRAWS = 100  # clips drawn before giving up on finding one with a visible object


@dataclass
class ClipSample:
    frames: Tensor  # (T, 3, S, S) normalised
    masks: Tensor  # (T, K, S, S) bool


class ClipDataset(Protocol):
    num_frames: int

    def __len__(self) -> int: ...

    def sample(self, rng: random.Random, image_size: int) -> ClipSample: ...


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _load_rgb(path: Path, image_size: int) -> Tensor:
    rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)  # (3, H, W)
    return model_input(rgb, image_size, "bilinear-antialias", _CPU)[0]


def _load_ids(path: Path) -> np.ndarray:
    """An instance-id PNG (palette or grayscale): 0 is background, every other value one object."""
    picture = Image.open(path)
    if picture.mode not in ("P", "L", "I", "I;16"):
        picture = picture.convert("L")
    return np.asarray(picture).astype(np.int64)


def _resize_masks(masks: np.ndarray, image_size: int) -> Tensor:
    """(K, H, W) bool -> (K, S, S) bool by nearest neighbour."""
    tensor = torch.from_numpy(masks).float()[None]  # (1, K, H, W)
    return F.interpolate(tensor, size=(image_size, image_size), mode="nearest")[0] > 0.5


def _maybe_flip(sample: ClipSample, rng: random.Random) -> ClipSample:
    if rng.random() < 0.5:
        return ClipSample(sample.frames.flip(-1), sample.masks.flip(-1))
    return sample


class VOSDataset:
    """JPEGImages/<video>/<frame>.jpg and Annotations/<video>/<frame>.png (DAVIS, MOSE, extracted SA-V).

    Every frame of a video must have its annotation PNG of the same name.
    """

    def __init__(self, root: str | Path, num_frames: int, max_objects: int) -> None:
        root = Path(root)
        image_root, mask_root = root / "JPEGImages", root / "Annotations"
        for folder in (image_root, mask_root):
            if not folder.is_dir():
                raise FileNotFoundError(f"{root} is not a VOS dataset: no {folder.name}/ folder in it")
        if num_frames < 1 or max_objects < 1:
            raise ValueError(f"num_frames and max_objects must be >= 1, got {num_frames} and {max_objects}")
        self.num_frames, self.max_objects = num_frames, max_objects
        self.videos: list[tuple[list[Path], list[Path]]] = []
        for video in sorted(p for p in image_root.iterdir() if p.is_dir()):
            frames = _images_in(video)
            masks = [mask_root / video.name / f"{frame.stem}.png" for frame in frames]
            missing = [m for m in masks if not m.is_file()]
            if missing:
                raise FileNotFoundError(f"video {video.name}: no annotation {missing[0]} for frame {missing[0].stem}")
            if len(frames) >= num_frames:
                self.videos.append((frames, masks))
        if not self.videos:
            raise ValueError(f"{root} has no video with at least {num_frames} annotated frames")

    def __len__(self) -> int:
        return len(self.videos)

    def sample(self, rng: random.Random, image_size: int) -> ClipSample:
        for _ in range(MAX_DRAWS):
            frames, masks = self.videos[rng.randrange(len(self.videos))]
            start = rng.randrange(len(frames) - self.num_frames + 1)
            ids = [_load_ids(path) for path in masks[start : start + self.num_frames]]
            visible = sorted(int(i) for i in np.unique(ids[0]) if i != 0)
            if visible:
                break
        else:
            raise ValueError(f"no object visible on the first frame of {MAX_DRAWS} clips drawn from the dataset")
        chosen = rng.sample(visible, min(len(visible), self.max_objects))
        images = torch.stack([_load_rgb(p, image_size) for p in frames[start : start + self.num_frames]])
        object_masks = torch.stack(
            [_resize_masks(np.stack([frame_ids == obj for obj in chosen]), image_size) for frame_ids in ids]
        )  # (T, K, S, S)
        return _maybe_flip(ClipSample(images, object_masks), rng)


class ImageMaskDataset:
    """Images with instance masks, as one-frame clips: either a folder with images/ and masks/
    (<name>.png of instance ids beside images/<name>.jpg), or a COCO JSON (polygons or RLE) with its image folder."""

    num_frames = 1

    def __init__(self, root: str | Path, max_objects: int, coco_json: str | Path | None = None) -> None:
        self.max_objects = max_objects
        self.coco = None
        root = Path(root)
        if coco_json is not None:
            from pycocotools.coco import COCO

            self.coco = COCO(str(coco_json))
            self.items = [
                (root / info["file_name"], image_id)
                for image_id, info in sorted(self.coco.imgs.items())
                if self.coco.getAnnIds(imgIds=[image_id], iscrowd=False)
            ]
        else:
            if not (root / "images").is_dir() or not (root / "masks").is_dir():
                raise FileNotFoundError(f"{root} needs images/ and masks/ folders (or pass a COCO JSON)")
            self.items = [(image, root / "masks" / f"{image.stem}.png") for image in _images_in(root / "images")]
            missing = [mask for _, mask in self.items if not mask.is_file()]
            if missing:
                raise FileNotFoundError(f"no mask {missing[0]} for image {missing[0].stem}")
        if not self.items:
            raise ValueError(f"{root} has no annotated image")

    def __len__(self) -> int:
        return len(self.items)

    def _masks(self, item: object, rng: random.Random) -> np.ndarray:
        if self.coco is not None:
            annotations = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[item], iscrowd=False))
            masks = [self.coco.annToMask(a).astype(bool) for a in annotations]
            masks = [m for m in masks if m.any()]
        else:
            ids = _load_ids(Path(str(item)))
            masks = [ids == obj for obj in np.unique(ids) if obj != 0]
        if not masks:
            return np.zeros((0, 1, 1), dtype=bool)
        chosen = rng.sample(range(len(masks)), min(len(masks), self.max_objects))
        return np.stack([masks[i] for i in chosen])

    def sample(self, rng: random.Random, image_size: int) -> ClipSample:
        for _ in range(MAX_DRAWS):
            image, item = self.items[rng.randrange(len(self.items))]
            masks = self._masks(item, rng)
            if len(masks):
                break
        else:
            raise ValueError(f"no object in {MAX_DRAWS} images drawn from the dataset")
        sample = ClipSample(_load_rgb(image, image_size)[None], _resize_masks(masks, image_size)[None])
        return _maybe_flip(sample, rng)


def collate(samples: list[ClipSample]) -> ClipBatch:
    """Clips of equal length -> one batch; the objects of all clips become rows."""
    num_frames = samples[0].frames.shape[0]
    if any(s.frames.shape[0] != num_frames for s in samples):
        raise ValueError("the clips of a batch must have the same number of frames")
    images = torch.cat([s.frames for s in samples])  # (V*T, 3, S, S) clip-major
    rows = torch.cat(
        [torch.full((s.masks.shape[1],), v * num_frames, dtype=torch.long) for v, s in enumerate(samples)]
    )  # (O,) the row of each object's first frame
    image_index = rows[None] + torch.arange(num_frames)[:, None]  # (T, O)
    masks = torch.cat([s.masks for s in samples], dim=1)  # (T, O, S, S)
    return ClipBatch(images, image_index, masks)
