"""CameraPredictor: the API of the real-time SAM 2 camera predictor, over StreamTracker.

For code written against that fork: `load_first_frame`, `add_new_prompt`, `add_new_mask`,
`track`, `reset_state`. Masks come back as logits (N, 1, H, W) at the frame's resolution.
Unlike the fork, objects may be added after tracking started.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..frames import ImageLike
from ..model.sam2 import SAM2Model
from .stream import FrameResult, StreamTracker


class CameraPredictor:
    def __init__(
        self,
        model: SAM2Model,
        *,
        fill_hole_area: int = 8,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = True,
        max_cond_frames_in_attn: int = -1,
        max_cond_frames: int = 8,
        memory_dtype: Optional[torch.dtype] = None,
        offload_state_to_cpu: bool = False,
    ) -> None:
        self.tracker = StreamTracker(
            model,
            fill_hole_area=fill_hole_area,
            non_overlap_masks=non_overlap_masks,
            clear_non_cond_mem_around_input=clear_non_cond_mem_around_input,
            add_all_frames_to_correct_as_cond=add_all_frames_to_correct_as_cond,
            max_cond_frames_in_attn=max_cond_frames_in_attn,
            max_cond_frames=max_cond_frames,
            memory_dtype=memory_dtype,
            offload_state_to_cpu=offload_state_to_cpu,
        )

    @property
    def frame_idx(self) -> int:
        return self.tracker.frame_idx

    def load_first_frame(self, img: ImageLike) -> None:
        """Start a new session on `img` (H x W x 3 RGB): it becomes frame 0, ready for prompts."""
        self.tracker.reset()
        self.tracker.step(img)

    def add_new_prompt(
        self,
        frame_idx: int,
        obj_id: int,
        points=None,
        labels=None,
        bbox=None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
    ) -> tuple[int, list[int], Tensor]:
        """Clicks and/or a box for an object on the newest frame. bbox: [x0, y0, x1, y1] or [[x0, y0], [x1, y1]]."""
        self._check_frame(frame_idx)
        result = self.tracker.add_prompt(
            obj_id, points=points, labels=labels, box=bbox,
            clear_old_points=clear_old_points, normalize_coords=normalize_coords,
        )
        return result.frame_idx, result.object_ids, _with_channel(result)

    def add_new_mask(self, frame_idx: int, obj_id: int, mask) -> tuple[int, list[int], Tensor]:
        self._check_frame(frame_idx)
        result = self.tracker.add_prompt(obj_id, mask=mask)
        return result.frame_idx, result.object_ids, _with_channel(result)

    def track(self, img: ImageLike) -> tuple[list[int], Tensor]:
        """Track every object on the next frame: (obj_ids, mask logits (N, 1, H, W))."""
        if self.tracker.frame_idx < 0:
            raise RuntimeError("call load_first_frame(img) before track(img)")
        result = self.tracker.step(img)
        return result.object_ids, _with_channel(result)

    def remove_object(self, obj_id: int) -> None:
        self.tracker.remove_object(obj_id)

    def reset_state(self) -> None:
        self.tracker.reset()

    def _check_frame(self, frame_idx: int) -> None:
        if self.tracker.frame_idx < 0:
            raise RuntimeError("call load_first_frame(img) before adding prompts")
        if frame_idx != self.tracker.frame_idx:
            raise ValueError(
                f"prompts go on the newest frame ({self.tracker.frame_idx}); frame {frame_idx} cannot be prompted"
            )


def _with_channel(result: FrameResult) -> Tensor:
    return result.mask_logits[:, None]  # (N, H, W) -> (N, 1, H, W)
