"""Parity of the composed model's tracking steps with the official SAM2Base, sam2.1 tiny, fp32 on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracle import assert_close_logits, assert_close_scores, oracle_model, our_model

from sam2rt.model.sam2 import MemoryTokens

VARIANT = "sam2.1_hiera_tiny"


@pytest.fixture(scope="module")
def models():
    return our_model(VARIANT), oracle_model(VARIANT)


@pytest.fixture(scope="module")
def frame(models):
    ours, ref = models
    images = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(21))
    with torch.no_grad():
        features = ours.encode_image(images)
        backbone = ref.forward_image(images)
    _, vision_feats, vision_pos, feat_sizes = ref._prepare_backbone_features(backbone)
    return features, (vision_feats, vision_pos, feat_sizes)


def _expand_official(official, batch):
    vision_feats, vision_pos, feat_sizes = official
    return [f.expand(-1, batch, -1) for f in vision_feats], [p.expand(-1, batch, -1) for p in vision_pos], feat_sizes


def _high_res_official(vision_feats, feat_sizes):
    return [f.permute(1, 2, 0).reshape(f.shape[1], f.shape[2], *s) for f, s in zip(vision_feats[:-1], feat_sizes[:-1])]


@pytest.mark.parametrize("prompt", ["points", "points+mask", "none"])
def test_segment_matches_sam_heads(models, frame, prompt):
    ours, ref = models
    features, official = frame
    batch = 3
    generator = torch.Generator().manual_seed(22)
    embed = ours.without_memory(features.embed).expand(batch, -1, -1, -1) + torch.randn(batch, 256, 64, 64) * 0.1
    coords = labels = mask = None
    if prompt != "none":
        coords = torch.rand(batch, 2, 2, generator=generator) * 1024
        labels = torch.tensor([[1, 0], [1, 1], [2, 3]], dtype=torch.int32)
    if prompt == "points+mask":
        mask = torch.randn(batch, 1, 256, 256, generator=generator) * 8
    vision_feats, _, feat_sizes = _expand_official(official, batch)
    high_res = _high_res_official(vision_feats, feat_sizes)
    for multimask in (True, False):
        with torch.no_grad():
            mine = ours.segment(embed, tuple(high_res), coords, labels, mask, multimask)
            points = None if coords is None else {"point_coords": coords, "point_labels": labels}
            theirs = ref._forward_sam_heads(embed, points, mask, high_res, multimask)
        low_res_multi, _, ious, low_res, _, obj_ptr, scores = theirs
        assert_close_logits(mine.masks, low_res_multi, what="candidate masks")
        assert_close_scores(mine.iou_scores, ious, what="iou")
        assert_close_logits(mine.best_mask, low_res, what="best mask")
        assert_close_logits(mine.obj_ptr, obj_ptr, what="object pointer")
        assert_close_scores(mine.object_score_logits, scores, what="object score")


def test_mask_as_output(models, frame):
    ours, ref = models
    features, official = frame
    mask = torch.zeros(2, 1, 1024, 1024)
    mask[0, :, 300:700, 200:500] = 1  # the second object is empty, hence judged absent
    vision_feats, _, feat_sizes = _expand_official(official, 2)
    high_res = _high_res_official(vision_feats, feat_sizes)
    pix_feat = features.embed.expand(2, -1, -1, -1)
    with torch.no_grad():
        mine = ours.mask_as_output(pix_feat, tuple(high_res), mask)
        low_res, _, ious, _, _, obj_ptr, scores = ref._use_mask_as_output(pix_feat, high_res, mask)
    assert_close_logits(mine.best_mask, low_res, what="mask logits")
    assert_close_scores(mine.iou_scores, ious, what="iou")
    assert_close_logits(mine.obj_ptr, obj_ptr, what="object pointer")
    assert_close_scores(mine.object_score_logits, scores, what="object score")
    assert mine.object_score_logits[0] > 0 > mine.object_score_logits[1]


@pytest.mark.parametrize("binarize", [False, True])
def test_encode_memory(models, frame, binarize):
    ours, ref = models
    features, official = frame
    generator = torch.Generator().manual_seed(23)
    low_res = torch.randn(2, 1, 256, 256, generator=generator) * 6
    scores = torch.tensor([[1.5], [-2.0]])  # one present, one absent object
    vision_feats, _, feat_sizes = _expand_official(official, 2)
    ref.binarize_mask_from_pts_for_mem_enc = True
    with torch.no_grad():
        mine = ours.encode_memory(features.embed, low_res, scores, torch.full((2,), binarize))
        high_res = F.interpolate(low_res, size=(1024, 1024), mode="bilinear", align_corners=False)
        theirs, _ = ref._encode_new_memory(vision_feats, feat_sizes, high_res, scores, is_mask_from_pts=binarize)
    assert_close_logits(mine, theirs.flatten(2).transpose(1, 2), what="memory")  # tokens (B, h*w, C_mem)


def test_condition_on_memory(models, frame):
    """Frame 10 tracked forward, prompted frames 0 and 3, tracked frames 5-9 (frame 4 missing)."""
    ours, ref = models
    features, official = frame
    generator = torch.Generator().manual_seed(24)
    memories = {t: torch.randn(1, 64, 64, 64, generator=generator) for t in range(10)}
    pointers = {t: torch.randn(1, 256, generator=generator) for t in range(10)}
    pos = [ours.memory_encoder.pos_grid.clone()]
    cond, recent = (0, 3), (9, 8, 7, 6, 5)

    def entry(t):
        return {"maskmem_features": memories[t], "maskmem_pos_enc": pos, "obj_ptr": pointers[t]}

    output_dict = {
        "cond_frame_outputs": {t: entry(t) for t in cond},
        "non_cond_frame_outputs": {t: entry(t) for t in recent},
    }
    vision_feats, vision_pos, feat_sizes = official
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
        spatial = torch.stack([memories[t].flatten(2).transpose(1, 2)[0] for t in spatial_frames])[None]
        spatial_tpos = torch.tensor([[6, 6, 0, 1, 2, 3, 4, 5]])
        spatial_valid = torch.tensor([[True] * 7 + [False]])
        pointer_frames = [0, 3, 9, 8, 7, 6, 5, 4]
        pointer_offsets = torch.tensor([[10, 7, 1, 2, 3, 4, 5, 6]])
        memory = MemoryTokens(
            spatial=spatial,
            spatial_tpos=spatial_tpos,
            spatial_valid=spatial_valid,
            pointers=torch.stack([pointers[t][0] for t in pointer_frames])[None],
            pointer_positions=pointer_offsets / 15,
            pointer_valid=torch.tensor([[True] * 7 + [False]]),
        )
        mine = ours.condition_on_memory(features.embed, memory)
    assert_close_logits(mine, theirs, what="memory-conditioned features")
