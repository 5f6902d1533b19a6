"""SAM 3's tracker (SAM2Model of a SAM 3 variant) against Meta's Sam3TrackerPredictor, fp32 on the CPU.

Meta's tracker is built as `build_tracker` configures it, with its official heads (256 wide) and a small SAM 3
vision backbone (a 64-wide ViT of two blocks over a 112 px image: an 8 x 8 feature map at stride 14). Both get
the same perturbed random weights, ours through the key map of sam3.pt. Compared: the image encoder's features,
one prompted frame, and a scripted stream (a click, tracking, a correction click, a second object) through our
StreamTracker and Meta's predictor driven frame by frame, with SAM 3's memory selection (temporal disambiguation)
as Meta's video model runs its tracker: on a short stream where every frame passes its bar, and on a longer one
where the object is judged absent or unsure on several frames, which selection then skips; and the official
sizes' state-dict keys.

Not compared: mask prompts. Meta's SAM 3 predictor resizes a mask to 4 x the low-resolution side (1152 at 1008 px,
not the 1008 input) and takes low-resolution logits of 1152 // 14 * 4 = 328 px from it, resized to 288 later; our
engine takes masks at the input size (SAM 2's numbers, where both sides are 1024).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
from oracle import OBJECT_SCORE_BIAS, assert_close_logits
from oracle_sam3 import on_meta_device, perturbed, sam3_modules

import sam2rt
from sam2rt.checkpoints.sam3_tracker_keys import tracker_state_dict
from sam2rt.model.sam2 import SAM2Model
from sam2rt.model.sam3.config import VisionSpec
from sam2rt.model.variants import SAM3_TRACKER, ModelConfig, Variant
from sam2rt.processing.images import as_rgb_tensor
from sam2rt.processing.preprocess import SAM3_MEAN, SAM3_STD, model_input
from sam2rt.tracking.options import SAM3_TRACKER_CHANGES

IMAGE_SIZE = 112  # 8 x 8 tokens of 14 px
SMALL = Variant(
    "sam3-test",
    "sam3",
    VisionSpec(width=64, depth=2, heads=4, window_size=4, global_blocks=(1,), pretrain_image_size=56),
)
# Random weights judge every object absent: the object-score bias is shifted so that tracked objects are present.
SCORE_SHIFT = 0.6  # every object present on this script, the smallest score 0.13
NUM_FRAMES = 8
META_NUM_FRAMES = 16  # Meta's state is told of 16 frames: pointers normalised as in a long stream (min(16, frames))

BACKBONE = "backbone.vision_backbone."


@pytest.fixture(scope="module", autouse=True)
def oracle():
    sam3_modules()


def meta_tracker(variant: Variant, image_size: int, temporal_disambiguation: bool = False):
    """Meta's Sam3TrackerPredictor as `build_tracker` makes it, with the backbone of `variant` at `image_size`."""
    from sam3 import model_builder
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    spec, grid = variant.trunk, image_size // variant.trunk.patch_size
    trunk = ViT(
        img_size=image_size, pretrain_img_size=spec.pretrain_image_size, patch_size=spec.patch_size,
        embed_dim=spec.width, depth=spec.depth, num_heads=spec.heads, mlp_ratio=spec.mlp_ratio,
        norm_layer="LayerNorm", drop_path_rate=0.1, qkv_bias=True, use_abs_pos=True, tile_abs_pos=True,
        global_att_blocks=spec.global_blocks, rel_pos_blocks=(), use_rope=True, use_interp_rope=True,
        window_size=spec.window_size, pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True,
        ln_post=False, return_interm_layers=False, bias_patch_embed=False,
    )  # fmt: skip
    neck = Sam3DualViTDetNeck(
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=256, normalize=True, scale=None, temperature=10000, precompute_resolution=image_size
        ),
        d_model=256, scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=trunk, add_sam2_neck=True,
    )  # fmt: skip
    maskmem_backbone = model_builder._create_tracker_maskmem_backbone()
    # 1152 = 16 x 72 at 1008 px: the downsampler's input lands on the feature map's grid
    maskmem_backbone.mask_downsampler.interpol_size = [16 * grid, 16 * grid]
    model = Sam3TrackerPredictor(
        image_size=image_size, num_maskmem=7, backbone=SAM3VLBackbone(scalp=1, visual=neck, text=None),
        backbone_stride=spec.patch_size, transformer=model_builder._create_tracker_transformer(),
        maskmem_backbone=maskmem_backbone, multimask_output_in_sam=True, forward_backbone_per_frame_for_eval=True,
        trim_past_non_cond_mem_for_eval=False, multimask_output_for_tracking=True, multimask_min_pt_num=0,
        multimask_max_pt_num=1, always_start_from_first_ann_frame=False, non_overlap_masks_for_mem_enc=False,
        non_overlap_masks_for_output=False, max_cond_frames_in_attn=4, offload_output_to_cpu_for_eval=False,
        sam_mask_decoder_extra_args={
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        },
        clear_non_cond_mem_around_input=True, fill_hole_area=0, use_memory_selection=temporal_disambiguation,
    )  # fmt: skip
    # Its constructor enters CUDA bf16 autocast and never leaves it ("for the entire model process"): every CUDA
    # test after it in the process then ran in bf16 (fp32 graphs against eager failed at bf16's rounding). The
    # oracle runs on the CPU, where that context does nothing, so it is left at once.
    model.bf16_context.__exit__(None, None, None)
    return model.eval()


def as_sam3_checkpoint(tracker_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's tracker-with-backbone state dict laid out as sam3.pt holds it (backbone under the detector's name)."""
    checkpoint = {}
    for key, value in tracker_state.items():
        if key.startswith(BACKBONE):
            checkpoint["detector.backbone.vision_backbone." + key[len(BACKBONE) :]] = value
        else:
            checkpoint["tracker." + key] = value
    return checkpoint


@pytest.fixture(scope="module")
def models():
    """(Meta's tracker, ours) with the same perturbed weights, the object-score bias shifted."""
    return _model_pair(SCORE_SHIFT)


def _model_pair(score_shift: float):
    """(Meta's tracker with memory selection, ours) with the same perturbed weights, the object-score bias shifted."""
    torch.manual_seed(0)
    ref = meta_tracker(SMALL, IMAGE_SIZE, temporal_disambiguation=True)
    weights = perturbed(ref, seed=1)
    weights[OBJECT_SCORE_BIAS] = weights[OBJECT_SCORE_BIAS] + score_shift
    ref.load_state_dict(weights)
    ours = SAM2Model(ModelConfig(SMALL, IMAGE_SIZE)).eval()
    ours.load_state_dict(tracker_state_dict({"model": as_sam3_checkpoint(weights)}), strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return smooth_frames()


def smooth_frames(count: int = NUM_FRAMES) -> list[np.ndarray]:
    """Smooth random RGB frames (H, W, 3) uint8 that drift from one to the next."""
    generator = torch.Generator().manual_seed(3)
    base = torch.rand(3, 14, 14, generator=generator)
    out = []
    for t in range(count):
        coarse = (base + 0.15 * t * torch.rand(3, 14, 14, generator=generator)).clamp(0, 1)
        image = torch.nn.functional.interpolate(coarse[None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")[0]
        out.append((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    return out


def normalised(frame: np.ndarray) -> torch.Tensor:
    """The model input our engine makes of a frame: (1, 3, S, S), normalised as SAM 3 is (mean and std 0.5)."""
    cpu = torch.device("cpu")
    return model_input(as_rgb_tensor(frame), IMAGE_SIZE, "bilinear-antialias", cpu, SAM3_MEAN, SAM3_STD)


def test_keys_equal_sam3_checkpoint_at_official_sizes(oracle):
    """Every key and shape of Meta's official tracker (with the SAM 3 backbone) maps onto ours, none left over."""
    from sam3 import model_builder

    with on_meta_device():
        ref = model_builder.build_tracker(apply_temporal_disambiguation=True, with_backbone=True)
        ours = SAM2Model(ModelConfig(SAM3_TRACKER, 1008))
    mapped = tracker_state_dict(as_sam3_checkpoint(ref.state_dict()))
    expected = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in mapped.items()} == expected
    assert ours.config.feature_size == 72 and ours.config.memory_mask_size == 1152
    assert ours.config.low_res_mask_size == 288


def test_detector_keys_are_skipped():
    checkpoint = {"detector.transformer.decoder.norm.weight": torch.zeros(1), "tracker.no_obj_ptr": torch.zeros(1)}
    assert set(tracker_state_dict(checkpoint)) == {"no_obj_ptr"}


def test_image_features_match(models, frames):
    ref, ours = models
    images = torch.cat([normalised(frames[0]), normalised(frames[1])])
    with torch.no_grad():
        expected = ref.forward_image(images)
        got = ours.encode_image(images)
    fpn, pos = expected["backbone_fpn"], expected["vision_pos_enc"]
    assert len(fpn) == 3  # scalp=1: the coarsest level is dropped
    assert_close_logits(got.high_res[0], fpn[0])  # projected by the decoder's conv_s0 on both sides
    assert_close_logits(got.high_res[1], fpn[1])
    assert_close_logits(got.embed, fpn[2])
    assert_close_logits(got.pos.expand_as(pos[2]), pos[2])
    assert got.embed.shape == (2, 256, 8, 8) and got.embed.std() > 0.1
    assert (got.embed[0] - got.embed[1]).abs().max() > 0.1  # different frames, different features


def test_prompted_frame_matches(models, frames):
    """One click on a frame without memory: the three candidates, their IoUs, the object score and pointer."""
    ref, ours = models
    image = normalised(frames[0])
    coords = torch.tensor([[[60.0, 40.0]]])
    labels = torch.tensor([[1]], dtype=torch.int32)
    with torch.no_grad():
        backbone = ref.forward_image(image)
        _, feats, _, sizes = ref._prepare_backbone_features(backbone)
        high_res = [x.permute(1, 2, 0).view(1, -1, *s) for x, s in zip(feats[:-1], sizes[:-1])]
        pix = (feats[-1] + ref.no_mem_embed).permute(1, 2, 0).view(1, 256, *sizes[-1])
        point_inputs = {"point_coords": coords, "point_labels": labels}
        expected = ref._forward_sam_heads(pix, point_inputs, None, high_res, multimask_output=True)
        features = ours.encode_image(image)
        got = ours.segment(ours.without_memory(features.embed), features.high_res, coords, labels, None, True)
    low_res_multimasks, _, ious, low_res_best, _, obj_ptr, object_score = expected
    assert_close_logits(got.masks, low_res_multimasks)
    assert_close_logits(got.best_mask, low_res_best)
    torch.testing.assert_close(got.iou_scores, ious, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.object_score_logits, object_score, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.obj_ptr, obj_ptr, atol=1e-5, rtol=0)
    assert got.masks.shape == (1, 3, 32, 32) and object_score.item() > 0 and got.masks.std() > 0.1


# frame -> prompts: (object id, points (x, y) in pixels, labels). Object 1: a click on frame 0, a correction click
# on frame 3 once tracked; object 2: a new object on frame 5 (Meta: its own state, see the test).
SCRIPT = {
    0: [(1, [[60.0, 40.0]], [1])],
    3: [(1, [[30.0, 80.0]], [1])],
    5: [(2, [[90.0, 90.0], [20.0, 20.0]], [1, 0])],
}


def _meta_state(ref, images: torch.Tensor):
    state = ref.init_state(
        video_height=IMAGE_SIZE, video_width=IMAGE_SIZE, num_frames=images.shape[0], offload_state_to_cpu=True
    )
    state["images"] = images
    return state


def test_stream_matches_meta_tracker(models, frames):
    """Our StreamTracker with Meta's SAM 3 settings against Sam3TrackerPredictor driven as a stream: frame t is
    propagated alone, then the prompts of t land on it.

    Meta's predictor adds no object once tracking started and runs all its objects as one batch (consolidated
    prompted frames, a memory for every object on every prompted frame); ours keeps each object's memory apart, as
    SAM 2.1's predictor does. Each object is therefore driven in a state of its own on Meta's side.
    """
    ref, ours = models
    tracker = sam2rt.StreamTracker(ours, memory_dtype=torch.bfloat16, **SAM3_TRACKER_CHANGES)
    run = _drive(ref, tracker, frames, SCRIPT, META_NUM_FRAMES)
    assert tracker.object_ids == [1, 2]
    assert run.compared == 7 + 2 + 3  # object 1 tracked on frames 1-7, object 2 on 6-7, and three prompts
    assert all(score > 0 for score in run.scores), f"objects judged absent: every mask is a constant ({run.scores})"
    assert min(run.memory_scores.values()) > META_MEMORY_THRESHOLD  # selection keeps every frame here


class _Run(NamedTuple):
    compared: int  # masks compared with Meta's
    scores: list[float]  # our object scores of every mask compared
    memory_scores: dict[tuple[int, int], float]  # (object id, tracked frame) -> Meta's memory score of that frame
    masks: dict[tuple[int, int], torch.Tensor]  # (object id, frame) -> our logits (H, W) after the frame's prompts


def _drive(ref, tracker, frames: list[np.ndarray], script: dict, num_frames: int, visible_only: bool = True) -> _Run:
    """Drive our `tracker` and Meta's predictor `ref` (one state per object, told of `num_frames` frames) through
    `frames` and the prompts of `script`, comparing every mask on the way; `visible_only`: every mask compared must
    be a visible object's (not a constant)."""
    images = torch.cat([normalised(frame) for frame in frames])
    images = torch.cat([images, images[-1:].expand(num_frames - len(frames), -1, -1, -1)])
    states: dict[int, dict] = {}  # object id -> Meta's state
    run = _Run(0, [], {}, {})
    compared = 0
    for t, frame in enumerate(frames):
        result = tracker.step(frame)
        expected = {}
        with torch.no_grad():
            for obj_id, state in states.items():
                outputs = list(ref.propagate_in_video(state, t, 0, False, tqdm_disable=True, propagate_preflight=True))
                expected[obj_id] = outputs[-1][3][0, 0]  # (H, W) logits at the video's size
                tracked = state["output_dict"]["non_cond_frame_outputs"].get(t, {})
                if "eff_iou_score" in tracked:
                    run.memory_scores[obj_id, t] = float(tracked["eff_iou_score"])
        compared += _compare(result, expected, f"frame {t}", run.scores, visible_only)
        for obj_id, points, labels in script.get(t, []):
            result = tracker.add_prompt(obj_id, points=points, labels=labels)
            state = states.setdefault(obj_id, _meta_state(ref, images))
            with torch.no_grad():
                _, _, _, video_masks = ref.add_new_points_or_box(
                    state, t, obj_id, points=points, labels=labels, rel_coordinates=False
                )
            where = f"frame {t}, prompt on {obj_id}"
            compared += _compare(result, {obj_id: video_masks[0, 0]}, where, run.scores, visible_only)
        run.masks.update({(obj_id, t): result.mask_logits[row] for row, obj_id in enumerate(result.object_ids)})
    return run._replace(compared=compared)


def _compare(
    result, expected: dict[int, torch.Tensor], where: str, scores: list[float], visible_only: bool = True
) -> int:
    """Compare our result's masks of the objects in `expected` with Meta's; returns how many were compared."""
    for obj_id, meta_logits in expected.items():
        row = result.object_ids.index(obj_id)
        got = result.mask_logits[row]
        assert_close_logits(got, meta_logits, what=where)
        visible = got.std() > 0.1 and (got > 0).any() and (got <= 0).any()
        assert visible or not visible_only, f"{where}: a constant mask"
        scores.append(float(result.object_scores[row]))
    return len(expected)


# Memory selection where it matters: the object-score bias shifted less, so that the presence logit hovers around 0
# and the object is judged absent (memory score 0) or unsure (below the bar) on some frames of a longer stream.
SELECTION_SCORE_SHIFT = 0.5
SELECTION_FRAMES = 20
META_MEMORY_THRESHOLD = 0.01  # Meta's mf_threshold
SELECTION_SCRIPT = {
    0: [(1, [[60.0, 40.0]], [1])],
    4: [(2, [[90.0, 90.0], [20.0, 20.0]], [1, 0])],
    13: [(1, [[30.0, 80.0]], [1])],  # a correction: a prompted frame among the selected ones
}


@pytest.fixture(scope="module")
def unsure_models():
    return _model_pair(SELECTION_SCORE_SHIFT)


def test_stream_with_memory_selection_matches_meta(unsure_models):
    """20 frames on which the objects come and go: the recent memories are the frames that passed the bar, some
    far back; every mask equals Meta's, and the same stream without selection gives other masks."""
    ref, ours = unsure_models
    frames = smooth_frames(SELECTION_FRAMES)
    tracker = sam2rt.StreamTracker(ours, memory_dtype=torch.bfloat16, **SAM3_TRACKER_CHANGES)
    run = _drive(ref, tracker, frames, SELECTION_SCRIPT, SELECTION_FRAMES, visible_only=False)
    assert run.compared == 19 + 15 + 3  # object 1 tracked on frames 1-19, object 2 on 5-19, and three prompts
    # Selection skipped frames: scores at or below the bar, on frames that later ones would otherwise have read.
    scores = run.memory_scores
    skipped = sorted(key for key, score in scores.items() if score <= META_MEMORY_THRESHOLD)
    assert len(skipped) >= 4 and any(score == 0.0 for score in scores.values()), scores
    assert len([key for key in scores if key not in skipped]) >= 12
    # No score so close to the bar that rounding could decide it: the test compares selections, not luck.
    assert min(abs(score - META_MEMORY_THRESHOLD) for score in scores.values()) > 2e-4
    assert sum(score > 0 for score in run.scores) >= 20, "most masks should be of a visible object"

    without = sam2rt.StreamTracker(
        ours, memory_dtype=torch.bfloat16, **{**SAM3_TRACKER_CHANGES, "use_memory_selection": False}
    )
    plain = _drive_ours(without, frames, SELECTION_SCRIPT)
    differences = [(plain[key] - mask).abs().max().item() for key, mask in run.masks.items()]
    assert max(differences) > 0.1, "memory selection changed nothing"


def _drive_ours(tracker, frames: list[np.ndarray], script: dict) -> dict[tuple[int, int], torch.Tensor]:
    """Our masks (object id, frame) -> (H, W) logits after each frame's prompts, the stream of `_drive`."""
    masks = {}
    for t, frame in enumerate(frames):
        result = tracker.step(frame)
        for obj_id, points, labels in script.get(t, []):
            result = tracker.add_prompt(obj_id, points=points, labels=labels)
        masks.update({(obj_id, t): result.mask_logits[row] for row, obj_id in enumerate(result.object_ids)})
    return masks


def test_video_predictor_with_memory_selection_matches_meta(unsure_models):
    """The offline VideoPredictor with memory selection against Meta's predictor on a whole video: clicks on frames
    0 and 12, propagated forward over all frames, then backward from the second click (the scan then reads the
    frames after each frame, scored on either way). Not from the last frame: Meta's tracker on a CPU cannot
    attend to bf16 memories without any pointer (no autocast there), which is what that frame would see."""
    ref, ours = unsure_models
    frames = smooth_frames(SELECTION_FRAMES)
    images = torch.cat([normalised(frame) for frame in frames])
    state = _meta_state(ref, images)
    predictor = sam2rt.VideoPredictor(
        ours, memory_dtype=torch.bfloat16, resize="bilinear-antialias", **SAM3_TRACKER_CHANGES
    )
    ours_state = predictor.init_state(frames)
    clicks = {0: [[60.0, 40.0]], 12: [[30.0, 80.0]]}
    with torch.no_grad():
        for t, points in clicks.items():
            ref.add_new_points_or_box(state, t, 1, points=points, labels=[1], rel_coordinates=False)
            predictor.add_new_points_or_box(ours_state, t, 1, points=points, labels=[1])
        compared, differences = 0, []
        for reverse, start in ((False, 0), (True, 12)):
            expected = {
                t: masks[0, 0]
                for t, _, _, masks, _ in ref.propagate_in_video(
                    state, start, None, reverse, tqdm_disable=True, propagate_preflight=True
                )
            }
            for t, obj_ids, masks in predictor.propagate_in_video(ours_state, start, reverse=reverse):
                assert obj_ids == [1]
                differences.append(assert_close_logits(masks[0, 0], expected[t], what=f"frame {t}, reverse {reverse}"))
                compared += 1
    assert compared == SELECTION_FRAMES + 13
    scores = [out["eff_iou_score"] for out in state["output_dict"]["non_cond_frame_outputs"].values()]
    assert sum(score <= META_MEMORY_THRESHOLD for score in scores) >= 3, "no frame skipped"
    assert min(abs(float(score) - META_MEMORY_THRESHOLD) for score in scores) > 2e-4
