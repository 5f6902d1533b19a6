"""SAM 3's geometry (exemplar) encoder and RoIAlign against Meta's (`sam3.model.geometry_encoders`) and
torchvision's algorithm (`reference_roi_align`, a sample at a time)."""

from __future__ import annotations

import time

import pytest
import torch
from oracle import assert_close_logits
from oracle_sam3 import perturbed, reference_roi_align, sam3_modules

from sam2rt.model.sam3.geometry import GeometricPrompt, GeometryEncoder, join_padded
from sam2rt.model.sam3.roi_align import roi_align


@pytest.fixture(scope="module")
def meta():
    sam3_modules()
    from sam3.model import encoder, geometry_encoders, model_misc, position_encoding

    return encoder, geometry_encoders, model_misc, position_encoding


def meta_geometry_encoder(meta, d_model: int, heads: int, ffn: int, layers: int):
    """Meta's SequenceGeometryEncoder as `_create_geometry_encoder` builds it, at the given widths."""
    encoder, geometry_encoders, model_misc, position_encoding = meta

    def attention():
        return model_misc.MultiheadAttentionWrapper(num_heads=heads, dropout=0.1, embed_dim=d_model, batch_first=False)

    layer = encoder.TransformerEncoderLayer(
        activation="relu",
        d_model=d_model,
        dim_feedforward=ffn,
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=attention(),
        pos_enc_at_cross_attn_queries=False,
        pos_enc_at_cross_attn_keys=True,
        cross_attention=attention(),
    )
    pos_enc = position_encoding.PositionEmbeddingSine(num_pos_feats=d_model, normalize=True, temperature=10000)
    return geometry_encoders.SequenceGeometryEncoder(
        pos_enc=pos_enc,
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=d_model,
        num_layers=layers,
        layer=layer,
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    ).eval()


def padding_of(lengths: list[int], width: int) -> torch.Tensor:
    """(B, width) True past each row's length."""
    return torch.arange(width)[None] >= torch.tensor(lengths, dtype=torch.long)[:, None]


def random_prompt(generator, box_lengths: list[int], point_lengths: list[int], spread: float = 0.3):
    """Boxes in and around the image (centres beyond its edges, sizes from tiny to wider than the image)."""
    batch = len(box_lengths)
    num_boxes, num_points = max(box_lengths, default=0), max(point_lengths, default=0)
    centres = torch.rand(batch, num_boxes, 2, generator=generator) * (1 + 2 * spread) - spread
    sizes = torch.rand(batch, num_boxes, 2, generator=generator) ** 2 * 1.3 + 1e-3
    boxes = torch.cat([centres, sizes], dim=-1)
    points = torch.rand(batch, num_points, 2, generator=generator) * 1.2 - 0.1
    return GeometricPrompt(
        boxes=boxes,
        box_labels=torch.randint(0, 2, (batch, num_boxes), generator=generator),
        box_padding=padding_of(box_lengths, num_boxes),
        points=points,
        point_labels=torch.randint(0, 2, (batch, num_points), generator=generator),
        point_padding=padding_of(point_lengths, num_points),
    )


def run_meta(reference, meta, prompt: GeometricPrompt, image, image_pos):
    """Meta's encoder on the same prompt, sequence first as Sam3Image._encode_prompt passes it -> batch first."""
    _, geometry_encoders, _, _ = meta
    meta_prompt = geometry_encoders.Prompt(
        box_embeddings=prompt.boxes.transpose(0, 1),
        box_mask=prompt.box_padding,
        box_labels=prompt.box_labels.transpose(0, 1),
        point_embeddings=prompt.points.transpose(0, 1),
        point_mask=prompt.point_padding,
        point_labels=prompt.point_labels.transpose(0, 1),
    )
    height, width = image.shape[-2:]
    with torch.no_grad():
        tokens, padding = reference(
            geo_prompt=meta_prompt,
            img_feats=[image.flatten(2).permute(2, 0, 1)],  # (B, C, H, W) -> (H*W, B, C)
            img_sizes=[(height, width)],
            img_pos_embeds=[image_pos.flatten(2).permute(2, 0, 1)],
        )
    return tokens.transpose(0, 1), padding


def build_pair(meta, d_model=64, heads=4, ffn=128, layers=2, seed=0):
    reference = meta_geometry_encoder(meta, d_model, heads, ffn, layers)
    ours = GeometryEncoder(d_model, heads, ffn, layers).eval()
    ours.load_state_dict(perturbed(reference, seed), strict=True)
    return reference, ours


def image_and_pos(generator, batch, d_model, height, width):
    return (
        torch.randn(batch, d_model, height, width, generator=generator),
        torch.randn(batch, d_model, height, width, generator=generator),
    )


def test_geometry_encoder_matches_meta_with_padding(meta):
    """Boxes and points across a batch of 2, each kind padded in one row, labels of both signs."""
    reference, ours = build_pair(meta)
    generator = torch.Generator().manual_seed(0)
    prompt = random_prompt(generator, box_lengths=[3, 1], point_lengths=[1, 2])
    image, image_pos = image_and_pos(generator, 2, 64, 9, 8)
    expected, expected_padding = run_meta(reference, meta, prompt, image, image_pos)
    with torch.no_grad():
        tokens, padding = ours(prompt, image, image_pos)
    assert tokens.shape == (2, 2 + 3 + 1, 64)
    assert torch.equal(padding, expected_padding)
    assert padding.tolist() == [[False] * 5 + [True], [False] * 4 + [True] * 2]
    diff = assert_close_logits(tokens, expected, what="prompt tokens")  # padding tokens included
    print(f"geometry encoder, small: max |diff| {diff:.2e}")
    assert tokens[~padding].std() > 0.1

    # every input counts: the image, each box, each point, each label; padded entries do not
    with torch.no_grad():
        other_image = ours(prompt, image.roll(1, dims=-1), image_pos).tokens
        moved = prompt._replace(boxes=prompt.boxes + torch.tensor([0.05, 0.0, 0.0, 0.0]))
        moved_boxes = ours(moved, image, image_pos).tokens
        flipped = ours(prompt._replace(point_labels=1 - prompt.point_labels), image, image_pos).tokens
        noisy = prompt._replace(boxes=torch.where(prompt.box_padding[..., None], 5.0, prompt.boxes))
        padded_noise = ours(noisy, image, image_pos).tokens
    valid = ~padding
    for changed in (other_image, moved_boxes, flipped):
        assert (changed - tokens)[valid].abs().max() > 1e-2
    assert torch.allclose(padded_noise[valid], tokens[valid], atol=1e-5)


def test_boxes_only_and_text_only_prompts(meta):
    """The image model's prompts: boxes alone (points absent), and none at all (a text query: the CLS alone)."""
    reference, ours = build_pair(meta, seed=1)
    _, geometry_encoders, _, _ = meta
    generator = torch.Generator().manual_seed(1)
    image, image_pos = image_and_pos(generator, 2, 64, 8, 8)
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.3], [0.1, 0.9, 0.5, 0.5]], [[0.3, 0.6, 0.02, 0.01], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    cases = {
        "boxes": (GeometricPrompt.of_boxes(boxes, labels, padding_of([2, 1], 2)), boxes, labels, padding_of([2, 1], 2)),
        "text": (GeometricPrompt.empty(2), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), None),
    }
    for name, (prompt, meta_boxes, meta_labels, meta_padding) in cases.items():
        # as Sam3Image builds them: Prompt(box_embeddings, box_mask, box_labels), points left to their defaults
        meta_prompt = geometry_encoders.Prompt(
            box_embeddings=meta_boxes.transpose(0, 1),
            box_mask=padding_of([0, 0], 0) if meta_padding is None else meta_padding,
            box_labels=meta_labels.transpose(0, 1),
        )
        with torch.no_grad():
            expected, expected_padding = reference(
                geo_prompt=meta_prompt,
                img_feats=[image.flatten(2).permute(2, 0, 1)],
                img_sizes=[(8, 8)],
                img_pos_embeds=[image_pos.flatten(2).permute(2, 0, 1)],
            )
            tokens, padding = ours(prompt, image, image_pos)
        assert torch.equal(padding, expected_padding), name
        diff = assert_close_logits(tokens, expected.transpose(0, 1), what=f"{name} prompt tokens")
        print(f"geometry encoder, {name} only: max |diff| {diff:.2e}")
    assert tokens.shape == (2, 1, 64) and not padding.any()
    assert (tokens[0] - tokens[1]).abs().max() > 1e-2  # the CLS token attends to each row's own image


def test_geometry_encoder_official_sizes(meta):
    """Official widths and depth on SAM 3's 72x72 feature map, a few boxes."""
    start = time.perf_counter()
    reference, ours = build_pair(meta, d_model=256, heads=8, ffn=2048, layers=3, seed=2)
    generator = torch.Generator().manual_seed(2)
    prompt = random_prompt(generator, box_lengths=[2, 1], point_lengths=[1, 0], spread=0.1)
    image, image_pos = image_and_pos(generator, 2, 256, 72, 72)
    expected, expected_padding = run_meta(reference, meta, prompt, image, image_pos)
    with torch.no_grad():
        tokens, padding = ours(prompt, image, image_pos)
    assert torch.equal(padding, expected_padding)
    diff = assert_close_logits(tokens, expected, what="prompt tokens")
    print(f"geometry encoder, official sizes: max |diff| {diff:.2e}, {time.perf_counter() - start:.1f} s")


def test_geometry_keys_equal_meta(meta):
    reference = meta_geometry_encoder(meta, 256, 8, 2048, 3)
    assert set(GeometryEncoder().state_dict()) == set(reference.state_dict())
    GeometryEncoder().load_state_dict(reference.state_dict(), strict=True)


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5])
def test_roi_align_matches_torchvision_algorithm(sampling_ratio, aligned, spatial_scale):
    """Random boxes in and around a 9x11 map, partly or wholly outside, tiny, empty and far larger than it."""
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(2, 3, 9, 11, generator=generator)
    corner = torch.rand(2, 12, 2, generator=generator) * 30 - 8
    size = torch.rand(2, 12, 2, generator=generator) ** 3 * 40
    boxes = torch.cat([corner, corner + size], dim=-1) / spatial_scale
    boxes[0, 0] = torch.tensor([3.0, 4.0, 3.0, 4.0])  # empty
    boxes[0, 1] = torch.tensor([2.2, 3.1, 2.25, 3.12])  # tiny
    boxes[1, 0] = torch.tensor([-50.0, -40.0, 60.0, 70.0])  # far larger than the map
    boxes[1, 1] = torch.tensor([30.0, 30.0, 40.0, 40.0])  # wholly outside
    expected = reference_roi_align(features, list(boxes), 7, spatial_scale, sampling_ratio, aligned)
    pooled = roi_align(features, boxes, 7, spatial_scale, sampling_ratio, aligned)
    assert pooled.shape == (2, 12, 3, 7, 7)
    assert_close_logits(pooled.flatten(0, 1), expected, rel=1e-5, what="pooled bins")
    assert expected.std() > 0.1


def test_roi_align_output_size_and_no_boxes():
    features = torch.randn(1, 4, 6, 6)
    boxes = torch.tensor([[[0.5, 1.0, 5.5, 4.0]]])
    expected = reference_roi_align(features, list(boxes), (3, 3))
    assert_close_logits(roi_align(features, boxes, 3).flatten(0, 1), expected, rel=1e-5)
    assert roi_align(features, torch.zeros(1, 0, 4), 7).shape == (1, 0, 4, 7, 7)


def test_join_padded_keeps_valid_tokens_first():
    first = torch.arange(1.0, 4.0).view(1, 3, 1).repeat(2, 1, 1)  # tokens 1, 2, 3
    second = torch.arange(10.0, 12.0).view(1, 2, 1).repeat(2, 1, 1)  # tokens 10, 11
    joined, padding = join_padded(first, padding_of([3, 1], 3), second, padding_of([1, 2], 2))
    assert joined[..., 0].tolist() == [[1, 2, 3, 10, 11], [1, 10, 11, 0, 0]]
    assert padding.tolist() == [[False] * 4 + [True], [False] * 3 + [True] * 2]


def test_bf16_keeps_prompt_positions_in_fp32():
    """bf16 weights and features (as runtime.optimize gives them): coordinates, sample positions and sines stay in
    fp32, so a point is sampled where it lies (a bf16 grid is a seventh of a pixel off on a 72x72 map)."""
    torch.manual_seed(0)
    ours = GeometryEncoder(64, 4, 128, 1).eval()
    generator = torch.Generator().manual_seed(4)
    prompt = random_prompt(generator, box_lengths=[2], point_lengths=[3], spread=0.0)
    image, image_pos = image_and_pos(generator, 1, 64, 72, 72)
    with torch.no_grad():
        full = ours(prompt, image, image_pos).tokens
        half = ours.bfloat16()(prompt, image.bfloat16(), image_pos.bfloat16()).tokens
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()
