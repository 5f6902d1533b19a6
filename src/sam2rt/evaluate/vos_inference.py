"""Semi-supervised VOS predictions: each video tracked from its first frame's ground-truth masks, as Meta's
vos_inference tool makes them for the benchmarks.

Per video: every object of the first frame's annotation is given to a VideoPredictor as a mask on
frame 0, the video is propagated forward, and each frame's masks (logits > 0) are written as one
indexed PNG, pixel value = object id, where overlapping objects go to the smaller id, with the
ground truth's palette (DAVIS's when it has none). Outputs do not overlap anyway: the predictor runs
with `non_overlap_masks`, as the official tool runs it for the DAVIS layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..io.sinks import MAX_PNG_OBJECT_ID, davis_palette, make_folder
from ..io.sources import ImageFolderFrames
from ..model.sam2 import SAM2Model
from ..tracking.video import VideoPredictor
from .folders import EvalError, annotation_root, read_labels, video_names

JPEG_SUFFIXES = {".jpg", ".jpeg"}


def labels_from_masks(masks: np.ndarray, object_ids: Sequence[int]) -> np.ndarray:
    """(N, H, W) bool masks of `object_ids` -> (H, W) uint8 object id per pixel; overlaps go to the smaller id."""
    order = np.argsort(object_ids)
    ordered = masks[order]  # (N, H, W) by increasing id
    first = ordered.argmax(0)  # the first (smallest-id) object on each pixel, 0 where none
    ids = np.asarray(object_ids, dtype=np.uint8)[order]
    return np.where(ordered.any(0), ids[first], 0).astype(np.uint8)


def _video_frames(folder: Path) -> ImageFolderFrames:
    if not folder.is_dir():
        raise EvalError(f"no frames for this video: {folder} is not a folder")
    if not any(p.suffix.lower() in JPEG_SUFFIXES for p in folder.iterdir()):
        raise EvalError(f"no JPEG frames in {folder}")
    frames = ImageFolderFrames(folder)
    others = [p.name for p in frames.paths if p.suffix.lower() not in JPEG_SUFFIXES]
    if others:
        raise EvalError(f"{folder} holds frames that are not JPEGs ({', '.join(others[:3])}): VOS frames are JPEGs")
    return frames


def _first_frame_objects(mask_path: Path, size: tuple[int, int]) -> tuple[dict[int, np.ndarray], list[int]]:
    """Each object's (H, W) bool mask on the first frame, and the palette to write predictions with."""
    if not mask_path.is_file():
        raise EvalError(f"the first frame's ground truth {mask_path} is missing: it gives the objects to track")
    labels = read_labels(mask_path)
    if labels.shape != size:
        raise EvalError(f"{mask_path} is {labels.shape[1]}x{labels.shape[0]} pixels, the frames {size[1]}x{size[0]}")
    ids = [int(i) for i in np.unique(labels) if i != 0]
    if not ids:
        raise EvalError(f"the first frame's ground truth {mask_path} holds no object to track")
    if max(ids) > MAX_PNG_OBJECT_ID:
        raise EvalError(f"{mask_path} has object id {max(ids)}; indexed PNGs hold ids 1 to {MAX_PNG_OBJECT_ID}")
    with Image.open(mask_path) as image:
        palette = image.getpalette() if image.mode == "P" else None
    return {obj_id: labels == obj_id for obj_id in ids}, palette or davis_palette()


class VosVideo(NamedTuple):
    """One video to track: its frames and what its first frame's ground truth gives."""

    name: str
    frames: ImageFolderFrames
    objects: dict[int, np.ndarray]  # object id -> (H, W) bool mask on the first frame
    palette: list[int]  # the ground truth's PNG palette (DAVIS's when it has none), for the predictions


def vos_videos(
    jpeg_root: Union[str, Path], annotation_dir: Union[str, Path], videos: Optional[Sequence[str]] = None
) -> list[VosVideo]:
    """The videos of `jpeg_root` (`<video>/<frame>.jpg`) with their first frame's ground truth from
    `annotation_dir` (`<video>/<frame>.png`, or a VOS root holding `Annotations`); every one checked,
    before any tracking. `videos`: default, every video of the ground truth."""
    gt_root, frames_root = annotation_root(annotation_dir), Path(jpeg_root)
    if not frames_root.is_dir():
        raise EvalError(f"no such folder: {frames_root}")
    jobs = []
    for name in list(videos) if videos is not None else video_names(gt_root):
        frames = _video_frames(frames_root / name)
        objects, palette = _first_frame_objects(gt_root / name / f"{frames.paths[0].stem}.png", tuple(frames.size))
        jobs.append(VosVideo(name, frames, objects, palette))
    return jobs


def track_vos_videos(
    model: Union[SAM2Model, VideoPredictor],
    jobs: Sequence[VosVideo],
    out_dir: Union[str, Path],
    progress: Optional[bool] = None,
) -> None:
    """Track each video from its first frame's objects; writes `out_dir/<video>/<frame>.png` for every frame.

    `model`: a SAM2Model, tracked with the official VOS settings (the predictor's defaults and
    `non_overlap_masks`), or a VideoPredictor set up by the caller. `progress`: a progress bar over
    frames (None: when stderr is a terminal).
    """
    from tqdm import tqdm

    predictor = model if isinstance(model, VideoPredictor) else VideoPredictor(model, non_overlap_masks=True)
    disable = None if progress is None else not progress
    bar = tqdm(total=sum(len(job.frames) for job in jobs), unit="frame", desc="tracking", disable=disable)
    with bar, torch.inference_mode():
        for job in jobs:
            state = predictor.init_state(str(job.frames.folder))
            for obj_id, mask in job.objects.items():
                predictor.add_new_mask(state, 0, obj_id, mask)
            folder = make_folder(Path(out_dir) / job.name)
            for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
                masks = (logits[:, 0] > 0).cpu().numpy()  # (N, H, W)
                image = Image.fromarray(labels_from_masks(masks, obj_ids))
                image.putpalette(job.palette)  # L -> P: the values stay the object ids
                image.save(folder / f"{job.frames.paths[frame_idx].stem}.png")
                bar.update(1)


def run_vos_inference(
    model: Union[SAM2Model, VideoPredictor],
    jpeg_root: Union[str, Path],
    annotation_dir: Union[str, Path],
    out_dir: Union[str, Path],
    videos: Optional[Sequence[str]] = None,
    progress: Optional[bool] = None,
) -> list[str]:
    """vos_videos then track_vos_videos: every video tracked from its first frame's ground truth into
    `out_dir/<video>/<frame>.png`, ready for evaluate_folders(annotation_dir, out_dir). Returns the videos."""
    jobs = vos_videos(jpeg_root, annotation_dir, videos)
    track_vos_videos(model, jobs, out_dir, progress)
    return [job.name for job in jobs]
