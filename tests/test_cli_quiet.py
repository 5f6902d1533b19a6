"""A run that succeeds writes nothing on stderr: no warning from us or the libraries below, as CI installs them.

stderr is where a user looks for the reason of a failure; a warning printed on every run buries it.
"""

from __future__ import annotations

import pytest
from cli_support import clip_frames, make_checkpoint, model_args, run_sam2rt, write_clip
from PIL import Image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("quiet") / "visible.pt")


def _assert_quiet(result) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the run reported nothing: it did not do its work"
    assert result.stderr == "", f"a successful run wrote on stderr:\n{result.stderr}"


def test_track_writes_nothing_on_stderr(tmp_path, checkpoint):
    clip = write_clip(tmp_path / "clip.mp4", count=4)
    result = run_sam2rt(
        "track", clip, "--point", "30,45", *model_args(checkpoint),
        "--overlay", tmp_path / "overlay.mp4", "--coco", tmp_path / "masks.json",
    )  # fmt: skip
    _assert_quiet(result)
    assert (tmp_path / "overlay.mp4").stat().st_size and (tmp_path / "masks.json").stat().st_size


def test_image_writes_nothing_on_stderr(tmp_path, checkpoint):
    Image.fromarray(clip_frames(1)[0]).save(tmp_path / "photo.png")
    result = run_sam2rt("image", tmp_path / "photo.png", "--box", "10,20,60,70", *model_args(checkpoint),
                        "--output", tmp_path / "mask.png")  # fmt: skip
    _assert_quiet(result)
    assert (tmp_path / "mask.png").stat().st_size
