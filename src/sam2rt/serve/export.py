"""What a session tracked, kept for export: masks per frame in memory (RLE), the frames in a spool file.

Exports are written on demand by the writers `sam2rt track` uses: COCO JSON with RLE masks, DAVIS
indexed PNGs (zipped) and an overlay video. A frame prompted again replaces its earlier record, so
the export holds the masks as last corrected. Recording stops at `max_frames` (the export says so).
"""

from __future__ import annotations

import os
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..io.coco import CocoWriter
from ..io.overlay import OverlayVideoWriter
from ..io.sinks import PngMaskWriter, TrackedFrame
from .protocol import decode_payload

MAX_RECORDED_FRAMES = 9000  # 5 minutes at 30 frames/s
EXPORT_KINDS = ("coco.json", "masks.zip", "overlay.mp4")


@dataclass(frozen=True)
class RecordedFrame:
    frame_id: int
    offset: int  # of the encoded frame in the spool file
    length: int
    format: int
    size: tuple[int, int]  # (height, width)
    object_ids: list[int]
    rles: list[dict]  # COCO RLE per object
    scores: list[float]  # probability that each object is visible
    labels: Optional[bytes]  # zlib of the (H, W) uint8 object id per pixel where masks overlap; else None


class Recorder:
    """Records every published frame of a session; thread-safe (the scheduler writes, exports read)."""

    def __init__(self, max_frames: int = MAX_RECORDED_FRAMES) -> None:
        self.max_frames = max_frames
        self._lock = threading.Lock()
        self._spool = tempfile.TemporaryFile(prefix="sam2rt-session-")
        self._end = 0
        self._records: dict[int, RecordedFrame] = {}

    @property
    def frames(self) -> int:
        return len(self._records)

    @property
    def full(self) -> bool:
        return len(self._records) >= self.max_frames

    def add(self, frame_id: int, encoded: bytes, format: int, tracked: TrackedFrame, rles: list[dict]) -> None:
        overlap = len(tracked.object_ids) > 1 and tracked.masks.sum(0, dtype=np.uint8).max() > 1
        # Without overlaps the labels follow from the masks; with them they say who has each pixel.
        labels = zlib.compress(tracked.labels.astype(np.uint8).tobytes(), 1) if overlap else None
        with self._lock:
            if self._spool.closed or (frame_id not in self._records and self.full):
                return
            self._spool.seek(self._end)
            self._spool.write(encoded)
            self._records[frame_id] = RecordedFrame(
                frame_id,
                self._end,
                len(encoded),
                format,
                tracked.labels.shape,
                list(tracked.object_ids),
                rles,
                [float(s) for s in tracked.scores],
                labels,
            )
            self._end += len(encoded)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._spool.truncate(0)
            self._end = 0

    def close(self) -> None:
        with self._lock:
            self._records.clear()
            self._spool.close()

    def _snapshot(self) -> list[RecordedFrame]:
        with self._lock:
            self._spool.flush()
            return [self._records[key] for key in sorted(self._records)]

    def _frame(self, record: RecordedFrame, with_image: bool) -> TrackedFrame:
        from pycocotools import mask as mask_utils

        height, width = record.size
        image = np.zeros((height, width, 3), np.uint8)
        if with_image:
            encoded = os.pread(self._spool.fileno(), record.length, record.offset)
            image = decode_payload(encoded, record.format, width, height)
        if record.rles:
            masks = mask_utils.decode(record.rles).transpose(2, 0, 1).astype(bool)  # (H, W, N) -> (N, H, W)
        else:
            masks = np.zeros((0, height, width), bool)
        if record.labels is not None:
            labels = np.frombuffer(zlib.decompress(record.labels), np.uint8).reshape(height, width).astype(np.int32)
        else:
            ids = np.array(record.object_ids, np.int32).reshape(-1, 1, 1)  # (N, 1, 1)
            labels = (masks * ids).sum(0, dtype=np.int32)  # masks do not overlap: at most one id per pixel
        name = f"{record.frame_id:05d}"
        return TrackedFrame(record.frame_id, name, image, record.object_ids, masks, np.array(record.scores), labels)

    def export(self, kind: str, folder: Path, source: str, fps: Optional[float]) -> Path:
        """Write export `kind` (one of EXPORT_KINDS) into `folder`; returns the file."""
        records = self._snapshot()
        if not records:
            raise ValueError("nothing tracked yet: add an object first")
        target = folder / kind
        if kind == "coco.json":
            sink = CocoWriter(target, source)
        elif kind == "masks.zip":
            sink = PngMaskWriter(folder / "masks")
        elif kind == "overlay.mp4":
            sink = OverlayVideoWriter(target, fps, records[0].size)
        else:
            raise ValueError(f"unknown export {kind!r}; the exports are {', '.join(EXPORT_KINDS)}")
        try:
            for record in records:
                if kind == "overlay.mp4" and record.size != records[0].size:
                    continue  # a video has one size; the first frame's wins
                sink.write(self._frame(record, with_image=kind == "overlay.mp4"))
        finally:
            sink.close()
        if kind == "masks.zip":
            with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted((folder / "masks").iterdir()):
                    archive.write(path, f"masks/{path.name}")
        return target
