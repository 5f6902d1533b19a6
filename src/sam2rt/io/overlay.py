"""Masks drawn over the frames: translucent colours, outlines and object ids; written as H.264 video.

The video has the source's frame rate and size (odd sizes are padded by one black row or column:
H.264 in yuv420p needs even sides). Frames carry their source timestamps, so a live run whose
dropped frames are missing still plays at the real speed. A video has one size: a later frame of
another size (a folder of mixed images, a stream that changes resolution) is scaled to fit the
first frame's size, keeping its aspect ratio, and centred on black bars.

The video is written under a temporary name and renamed into place once finalised, so that the
path holds a whole, playable video or, after a run with no frame, is left as it was.
"""

from __future__ import annotations

import colorsys
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .atomic import OutputError, replace_with, temporary_path
from .sinks import TrackedFrame, check_writable_file, make_folder

MASK_OPACITY = 0.5
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
FALLBACK_FPS = 30.0  # for sources that do not say their rate (folders of frames)


def object_color(obj_id: int) -> tuple[int, int, int]:
    """A bright colour per object id; golden-ratio steps in hue keep neighbouring ids apart."""
    hue = (obj_id * 0.6180339887) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(red * 255), int(green * 255), int(blue * 255)


def draw_overlay(image: np.ndarray, labels: np.ndarray, object_ids: Sequence[int]) -> np.ndarray:
    """A copy of `image` (H, W, 3) uint8 with each object of `labels` (H, W) (0: background) coloured and numbered."""
    import cv2

    out = image.copy()
    foreground = labels > 0
    if not foreground.any():
        return out
    table = np.zeros((int(labels.max()) + 1, 3), dtype=np.float32)
    for obj_id in object_ids:
        if 0 < obj_id < len(table):
            table[obj_id] = object_color(obj_id)
    colours = table[labels[foreground]]  # (P, 3) for the P pixels on an object
    blended = image[foreground] * (1 - MASK_OPACITY) + colours * MASK_OPACITY
    out[foreground] = blended.astype(np.uint8)

    # One-pixel outlines where the label changes, in the object's full colour.
    edge = np.zeros_like(foreground)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge &= foreground
    out[edge] = table[labels[edge]].astype(np.uint8)

    # The id at each object's centroid, white on a dark outline so it reads on any background.
    ys, xs = np.nonzero(foreground)
    ids = labels[ys, xs]
    counts = np.bincount(ids)
    centre_x = np.bincount(ids, weights=xs) / np.maximum(counts, 1)
    centre_y = np.bincount(ids, weights=ys) / np.maximum(counts, 1)
    scale = max(0.4, image.shape[0] / 720)
    thickness = max(1, round(2 * scale))
    for obj_id in object_ids:
        if not 0 < obj_id < len(counts) or counts[obj_id] == 0:
            continue
        text = str(obj_id)
        (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        origin = (int(centre_x[obj_id] - width / 2), int(centre_y[obj_id] + height / 2))
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def video_rate(fps: Optional[float]) -> Fraction:
    """A frame rate as the exact fraction video files store: 29.97... -> 30000/1001."""
    return Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(FALLBACK_FPS)


def fit_frame(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """`picture` (h, w, 3) scaled to fit (height, width), aspect kept, centred on black; as it is when it fits exactly."""
    import cv2

    if picture.shape[:2] == (height, width):
        return picture
    scale = min(height / picture.shape[0], width / picture.shape[1])
    new_height = max(1, min(height, round(picture.shape[0] * scale)))
    new_width = max(1, min(width, round(picture.shape[1] * scale)))
    # Area averaging shrinks without aliasing; linear interpolation enlarges smoothly.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(picture, (new_width, new_height), interpolation=interpolation)  # (new_height, new_width, 3)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = (height - new_height) // 2, (width - new_width) // 2
    out[top : top + new_height, left : left + new_width] = scaled
    return out


class OverlayVideoWriter:
    """The frames with their masks drawn, as an H.264 (libx264, yuv420p) video through PyAV."""

    def __init__(self, path: Path, fps: Optional[float], size: tuple[int, int]) -> None:
        import av

        self._av = av
        self.path = self.check_path(Path(path))
        make_folder(self.path.parent)
        self.rate = video_rate(fps)
        self.height, self.width = size
        self.count = 0
        self.scaled = 0  # frames of another size than the first, fitted into it
        self._temporary = temporary_path(self.path)
        try:
            # MP4 and MOV with their index first ("faststart"): a browser plays the download as it comes.
            options = {"movflags": "faststart"} if self.path.suffix.lower() in (".mp4", ".mov") else {}
            self._container = av.open(str(self._temporary), mode="w", options=options)
            self._stream = self._container.add_stream("libx264", rate=self.rate)
        except (av.error.FFmpegError, OSError) as error:
            self._temporary.unlink(missing_ok=True)
            raise OutputError(f"cannot write {self.path}: {error}") from None
        self._stream.width = self.width + self.width % 2
        self._stream.height = self.height + self.height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": "20", "preset": "veryfast"}
        self._time_base = 1 / self.rate

    @staticmethod
    def check_path(path: Path) -> Path:
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise OutputError(f"the overlay video must end in {', '.join(VIDEO_SUFFIXES)}, got {path.name}")
        return check_writable_file(path)

    @property
    def description(self) -> str:
        if self.count == 0:
            return f"no overlay video (no frame was tracked): {self.path} left as it was"
        scaled = f", {self.scaled} of another size scaled to {self.width}x{self.height}" if self.scaled else ""
        return f"overlay video {self.path} ({self.count} frames{scaled})"

    def write(self, frame: TrackedFrame) -> None:
        picture = draw_overlay(frame.image, frame.labels, frame.object_ids)
        if picture.shape[:2] != (self.height, self.width):
            picture = fit_frame(picture, self.height, self.width)
            self.scaled += 1
        if picture.shape[:2] != (self._stream.height, self._stream.width):  # odd sides: one black row or column
            padded = np.zeros((self._stream.height, self._stream.width, 3), dtype=np.uint8)
            padded[: self.height, : self.width] = picture
            picture = padded
        video_frame = self._av.VideoFrame.from_ndarray(picture, format="rgb24")
        video_frame.pts = frame.index  # source frame number, in units of 1 / rate
        video_frame.time_base = self._time_base
        self._encode(video_frame)
        self.count += 1

    def _encode(self, video_frame) -> None:
        try:
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)
        except (self._av.error.FFmpegError, OSError) as error:
            raise OutputError(f"cannot write {self.path}: {error}") from None

    def close(self) -> None:
        """Flush the encoder, finish the file and move it into place, so that it plays even when the run stopped early.

        With no frame there is no video to give: the temporary file goes and the path is left as it was.
        """
        try:
            try:
                self._encode(None)
            finally:
                self._container.close()
        except (self._av.error.FFmpegError, OSError) as error:
            self._temporary.unlink(missing_ok=True)
            raise OutputError(f"cannot write {self.path}: {error}") from None
        except BaseException:
            self._temporary.unlink(missing_ok=True)
            raise
        if self.count == 0:
            self._temporary.unlink(missing_ok=True)
        else:
            replace_with(self._temporary, self.path)
