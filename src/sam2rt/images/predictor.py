"""Image prediction with the methods and return values of the official SAM2ImagePredictor.

Coordinates are pixels of the original image, x before y (or fractions of its width and height
with `normalize_coords=False`). Masks come back at the original resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.sam2 import SAM2Model
from ..processing.images import ImageLike, as_rgb_tensor, to_host
from ..processing.masks import tidy_small_regions
from ..processing.preprocess import Resize, check_resize, model_input
from ..processing.prompts import (
    BOX_CORNER_LABELS,
    box_corners,
    check_inside,
    float_tensor,
    point_tensors,
    to_model_frame,
)

_CPU = torch.device("cpu")
LOW_RES_LOGIT_CLAMP = 32.0  # low-resolution logits are returned clamped, ready to feed back as mask_input


@dataclass
class _ImageFeatures:
    embed: Tensor  # (B, C, h, w), with the no-memory embedding added
    high_res: tuple[Tensor, Tensor]
    original_sizes: list[tuple[int, int]]  # (height, width) of each image
    is_batch: bool


@dataclass
class _Prompts:
    coords: Optional[Tensor]  # (B, N, 2) pixels of the model input, box corners first
    labels: Optional[Tensor]  # (B, N)
    mask: Optional[Tensor]  # (B, 1, 4h, 4w)


class ImagePredictor:
    """Segment an image from points, boxes and masks; the image embedding is computed once per image.

    `resize` names how images become the model's input (processing/preprocess.py); the default is the official
    image predictor's. A refused image leaves the previous one set.
    """

    def __init__(
        self,
        sam_model: SAM2Model,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        *,
        resize: Resize = "bilinear-antialias",
    ) -> None:
        self.model = sam_model
        self.resize = check_resize(resize)
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self._image: Optional[_ImageFeatures] = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def _is_image_set(self) -> bool:
        return self._image is not None

    @property
    def _orig_hw(self) -> Optional[list[tuple[int, int]]]:
        return None if self._image is None else self._image.original_sizes

    # Images

    @torch.inference_mode()
    def set_image(self, image: ImageLike) -> None:
        """Compute the embedding of one RGB image: H x W x 3 uint8 array or tensor, or a PIL image."""
        self._set_images([image], is_batch=False)

    @torch.inference_mode()
    def set_image_batch(self, image_list: Sequence[ImageLike]) -> None:
        """Compute the embeddings of several RGB images, for `predict_batch`."""
        if isinstance(image_list, (np.ndarray, Tensor)) or not isinstance(image_list, Sequence):
            raise TypeError("set_image_batch expects a list of images; use set_image for a single image")
        if len(image_list) == 0:
            raise ValueError("set_image_batch got an empty list of images")
        self._set_images(list(image_list), is_batch=True)

    def _set_images(self, images: list[ImageLike], is_batch: bool) -> None:
        size = self.model.config.image_size
        rgbs = [as_rgb_tensor(image) for image in images]  # all checked before the previous image is dropped
        self.reset_predictor()
        batch = torch.cat([model_input(rgb, size, self.resize, self.device) for rgb in rgbs])
        features = self.model.encode_image(batch)
        self._image = _ImageFeatures(
            embed=self.model.without_memory(features.embed),
            high_res=features.high_res,
            original_sizes=[(int(rgb.shape[1]), int(rgb.shape[2])) for rgb in rgbs],
            is_batch=is_batch,
        )

    def get_image_embedding(self) -> Tensor:
        """The stride-16 embedding of the current image(s): (B, C, h, w), 64 x 64 at image_size 1024."""
        return self._require_image("get_image_embedding").embed

    def reset_predictor(self) -> None:
        self._image = None

    def _require_image(self, method: str) -> _ImageFeatures:
        if self._image is None:
            raise RuntimeError(f"an image must be set with set_image(...) before calling {method}(...)")
        return self._image

    # Prediction

    @torch.inference_mode()
    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for the current image.

        point_coords (N, 2) or (B, N, 2) with point_labels (N,) or (B, N): 1 foreground, 0 background.
        box (4,) or (B, 4) as x0, y0, x1, y1. mask_input (1, h, w) or (B, 1, h, w) low-resolution
        logits from a previous prediction. Returns masks (C, H, W), IoU predictions (C,) and
        low-resolution logits (C, h, w), with a leading B for batched prompts. C is 3 with
        multimask_output, else 1. Masks are 0/1 floats, or logits with return_logits.
        """
        image = self._require_image("predict")
        if image.is_batch:
            raise RuntimeError("images were set with set_image_batch(...); use predict_batch(...)")
        masks, ious, low_res = self._predict(
            0, point_coords, point_labels, box, mask_input, multimask_output, return_logits, normalize_coords
        )
        return _numpy(masks), _numpy(ious), _numpy(low_res)

    @torch.inference_mode()
    def predict_batch(
        self,
        point_coords_batch: Optional[list] = None,
        point_labels_batch: Optional[list] = None,
        box_batch: Optional[list] = None,
        mask_input_batch: Optional[list] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """`predict` for each image set with set_image_batch; each argument is a list with one entry per image."""
        image = self._require_image("predict_batch")
        if not image.is_batch:
            raise RuntimeError("predict_batch needs images set with set_image_batch(...); use predict(...)")
        num_images = len(image.original_sizes)
        for name, values in (
            ("point_coords_batch", point_coords_batch),
            ("point_labels_batch", point_labels_batch),
            ("box_batch", box_batch),
            ("mask_input_batch", mask_input_batch),
        ):
            if values is not None and len(values) != num_images:
                raise ValueError(f"{name} has {len(values)} entries for {num_images} images")

        def pick(values, index):
            return None if values is None else values[index]

        results = [
            self._predict(
                index,
                pick(point_coords_batch, index),
                pick(point_labels_batch, index),
                pick(box_batch, index),
                pick(mask_input_batch, index),
                multimask_output,
                return_logits,
                normalize_coords,
            )
            for index in range(num_images)
        ]
        masks, ious, low_res = zip(*results)
        return [_numpy(m) for m in masks], [_numpy(i) for i in ious], [_numpy(lr) for lr in low_res]

    def _predict(
        self,
        image_index: int,
        point_coords,
        point_labels,
        box,
        mask_input,
        multimask_output: bool,
        return_logits: bool,
        normalize_coords: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Masks (B, C, H, W), IoU predictions (B, C) and low-resolution logits (B, C, h, w)."""
        image = self._require_image("predict")
        original_size = image.original_sizes[image_index]
        prompts = self._prepare_prompts(point_coords, point_labels, box, mask_input, normalize_coords, original_size)
        low_res, ious = self.decode_prompts(prompts.coords, prompts.labels, prompts.mask, multimask_output, image_index)
        masks = self.upscale_logits(low_res, image_index)
        if not return_logits:
            masks = (masks > self.mask_threshold).float()
        return masks, ious, low_res.clamp(-LOW_RES_LOGIT_CLAMP, LOW_RES_LOGIT_CLAMP)

    def decode_prompts(
        self,
        coords: Optional[Tensor],
        labels: Optional[Tensor],
        mask_input: Optional[Tensor],
        multimask_output: bool,
        image_index: int = 0,
    ) -> tuple[Tensor, Tensor]:
        """Low-resolution logits (B, C, h, w) float32, not clamped, and IoU predictions (B, C) float32.

        For prompts already checked and in the model's input frame, on the model's device: coords
        (B, N, 2), labels (B, N), mask_input (B, 1, 4h, 4w) logits. No host copies: the mask
        generator decodes thousands of prompts this way.
        """
        image = self._require_image("decode_prompts")
        high_res = tuple(level[image_index : image_index + 1] for level in image.high_res)
        embed = image.embed[image_index : image_index + 1]
        out = self.model.decode(embed, high_res, coords, labels, mask_input, multimask_output)
        return out.masks.float(), out.iou_scores.float()

    def upscale_logits(self, low_res: Tensor, image_index: int = 0) -> Tensor:
        """Low-resolution logits (B, C, h, w) -> (B, C, H, W) at the image's size, small holes and sprinkles removed."""
        return self._postprocess(low_res.float(), self._require_image("upscale_logits").original_sizes[image_index])

    def _postprocess(self, low_res: Tensor, original_size: tuple[int, int]) -> Tensor:
        """Optional hole filling and sprinkle removal at low resolution, then resizing to the image."""
        batch, candidates, height, width = low_res.shape
        flat = low_res.reshape(batch * candidates, 1, height, width)  # each candidate as its own image
        if self.max_hole_area > 0 or self.max_sprinkle_area > 0:
            flat = tidy_small_regions(flat, int(self.max_hole_area), int(self.max_sprinkle_area), self.mask_threshold)
        masks = flat.reshape(batch, candidates, height, width)
        return F.interpolate(masks, size=original_size, mode="bilinear", align_corners=False)

    def _prepare_prompts(
        self, point_coords, point_labels, box, mask_input, normalize_coords: bool, original_size: tuple[int, int]
    ) -> _Prompts:
        """Validate the prompts and bring them to the model's input frame; boxes become two labelled corners.

        Validation runs on CPU tensors: checks on GPU tensors would each wait for the GPU.
        """
        if point_coords is not None and point_labels is None:
            raise ValueError("point_labels must be given with point_coords")
        if point_labels is not None and point_coords is None:
            raise ValueError("point_coords must be given with point_labels")
        size = self.model.config.image_size
        coords = labels = None
        if point_coords is not None:
            coords, labels = point_tensors(point_coords, point_labels, _CPU)
            if coords.dim() == 2:
                coords, labels = coords[None], labels[None]
            if coords.dim() != 3:
                raise ValueError(f"point_coords must have shape (N, 2) or (B, N, 2), got {tuple(coords.shape)}")
            check_inside(coords, original_size, normalize_coords, "point")
            coords = to_model_frame(coords, original_size, size, normalize_coords)
        if box is not None:
            corners = box_corners(box, _CPU)  # (B, 2, 2)
            check_inside(corners, original_size, normalize_coords, "box corner")
            corners = to_model_frame(corners, original_size, size, normalize_coords)
            corner_labels = torch.tensor([BOX_CORNER_LABELS], dtype=torch.int32)
            corner_labels = corner_labels.expand(len(corners), 2)
            if coords is not None:
                if len(coords) != len(corners):
                    raise ValueError(f"{len(corners)} boxes but {len(coords)} sets of points: batch sizes must match")
                coords = torch.cat([corners, coords], dim=1)
                labels = torch.cat([corner_labels, labels], dim=1)
            else:
                coords, labels = corners, corner_labels
        mask = None
        if mask_input is not None:
            mask = float_tensor(mask_input, "mask_input", _CPU)
            if mask.dim() == 3:
                mask = mask[None]
            side = self.model.sam_prompt_encoder.mask_input_size
            if mask.dim() != 4 or tuple(mask.shape[1:]) != (1, side, side):
                raise ValueError(
                    f"mask_input must be low-resolution logits of shape (1, {side}, {side}) or (B, 1, {side}, {side}), "
                    f"as returned by predict; got {tuple(mask.shape)}"
                )
            if coords is not None and len(mask) != len(coords):
                raise ValueError(f"{len(mask)} masks but {len(coords)} prompt sets: batch sizes must match")
        return _Prompts(*(None if t is None else t.to(self.device, non_blocking=True) for t in (coords, labels, mask)))


def _numpy(batch: Tensor) -> np.ndarray:
    """Drop the leading batch axis of a single prompt set, as the official predictor does, and leave the device."""
    return to_host(batch.squeeze(0))
