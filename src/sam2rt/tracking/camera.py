"""CameraPredictor: the API of the real-time SAM 2 camera predictor, on StreamTracker.

For code written against that fork: `load_first_frame`, `add_new_prompt`, `add_new_mask`,
`track`, `reset_state`. Masks come back as logits (N, 1, H, W) at the frame's resolution.
Unlike the fork, objects may be added after tracking started. StreamTracker's own methods work too.
"""

from __future__ import annotations

from torch import Tensor

from ..processing.images import ImageLike, as_rgb_tensor
from ..processing.prompts import frame_index
from .stream import FrameResult, StreamTracker


class CameraPredictor(StreamTracker):
    """StreamTracker under the method names of the real-time fork; the options are StreamTracker's."""

    def load_first_frame(self, img: ImageLike) -> None:
        """Start a new session on `img` (H x W x 3 RGB): it becomes frame 0, ready for prompts."""
        as_rgb_tensor(img)  # a refused frame must not end the current session
        self.reset()
        self.step(img)

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
        result = self.add_prompt(
            obj_id,
            points=points,
            labels=labels,
            box=bbox,
            clear_old_points=clear_old_points,
            normalize_coords=normalize_coords,
        )
        return result.frame_idx, result.object_ids, _with_channel(result)

    def add_new_mask(self, frame_idx: int, obj_id: int, mask) -> tuple[int, list[int], Tensor]:
        self._check_frame(frame_idx)
        result = self.add_prompt(obj_id, mask=mask)
        return result.frame_idx, result.object_ids, _with_channel(result)

    def track(self, img: ImageLike) -> tuple[list[int], Tensor]:
        """Track every object on the next frame: (obj_ids, mask logits (N, 1, H, W))."""
        if self.frame_idx < 0:
            raise RuntimeError("call load_first_frame(img) before track(img)")
        result = self.step(img)
        return result.object_ids, _with_channel(result)

    def reset_state(self) -> None:
        self.reset()

    def _check_frame(self, frame_idx: int) -> None:
        if self.frame_idx < 0:
            raise RuntimeError("call load_first_frame(img) before adding prompts")
        if frame_index(frame_idx) != self.frame_idx:
            raise ValueError(f"prompts go on the newest frame ({self.frame_idx}); frame {frame_idx} cannot be prompted")


def _with_channel(result: FrameResult) -> Tensor:
    return result.mask_logits[:, None]  # (N, H, W) -> (N, 1, H, W)
