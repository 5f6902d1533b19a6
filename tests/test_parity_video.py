"""VideoPredictor against the official SAM2VideoPredictor on a scripted session over a real clip.

Three objects prompted by a click, a box and a mask on different frames, a correction click,
forward then reverse propagation, an object removed, a propagation from a later start.
fp32 on CPU, memories stored in bf16 on both sides (as the official predictor stores them),
hole filling off on both sides (the official one needs its CUDA extension). The session runs on
SAM 2.1 tiny, and on SAM 2.0 tiny and SAM 2.1 base_plus at 128 px over fewer frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media import shared_path
from oracle import TRACKING_OBJECT_SCORE_SHIFT, assert_close_logits, oracle_model, oracle_video_state, our_model
from visible import assert_nontrivial

import sam2rt
from sam2rt.io.video_file import VideoFileFrames
from sam2rt.model.sam2 import NO_OBJECT_SCORE

VARIANT = "sam2.1_hiera_tiny"
IMAGE_SIZE = 256
NUM_FRAMES = 24


@pytest.fixture(scope="module")
def frames():
    video = VideoFileFrames(shared_path("videos/bedroom.mp4"))
    return [video[i] for i in range(NUM_FRAMES)]


def _present(ref_logits):
    """Per object: judged present by the oracle (an absent object's mask is the constant no-object logit)."""
    return [bool(logits.max() > NO_OBJECT_SCORE / 2) for logits in ref_logits]


def _assert_masks(ours, theirs, what):
    """Per object: max |diff| <= 1e-4 x max(1, largest |oracle logit| of that object). The oracle's masks of
    present objects must hold object and background: a constant, empty or full mask would compare nothing."""
    frame, ids, logits = ours
    ref_frame, ref_ids, ref_logits = theirs
    assert (frame, list(ids)) == (ref_frame, list(ref_ids)), what
    for row, obj_id in enumerate(ids):
        assert_close_logits(logits[row], ref_logits[row], what=f"{what}, object {obj_id}")
    present = _present(ref_logits)
    if any(present):
        assert_nontrivial(ref_logits[torch.tensor(present)], f"{what}: the oracle's masks of present objects")


def _propagate(ours, ref, state, ref_state, what, **kwargs):
    mine = list(ours.propagate_in_video(state, **kwargs))
    theirs = list(ref.propagate_in_video(ref_state, **kwargs))
    assert [m[0] for m in mine] == [t[0] for t in theirs], what
    for m, t in zip(mine, theirs):
        _assert_masks(m, t, f"{what}, frame {m[0]}")
    assert any(any(_present(t[2])) for t in theirs), f"{what}: every object judged absent on every frame"
    return mine


# (variant, image size, frames, corrections as conditioning frames): SAM 2.1 tiny in both correction modes; SAM
# 2.0 tiny and another size at 128 px over fewer frames (the session's prompts all lie on frames 0 to 12).
SESSION_CASES = [
    pytest.param(VARIANT, IMAGE_SIZE, NUM_FRAMES, False, id="official-default"),
    pytest.param(VARIANT, IMAGE_SIZE, NUM_FRAMES, True, id="corrections-as-cond"),
    pytest.param("sam2_hiera_tiny", 128, 14, False, id="sam2_hiera_tiny-128px"),
    pytest.param("sam2.1_hiera_base_plus", 128, 14, False, id="sam2.1_hiera_base_plus-128px"),
]


@pytest.mark.parametrize("variant, image_size, num_frames, correction_as_cond", SESSION_CASES)
def test_scripted_session(frames, variant, image_size, num_frames, correction_as_cond):
    frames = frames[:num_frames]
    shift = TRACKING_OBJECT_SCORE_SHIFT[variant]
    ours = sam2rt.VideoPredictor(
        our_model(variant, image_size, object_score_shift=shift),
        fill_hole_area=0,
        add_all_frames_to_correct_as_cond=correction_as_cond,
        memory_dtype=torch.bfloat16,
    )
    ref = oracle_model(
        variant,
        image_size,
        video=True,
        object_score_shift=shift,
        fill_hole_area=0,
        add_all_frames_to_correct_as_cond=correction_as_cond,
    )
    state, ref_state = ours.init_state(frames), oracle_video_state(ref, frames, "pil-bicubic")
    height, width = frames[0].shape[:2]

    def both(method, *args, **kwargs):
        return getattr(ours, method)(state, *args, **kwargs), getattr(ref, method)(ref_state, *args, **kwargs)

    _assert_masks(*both("add_new_points_or_box", 0, 1, points=[[210, 350]], labels=[1]), "click on frame 0")
    _assert_masks(*both("add_new_points_or_box", 3, 2, box=[500, 120, 760, 470]), "box on frame 3")
    mask = np.zeros((height, width), dtype=bool)
    mask[250:480, 40:300] = True
    _assert_masks(*both("add_new_mask", 6, 3, mask), "mask on frame 6")
    forward = _propagate(ours, ref, state, ref_state, "forward")
    present = [p for _, _, logits in forward for p in _present(logits)]
    # The weights exercise both the present and the absent paths (oracle.TRACKING_OBJECT_SCORE_SHIFT).
    assert any(present) and not all(present)

    _assert_masks(*both("add_new_points_or_box", 10, 1, points=[[300, 300]], labels=[0]), "correction")
    _assert_masks(
        *both("add_new_points_or_box", 10, 1, points=[[220, 380]], labels=[1], clear_old_points=False),
        "second correction click",
    )
    _assert_masks(*both("add_new_points_or_box", 12, 2, points=[[600, 300]], labels=[1]), "correction of object 2")
    _propagate(ours, ref, state, ref_state, "reverse", start_frame_idx=len(frames) - 1, reverse=True)

    ids, updated = ours.remove_object(state, 2)
    ref_ids, ref_updated = ref.remove_object(ref_state, 2)
    assert ids == ref_ids == [1, 3]
    assert sorted(f for f, _ in updated) == sorted(f for f, _ in ref_updated) == [3, 12]
    for (frame, logits), (_, ref_logits) in zip(sorted(updated), sorted(ref_updated, key=lambda u: u[0])):
        _assert_masks((frame, ids, logits), (frame, ref_ids, ref_logits), f"after removal, frame {frame}")

    _assert_masks(*both("clear_all_prompts_in_frame", 10, 1), "prompts cleared on frame 10")
    _propagate(ours, ref, state, ref_state, "from frame 8", start_frame_idx=8, max_frame_num_to_track=6)


def _add_missing_official_clear(predictor) -> None:
    """sam2==1.1.0 calls `_clear_obj_non_cond_mem_around_input` when clear_non_cond_mem_around_input is
    on, but does not define it (AttributeError). This is the per-object method later releases define:
    drop the object's tracked frames within num_maskmem frames of the prompted one."""

    def clear(self, inference_state, frame_idx, obj_idx):
        tracked = inference_state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
        for t in range(frame_idx - self.num_maskmem, frame_idx + self.num_maskmem + 1):
            tracked.pop(t, None)

    predictor._clear_obj_non_cond_mem_around_input = clear.__get__(predictor)


@pytest.mark.parametrize("clear_around_input", [False, True], ids=["keep-memory", "clear-around-input"])
def test_attention_limited_to_closest_prompted_frames(frames, clear_around_input):
    """One object prompted on four frames, the memory attention limited to the two closest of them."""
    options = dict(fill_hole_area=0, max_cond_frames_in_attn=2, clear_non_cond_mem_around_input=clear_around_input)
    ours = sam2rt.VideoPredictor(our_model(VARIANT, IMAGE_SIZE), memory_dtype=torch.bfloat16, **options)
    ref = oracle_model(VARIANT, IMAGE_SIZE, video=True, **options)
    _add_missing_official_clear(ref)
    state, ref_state = ours.init_state(frames[:18]), oracle_video_state(ref, frames[:18], "pil-bicubic")
    for frame_idx, click in ((0, [210, 350]), (5, [230, 360]), (11, [250, 340]), (16, [240, 330])):
        mine = ours.add_new_points_or_box(state, frame_idx, 1, points=[click], labels=[1])
        theirs = ref.add_new_points_or_box(ref_state, frame_idx, 1, points=[click], labels=[1])
        _assert_masks(mine, theirs, f"click on frame {frame_idx}")
    _propagate(ours, ref, state, ref_state, "forward")
    _propagate(ours, ref, state, ref_state, "reverse", start_frame_idx=17, reverse=True)
