"""ConceptTracker against Meta's Sam3VideoInference (`sam3==0.1.4`), fp32 on the CPU, frame by frame.

Meta's video model is assembled as `build_sam3_video_model` does it (its official concept options), with a small
detector (tests/oracle_sam3.py's SMALL_SPEC, widened to the tracker's 256 channels: both read one backbone) and the
tracker's official heads over that backbone, as tests/test_sam3_tracker.py builds them. Both sides get the same
perturbed weights, ours through sam3.pt's layout (Meta's video model's state dict is that layout). The detector's
score bias is shifted so that some queries pass 0.5 and 0.7 on some frames and not on others, and the tracker's
object-score bias so that tracked objects are present; the test asserts both.

Meta is driven one frame at a time (`_run_single_frame_inference`, then `_postprocess_output` with that frame's
removed and suppressed ids: a stream has no hotstart buffer) on the same normalised frames as ours. Compared per
frame: the output ids, which are visible, their masks (IoU >= 0.99), their scores.

Meta's tracker runs with temporal disambiguation (`use_memory_selection=True`), as its video model builds it; ours
with SAM 3's tracker changes, which turn memory selection on (see the module docstring of tracking/concepts.py).
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import numpy as np
import pytest
import torch
from oracle import OBJECT_SCORE_BIAS
from oracle_sam3 import (
    SMALL_SPEC,
    meta_image_model,
    meta_stream_state,
    perturbed,
    sam3_modules,
    without_cpu_redirects,
)
from sam3_vocab import open_clip_bpe_path, write_clip_vocab

from sam2rt.checkpoints.sam3_tracker_keys import tracker_state_dict
from sam2rt.model.sam2 import SAM2Model
from sam2rt.model.sam3.config import VisionSpec
from sam2rt.model.sam3.detector import Sam3Detector
from sam2rt.model.variants import ModelConfig, Variant
from sam2rt.processing.images import as_rgb_tensor
from sam2rt.processing.preprocess import SAM3_MEAN, SAM3_STD, model_input
from sam2rt.processing.text import TextTokenizer
from sam2rt.runtime import optimize_concept_models, to_inference_dtype, use_cuda_graphs
from sam2rt.runtime.graphs import DETECTOR_METHODS, TRACKER_METHODS
from sam2rt.tracking.concept_plan import ConceptOptions
from sam2rt.tracking.concepts import ConceptTracker

SPEC = dataclasses.replace(SMALL_SPEC, d_model=256)  # the tracker's heads read the backbone's 256 channels
IMAGE_SIZE = SPEC.vision.image_size  # 112: an 8 x 8 grid, masks of 32 x 32
VARIANT = Variant("sam3-test", "sam3", VisionSpec(**dataclasses.asdict(SPEC.vision)))
FRAME_SIZE = (96, 128)
NUM_FRAMES = 10
META_NUM_FRAMES = 16  # pointers normalised as in a long stream (min(16, frames)), as test_sam3_tracker does
PHRASE = "a red square"
OPTIONS = ConceptOptions()  # the official values
# low bars, no NMS, no probation: about a dozen overlapping tracks from frame 0 on, batches of several tracks
MANY_TRACKS = ConceptOptions(score_threshold_detection=0.01, new_det_thresh=0.01, det_nms_thresh=0.0, hotstart_delay=0)


def _detector_score_key(keys) -> str:
    """The bias that shifts every query's score logit."""
    for key in keys:
        if key.startswith("detector.transformer.decoder.presence_token_head") and key.endswith("layers.2.bias"):
            return key
    raise KeyError("no presence head bias")


def _cpu_components_of_no_mask():
    """Meta's CPU connected components fail on a batch of no mask (a frame with no new track): give it an empty
    answer there, its own otherwise."""
    from sam3.perflib import connected_components as module

    labelled = module.connected_components_cpu
    if getattr(labelled, "_empty_batch", False):
        return

    def components(masks):
        if masks.shape[0] == 0:
            return torch.zeros_like(masks, dtype=torch.long), torch.zeros_like(masks, dtype=torch.long)
        return labelled(masks)

    components._empty_batch = True
    module.connected_components_cpu = components


def meta_video_model():
    """Meta's Sam3VideoInference with SPEC's detector and the tracker's official heads, official concept options."""
    from sam3.model import necks
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3ImageOnVideoMultiGPU
    from sam3.model.sam3_video_inference import Sam3VideoInference
    from test_sam3_tracker import meta_tracker

    _cpu_components_of_no_mask()
    image = meta_image_model(SPEC, str(open_clip_bpe_path()))
    visual = image.backbone.vision_backbone
    image.backbone.vision_backbone = necks.Sam3DualViTDetNeck(
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=SPEC.d_model, normalize=True, temperature=10000, precompute_resolution=IMAGE_SIZE
        ),
        d_model=SPEC.d_model, scale_factors=list(SPEC.neck_scales), trunk=visual.trunk, add_sam2_neck=True,
    )  # fmt: skip
    detector = Sam3ImageOnVideoMultiGPU(
        backbone=image.backbone, transformer=image.transformer, input_geometry_encoder=image.geometry_encoder,
        segmentation_head=image.segmentation_head, semantic_segmentation_head=None, num_feature_levels=1,
        use_early_fusion=True, use_dot_prod_scoring=True, dot_prod_scoring=image.dot_prod_scoring,
        supervise_joint_box_scores=True,
    )  # fmt: skip
    # Meta casts the tracker's features to bfloat16 for its all-gather and the conv after it reads them as they
    # come: on the CPU (no autocast) they are made float32 again after the cast; ours get the same rounding.
    detector._gather_tensor = lambda x: ([x.float()], None)
    tracker = meta_tracker(VARIANT, IMAGE_SIZE, temporal_disambiguation=True)
    tracker.backbone = None  # the video model's tracker reads the detector's backbone
    tracker.init_state = functools.partial(tracker.init_state, offload_state_to_cpu=True)  # its state on the CPU
    o = OPTIONS
    model = Sam3VideoInference(
        detector=detector, tracker=tracker, score_threshold_detection=o.score_threshold_detection,
        assoc_iou_thresh=o.assoc_iou_thresh, det_nms_thresh=o.det_nms_thresh, new_det_thresh=o.new_det_thresh,
        hotstart_delay=o.hotstart_delay, hotstart_unmatch_thresh=o.hotstart_unmatch_thresh,
        hotstart_dup_thresh=o.hotstart_dup_thresh,
        suppress_unmatched_only_within_hotstart=o.suppress_unmatched_only_within_hotstart,
        min_trk_keep_alive=o.min_trk_keep_alive, max_trk_keep_alive=o.max_trk_keep_alive,
        init_trk_keep_alive=o.init_trk_keep_alive,
        suppress_overlapping_based_on_recent_occlusion_threshold=(
            o.suppress_overlapping_based_on_recent_occlusion_threshold
        ),
        suppress_det_close_to_boundary=o.suppress_det_close_to_boundary, fill_hole_area=o.fill_hole_area,
        recondition_every_nth_frame=o.recondition_every_nth_frame,
        masklet_confirmation_enable=o.masklet_confirmation_enable,
        decrease_trk_keep_alive_for_empty_masklets=o.decrease_trk_keep_alive_for_empty_masklets,
        image_size=IMAGE_SIZE, image_mean=SAM3_MEAN, image_std=SAM3_STD,
    )  # fmt: skip
    return model.eval()


DETECTOR_SHIFT = 3.5
TRACKER_SHIFT = 2.0
SCORE_SPREAD = 4.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    sam3_modules()
    if open_clip_bpe_path() is None:
        pytest.skip("Meta's tokenizer reads open_clip's BPE vocabulary: pip install --no-deps open_clip_torch")
    torch.manual_seed(0)
    meta = meta_video_model()
    weights = perturbed(meta, seed=7)
    score_key = _detector_score_key(weights)
    weights[score_key] = weights[score_key] + DETECTOR_SHIFT
    for name in ("weight", "bias"):  # query logits spread wider: some far above the bars, some far below
        key = f"detector.dot_prod_scoring.prompt_proj.{name}"
        weights[key] = weights[key] * SCORE_SPREAD
    weights["tracker." + OBJECT_SCORE_BIAS] = weights["tracker." + OBJECT_SCORE_BIAS] + TRACKER_SHIFT
    meta.load_state_dict(weights, strict=True)

    detector = Sam3Detector(SPEC, tracker_neck=True).eval()
    prefix = "detector."
    detector.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True)
    tracker = SAM2Model(ModelConfig(VARIANT, IMAGE_SIZE)).eval()
    tracker.load_state_dict(tracker_state_dict(weights), strict=True)
    features_from_backbone = tracker.features_from_backbone

    def rounded_like_meta(backbone):
        levels = [level.to(torch.bfloat16).float() for level in backbone.levels]
        return features_from_backbone(backbone._replace(levels=levels))

    tracker.features_from_backbone = rounded_like_meta
    bpe = open_clip_bpe_path()
    tokenizer = TextTokenizer.from_files(*write_clip_vocab(bpe, tmp_path_factory.mktemp("vocab")))
    return meta, detector, tracker, tokenizer


def clip() -> list[np.ndarray]:
    """Smooth random frames (H, W, 3) uint8 with two coloured squares moving across, one leaving on frame 6."""
    generator = torch.Generator().manual_seed(11)
    height, width = FRAME_SIZE
    base = torch.rand(3, 6, 8, generator=generator)
    frames = []
    for t in range(NUM_FRAMES):
        coarse = (base + 0.1 * t * torch.rand(3, 6, 8, generator=generator)).clamp(0, 1)
        image = torch.nn.functional.interpolate(coarse[None], size=FRAME_SIZE, mode="bilinear")[0]
        image[:, 20 + 2 * t : 50 + 2 * t, 10 + 6 * t : 40 + 6 * t] = torch.tensor([1.0, 0.1, 0.1])[:, None, None]
        if t < 6:
            image[:, 60:85, 90 - 4 * t : 115 - 4 * t] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
        frames.append((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    return frames


def normalised(frame: np.ndarray) -> torch.Tensor:
    cpu = torch.device("cpu")
    return model_input(as_rgb_tensor(frame), IMAGE_SIZE, "bilinear-antialias", cpu, SAM3_MEAN, SAM3_STD)


def meta_state(meta, frames: list[np.ndarray]) -> dict:
    """Meta's video state over our normalised frames, with the phrase set (what `add_prompt` does, no inference)."""
    images = torch.cat([normalised(frame) for frame in frames])
    images = torch.cat([images, images[-1:].expand(META_NUM_FRAMES - len(frames), -1, -1, -1)])
    return meta_stream_state(meta, images, FRAME_SIZE, PHRASE)


def test_stream_matches_meta_video_model(models):
    meta, detector, tracker_model, tokenizer = models
    frames = clip()
    tracker = ConceptTracker(detector, tracker_model, tokenizer, PHRASE, memory_dtype=torch.bfloat16)
    assert detector.backbone.vision_backbone is tracker_model.image_encoder  # one backbone module
    state = meta_state(meta, frames)
    compared, new_per_frame, tracker_scores, areas, removed = 0, [], [], [], []
    for t, frame in enumerate(frames):
        with torch.no_grad():
            out = meta._run_single_frame_inference(state, t, reverse=False)
            expected = meta._postprocess_output(
                state, out, out["removed_obj_ids"], out["suppressed_obj_ids"], out["unconfirmed_obj_ids"]
            )
        got = tracker.step(frame)
        ids, masks = got.visible_masks()
        assert ids == expected["out_obj_ids"].tolist(), f"frame {t}: visible ids"
        for row, obj_id in enumerate(ids):
            ours, theirs = masks[row], torch.from_numpy(expected["out_binary_masks"][row])
            iou = (ours & theirs).sum() / (ours | theirs).sum().clamp(min=1)
            assert iou >= 0.99, f"frame {t}, object {obj_id}: IoU {iou:.4f}"
            compared += 1
            areas.append(float(ours.float().mean()))
        visible_rows = torch.nonzero(got.visible).flatten()
        np.testing.assert_allclose(got.scores[visible_rows].numpy(), expected["out_probs"], rtol=1e-4, atol=1e-5)
        assert sorted(got.object_ids) == sorted(out["obj_id_to_mask"]), f"frame {t}: tracks with an output"
        assert set(got.removed_ids) <= set(out["removed_obj_ids"])
        removed += got.removed_ids
        new_per_frame.append(len(got.plan.new_ids))
        tracker_scores += got.plan.output_tracker_scores[: len(got.plan.track_ids)].tolist()
    # the test must be able to fail: a track was found, followed on every frame with a real mask, then removed
    assert compared >= NUM_FRAMES - 1, f"only {compared} masks compared"
    assert new_per_frame[0] > 0, new_per_frame
    assert removed, "no hotstart removal on this clip"
    assert 0.05 < min(areas) and max(areas) < 0.95, f"trivial masks: {areas}"
    assert tracker_scores and min(tracker_scores) > 0.5, "tracked objects judged absent"


def test_the_graphs_padded_batches_in_chunks_change_no_track(models, monkeypatch):
    """What CUDA graphs get (shape buckets: the tracks' batch padded to a bucket and run in chunks, memory
    padded to full slots and masked) tracks as the plain pass does, one call per track on the CPU."""
    _, detector, tracker_model, tokenizer = models
    frames = clip()
    runs, shapes, prompted = {}, {}, {}
    for name in ("plain", "bucketed"):
        tracker = ConceptTracker(detector, tracker_model, tokenizer, PHRASE, MANY_TRACKS, memory_dtype=torch.bfloat16)
        if name == "bucketed":
            tracker.engine.shape_buckets = True
            tracker.engine.split_cpu_attention = False  # the batched attention of GPUs
            tracker.engine.objects_per_chunk = 2
        seen, prompts = shapes[name], prompted[name] = [], []
        original, as_output = tracker_model.condition_on_memory, tracker_model.mask_as_output

        def record(embed, memory, original=original, seen=seen):
            seen.append((memory.spatial.shape[0], memory.spatial.shape[1], memory.pointers.shape[1]))
            return original(embed, memory)

        def record_prompts(embed, high_res, mask, as_output=as_output, prompts=prompts):
            prompts.append(mask.shape[0])  # new tracks' masks taken as outputs, per call
            return as_output(embed, high_res, mask)

        monkeypatch.setattr(tracker_model, "condition_on_memory", record)
        monkeypatch.setattr(tracker_model, "mask_as_output", record_prompts)
        runs[name] = [tracker.step(frame) for frame in frames]
        monkeypatch.undo()
    for t, (plain, bucketed) in enumerate(zip(runs["plain"], runs["bucketed"])):
        assert bucketed.object_ids == plain.object_ids, f"frame {t}: tracks"
        assert torch.equal(bucketed.visible, plain.visible), f"frame {t}: visible"
        assert (bucketed.masks != plain.masks).float().mean() < 1e-3, f"frame {t}: masks"
        np.testing.assert_allclose(bucketed.scores.numpy(), plain.scores.numpy(), rtol=1e-4, atol=1e-5)
    # the test must be able to fail: tracks followed with real masks, batches padded past the tracks and chunked
    assert max(len(run.object_ids) for run in runs["plain"]) >= 3, [run.object_ids for run in runs["plain"]]
    assert all(0 < float(run.masks.float().mean()) < 0.95 for run in runs["plain"][1:] if run.object_ids)
    assert all(batch <= 2 for batch, _, _ in shapes["bucketed"]), shapes["bucketed"]  # chunks of 2
    assert max(prompted["plain"]) >= 3 and max(prompted["bucketed"]) <= 2, prompted  # new tracks' masks too
    assert len({(frames, pointers) for _, frames, pointers in shapes["bucketed"]}) < len(set(shapes["plain"]))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    "device, dtype, min_iou, score_atol",
    [
        pytest.param("cuda", torch.float32, 0.999, 1e-4, marks=CUDA),  # the graphs' mechanics: static inputs, replays
        pytest.param("cuda", torch.bfloat16, 0.9, 0.05, marks=CUDA),  # as the commands run it: cuDNN on masked memory
    ],
)
def test_the_commands_graphed_models_track_as_eager_ones(models, device, dtype, min_iou, score_atol):
    """ConceptTracker over models replayed from CUDA graphs as `runtime.optimize_concept_models` sets them up (fp32
    graphs; bf16 and graphs, as the commands run it) against the same models eager in the same precision, so that
    the graphs (padded batches, cuDNN attention over masked memory) are all that differs: the same tracks on
    every frame, each track's propagated mask (before overlaps are resolved, which close scores may flip) within
    `min_iou`, and their tracker scores close. (On the CPU, test_the_graphs_padded_batches_in_chunks_change_no_track
    checks what graphs are given: padded batches in chunks, full memory slots.)"""
    _, detector, tracker_model, tokenizer = models
    assert not torch.is_autocast_enabled("cuda")  # Meta's tracker, built by the fixture, enters it (meta_tracker)
    frames = clip()
    runs = {}
    for graphed in (False, True):
        with without_cpu_redirects():  # for Meta's models, which this test does not run
            runs[graphed] = track_on(device, detector, tracker_model, tokenizer, frames, dtype, graphed)
    ious = []
    for t, (eager, replayed) in enumerate(zip(runs[False], runs[True])):
        assert replayed.object_ids == eager.object_ids, f"frame {t}: tracks"
        ours, theirs = replayed.plan.track_masks.cpu() > 0, eager.plan.track_masks.cpu() > 0  # (M, H, W)
        union = (ours | theirs).flatten(1).sum(1)
        ious += ((ours & theirs).flatten(1).sum(1) / union.clamp(min=1))[union > 0].tolist()
        scores = replayed.plan.output_tracker_scores.cpu(), eager.plan.output_tracker_scores.cpu()
        torch.testing.assert_close(*scores, rtol=0, atol=score_atol)
    assert len(ious) >= 8 * (len(frames) - 1), f"only {len(ious)} propagated masks compared"
    assert min(ious) >= min_iou, f"propagated masks: min IoU {min(ious):.4f}, mean {sum(ious) / len(ious):.4f}"


def track_on(device, detector, tracker_model, tokenizer, frames, dtype, graphed: bool) -> list:
    """Copies of the models on `device` in `dtype`, replayed from CUDA graphs or not, tracking PHRASE on `frames`."""
    det, tracker = copy.deepcopy(detector).to(device), copy.deepcopy(tracker_model).to(device)
    del tracker.features_from_backbone  # the fixture's rounding to Meta's bf16, bound to the original model
    if dtype == torch.bfloat16 and graphed:
        optimize_concept_models(det, tracker)
    elif dtype == torch.bfloat16:
        to_inference_dtype(det), to_inference_dtype(tracker)
    elif graphed:
        use_cuda_graphs(det, DETECTOR_METHODS), use_cuda_graphs(tracker, TRACKER_METHODS)
    concepts = ConceptTracker(det, tracker, tokenizer, PHRASE, MANY_TRACKS, memory_dtype=dtype)
    assert concepts.engine.shape_buckets == graphed
    return [concepts.step(frame) for frame in frames]
