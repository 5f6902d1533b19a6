"""SAM 3's segmentation head (prompt cross-attention, pixel decoder, mask predictor) against Meta's modules, fp32 on
the CPU, with perturbed random weights."""

from __future__ import annotations

import time

import pytest
import torch
from oracle import assert_close_logits
from oracle_sam3 import perturbed, sam3_modules

from sam2rt.model.sam3.segmentation import PixelDecoder, SegmentationHead

WIDTH, HEADS, QUERIES = 64, 4, 10
SIDES = (32, 16, 8)  # the FPN levels, finest first; the coarsest is the encoder's grid
BATCH, PROMPT_TOKENS = 2, 4


@pytest.fixture(scope="module", autouse=True)
def oracle():
    sam3_modules()


def meta_head(width: int, heads: int):
    """Meta's head as `_create_segmentation_head` configures it, at the given sizes, in eval mode."""
    from sam3.model.maskformer_segmentation import PixelDecoder as MetaPixelDecoder
    from sam3.model.maskformer_segmentation import UniversalSegmentationHead
    from sam3.model.model_misc import MultiheadAttentionWrapper

    pixel_decoder = MetaPixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=width)
    head = UniversalSegmentationHead(
        hidden_dim=width,
        upsampling_stages=3,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=True,
        cross_attend_prompt=MultiheadAttentionWrapper(num_heads=heads, dropout=0, embed_dim=width),
        pixel_decoder=pixel_decoder,
    )
    return head.eval()


def head_inputs(width: int, sides: tuple[int, ...], backbone_batch: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    features = [torch.randn(backbone_batch, width, side, side, generator=generator) for side in sides]
    image = torch.randn(BATCH, sides[-1] ** 2, width, generator=generator)
    queries = torch.randn(BATCH, QUERIES, width, generator=generator)
    prompt = torch.randn(BATCH, PROMPT_TOKENS, width, generator=generator)
    padding = torch.zeros(BATCH, PROMPT_TOKENS, dtype=torch.bool)
    padding[1, 2:] = True  # the second prompt has 2 tokens
    return features, image, queries, prompt, padding


def run_meta_head(head, features, image, queries, prompt, padding, image_ids):
    """Meta's head called as `Sam3Image._run_segmentation_heads` calls it (seq-first encoder tokens and prompt,
    every decoder layer's queries, of which it uses the last)."""
    layered_queries = torch.stack((torch.zeros_like(queries), queries))  # (L, B, Q, C)
    out = head(
        backbone_feats=features,
        obj_queries=layered_queries,
        image_ids=image_ids,
        encoder_hidden_states=image.transpose(0, 1),
        prompt=prompt.transpose(0, 1),
        prompt_mask=padding,
    )
    return out["pred_masks"], out["semantic_seg"]


def test_state_dict_keys_equal_meta():
    reference = meta_head(WIDTH, HEADS)
    ours = SegmentationHead(WIDTH, HEADS)
    assert list(ours.state_dict().keys()) == list(reference.state_dict().keys())
    ours.load_state_dict(reference.state_dict(), strict=True)


@torch.no_grad()
def test_pixel_decoder_matches_meta():
    reference = meta_head(WIDTH, HEADS).pixel_decoder
    ours = PixelDecoder(WIDTH, 3).eval()
    ours.load_state_dict(perturbed(reference, seed=1), strict=True)
    features, *_ = head_inputs(WIDTH, SIDES, BATCH, seed=2)
    theirs = reference(features)
    mine = ours(features)
    assert mine.shape == (BATCH, WIDTH, SIDES[0], SIDES[0])
    print(f"pixel decoder max |diff| {assert_close_logits(mine, theirs, what='pixels'):.3g}")
    assert theirs.std() > 0.1


@pytest.mark.parametrize("backbone_batch", [BATCH, 1])
@torch.no_grad()
def test_head_matches_meta(backbone_batch):
    reference = meta_head(WIDTH, HEADS)
    ours = SegmentationHead(WIDTH, HEADS).eval()
    ours.load_state_dict(perturbed(reference, seed=3), strict=True)
    features, image, queries, prompt, padding = head_inputs(WIDTH, SIDES, backbone_batch, seed=4)
    # batch 1: one image shared by both prompts, as Meta's image_ids (0, 0)
    image_ids = torch.arange(BATCH) if backbone_batch == BATCH else torch.zeros(BATCH, dtype=torch.long)
    masks, semantic = run_meta_head(reference, features, image, queries, prompt, padding, image_ids)
    mine = ours(features, image, queries, prompt, padding)
    assert mine.mask_logits.shape == (BATCH, QUERIES, SIDES[0], SIDES[0])
    assert mine.semantic_logits.shape == (BATCH, 1, SIDES[0], SIDES[0])
    diffs = (
        assert_close_logits(mine.mask_logits, masks, what="mask logits"),
        assert_close_logits(mine.semantic_logits, semantic, what="semantic logits"),
    )
    print(f"backbone batch {backbone_batch}: max |diff| masks, semantic {diffs}")
    # not trivial: masks vary over pixels, queries and the two prompts
    assert masks.std() > 0.1 and semantic.std() > 1e-2
    assert (masks[:, 0] - masks[:, 1]).abs().max() > 1e-2
    assert (masks[0] - masks[1]).abs().max() > 1e-2


@torch.no_grad()
def test_head_prompt_padding_ignored():
    ours = SegmentationHead(WIDTH, HEADS).eval()
    perturbed(ours, seed=5)
    features, image, queries, prompt, padding = head_inputs(WIDTH, SIDES, BATCH, seed=6)
    base = ours(features, image, queries, prompt, padding).mask_logits
    changed = prompt.clone()
    changed[1, 2:] += 5.0  # the second prompt's padding
    assert_close_logits(ours(features, image, queries, changed, padding).mask_logits, base, rel=1e-6, what="padding")
    changed[1, 0] += 5.0  # a valid token
    assert (ours(features, image, queries, changed, padding).mask_logits[1] - base[1]).abs().max() > 1e-3


@torch.no_grad()
def test_head_official_widths_match_meta():
    """The official widths (256, 8 heads); a quarter-size image (72, 36, 18 instead of 288, 144, 72)."""
    from sam3.model_builder import _create_segmentation_head

    reference = _create_segmentation_head().eval()
    ours = SegmentationHead().eval()
    ours.load_state_dict(perturbed(reference, seed=7), strict=True)
    features, image, queries, prompt, padding = head_inputs(256, (72, 36, 18), BATCH, seed=8)
    start = time.perf_counter()
    mine = ours(features, image, queries, prompt, padding)
    ours_seconds = time.perf_counter() - start
    masks, semantic = run_meta_head(reference, features, image, queries, prompt, padding, torch.arange(BATCH))
    diffs = (
        assert_close_logits(mine.mask_logits, masks, what="mask logits"),
        assert_close_logits(mine.semantic_logits, semantic, what="semantic logits"),
    )
    print(f"official widths, ours {ours_seconds:.2f} s: max |diff| masks, semantic {diffs}")
    assert masks.std() > 0.1
