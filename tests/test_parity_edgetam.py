"""EdgeTAM against Meta's EdgeTAM code (tests/oracle_edgetam.py), fp32 on CPU, perturbed random weights.

Module by module at 512 and 1024 px (keys, image encoder, spatial perceiver, memory encoding, memory attention
over compressed memories, the model on an image prompt), then at 512 px StreamTracker against the fork's video
predictor driven as a stream: clicks, a box, tracked frames, a correction, a mask, a removal, a late object.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from media import shared_path
from oracle import assert_close_logits, assert_close_scores
from oracle_edgetam import FORK, oracle_model, oracle_video_state, our_model
from stream_script import apply_official, apply_ours, assert_result, box_mask, official_latest
from visible import assert_nontrivial

import sam2rt
from sam2rt.model.sam2 import MemoryTokens

IMAGE_SIZE = 512  # the perceiver's 16 x 16 grid needs a multiple of 256; at 512 each grid latent reads 2 x 2 tokens
# The modules are compared at 512 and at the official 1024 (each grid latent reads 4 x 4 tokens); streams at 512.
MODULE_SIZES = [512, 1024]
# Added to the object-score bias: objects judged present on every frame of the stream below (its test asserts it).
OBJECT_SCORE_SHIFT = 0.45

pytestmark = pytest.mark.skipif(not FORK.is_dir(), reason=f"needs Meta's EdgeTAM code at {FORK}")


@pytest.fixture(scope="module", params=MODULE_SIZES, ids=[f"{size}px" for size in MODULE_SIZES])
def size(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def models(size):
    return our_model(size, OBJECT_SCORE_SHIFT), oracle_model(size, OBJECT_SCORE_SHIFT)


@pytest.fixture(scope="module")
def frame(models, size):
    ours, ref = models
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(41))
    with torch.no_grad():
        features = ours.encode_image(images)
        backbone = ref.forward_image(images)
    _, vision_feats, vision_pos, feat_sizes = ref._prepare_backbone_features(backbone)
    return features, backbone, (vision_feats, vision_pos, feat_sizes)


def test_state_dict_is_the_official_one(models):
    ours, ref = models
    theirs = {key: tuple(value.shape) for key, value in ref.state_dict().items()}
    mine = {key: tuple(value.shape) for key, value in sam2rt.build_model("edgetam").state_dict().items()}
    assert mine == theirs  # the same keys, both ways, and shapes (at 1024 px: no size-dependent parameter)
    ref.load_state_dict(ours.state_dict(), strict=True)  # and back: ours loads into the official model
    assert type(ours.image_encoder.trunk.body).__module__.startswith("timm.")  # timm's own RepViT


def test_image_encoder(frame):
    mine, theirs, _ = frame
    fpn = theirs["backbone_fpn"]
    assert_close_logits(mine.high_res[0], fpn[0], what="stride-4 skip")
    assert_close_logits(mine.high_res[1], fpn[1], what="stride-8 skip")
    assert_close_logits(mine.embed, fpn[2], what="stride-16 features")
    assert_close_logits(mine.pos.expand_as(theirs["vision_pos_enc"][2]), theirs["vision_pos_enc"][2], what="position")


def test_spatial_perceiver(models, size):
    """One memory at a time: the official grid path takes a batch of one only (its latents' view fails on more)."""
    ours, ref = models
    memory = torch.randn(2, 64, size // 16, size // 16, generator=torch.Generator().manual_seed(42))
    pos = ours.memory_encoder.pos_grid
    with torch.no_grad():
        mine = ours.spatial_perceiver(memory, pos)  # both rows in one batch
        for row in range(2):
            theirs, their_pos = ref.spatial_perceiver(memory[row : row + 1], pos)
            assert_close_logits(mine[row : row + 1], theirs, what=f"compressed memory {row}")
    assert mine.shape == (2, 512, 64)
    assert_close_logits(ours.spatial_perceiver.token_pos, their_pos, what="token positions")


@pytest.mark.parametrize("binarize", [False, True])
def test_encode_memory(models, frame, size, binarize):
    ours, ref = models
    features, _, (vision_feats, _, feat_sizes) = frame
    low_res = torch.randn(1, 1, size // 4, size // 4, generator=torch.Generator().manual_seed(43)) * 6
    scores = torch.tensor([[1.5]])
    ref.binarize_mask_from_pts_for_mem_enc = True
    with torch.no_grad():
        mine = ours.encode_memory(features.embed, low_res, scores, torch.full((1,), binarize))
        high_res = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        theirs, their_pos = ref._encode_new_memory(
            vision_feats, feat_sizes, high_res, scores, is_mask_from_pts=binarize
        )
    assert_close_logits(mine, theirs, what="memory tokens")
    assert_close_logits(ours.memory_pos(), their_pos[0], what="memory positions")


def test_condition_on_compressed_memory(models, frame):
    """Frame 10 tracked forward, prompted frames 0 and 3, tracked frames 5-9 (frame 4 missing)."""
    ours, ref = models
    features, _, (vision_feats, vision_pos, feat_sizes) = frame
    generator = torch.Generator().manual_seed(44)
    memories = {t: torch.randn(1, 512, 64, generator=generator) for t in range(10)}
    pointers = {t: torch.randn(1, 256, generator=generator) for t in range(10)}
    pos = [ours.memory_pos().clone()]
    cond, recent = (0, 3), (9, 8, 7, 6, 5)

    def entry(t):
        return {"maskmem_features": memories[t], "maskmem_pos_enc": pos, "obj_ptr": pointers[t]}

    output_dict = {
        "cond_frame_outputs": {t: entry(t) for t in cond},
        "non_cond_frame_outputs": {t: entry(t) for t in recent},
    }
    with torch.no_grad():
        theirs = ref._prepare_memory_conditioned_features(
            frame_idx=10,
            is_init_cond_frame=False,
            current_vision_feats=vision_feats[-1:],
            current_vision_pos_embeds=vision_pos[-1:],
            feat_sizes=feat_sizes[-1:],
            output_dict=output_dict,
            num_frames=30,
        )
        # Spatial slots: the prompted frames (temporal index 6), then frames 10-k at index k-1; one empty slot.
        spatial_frames = [0, 3, 9, 8, 7, 6, 5, 4]
        memory = MemoryTokens(
            spatial=torch.stack([memories[t][0] for t in spatial_frames])[None],  # (1, 8, 512, 64)
            spatial_tpos=torch.tensor([[6, 6, 0, 1, 2, 3, 4, 5]]),
            spatial_valid=torch.tensor([[True] * 7 + [False]]),
            pointers=torch.stack([pointers[t][0] for t in spatial_frames])[None],
            pointer_positions=torch.tensor([[10, 7, 1, 2, 3, 4, 5, 6]]) / 15,
            pointer_valid=torch.tensor([[True] * 7 + [False]]),
        )
        mine = ours.condition_on_memory(features.embed, memory)
    assert len(ours.memory_attention.layers) == 2
    assert_close_logits(mine, theirs, what="memory-conditioned features")


def test_image_prompt_through_the_model(models, frame):
    """A first click on a frame: decoder, object pointer, and the frame's compressed memory (official track_step)."""
    ours, ref = models
    features, _, (vision_feats, vision_pos, feat_sizes) = frame
    coords = torch.tensor([[[200.0, 260.0]]])
    labels = torch.tensor([[1]], dtype=torch.int32)
    with torch.no_grad():
        mine = ours.segment(ours.without_memory(features.embed), features.high_res, coords, labels, None, True)
        clicked = torch.ones(1, dtype=torch.bool)  # a clicked frame's mask is binarised, as the video predictor does
        memory = ours.encode_memory(features.embed, mine.best_mask, mine.object_score_logits, clicked)
        ref.binarize_mask_from_pts_for_mem_enc = True
        theirs = ref.track_step(
            frame_idx=0,
            is_init_cond_frame=True,
            current_vision_feats=vision_feats,
            current_vision_pos_embeds=vision_pos,
            feat_sizes=feat_sizes,
            point_inputs={"point_coords": coords, "point_labels": labels},
            mask_inputs=None,
            output_dict={},
            num_frames=1,
            run_mem_encoder=True,
        )
    assert_nontrivial(theirs["pred_masks"], "the oracle's mask")
    assert_close_logits(mine.best_mask, theirs["pred_masks"], what="mask logits")
    assert_close_logits(mine.obj_ptr, theirs["obj_ptr"], what="object pointer")
    assert_close_scores(mine.object_score_logits, theirs["object_score_logits"], what="object score")
    assert_close_logits(memory, theirs["maskmem_features"], what="memory tokens")


# frame -> actions (stream_script): clicks, a box, a correction of a tracked frame, a mask, a removal, a late object
SCHEDULE = {
    0: [("points", 1, [[640, 360]], [1], True), ("box", 2, [100, 80, 500, 400])],
    3: [("points", 1, [[600, 300]], [0], True), ("points", 1, [[700, 400]], [1], False)],
    5: [("mask", 2)],
    6: [("remove", 1)],
    7: [("box", 3, [800, 300, 1100, 650])],
}
NUM_FRAMES = 9


@pytest.fixture(scope="module")
def frames():
    from sam2rt.io.video_file import VideoFileFrames

    video = VideoFileFrames(shared_path("videos/02_cups.mp4"))
    return [video[i] for i in range(NUM_FRAMES)]


def _official_outputs(states: dict, t: int, frame_hw) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(ids, logits, scores) of every object on frame t, each from its own video state."""
    outputs = [official_latest(state, t, frame_hw) for state in states.values()]
    ids = [obj_id for obj_ids, _, _ in outputs for obj_id in obj_ids]
    return ids, torch.cat([logits for _, logits, _ in outputs]), torch.cat([scores for _, _, scores in outputs])


@pytest.mark.parametrize("correction_as_cond", [True, False], ids=["corrections-as-cond", "official-default"])
def test_stream_matches_official_driven_as_stream(frames, correction_as_cond):
    """The fork tracks the objects of one video state as one batch, which its perceiver cannot take (a view of an
    expanded tensor fails for 2 objects or more), and makes a prompted frame a conditioning frame of every object
    (SAM 2.0's predictor); sam2rt tracks each object on its own, as sam2 1.1.0 does. So each object has a video
    state of its own, and a removal ends its state: the objects left must go on as before."""
    model = our_model(IMAGE_SIZE, OBJECT_SCORE_SHIFT)
    tracker = sam2rt.StreamTracker(
        model, fill_hole_area=0, add_all_frames_to_correct_as_cond=correction_as_cond, memory_dtype=torch.bfloat16
    )
    ref = oracle_model(
        IMAGE_SIZE,
        OBJECT_SCORE_SHIFT,
        video=True,
        fill_hole_area=0,
        add_all_frames_to_correct_as_cond=correction_as_cond,
    )
    frame_hw = frames[0].shape[:2]
    mask = box_mask(*frame_hw)  # the mask actions'
    states, compared, present = {}, 0, []
    for t, image in enumerate(frames):
        result = tracker.step(image)
        if states:
            for state in states.values():
                list(ref.propagate_in_video(state, start_frame_idx=t, max_frame_num_to_track=0))
            assert_result(result, _official_outputs(states, t, frame_hw), f"frame {t}")
            compared += len(result.object_ids)
            present.append(bool((result.object_scores > 0).all()))
        for action in SCHEDULE.get(t, []):
            result = apply_ours(tracker, action, mask)
            obj_id = action[1]
            if action[0] == "remove":
                del states[obj_id]
            else:
                if obj_id not in states:
                    states[obj_id] = oracle_video_state(ref, frames, "bilinear-antialias")
                apply_official(ref, states[obj_id], t, action, mask)
            what = f"frame {t}, after {action[0]} on {obj_id}"
            assert_result(result, _official_outputs(states, t, frame_hw), what)
    assert tracker.object_ids == [2, 3]
    assert compared == 2 * 6 + 1 + 2  # objects 1 and 2 on frames 1-6, object 2 on frame 7, objects 2 and 3 on 8
    assert all(present), f"tracked frames with an object absent: {present}"  # every comparison holds a real mask
    # The tracker's memory slots hold the perceiver's 512 tokens a frame, not the 32 x 32 = 1024 of the map.
    assert tracker.pool.arena.memory.shape[-2:] == (512, 64)


def test_objects_batched_track_as_each_alone(frames):
    """The engine's batch over objects (the perceiver compresses several memories at once, the official one only
    one): two objects in one tracker give each object's masks of a tracker holding it alone."""
    model = our_model(IMAGE_SIZE, OBJECT_SCORE_SHIFT)
    together, first, second = (sam2rt.StreamTracker(model, fill_hole_area=0) for _ in range(3))
    prompts = {1: dict(points=[[600, 300]], labels=[1]), 2: dict(box=[100, 150, 400, 420])}
    for t, image in enumerate(frames[:4]):
        both = together.step(image)
        alone = {1: first.step(image), 2: second.step(image)}
        if t == 0:
            for obj_id, tracker in ((1, first), (2, second)):
                together.add_prompt(obj_id, **prompts[obj_id])
                tracker.add_prompt(obj_id, **prompts[obj_id])
            continue
        assert both.object_ids == [1, 2]
        for row, obj_id in enumerate(both.object_ids):
            assert_nontrivial(alone[obj_id].mask_logits, f"frame {t}, object {obj_id} alone")
            assert_close_logits(both.mask_logits[row : row + 1], alone[obj_id].mask_logits, what=f"frame {t}, {obj_id}")
