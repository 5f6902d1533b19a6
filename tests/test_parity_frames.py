"""VideoPredictor on files against the official SAM2VideoPredictor on the same files: nothing pre-resized.

test_parity_video.py gives both sides identical input tensors; here each side reads the files its
own way. A JPEG folder: Meta's own loader (PIL's bicubic resize). An mp4: Meta's loader uses decord,
which resizes in FFmpeg (see the README); the reference here decodes with PyAV and resizes with PIL,
which is what sam2rt promises for video files.
"""

from __future__ import annotations

import shutil
from unittest import mock

import av
import numpy as np
import pytest
import torch
from media import shared_path
from oracle import assert_close_logits, oracle_model, our_model
from PIL import Image
from test_parity_video import _assert_masks, _propagate

import sam2rt

VARIANT = "sam2.1_hiera_tiny"
IMAGE_SIZE = 256
NUM_FRAMES = 4


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """The first frames of a real clip, the JPEG files copied as they are (full size, nothing re-encoded)."""
    source = shared_path("videos/bedroom")
    folder = tmp_path_factory.mktemp("bedroom")
    for path in sorted(source.glob("*.jpg"))[:NUM_FRAMES]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def predictors():
    ours = sam2rt.VideoPredictor(our_model(VARIANT, IMAGE_SIZE), fill_hole_area=0, memory_dtype=torch.bfloat16)
    return ours, oracle_model(VARIANT, IMAGE_SIZE, video=True, fill_hole_area=0)


def test_jpeg_folder_gives_the_official_numbers(jpeg_folder, predictors):
    ours, ref = predictors
    state, ref_state = ours.init_state(str(jpeg_folder)), ref.init_state(video_path=str(jpeg_folder))
    assert (state["video_height"], state["video_width"]) == (ref_state["video_height"], ref_state["video_width"])

    def both(method, *args, **kwargs):
        return getattr(ours, method)(state, *args, **kwargs), getattr(ref, method)(ref_state, *args, **kwargs)

    _assert_masks(*both("add_new_points_or_box", 0, 1, points=[[210, 350]], labels=[1]), "click on frame 0")
    _assert_masks(*both("add_new_points_or_box", 1, 2, box=[500, 120, 760, 470]), "box on frame 1")
    _propagate(ours, ref, state, ref_state, "forward")
    _assert_masks(*both("add_new_points_or_box", 2, 1, points=[[300, 300]], labels=[0]), "correction on frame 2")
    _propagate(ours, ref, state, ref_state, "reverse", start_frame_idx=NUM_FRAMES - 1, reverse=True)
    (ids, updated), (ref_ids, ref_updated) = both("remove_object", 2)
    assert ids == ref_ids == [1] and [t for t, _ in updated] == [t for t, _ in ref_updated] == [1]
    assert_close_logits(updated[0][1], ref_updated[0][1], what="after removing object 2")


def test_the_image_predictors_resize_would_not_match(jpeg_folder, predictors):
    """What the test above guards against: resizing as the image predictor does misses the official numbers."""
    ours, ref = predictors
    other = sam2rt.VideoPredictor(ours.model, fill_hole_area=0, resize="bilinear-antialias")
    _, _, mine = other.add_new_points_or_box(other.init_state(str(jpeg_folder)), 0, 1, points=[[210, 350]], labels=[1])
    ref_state = ref.init_state(video_path=str(jpeg_folder))
    _, _, theirs = ref.add_new_points_or_box(ref_state, 0, 1, points=[[210, 350]], labels=[1])
    with pytest.raises(AssertionError, match="max \\|diff\\|"):
        assert_close_logits(mine, theirs)


def _write_mp4(folder, path):
    """An H.264 mp4 of the folder's frames."""
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.jpg"))]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _pyav_pil_loader(video_path, image_size, compute_device, **_):
    """Meta's load_video_frames with PyAV for decoding and PIL for resizing, in Meta's arithmetic."""
    with av.open(video_path) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    resized = [np.array(Image.fromarray(frame).resize((image_size, image_size))) / 255.0 for frame in frames]
    images = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float()  # (T, S, S, 3) -> (T, 3, S, S)
    images -= torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    images /= torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return images.to(compute_device), frames[0].shape[0], frames[0].shape[1]


def test_mp4_is_pyav_then_the_video_loaders_resize(jpeg_folder, predictors, tmp_path):
    ours, ref = predictors
    video = str(_write_mp4(jpeg_folder, tmp_path / "bedroom.mp4"))
    state = ours.init_state(video)
    with mock.patch("sam2.sam2_video_predictor.load_video_frames", _pyav_pil_loader):
        ref_state = ref.init_state(video_path=video)
    assert state["num_frames"] == ref_state["num_frames"] == NUM_FRAMES
    _assert_masks(
        ours.add_new_points_or_box(state, 1, 1, points=[[210, 350]], labels=[1]),
        ref.add_new_points_or_box(ref_state, 1, 1, points=[[210, 350]], labels=[1]),
        "click on frame 1",
    )
    _propagate(ours, ref, state, ref_state, "forward")
