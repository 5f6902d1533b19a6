"""`sam2rt track --text`: every instance of some phrases followed through a source, into the outputs of `track`.

One ConceptTracker per phrase, all over the same frames and the same models (the tracker takes one phrase): the
backbone runs once a frame for all phrases (`ConceptTracker.encode`), and each phrase's tracker detects and tracks
on that encoding (`step_encoded`) with its own tracks, memory and association state, as Meta's video model keeps a
state per prompt; the detector and the tracker's heads still run once per phrase. Each tracker numbers its tracks
from 0; here an object gets a run-wide id from 1 the first time it is visible, in the order objects appear, so
that ids are unique across phrases and small (an indexed PNG holds ids up to 255). The outputs get each frame's
visible masks with their detection scores (Meta's `out_probs`); a COCO file has a category per phrase.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..io.coco import CocoDataset, CocoWriter
from ..io.sinks import SinkSet, TrackedFrame
from ..io.track_source import TrackSource
from .concepts import ConceptFrame, ConceptTracker
from .run import RunSummary, open_sinks, run_frames
from .stop_signals import StopSignals


class PhraseTracks:
    """ConceptTrackers of several phrases stepped together over one source's frames, under run-wide object ids;
    one backbone pass a frame serves them all, so they must share their models and input resizing."""

    def __init__(self, trackers: Sequence[ConceptTracker]) -> None:
        if not trackers:
            raise ValueError("PhraseTracks needs at least one ConceptTracker")
        if not all(trackers[0].encodes_like(tracker) for tracker in trackers):
            raise ValueError("PhraseTracks' trackers must share SAM 3's models and input resizing (one encoding)")
        self.trackers = list(trackers)
        self.phrases = [tracker.phrase for tracker in self.trackers]
        self._ids: dict[tuple[int, int], int] = {}  # (phrase index, the tracker's id) -> run-wide id
        self._phrase_of: dict[int, int] = {}  # run-wide id -> phrase index

    def phrase_index(self, object_id: int) -> int:
        """Which phrase (its index) a run-wide object id was found for."""
        return self._phrase_of[object_id]

    def object_id(self, phrase_index: int, track_id: int) -> int:
        """The run-wide id of a phrase's track, given on first asking (1, 2, ...)."""
        key = (phrase_index, track_id)
        if key not in self._ids:
            self._ids[key] = len(self._ids) + 1
            self._phrase_of[self._ids[key]] = phrase_index
        return self._ids[key]

    def step(self, index: int, name: str, image: np.ndarray) -> TrackedFrame:
        """Every tracker on source frame `index` (H, W, 3) uint8; their visible objects as the outputs take them."""
        return self.tracked(self.concept_frames(image), index, name, image)

    def concept_frames(self, image: np.ndarray) -> list[ConceptFrame]:
        """Every phrase's ConceptFrame of the next frame (H, W, 3) uint8, in phrase order, from one backbone pass."""
        encoded = self.trackers[0].encode(image)
        return [tracker.step_encoded(encoded) for tracker in self.trackers]

    def tracked(self, found: Sequence[ConceptFrame], index: int, name: str, image: np.ndarray) -> TrackedFrame:
        """The trackers' ConceptFrames of one frame (in phrase order) -> a TrackedFrame of their visible objects:
        ids (K,), masks (K, H, W) bool, scores (K,), and labels (H, W) int32 where a pixel of objects of two
        phrases goes to the higher score."""
        height, width = image.shape[:2]
        ids: list[int] = []
        masks: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for phrase_index, frame in enumerate(found):
            track_ids, visible_masks = frame.visible_masks()
            rows = torch.nonzero(frame.visible).flatten()
            ids += [self.object_id(phrase_index, track_id) for track_id in track_ids]
            masks.append(visible_masks.cpu().numpy().reshape(-1, height, width))
            scores.append(frame.scores[rows].float().cpu().numpy())
        all_masks = np.concatenate(masks) if ids else np.zeros((0, height, width), dtype=bool)
        all_scores = np.concatenate(scores).astype(np.float32) if ids else np.zeros(0, np.float32)
        labels = np.zeros((height, width), np.int32)
        for row in np.argsort(all_scores, kind="stable"):  # the highest score is painted last, on top
            labels[all_masks[row]] = ids[row]
        return TrackedFrame(index, name, image, ids, all_masks, all_scores, labels)


class PhraseCocoWriter(CocoWriter):
    """CocoWriter with a category per phrase: each object's annotations under the phrase it was found for."""

    def __init__(
        self,
        path: Path,
        source: str,
        frame_file: Callable[[int], Optional[str]],
        phrases: Sequence[str],
        phrase_index: Callable[[int], int],
    ) -> None:
        super().__init__(path, source, frame_file)
        info = {"description": f"sam2rt track {source} --text {','.join(phrases)}", "source": source}
        self.dataset = CocoDataset(list(phrases), info)
        self.phrase_index = phrase_index

    def write(self, frame: TrackedFrame) -> None:
        first = len(self.dataset.annotations)
        super().write(frame)  # every annotation in the first category, then each moved to its phrase's
        for annotation in self.dataset.annotations[first:]:
            category = self.dataset.categories[self.phrase_index(annotation["object_id"])]
            annotation["category_id"] = category["id"]


def open_concept_sinks(
    source: TrackSource,
    tracks: PhraseTracks,
    overlay: Optional[Path],
    png_dir: Optional[Path],
    coco: Optional[Path],
    yolo_dir: Optional[Path],
    yolo_pieces: bool = False,
) -> SinkSet:
    """The outputs of `track` (overlay, PNG masks, YOLO labels) and a COCO file with the phrases as categories."""

    def coco_writer(path: Path) -> PhraseCocoWriter:
        return PhraseCocoWriter(path, source.name, source.frame_file, tracks.phrases, tracks.phrase_index)

    return open_sinks(source, overlay, png_dir, coco, yolo_dir, yolo_pieces, coco_writer)


def run_concept_tracking(
    tracks: PhraseTracks,
    source: TrackSource,
    sinks: SinkSet,
    max_frames: Optional[int] = None,
    progress: Optional[bool] = None,
    stops: Optional[StopSignals] = None,
) -> RunSummary:
    """Track every instance of the phrases on every frame of `source` (at most `max_frames`) into `sinks`; closes
    both. Errors, signals and the summary as `run_tracking`'s; frames go one at a time (no lookahead)."""

    def step(index: int, image: np.ndarray) -> TrackedFrame:
        return tracks.step(index, source.frame_name(index), image)

    return run_frames(source, itertools.islice(source, max_frames), step, sinks, max_frames, progress, stops)
