"""--cpu-bf16: bf16 weights on the CPU, opted into; the masks it tracks stay those of fp32 within bf16's rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_support import clip_frames, model_args, write_clip
from PIL import Image

from sam2rt.cli.model_choice import ModelChoice
from sam2rt.runtime import cpu_has_native_bf16

SAPPHIRE_RAPIDS_FLAGS = "fpu vme avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN3_FLAGS = "fpu vme avx2 fma sha_ni"


def test_native_bf16_is_read_from_the_cpus_flags():
    assert cpu_has_native_bf16(f"processor\t: 0\nflags\t\t: {SAPPHIRE_RAPIDS_FLAGS}\n")
    assert cpu_has_native_bf16("flags\t\t: fpu avx512f avx512_bf16\n")  # Cooper Lake, Zen 4: no AMX, still native
    assert not cpu_has_native_bf16(f"processor\t: 0\nflags\t\t: {ZEN3_FLAGS}\nbugs\t\t: amx_bf16\n")  # flags only
    assert not cpu_has_native_bf16("")


@pytest.mark.parametrize(
    "options, dtype", [({}, torch.float32), ({"cpu_bf16": True}, torch.bfloat16), ({"fast": False}, torch.float32)]
)
def test_the_model_has_bf16_weights_only_when_asked(checkpoint, options, dtype):
    choice = ModelChoice(checkpoint=checkpoint, variant="sam2.1_hiera_tiny", image_size=128, device="cpu", **options)
    model = choice.load()
    assert {param.dtype for param in model.parameters()} == {dtype}


def test_exact_and_cpu_bf16_together_are_refused(sam2rt, tmp_path, checkpoint):
    Image.new("RGB", (64, 48)).save(tmp_path / "image.png")
    result = sam2rt("image", tmp_path / "image.png", "--point", "5,5", *model_args(checkpoint), "--cpu-bf16", "--exact")
    assert result.returncode == 2
    assert "--exact keeps fp32 weights" in result.stderr


def _tracked_masks(sam2rt, tmp_path, checkpoint, *options: str) -> np.ndarray:
    """The masks (frames, H, W) bool that `sam2rt track` writes for a click on the clip's red square."""
    folder = tmp_path / f"masks{''.join(options)}"
    result = sam2rt(
        "track", tmp_path / "clip.mp4", "--point", "40,45", *model_args(checkpoint), *options,
        "--png-dir", folder, "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 12
    return np.stack([np.asarray(Image.open(path)) > 0 for path in files])


def test_tracked_masks_in_bf16_are_fp32s_within_rounding(sam2rt, tmp_path, checkpoint):
    write_clip(tmp_path / "clip.mp4", count=12)
    fp32 = _tracked_masks(sam2rt, tmp_path, checkpoint)
    bf16 = _tracked_masks(sam2rt, tmp_path, checkpoint, "--cpu-bf16")
    covered = fp32.mean(axis=(1, 2))
    assert (covered > 0.05).all() and (covered < 0.98).all(), covered  # masks with an inside and an outside
    ious = (fp32 & bf16).sum(axis=(1, 2)) / (fp32 | bf16).sum(axis=(1, 2))
    assert ious.min() >= 0.95, ious
    assert (fp32 != bf16).any()  # bf16 did run: its rounding moves some pixels at the edges


def test_a_cpu_without_bf16_instructions_is_told_what_to_expect(checkpoint, monkeypatch, capsys):
    monkeypatch.setattr("sam2rt.runtime.cpu_has_native_bf16", lambda: False)
    choice = ModelChoice(
        checkpoint=checkpoint, variant="sam2.1_hiera_tiny", image_size=128, device="cpu", cpu_bf16=True
    )
    assert next(choice.load().parameters()).dtype == torch.bfloat16  # still done: the user asked for it
    assert "reports no bf16 instructions" in capsys.readouterr().err


def test_the_server_tracks_with_a_bf16_model_as_the_stream_tracker_does(tmp_path):
    """`sam2rt serve --cpu-bf16`: the server's batched engine on bf16 weights gives StreamTracker's bf16 masks."""
    import copy

    from serve_support import Client, decode_masks, load_test_model, running_server

    import sam2rt
    from sam2rt.runtime import optimize
    from sam2rt.serve.scheduler import default_engine

    model = optimize(copy.deepcopy(load_test_model(tmp_path)), cpu_bf16=True)
    frames = clip_frames(4)
    reference = sam2rt.StreamTracker(model)
    with running_server(default_engine(model)) as server:
        client = Client(server.ws_url)
        for index, frame in enumerate(frames):
            result = client.step(index, frame)
            expected = reference.step(frame)
            if index == 0:
                client.send({"type": "prompt", "frame": 0, "obj_id": 1, "points": [[40, 45]], "labels": [1]})
                result = client.next("result")
                expected = reference.add_prompt(obj_id=1, points=[[40, 45]], labels=[1])
            ids, masks = decode_masks(result, frame.shape[:2])
            assert ids == list(expected.object_ids)
            assert 0 < masks.sum() < masks.size  # the object is there, and is not the whole frame
            np.testing.assert_array_equal(masks, expected.masks.numpy())
        client.close()
