"""Module-by-module parity with the official implementation, sam2.1 tiny, fp32 on CPU."""

from __future__ import annotations

import pytest
import torch
from oracle import assert_close_logits, assert_close_scores, oracle_model, our_model

VARIANT = "sam2.1_hiera_tiny"


@pytest.fixture(scope="module")
def models():
    return our_model(VARIANT), oracle_model(VARIANT)


@pytest.fixture(scope="module")
def image_features(models):
    ours, ref = models
    images = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return ours.encode_image(images), ref.forward_image(images), images


def test_trunk(models):
    ours, ref = models
    images = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for mine, theirs in zip(ours.image_encoder.trunk(images), ref.image_encoder.trunk(images), strict=True):
            assert_close_logits(mine, theirs, what="trunk stage")


def test_neck_and_image_features(image_features):
    mine, theirs, _ = image_features
    fpn = theirs["backbone_fpn"]
    assert_close_logits(mine.high_res[0], fpn[0], what="stride-4 skip")
    assert_close_logits(mine.high_res[1], fpn[1], what="stride-8 skip")
    assert_close_logits(mine.embed, fpn[2], what="stride-16 features")
    assert_close_logits(mine.pos.expand_as(theirs["vision_pos_enc"][2]), theirs["vision_pos_enc"][2], what="position")


def _prompts(batch: int, num_points: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, num_points, 2, generator=generator) * 1024
    labels = torch.randint(0, 4, (batch, num_points), generator=generator, dtype=torch.int32)
    labels[:, -1] = -1  # one padding point among the real ones
    masks = torch.randn(batch, 1, 256, 256, generator=generator) * 5
    return coords, labels, masks


@pytest.mark.parametrize("with_mask", [False, True])
def test_prompt_encoder(models, with_mask):
    ours, ref = models
    coords, labels, masks = _prompts(3, 5, seed=5)
    mask = masks if with_mask else None
    with torch.no_grad():
        sparse, dense = ours.sam_prompt_encoder(coords, labels, mask)
        ref_sparse, ref_dense = ref.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask)
        assert_close_logits(ours.sam_prompt_encoder.dense_pe(), ref.sam_prompt_encoder.get_dense_pe(), what="dense pe")
    assert_close_logits(sparse, ref_sparse, what="sparse")
    if not with_mask:  # one dense embedding shared by every row, where the official repeats it per row
        assert dense.shape[0] == 1
        dense = dense.expand_as(ref_dense)
    assert_close_logits(dense, ref_dense, what="dense")


@pytest.mark.parametrize(
    "multimask,always_stable,with_mask",
    [(True, False, True), (False, False, True), (False, True, True), (True, False, False)],
    ids=["multi", "single", "stable", "multi-no-mask"],
)
def test_mask_decoder(models, image_features, multimask, always_stable, with_mask, monkeypatch):
    """Multimask output, single-mask output on both sides of the stability fallback, and points alone
    (the image's first-layer work shared by all rows)."""
    ours, ref = models
    if always_stable:
        monkeypatch.setattr("sam2rt.model.mask_decoder.STABILITY_THRESHOLD", 0.0)
        monkeypatch.setattr(ref.sam_mask_decoder, "dynamic_multimask_stability_thresh", 0.0)
    mine, _, _ = image_features
    coords, labels, masks = _prompts(3, 3, seed=6)
    masks = masks if with_mask else None
    embed = ours.without_memory(mine.embed)
    with torch.no_grad():
        out = ours.decode(embed, mine.high_res, coords, labels, masks, multimask)
        sparse, dense = ref.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=masks)
        ref_masks, ref_iou, ref_tokens, ref_score = ref.sam_mask_decoder(
            image_embeddings=embed,
            image_pe=ref.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=True,
            high_res_features=list(mine.high_res),
        )
    assert_close_logits(out.masks, ref_masks, what="masks")
    assert_close_scores(out.iou_scores, ref_iou, what="iou")
    assert_close_logits(out.tokens, ref_tokens, what="tokens")
    assert_close_scores(out.object_score_logits, ref_score, what="object score")


def test_memory_encoder(models, image_features):
    ours, ref = models
    mine, _, _ = image_features
    mask = torch.randn(2, 1, 1024, 1024, generator=torch.Generator().manual_seed(8)) * 10
    with torch.no_grad():
        features = ours.memory_encoder(mine.embed.expand(2, -1, -1, -1), mask)
        theirs = ref.memory_encoder(mine.embed.expand(2, -1, -1, -1), mask, skip_mask_sigmoid=True)
    assert_close_logits(features, theirs["vision_features"], what="memory features")
    assert_close_logits(ours.memory_encoder.pos_grid.expand(2, -1, -1, -1), theirs["vision_pos_enc"][0], what="pos")


@pytest.mark.parametrize("frames,pointer_tokens", [(1, 0), (2, 16), (7, 64), (3, 4)])
def test_memory_attention(models, frames, pointer_tokens):
    ours, ref = models
    generator = torch.Generator().manual_seed(frames * 100 + pointer_tokens)
    hw, batch = 64 * 64, 2
    image = torch.randn(batch, hw, 256, generator=generator)
    image_pos = torch.randn(1, hw, 256, generator=generator)
    length = frames * hw + pointer_tokens
    memory = torch.randn(batch, length, 64, generator=generator)
    memory_pos = torch.randn(batch, length, 64, generator=generator)
    with torch.no_grad():
        out = ours.memory_attention(image, image_pos, memory, memory_pos, spatial_frames=frames)
        theirs = ref.memory_attention(
            curr=[image.transpose(0, 1)],
            curr_pos=[image_pos.expand(batch, -1, -1).transpose(0, 1)],
            memory=memory.transpose(0, 1),
            memory_pos=memory_pos.transpose(0, 1),
            num_obj_ptr_tokens=pointer_tokens,
        )
    assert_close_logits(out, theirs.transpose(0, 1), what="conditioned features")


def test_memory_attention_ignores_masked_slots(models):
    """Padding slots masked out give the oracle's answer on the unpadded memory."""
    ours, ref = models
    generator = torch.Generator().manual_seed(11)
    hw = 64 * 64
    image = torch.randn(1, hw, 256, generator=generator)
    image_pos = torch.randn(1, hw, 256, generator=generator)
    spatial = torch.randn(1, 3, hw, 64, generator=generator)  # frame 1 is padding
    pointers = torch.randn(1, 12, 64, generator=generator)  # tokens 4..7 are padding
    spatial_pos = torch.randn(1, 3, hw, 64, generator=generator)
    pointer_pos = torch.randn(1, 12, 64, generator=generator)
    spatial_keep, pointer_keep = torch.tensor([0, 2]), torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])
    key_mask = torch.cat([torch.tensor([True, False, True]).repeat_interleave(hw), torch.ones(12, dtype=torch.bool)])
    key_mask[3 * hw + 4 : 3 * hw + 8] = False
    memory = torch.cat([spatial.flatten(1, 2), pointers], dim=1)
    memory_pos = torch.cat([spatial_pos.flatten(1, 2), pointer_pos], dim=1)
    with torch.no_grad():
        out = ours.memory_attention(image, image_pos, memory, memory_pos, spatial_frames=3, key_mask=key_mask[None])
        kept = torch.cat([spatial[:, spatial_keep].flatten(1, 2), pointers[:, pointer_keep]], dim=1)
        kept_pos = torch.cat([spatial_pos[:, spatial_keep].flatten(1, 2), pointer_pos[:, pointer_keep]], dim=1)
        theirs = ref.memory_attention(
            curr=[image.transpose(0, 1)],
            curr_pos=[image_pos.transpose(0, 1)],
            memory=kept.transpose(0, 1),
            memory_pos=kept_pos.transpose(0, 1),
            num_obj_ptr_tokens=8,
        )
    assert_close_logits(out, theirs.transpose(0, 1), what="masked memory attention")
