"""Segment everything: masks for a grid of point prompts, filtered and de-duplicated, as the official
SAM2AutomaticMaskGenerator makes them (same parameters, defaults, records and order).

Per crop of the image: decode the grid points a batch at a time (a round of batches before the host
looks at the results), keep masks whose predicted IoU and stability pass the thresholds and that are
not cut by the crop's border, then drop duplicates by box
NMS. Across crops, NMS again, preferring masks from smaller crops. Everything runs on the model's
device; the host receives only the kept masks (or their run lengths) and a few numbers per mask.

Masks are measured at full resolution, as the official generator does, but full-resolution logits
are never stored for all candidates: a candidate keeps its low-resolution logits, and the masks that
survive NMS are upscaled again (the same computation, so the same pixels).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..io.rle import coco_rle, mask_run_lengths, uncompressed_rle
from ..model.mask_decoder import NUM_MULTIMASK
from ..model.sam2 import SAM2Model
from ..processing.images import ImageLike, as_rgb_tensor, to_device, to_host
from ..processing.masks import stability_score
from ..processing.prompts import to_model_frame
from .boxes import batched_nms, box_area, masks_to_boxes, near_crop_edge, xyxy_to_xywh
from .crops import Crop, crop_boxes, layer_point_grids
from .predictor import LOW_RES_LOGIT_CLAMP, ImagePredictor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
UPSCALE_PIXELS = 2**27  # full-resolution logits upscaled at once: 512 MB of float32
# Candidate masks filtered at once (their low-resolution logits: 1 GiB of float32 at 1024). Filtering
# needs the host to learn how many pass; doing it once per round, not per batch of points, lets the
# GPU decode batch after batch without waiting for the host.
ROUND_MASKS = 4096
LARGE_BATCH_MEMORY = 16 * 2**30  # a GPU with this much memory decodes 256 points at once by default


@dataclass
class GeneratedMasks:
    """The kept masks of one image, on the model's device, in the order of the official records."""

    masks: Tensor  # (N, H, W) bool
    boxes: Tensor  # (N, 4) x0, y0, x1, y1 inclusive pixel corners, int64
    predicted_ious: Tensor  # (N,) float32
    stability_scores: Tensor  # (N,) float32
    point_coords: Tensor  # (N, 2) x, y pixels of the prompt that made each mask, float32
    crop_boxes: Tensor  # (N, 4) x0, y0, x1, y1 of the crop each mask comes from, int64

    def select(self, index: Tensor) -> GeneratedMasks:
        return GeneratedMasks(*(getattr(self, field.name)[index] for field in fields(self)))

    @property
    def areas(self) -> Tensor:
        return self.masks.sum(dim=(1, 2))


@dataclass
class _Decoded:
    """Every mask decoded from a round of points, one row per mask, before any filter."""

    low_res: Tensor  # (N, 1, h, w) float32 logits
    ious: Tensor  # (N,)
    points: Tensor  # (N, 2) in the crop's pixels

    @staticmethod
    def cat(parts: list[_Decoded]) -> _Decoded:
        return _cat_rows(_Decoded, parts)


@dataclass
class _Candidates:
    """Masks of one crop that passed the filters; boxes and points in the crop's pixels."""

    low_res: Tensor  # (N, 1, h, w) float32 logits
    ious: Tensor  # (N,)
    stability: Tensor  # (N,)
    boxes: Tensor  # (N, 4) int64
    points: Tensor  # (N, 2)

    def select(self, index: Tensor) -> _Candidates:
        return _Candidates(*(getattr(self, field.name)[index] for field in fields(self)))

    @staticmethod
    def cat(parts: list[_Candidates]) -> _Candidates:
        return _cat_rows(_Candidates, parts)


class MaskGenerator:
    """Masks for everything in an image; the parameters and records of the official SAM2AutomaticMaskGenerator.

    points_per_side or point_grids (one (P, 2) grid of x, y in [0, 1] per crop layer) place the prompts;
    points_per_batch is how many are decoded at once (memory and speed, never results): by default 256 on
    a GPU of 16 GiB or more (2 to 4 GiB at the peak), else the official 64. Masks whose predicted IoU is
    not above pred_iou_thresh, or whose stability score (IoU of the mask cut at mask_threshold
    +- stability_score_offset) is below stability_score_thresh, are dropped; box_nms_thresh and
    crop_nms_thresh drop duplicates within and across crops. crop_n_layers > 0 also runs on
    (2**i)**2 overlapping crops per layer i. min_mask_region_area > 0 fills holes and removes islands
    (8-connected, of at most that many pixels of the low-resolution logits, image_size / 4 a side) in
    every decoded mask before it is measured, as the official generator does through its predictor; its
    full-resolution postprocess_small_regions (SAM 1's) is never called, and its build without the CUDA
    extension skips the step with a warning. use_m2m refines each mask once with itself as a prompt.
    """

    def __init__(
        self,
        model: SAM2Model,
        points_per_side: Optional[int] = 32,
        points_per_batch: Optional[int] = None,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[list[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {output_mode!r}; the modes are: {', '.join(OUTPUT_MODES)}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be 0 or more, got {crop_n_layers}")
        if points_per_batch is None:
            points_per_batch = _default_points_per_batch(model.device)
        if points_per_batch <= 0:
            raise ValueError(f"points_per_batch must be positive, got {points_per_batch}")
        if points_per_side is not None:
            if points_per_side <= 0 or crop_n_points_downscale_factor <= 0:
                raise ValueError("points_per_side and crop_n_points_downscale_factor must be positive")
            point_grids = layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        grids = [np.asarray(grid, dtype=np.float64) for grid in point_grids]
        if len(grids) < crop_n_layers + 1:
            raise ValueError(f"point_grids has {len(grids)} grids for {crop_n_layers + 1} crop layers")
        for grid in grids:
            if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0:
                raise ValueError(f"each point grid must have shape (P, 2) with P > 0, got {grid.shape}")
        self.point_grids = grids
        self.predictor = ImagePredictor(
            model, max_hole_area=min_mask_region_area, max_sprinkle_area=min_mask_region_area
        )
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.mask_threshold = mask_threshold
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.use_m2m = use_m2m
        self.multimask_output = multimask_output

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @torch.inference_mode()
    def generate(self, image: ImageLike) -> list[dict]:
        """Records of the masks of an RGB image (H, W, 3) uint8, as the official generator returns them.

        Each record: segmentation ((H, W) bool array, or an RLE dict by output_mode), area (pixels),
        bbox [x, y, w, h], predicted_iou, point_coords [[x, y]], stability_score, crop_box [x, y, w, h].
        Dicts, not a typed record: this is the drop-in output that existing code reads by key.
        """
        result = self.generate_masks(image)
        image_hw = tuple(result.masks.shape[1:])
        if self.output_mode == "binary_mask":
            segmentations = list(to_host(result.masks))
        else:
            encode = coco_rle if self.output_mode == "coco_rle" else uncompressed_rle
            segmentations = [encode(lengths, image_hw) for lengths in mask_run_lengths(result.masks)]
        numbers = [
            result.areas.tolist(),
            xyxy_to_xywh(result.boxes).float().tolist(),
            result.predicted_ious.tolist(),
            result.point_coords.tolist(),
            result.stability_scores.tolist(),
            xyxy_to_xywh(result.crop_boxes).float().tolist(),
        ]
        return [
            {
                "segmentation": segmentation,
                "area": int(area),
                "bbox": bbox,
                "predicted_iou": iou,
                "point_coords": [point],
                "stability_score": stability,
                "crop_box": crop_box,
            }
            for segmentation, area, bbox, iou, point, stability, crop_box in zip(segmentations, *numbers)
        ]

    @torch.inference_mode()
    def generate_masks(self, image: ImageLike) -> GeneratedMasks:
        """The kept masks of an RGB image as tensors on the model's device (the fast path: no host copies)."""
        rgb = to_device(as_rgb_tensor(image), self.device).permute(1, 2, 0)  # (3, H, W) -> (H, W, 3)
        image_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        crops = crop_boxes(image_hw, self.crop_n_layers, self.crop_overlap_ratio)
        parts = [self._process_crop(rgb, crop, image_hw) for crop in crops]
        self.predictor.reset_predictor()
        if len(crops) == 1:
            return parts[0]
        merged = _paste_crops(parts, image_hw)
        crop_scores = 1 / box_area(merged.crop_boxes.float())
        groups = torch.zeros(len(crop_scores), dtype=torch.long, device=self.device)
        return merged.select(batched_nms(merged.boxes, crop_scores, groups, self.crop_nms_thresh))

    def _process_crop(self, rgb: Tensor, crop: Crop, image_hw: tuple[int, int]) -> GeneratedMasks:
        """The masks of one crop after NMS; masks the size of the crop, boxes and points in the image's pixels."""
        x0, y0, x1, y1 = crop.box
        crop_hw = (y1 - y0, x1 - x0)
        self.predictor.set_image(rgb[y0:y1, x0:x1])
        scale = np.array([crop_hw[1], crop_hw[0]])
        points = to_device(torch.as_tensor(self.point_grids[crop.layer] * scale, dtype=torch.float32), self.device)
        masks_per_point = NUM_MULTIMASK if self.multimask_output else 1
        batch = self.points_per_batch
        round_points = batch * max(1, ROUND_MASKS // (batch * masks_per_point))
        parts = []
        for first in range(0, len(points), round_points):
            round_of_points = points[first : first + round_points]
            decoded = [
                self._decode_batch(round_of_points[s : s + batch], crop_hw)
                for s in range(0, len(round_of_points), batch)
            ]
            parts.append(self._filter(_Decoded.cat(decoded), crop, image_hw))
        found = _Candidates.cat(parts)
        groups = torch.zeros(len(found.ious), dtype=torch.long, device=self.device)
        found = found.select(batched_nms(found.boxes, found.ious, groups, self.box_nms_thresh))
        masks = torch.cat([chunk[:, 0] > self.mask_threshold for chunk in self._upscaled(found.low_res, crop_hw)])
        offset = to_device(torch.tensor([x0, y0]), self.device)
        return GeneratedMasks(
            masks=masks.reshape(-1, *crop_hw),  # (N, h, w) even when N == 0
            boxes=found.boxes + offset.repeat(2),
            predicted_ious=found.ious,
            stability_scores=found.stability,
            point_coords=found.points + offset,
            crop_boxes=to_device(torch.tensor([crop.box]), self.device).expand(len(found.ious), 4),
        )

    def _decode_batch(self, points: Tensor, crop_hw: tuple[int, int]) -> _Decoded:
        """The masks of a batch of points (B, 2) in the crop's pixels (refined once with m2m); no host waits."""
        coords = to_model_frame(points[:, None, :], crop_hw, self.predictor.model.config.image_size, True)  # (B, 1, 2)
        labels = torch.ones(coords.shape[:2], dtype=torch.int32, device=self.device)  # (B, 1)
        low_res, ious = self.predictor.decode_prompts(coords, labels, None, self.multimask_output)
        per_point = ious.shape[1]
        low_res = low_res.flatten(0, 1)[:, None]  # (B, C, h, w) -> (B*C, 1, h, w): one row per mask
        if self.use_m2m:
            low_res, ious = self._refine(coords.repeat_interleave(per_point, dim=0), low_res)
        return _Decoded(low_res, ious.flatten(), points.repeat_interleave(per_point, dim=0))

    def _filter(self, decoded: _Decoded, crop: Crop, image_hw: tuple[int, int]) -> _Candidates:
        """The decoded masks that pass every filter: predicted IoU, stability, not cut by the crop's border."""
        crop_hw = (crop.box[3] - crop.box[1], crop.box[2] - crop.box[0])
        low_res, ious, points = decoded.low_res, decoded.ious, decoded.points
        if self.pred_iou_thresh > 0:
            keep = ious > self.pred_iou_thresh
            low_res, ious, points = low_res[keep], ious[keep], points[keep]
        stability, boxes = [], []
        for chunk in self._upscaled(low_res, crop_hw):
            stability.append(stability_score(chunk[:, 0], self.mask_threshold, self.stability_score_offset))
            boxes.append(masks_to_boxes(chunk[:, 0] > self.mask_threshold))
        found = _Candidates(low_res, ious, torch.cat(stability), torch.cat(boxes), points)
        if self.stability_score_thresh > 0:
            found = found.select(found.stability >= self.stability_score_thresh)
        offset = to_device(torch.tensor([crop.box[0], crop.box[1]] * 2), self.device)
        return found.select(~near_crop_edge(found.boxes + offset, crop.box, image_hw))

    def _refine(self, coords: Tensor, low_res: Tensor) -> tuple[Tensor, Tensor]:
        """Each mask (N, 1, h, w) decoded again from its point and itself as the mask prompt, one mask per prompt."""
        labels = torch.ones(coords.shape[:2], dtype=torch.int32, device=self.device)
        prompts = low_res.clamp(-LOW_RES_LOGIT_CLAMP, LOW_RES_LOGIT_CLAMP)
        refined, ious = [], []
        for start in range(0, len(coords), self.points_per_batch):
            rows = slice(start, start + self.points_per_batch)
            masks, scores = self.predictor.decode_prompts(coords[rows], labels[rows], prompts[rows], False)
            refined.append(masks)
            ious.append(scores[:, 0])
        return torch.cat(refined), torch.cat(ious)

    def _upscaled(self, low_res: Tensor, crop_hw: tuple[int, int]) -> Iterator[Tensor]:
        """Full-resolution logits (n, 1, H, W) of the current crop, one chunk at a time: only one chunk is
        ever in memory (a round's survivors at full resolution would take gigabytes)."""
        height, width = crop_hw
        per_chunk = max(1, UPSCALE_PIXELS // (height * width))
        if len(low_res) == 0:
            yield low_res.new_zeros(0, 1, height, width)
        for start in range(0, len(low_res), per_chunk):
            yield self.predictor.upscale_logits(low_res[start : start + per_chunk])


def _cat_rows(record_type, parts: list):
    """One record of `record_type` (a dataclass of tensors, one row per mask) from several, rows in order."""
    return record_type(*(torch.cat([getattr(part, field.name) for part in parts]) for field in fields(record_type)))


def _default_points_per_batch(device: torch.device) -> int:
    """256 prompts at once where the GPU has room for them (decoding is then 10-15% faster), else the official 64."""
    if device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory >= LARGE_BATCH_MEMORY:
        return 256
    return 64


def _paste_crops(parts: list[GeneratedMasks], image_hw: tuple[int, int]) -> GeneratedMasks:
    """Every crop's masks put in place in the whole image (zeros outside the crop), one after another."""
    height, width = image_hw
    pasted = []
    for part in parts:
        x0, y0 = (int(v) for v in part.crop_boxes[0, :2].tolist()) if len(part.masks) else (0, 0)
        full = part.masks.new_zeros(len(part.masks), height, width)
        full[:, y0 : y0 + part.masks.shape[1], x0 : x0 + part.masks.shape[2]] = part.masks
        pasted.append(GeneratedMasks(full, *(getattr(part, field.name) for field in fields(part)[1:])))
    return _cat_rows(GeneratedMasks, pasted)
