"""J&F of a folder of predicted PNG masks against a folder of ground-truth ones, as the official tool scores them.

Layouts (the official benchmark's two):
- DAVIS: `<root>/<video>/<frame>.png`, one indexed PNG per frame, pixel value = object id (0: background).
- SA-V: `<root>/<video>/<object>/<frame>.png`, one PNG per object and frame, non-zero on the object.
A ground-truth root holding an `Annotations` folder (a VOS dataset's root) is read from there.

Every ground-truth frame is scored (sparse annotations: the predictions may hold more frames),
except the first and the last of each sequence unless `all_frames`. Overall J and F are means over
all objects of all videos, as the official tool takes them; a video's are means over its objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .metrics import SequenceScorer

LABEL_MODES = ("P", "L", "1", "I;16", "I")  # single-channel images whose pixel values are object ids


class EvalError(ValueError):
    """Ground truth or predictions that cannot be scored."""


@dataclass(frozen=True)
class Scores:
    """J and F in percent; J&F is their mean."""

    j: float
    f: float

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    def as_json(self) -> dict[str, float]:
        return {"J&F": self.jf, "J": self.j, "F": self.f}


def _mean(scores: list[Scores]) -> Optional[Scores]:
    if not scores:
        return None
    return Scores(float(np.mean([s.j for s in scores])), float(np.mean([s.f for s in scores])))


@dataclass(frozen=True)
class VideoResult:
    name: str
    objects: dict[str, Scores]  # object id (DAVIS) or object folder (SA-V) -> scores

    @property
    def scores(self) -> Optional[Scores]:
        """Mean over the video's objects; None when its evaluated frames hold no object."""
        return _mean(list(self.objects.values()))


@dataclass(frozen=True)
class EvalResult:
    videos: dict[str, VideoResult]
    all_frames: bool  # whether the first and last frames were scored

    @property
    def num_objects(self) -> int:
        return sum(len(video.objects) for video in self.videos.values())

    @property
    def scores(self) -> Scores:
        """Means over every object of every video (the official "Global score")."""
        overall = _mean([s for video in self.videos.values() for s in video.objects.values()])
        assert overall is not None, "evaluate_folders refuses ground truth without objects"
        return overall

    def as_json(self) -> dict:
        """Overall "J&F", "J", "F" (percent), then per video and per object."""
        videos = {}
        for name, video in self.videos.items():
            entry = video.scores.as_json() if video.scores is not None else {"J&F": None, "J": None, "F": None}
            entry["objects"] = {obj: scores.as_json() for obj, scores in video.objects.items()}
            videos[name] = entry
        return {
            **self.scores.as_json(),
            "num_videos": len(self.videos),
            "num_objects": self.num_objects,
            "all_frames": self.all_frames,
            "videos": videos,
        }

    def table(self) -> str:
        """Per video and overall, in percent with one decimal as the official tool prints them."""
        width = max([len("Global score")] + [len(name) for name in self.videos])
        lines = [f"{'sequence':<{width}}  {'objects':>7}  {'J&F':>5}  {'J':>5}  {'F':>5}"]
        for name, video in self.videos.items():
            lines.append(_row(name, width, len(video.objects), video.scores))
        lines.append(_row("Global score", width, self.num_objects, self.scores))
        return "\n".join(lines)


def _row(name: str, width: int, objects: int, scores: Optional[Scores]) -> str:
    numbers = (
        "  no object on the frames scored"
        if scores is None
        else f"  {scores.jf:5.1f}  {scores.j:5.1f}  {scores.f:5.1f}"
    )
    return f"{name:<{width}}  {objects:>7}{numbers}"


def read_labels(path: Path) -> np.ndarray:
    """An indexed or greyscale PNG as its (H, W) integer pixel values (the object ids)."""
    try:
        with Image.open(path) as image:
            if image.mode not in LABEL_MODES:
                raise EvalError(
                    f"{path} is a {image.mode} image; masks must be indexed (palette) or greyscale PNGs "
                    "whose pixel values are the object ids"
                )
            labels = np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise EvalError(f"{path} is not a readable image: {error}") from None
    return labels.astype(np.uint8) if labels.dtype == bool else labels


def annotation_root(gt_dir: Union[str, Path]) -> Path:
    """The folder of per-video ground-truth folders: `gt_dir`, or its `Annotations` folder when it has one."""
    root = Path(gt_dir)
    if not root.is_dir():
        raise EvalError(f"no such folder: {root}")
    return root / "Annotations" if (root / "Annotations").is_dir() else root


def video_names(root: Path) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise EvalError(f"no video folders in {root} (expected <video>/<frame>.png)")
    return names


def _png_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def _score_sequence(
    gt_folder: Path, pred_folder: Path, all_frames: bool, binary: bool
) -> dict[int, tuple[float, float]]:
    frames = _png_names(gt_folder)
    if not frames:
        raise EvalError(f"no PNG masks in the ground truth folder {gt_folder}")
    if not pred_folder.is_dir():
        raise EvalError(f"no predictions for {gt_folder}: {pred_folder} is not a folder")
    scorer = SequenceScorer()
    for name in frames if all_frames else frames[1:-1]:
        gt_path, pred_path = gt_folder / name, pred_folder / name
        if not pred_path.is_file():
            raise EvalError(f"prediction {pred_path} is missing (the ground truth has {gt_path})")
        gt, pred = read_labels(gt_path), read_labels(pred_path)
        if gt.shape != pred.shape:
            raise EvalError(
                f"{pred_path} is {pred.shape[1]}x{pred.shape[0]} pixels but the ground truth {gt_path} is "
                f"{gt.shape[1]}x{gt.shape[0]}"
            )
        if binary:  # SA-V: one object per file, any non-zero value
            gt, pred = (gt > 0).astype(np.uint8), (pred > 0).astype(np.uint8)
        scorer.add(gt, pred)
    return scorer.result()


def evaluate_video(gt_video: Path, pred_video: Path, all_frames: bool = False) -> VideoResult:
    """One video's per-object scores; SA-V layout when its ground-truth folder holds a folder per object."""
    object_folders = sorted(p.name for p in gt_video.iterdir() if p.is_dir())
    if not object_folders:
        scores = _score_sequence(gt_video, pred_video, all_frames, binary=False)
        return VideoResult(gt_video.name, {str(obj): Scores(*s) for obj, s in scores.items()})
    objects = {}
    for folder in object_folders:
        scores = _score_sequence(gt_video / folder, pred_video / folder, all_frames, binary=True)
        if scores:  # an object absent from the frames scored has no score, as in the official tool
            objects[folder] = Scores(*scores[1])
    return VideoResult(gt_video.name, objects)


def evaluate_folders(gt_dir: Union[str, Path], pred_dir: Union[str, Path], all_frames: bool = False) -> EvalResult:
    """Score every ground-truth video of `gt_dir` against the same-named folder of `pred_dir`.

    `all_frames`: score the first and last frames too (the semi-supervised standard skips them).
    Prediction folders without ground truth are ignored. Raises EvalError on missing or unreadable
    files, size mismatches, images that are not indexed/greyscale PNGs, and ground truth without objects.
    """
    gt_root, pred_root = annotation_root(gt_dir), Path(pred_dir)
    if not pred_root.is_dir():
        raise EvalError(f"no such folder: {pred_root}")
    names = video_names(gt_root)
    missing = [name for name in names if not (pred_root / name).is_dir()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise EvalError(f"{pred_root} has no predictions for {len(missing)} of the {len(names)} videos: {shown}")
    result = EvalResult(
        {name: evaluate_video(gt_root / name, pred_root / name, all_frames) for name in names}, all_frames
    )
    if result.num_objects == 0:
        skipped = (
            "" if all_frames else " (the first and last frames of each video are not scored; --all-frames scores them)"
        )
        raise EvalError(f"the ground truth in {gt_root} holds no object on the frames scored{skipped}")
    return result
