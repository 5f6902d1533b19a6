"""SAM 3's DETR decoder (presence token, box relative position bias) and dot-product scoring against Meta's modules,
fp32 on the CPU, with perturbed random weights."""

from __future__ import annotations

import time

import pytest
import torch
from oracle import assert_close_logits
from oracle_sam3 import perturbed, sam3_modules
from torch import nn

from sam2rt.model.sam3.decoder import TransformerDecoder
from sam2rt.model.sam3.scoring import DotProductScoring

WIDTH, HEADS, LAYERS, QUERIES, FFN = 64, 4, 2, 12, 128
RESOLUTION, STRIDE = 128, 16  # an 8x8 grid of image features
BATCH, PROMPT_TOKENS = 2, 5


@pytest.fixture(scope="module", autouse=True)
def oracle():
    sam3_modules()


def meta_decoder(width: int, heads: int, layers: int, queries: int, ffn: int, resolution: int, stride: int):
    """Meta's decoder as `_create_transformer_decoder` configures it, at the given sizes, in eval mode."""
    from sam3.model.decoder import TransformerDecoder as MetaDecoder
    from sam3.model.decoder import TransformerDecoderLayer
    from sam3.model.model_misc import MultiheadAttentionWrapper

    layer = TransformerDecoderLayer(
        activation="relu",
        d_model=width,
        dim_feedforward=ffn,
        dropout=0.1,
        cross_attention=MultiheadAttentionWrapper(num_heads=heads, dropout=0.1, embed_dim=width),
        n_heads=heads,
        use_text_cross_attention=True,
    )
    decoder = MetaDecoder(
        layer=layer,
        num_layers=layers,
        num_queries=queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=width,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        resolution=resolution,
        stride=stride,
        use_act_checkpoint=True,
        presence_token=True,
    )
    return decoder.eval()


def run_meta_decoder(decoder, image, image_pos, side, prompt, padding):
    """Meta's decoder called as `Sam3Image._run_decoder` calls it at inference, batch-first in and out: the last
    layer's queries, boxes (as `_update_scores_and_boxes` computes them) and presence logits."""
    from sam3.model.model_misc import inverse_sigmoid

    batch = image.shape[0]
    tgt = decoder.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
    hs, reference_boxes, presence, _ = decoder(
        tgt=tgt,
        memory=image.transpose(0, 1),
        memory_key_padding_mask=None,
        pos=image_pos.transpose(0, 1),
        reference_boxes=None,
        level_start_index=torch.tensor([0]),
        spatial_shapes=torch.tensor([[side, side]]),
        valid_ratios=torch.ones(batch, 1, 2),
        tgt_mask=None,
        memory_text=prompt.transpose(0, 1),
        text_attention_mask=padding,
        apply_dac=False,
    )
    hs = hs.transpose(1, 2)  # (L, B, Q, C)
    reference_boxes = reference_boxes.transpose(1, 2)  # (L, B, Q, 4)
    boxes = (inverse_sigmoid(reference_boxes) + decoder.bbox_embed(hs)).sigmoid()
    return hs[-1], boxes[-1], presence.transpose(1, 2)[-1]


def decoder_inputs(width: int, side: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(BATCH, side * side, width, generator=generator)
    image_pos = torch.randn(BATCH, side * side, width, generator=generator)
    prompt = torch.randn(BATCH, PROMPT_TOKENS, width, generator=generator)
    padding = torch.zeros(BATCH, PROMPT_TOKENS, dtype=torch.bool)
    padding[0, 3:] = True  # the first prompt has 3 tokens, the second 5
    return image, image_pos, prompt, padding


def paired_decoders(width=WIDTH, heads=HEADS, layers=LAYERS, queries=QUERIES, ffn=FFN, seed=0):
    reference = meta_decoder(width, heads, layers, queries, ffn, RESOLUTION, STRIDE)
    ours = TransformerDecoder(width, heads, layers, queries, ffn).eval()
    ours.load_state_dict(perturbed(reference, seed), strict=True)
    return ours, reference


def test_state_dict_keys_equal_meta():
    reference = meta_decoder(WIDTH, HEADS, LAYERS, QUERIES, FFN, RESOLUTION, STRIDE)
    ours = TransformerDecoder(WIDTH, HEADS, LAYERS, QUERIES, FFN)
    assert list(ours.state_dict().keys()) == list(reference.state_dict().keys())
    ours.load_state_dict(reference.state_dict(), strict=True)


@torch.no_grad()
def test_box_position_bias_matches_meta():
    ours, reference = paired_decoders()
    side = RESOLUTION // STRIDE
    boxes = torch.rand(BATCH, QUERIES, 4, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    theirs = reference._get_rpb_matrix(boxes.transpose(0, 1), (side, side))  # (B, heads, Q, HW)
    # Meta's attention mask is that flattened to (B*heads, Q, HW): batch-major, as our (B, heads, Q, HW)
    assert theirs.flatten(0, 1).view(BATCH, HEADS, QUERIES, side * side).equal(theirs)
    mine = ours.box_position_bias(boxes, side, side)
    assert mine.shape == (BATCH, HEADS, 1 + QUERIES, side * side)
    assert mine[:, :, 0].abs().max() == 0  # the presence token's row
    assert_close_logits(mine[:, :, 1:], theirs, what="box bias")
    assert theirs.std() > 1e-2


@torch.no_grad()
def test_decoder_matches_meta():
    ours, reference = paired_decoders()
    side = RESOLUTION // STRIDE
    image, image_pos, prompt, padding = decoder_inputs(WIDTH, side, seed=2)
    mine = ours(image, image_pos, (side, side), prompt, padding)
    queries, boxes, presence = run_meta_decoder(reference, image, image_pos, side, prompt, padding)
    assert mine.queries.shape == (BATCH, QUERIES, WIDTH) and mine.boxes.shape == (BATCH, QUERIES, 4)
    assert mine.presence_logits.shape == (BATCH, 1)
    diffs = [
        assert_close_logits(mine.queries, queries, what="queries"),
        assert_close_logits(mine.boxes, boxes, what="boxes"),
        assert_close_logits(mine.presence_logits, presence, what="presence logits"),
    ]
    print(f"max |diff| queries, boxes, presence: {diffs}")
    # not trivial: outputs vary over queries and between the two images
    assert queries.std() > 0.1 and boxes.std() > 1e-2
    assert (boxes[0] - boxes[1]).abs().max() > 1e-3
    assert (presence[0] - presence[1]).abs().max() > 1e-4


@torch.no_grad()
def test_decoder_padding_and_bias_matter():
    ours, _ = paired_decoders()
    side = RESOLUTION // STRIDE
    image, image_pos, prompt, padding = decoder_inputs(WIDTH, side, seed=3)
    base = ours(image, image_pos, (side, side), prompt, padding)
    padded_changed = prompt.clone()
    padded_changed[0, 3:] += 5.0  # padding tokens of the first prompt: no effect
    valid_changed = prompt.clone()
    valid_changed[0, 0] += 5.0
    same = ours(image, image_pos, (side, side), padded_changed, padding)
    other = ours(image, image_pos, (side, side), valid_changed, padding)
    assert_close_logits(same.queries, base.queries, rel=1e-6, what="padding ignored")
    assert (other.queries[0] - base.queries[0]).abs().max() > 1e-3
    # the box bias changes the result: without the RPB MLPs' output bias and weights the queries differ
    for mlp in (ours.boxRPB_embed_x, ours.boxRPB_embed_y):
        mlp.layers[-1].weight.zero_()
        mlp.layers[-1].bias.zero_()
    unbiased = ours(image, image_pos, (side, side), prompt, padding)
    assert (unbiased.queries - base.queries).abs().max() > 1e-3


@torch.no_grad()
def test_decoder_official_sizes_match_meta():
    from sam3.model_builder import _create_transformer_decoder

    reference = _create_transformer_decoder().eval()
    ours = TransformerDecoder().eval()
    ours.load_state_dict(perturbed(reference, seed=5), strict=True)
    side = 1008 // 14
    image, image_pos, prompt, padding = decoder_inputs(256, side, seed=6)
    start = time.perf_counter()
    mine = ours(image, image_pos, (side, side), prompt, padding)
    ours_seconds = time.perf_counter() - start
    queries, boxes, presence = run_meta_decoder(reference, image, image_pos, side, prompt, padding)
    diffs = [
        assert_close_logits(mine.queries, queries, what="queries"),
        assert_close_logits(mine.boxes, boxes, what="boxes"),
        assert_close_logits(mine.presence_logits, presence, what="presence logits"),
    ]
    print(f"official sizes, ours {ours_seconds:.2f} s; max |diff| queries, boxes, presence: {diffs}")
    assert mine.queries.shape == (BATCH, 200, 256)
    assert queries.std() > 0.1 and boxes.std() > 1e-2


def meta_scoring(width: int, hidden: int):
    from sam3.model.model_misc import MLP
    from sam3.model.model_misc import DotProductScoring as MetaScoring

    prompt_mlp = MLP(width, hidden, width, 2, dropout=0.1, residual=True, out_norm=nn.LayerNorm(width))
    return MetaScoring(d_model=width, d_proj=width, prompt_mlp=prompt_mlp).eval()


@pytest.mark.parametrize("width, hidden", [(WIDTH, FFN), (256, 2048)])
@torch.no_grad()
def test_scoring_matches_meta(width, hidden):
    reference = meta_scoring(width, hidden)
    ours = DotProductScoring(width, width, hidden).eval()
    assert list(ours.state_dict().keys()) == list(reference.state_dict().keys())
    ours.load_state_dict(perturbed(reference, seed=7), strict=True)
    generator = torch.Generator().manual_seed(8)
    queries = torch.randn(BATCH, QUERIES, width, generator=generator)
    prompt = torch.randn(BATCH, PROMPT_TOKENS, width, generator=generator)
    padding = torch.zeros(BATCH, PROMPT_TOKENS, dtype=torch.bool)
    padding[0, 3:] = True
    for scale in (1.0, 40.0):  # 40: some logits reach the clamp at +-12
        mine = ours(queries * scale, prompt, padding)
        theirs = reference(queries[None] * scale, prompt.transpose(0, 1), padding)  # (1, B, Q, 1)
        assert mine.shape == (BATCH, QUERIES)
        diff = assert_close_logits(mine, theirs[0, ..., 0], rel=1e-5, what="scores")
        print(f"width {width}, scale {scale}: max |diff| {diff:.3g}")
        assert theirs.std() > 1e-2
    assert (theirs.abs() == 12.0).any()
    # padding tokens do not count
    changed = prompt.clone()
    changed[0, 3:] += 5.0
    assert_close_logits(ours(queries, changed, padding), ours(queries, prompt, padding), rel=1e-6, what="padding")
