"""What `sam2rt track` reads: a video file, a folder of frames, a camera index or a stream URL.

Files are read frame by frame, every frame, in order. Cameras and streams (and files played with
`realtime=True`) are live: a reader thread keeps only the newest frame and counts the dropped ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Protocol, Union

from .live import CameraCapture, LatestFrameReader, SourceError, SourceFrame, StreamCapture, is_stream_url
from .sources import IMAGE_SUFFIXES, ImageFolderFrames
from .video_file import VideoFileFrames


class TrackSource(Protocol):
    name: str
    size: tuple[int, int]  # (height, width)
    fps: Optional[float]  # None when the source does not say
    length: Optional[int]  # frames in a file source; None for live sources
    dropped: int  # frames skipped because the tracker was busy (live sources only)

    def __iter__(self) -> Iterator[SourceFrame]: ...

    def frame_name(self, index: int) -> str:
        """The file stem outputs use for frame `index` (e.g. `00012`)."""
        ...

    def frame_file(self, index: int) -> Optional[str]:
        """The name of the file frame `index` was read from; None for a frame of a video or stream."""
        ...

    def close(self) -> None: ...


class FileSource:
    """Every frame of a video file or a folder of images, in order."""

    dropped = 0

    def __init__(self, frames: Union[VideoFileFrames, ImageFolderFrames], name: str) -> None:
        self.frames = frames
        self.name = name
        self.size = (int(frames.size[0]), int(frames.size[1]))
        self.fps = frames.fps
        self.length: Optional[int] = len(frames)

    def __iter__(self) -> Iterator[SourceFrame]:
        for index in range(len(self.frames)):
            yield SourceFrame(index, self.frames[index])

    def frame_name(self, index: int) -> str:
        if isinstance(self.frames, ImageFolderFrames):
            return self.frames.paths[index].stem  # evaluators match outputs to frames by name
        return f"{index:05d}"

    def frame_file(self, index: int) -> Optional[str]:
        if isinstance(self.frames, ImageFolderFrames):
            return self.frames.paths[index].name
        return None

    def close(self) -> None:
        if isinstance(self.frames, VideoFileFrames):
            self.frames.close()


class LiveSource:
    """The newest frame of a camera or stream, whenever the tracker asks for one."""

    length: Optional[int] = None

    def __init__(self, reader: LatestFrameReader) -> None:
        self.reader = reader
        self.name = reader.name
        self.size = reader.size
        self.fps = reader.fps

    @property
    def dropped(self) -> int:
        return self.reader.dropped

    def __iter__(self) -> Iterator[SourceFrame]:
        return iter(self.reader)

    def frame_name(self, index: int) -> str:
        return f"{index:05d}"

    def frame_file(self, index: int) -> Optional[str]:
        return None

    def close(self) -> None:
        self.reader.close()


def open_track_source(spec: str, realtime: bool = False) -> TrackSource:
    """A camera index (`0`), a stream URL (`rtsp://...`), a folder of frames or a video file.

    `realtime` plays a video file as a live source: at its frame rate, dropping what the tracker misses.
    """
    if spec.isdigit():
        return LiveSource(LatestFrameReader(CameraCapture(int(spec))))
    if is_stream_url(spec):
        return LiveSource(LatestFrameReader(StreamCapture(spec)))
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"no such video file or folder: {path}")
    if path.is_dir():
        if realtime:
            raise SourceError("--realtime plays a video file; a folder of frames is always read frame by frame")
        try:
            return FileSource(ImageFolderFrames(path), str(path))
        except ValueError as error:  # no images in the folder, or the first is unreadable
            raise SourceError(str(error)) from None
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{path} is an image, not a video: use `sam2rt image {path}`")
    if realtime:
        return LiveSource(LatestFrameReader(StreamCapture(str(path), paced=True)))
    return FileSource(VideoFileFrames(path, cache_size=2), str(path))
