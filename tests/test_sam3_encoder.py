"""SAM 3's fusion encoder and its layer against Meta's (`sam3.model.encoder`), with the same perturbed weights."""

from __future__ import annotations

import time

import pytest
import torch
from oracle import assert_close_logits
from oracle_sam3 import perturbed, sam3_modules

from sam2rt.model.sam3.encoder import EncoderLayer, FusionEncoder


@pytest.fixture(scope="module")
def meta():
    sam3_modules()
    from sam3.model import encoder, model_misc

    return encoder, model_misc


def meta_layer(meta, d_model: int, heads: int, ffn: int, geometry: bool, batch_first: bool):
    """Meta's TransformerEncoderLayer as `_create_transformer_encoder` (or `_create_geometry_encoder`) builds it."""
    encoder, model_misc = meta

    def attention():
        return model_misc.MultiheadAttentionWrapper(
            num_heads=heads, dropout=0.1, embed_dim=d_model, batch_first=batch_first
        )

    return encoder.TransformerEncoderLayer(
        activation="relu",
        d_model=d_model,
        dim_feedforward=ffn,
        dropout=0.1,
        pos_enc_at_attn=not geometry,
        pos_enc_at_cross_attn_keys=geometry,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=attention(),
        cross_attention=attention(),
    )


def meta_fusion(meta, d_model: int, heads: int, ffn: int, layers: int):
    encoder, _ = meta
    return encoder.TransformerEncoderFusion(
        layer=meta_layer(meta, d_model, heads, ffn, geometry=False, batch_first=True),
        num_layers=layers,
        d_model=d_model,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    ).eval()


def prompt_padding(lengths: list[int], width: int) -> torch.Tensor:
    """(B, width) True past each row's length."""
    return torch.arange(width)[None] >= torch.tensor(lengths)[:, None]


def run_both(meta, d_model, heads, ffn, layers, size, lengths, seed=0):
    reference = meta_fusion(meta, d_model, heads, ffn, layers)
    ours = FusionEncoder(d_model, heads, ffn, layers).eval()
    ours.load_state_dict(perturbed(reference, seed), strict=True)
    generator = torch.Generator().manual_seed(seed + 10)
    batch, (height, width) = len(lengths), size
    image = torch.randn(batch, d_model, height, width, generator=generator)
    image_pos = torch.randn(batch, d_model, height, width, generator=generator)
    prompt = torch.randn(batch, max(lengths), d_model, generator=generator)
    padding = prompt_padding(lengths, max(lengths))

    def seq_first(x):  # (B, C, H, W) -> (H*W, B, C), as Sam3Image._get_img_feats gives it
        return x.flatten(2).permute(2, 0, 1)

    with torch.no_grad():
        out = reference(
            src=[seq_first(image)],
            src_key_padding_mask=None,
            src_pos=[seq_first(image_pos)],
            prompt=prompt.transpose(0, 1),
            prompt_pos=torch.zeros_like(prompt.transpose(0, 1)),
            prompt_key_padding_mask=padding,
            feat_sizes=[(height, width)],
        )
        fused = ours(image, image_pos, prompt, padding)
    assert out["padding_mask"] is None and torch.equal(out["memory_text"], prompt.transpose(0, 1))
    assert torch.equal(out["pos_embed"].transpose(0, 1), image_pos.flatten(2).transpose(1, 2))
    return fused, out["memory"].transpose(0, 1), (ours, image, image_pos, prompt, padding)


def test_fusion_encoder_matches_meta(meta):
    fused, expected, (ours, image, image_pos, prompt, padding) = run_both(meta, 64, 4, 128, 2, (8, 9), [5, 2])
    assert fused.shape == (2, 72, 64)
    diff = assert_close_logits(fused, expected, what="fused image tokens")
    print(f"fusion encoder, small: max |diff| {diff:.2e}")
    assert fused.std() > 0.1
    # the prompt counts, its padding does not
    with torch.no_grad():
        other_prompt = ours(image, image_pos, torch.randn_like(prompt), padding)
        noisy_padding = prompt.clone()
        noisy_padding[1, 2:] += 5.0
        same = ours(image, image_pos, noisy_padding, padding)
    assert (other_prompt - fused).abs().max() > 1e-2
    assert torch.allclose(same, fused, atol=1e-5)


def test_fusion_encoder_official_widths(meta):
    start = time.perf_counter()
    fused, expected, _ = run_both(meta, 256, 8, 2048, 6, (12, 12), [7, 33, 1], seed=3)
    diff = assert_close_logits(fused, expected, what="fused image tokens")
    print(f"fusion encoder, official widths, 12x12: max |diff| {diff:.2e}, {time.perf_counter() - start:.1f} s")


def test_fusion_keys_equal_meta(meta):
    reference = meta_fusion(meta, 256, 8, 2048, 6)
    assert set(FusionEncoder().state_dict()) == set(reference.state_dict())
    FusionEncoder().load_state_dict(reference.state_dict(), strict=True)


@pytest.mark.parametrize("geometry", [False, True])
def test_layer_matches_meta_both_configurations(meta, geometry):
    """The layer as each encoder configures it: the fusion's (batch first, pos at self-attention) and the
    geometry encoder's (sequence first, pos at the cross-attention's keys, padded queries)."""
    d_model, heads = 32, 2
    reference = meta_layer(meta, d_model, heads, 64, geometry=geometry, batch_first=not geometry).eval()
    ours = EncoderLayer(d_model, heads, 64, pos_in_self_attention=not geometry, pos_in_cross_keys=geometry).eval()
    ours.load_state_dict(perturbed(reference, 7), strict=True)
    generator = torch.Generator().manual_seed(1)
    tokens, pos = torch.randn(2, 2, 5, d_model, generator=generator)
    memory, memory_pos = torch.randn(2, 2, 11, d_model, generator=generator)
    padding, memory_padding = prompt_padding([5, 3], 5), prompt_padding([11, 4], 11)
    with torch.no_grad():
        if geometry:  # Meta's geometry layer is sequence first, with no query pos and padded queries
            expected = reference(
                tgt=tokens.transpose(0, 1),
                memory=memory.transpose(0, 1),
                tgt_key_padding_mask=padding,
                pos=memory_pos.transpose(0, 1),
            ).transpose(0, 1)
            out = ours(tokens, memory, memory_pos=memory_pos, padding=padding)
        else:
            expected = reference(tgt=tokens, memory=memory, query_pos=pos, memory_key_padding_mask=memory_padding)
            out = ours(tokens, memory, pos=pos, memory_padding=memory_padding)
    assert_close_logits(out, expected, what="layer output")
    assert out.std() > 0.1 and (out - tokens).abs().max() > 1e-2
