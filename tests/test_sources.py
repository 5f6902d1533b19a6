"""Frame sequences decoded on demand: random access equals sequential decoding, bounded caches, clear errors."""

from __future__ import annotations

import av
import numpy as np
import pytest
from media import shared_path
from PIL import Image

from sam2rt.io.sources import ImageFolderFrames, ListFrames, open_frames
from sam2rt.io.video_file import VideoFileFrames, VideoReadError


def _write_video(path, count=40, size=(64, 96), gop=8):
    """A synthetic H.264 clip: a bright bar moving right, keyframes every `gop` frames."""
    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "bf": "2"}
        for t in range(count):
            frame = np.zeros((height, width, 3), dtype=np.uint8)
            frame[:, 2 * t % width : 2 * t % width + 8] = 255
            frame[0, 0] = t  # the index, readable back
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def _sequential(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_random_access_equals_sequential_decoding(clip):
    expected = _sequential(clip)
    frames = VideoFileFrames(clip, cache_size=4)
    assert len(frames) == len(expected) == 40 and frames.size == (64, 96) and frames.fps == 25
    order = list(range(40)) + list(range(39, -1, -1)) + [17, 3, 31, 0, 39, 12]
    for index in order:
        assert np.array_equal(frames[index], expected[index]), f"frame {index}"
    assert len(frames._cache) <= 4


def test_reverse_playback_decodes_each_frame_a_bounded_number_of_times(clip, monkeypatch):
    frames = VideoFileFrames(clip, cache_size=8)
    decoded = []
    original = frames._decode_next

    def counting():
        index, frame = original()
        decoded.append(index)
        return index, frame

    monkeypatch.setattr(frames, "_decode_next", counting)
    for index in range(39, -1, -1):
        frames[index]
    assert len(decoded) <= 3 * 40  # each group of pictures is decoded about once per cache refill


def test_real_clip_random_access():
    path = shared_path("videos/bedroom.mp4")
    frames = VideoFileFrames(path)
    assert len(frames) == 200 and frames.size == (540, 960)
    expected = _sequential(path)
    for index in (150, 3, 199, 100, 99):
        assert np.array_equal(frames[index], expected[index])


def test_image_folder_in_numeric_order(tmp_path):
    for index in (10, 2, 1):
        Image.fromarray(np.full((4, 6, 3), index, dtype=np.uint8)).save(tmp_path / f"{index}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    frames = open_frames(tmp_path)
    assert isinstance(frames, ImageFolderFrames) and len(frames) == 3 and frames.size == (4, 6)
    assert [int(frames[i][0, 0, 0]) for i in range(3)] == [1, 2, 10]


def test_list_of_frames():
    frames = open_frames([np.zeros((5, 7, 3), np.uint8)] * 3)
    assert isinstance(frames, ListFrames) and len(frames) == 3 and frames.size == (5, 7)


def _bad_source(folder, kind):
    path = folder / kind
    if kind == "garbage.mp4":
        path.write_bytes(b"\x00" * 1000)
    elif kind == "empty.mp4":
        path.write_bytes(b"")
    elif kind == "frames":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "kind,error,message",
    [
        ("missing.mp4", FileNotFoundError, "no such video file or folder"),
        ("garbage.mp4", VideoReadError, "not a readable video"),
        ("empty.mp4", VideoReadError, "not a readable video|no video"),
        ("frames", ValueError, "no images"),
    ],
)
def test_bad_sources(tmp_path, kind, error, message):
    with pytest.raises(error, match=message):
        open_frames(_bad_source(tmp_path, kind))


def test_truncated_video_fails_clearly(clip, tmp_path):
    cut = tmp_path / "cut.mp4"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError):
        frames = VideoFileFrames(cut)
        for index in range(len(frames)):
            frames[index]


def test_other_inputs_are_refused():
    with pytest.raises(TypeError, match="video path"):
        open_frames(42)
    with pytest.raises(ValueError, match="empty"):
        open_frames([])
