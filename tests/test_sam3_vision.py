"""SAM 3's vision backbone (the ViT trunk and its dual ViTDet neck) against Meta's modules, fp32 on the CPU, with
perturbed random weights; and the official sizes' state-dict keys."""

from __future__ import annotations

import time

import pytest
import torch
from oracle import assert_close_logits
from oracle_sam3 import perturbed, sam3_modules

from sam2rt.model.sam3.neck import DualViTDetNeck, VisionFeatures
from sam2rt.model.sam3.vit import PerceptionViT

# Small trunks. "padded": an 8x8 grid in windows of 3 (padded to 9), the 4x4 pretraining grid tiled exactly.
# "cropped": a 12x12 grid in windows of 4 (no padding), the 5x5 pretraining grid tiled then cropped, and a window
# block after the last global one (it runs in Meta's trunk but changes no output).
SMALL = {
    "padded": dict(image_size=112, window_size=3, global_blocks=(1, 3), pretrain_image_size=56),
    "cropped": dict(image_size=168, window_size=4, global_blocks=(0, 2), pretrain_image_size=70),
}
WIDTH, DEPTH, HEADS, NECK_WIDTH, BATCH = 64, 4, 4, 32, 2


@pytest.fixture(scope="module", autouse=True)
def oracle():
    sam3_modules()


def meta_vit(
    image_size: int = 1008,
    window_size: int = 24,
    global_blocks: tuple[int, ...] = (7, 15, 23, 31),
    pretrain_image_size: int = 336,
    embed_dim: int = 1024,
    depth: int = 32,
    num_heads: int = 16,
):
    """Meta's ViT as `_create_vit_backbone` configures it, at the given sizes, in eval mode."""
    from sam3.model.vitdet import ViT

    return ViT(
        img_size=image_size,
        pretrain_img_size=pretrain_image_size,
        patch_size=14,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4.625,
        norm_layer="LayerNorm",
        drop_path_rate=0.1,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=global_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=window_size,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    ).eval()


def meta_neck(trunk, d_model: int, add_sam2_neck: bool):
    """Meta's neck as `_create_vit_neck` configures it, over `trunk`, in eval mode."""
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine

    return Sam3DualViTDetNeck(
        trunk=trunk,
        position_encoding=PositionEmbeddingSine(num_pos_feats=d_model, normalize=True, temperature=10000),
        d_model=d_model,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        add_sam2_neck=add_sam2_neck,
    ).eval()


def small_pair(name: str) -> tuple[torch.nn.Module, PerceptionViT]:
    """Meta's small trunk and ours, with the same perturbed weights (loaded strictly into ours)."""
    config = SMALL[name]
    torch.manual_seed(0)
    reference = meta_vit(**config, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS)
    ours = PerceptionViT(**config, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS).eval()
    ours.load_state_dict(perturbed(reference, seed=1), strict=True)
    return reference, ours


def images(image_size: int, seed: int) -> torch.Tensor:
    return torch.randn(BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def assert_not_trivial(first: torch.Tensor, second: torch.Tensor, what: str) -> None:
    """Outputs that vary over their elements and with the input: a comparison of them can fail."""
    assert first.float().std().item() > 1e-2, f"{what}: nearly constant"
    assert (first - second).abs().max().item() > 1e-2, f"{what}: the same for different inputs"


def same_keys_and_shapes(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert set(ours_state) == set(reference_state)
    for key, value in reference_state.items():
        assert ours_state[key].shape == value.shape, key
        assert ours_state[key].dtype == value.dtype, key


@pytest.mark.parametrize("name", sorted(SMALL))
def test_trunk_matches_meta(name):
    reference, ours = small_pair(name)
    size = SMALL[name]["image_size"]
    with torch.no_grad():
        expected = [reference(images(size, seed))[-1] for seed in (2, 3)]
        got = [ours(images(size, seed)) for seed in (2, 3)]
    grid = size // 14
    assert got[0].shape == (BATCH, WIDTH, grid, grid)
    assert_not_trivial(got[0], got[1], "trunk")
    for ours_out, meta_out in zip(got, expected):
        diff = assert_close_logits(ours_out, meta_out, what="trunk features")
        print(f"{name}: trunk max |diff| {diff:.2e} (largest |value| {meta_out.abs().max().item():.1f})")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_trunk_keys_and_rotary_tables_equal_meta(name):
    config = SMALL[name]
    reference = meta_vit(**config, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS)
    ours = PerceptionViT(**config, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS)
    same_keys_and_shapes(ours, reference)
    # The complex tables are our own (not loaded): the same angles as Meta's, and as the real tables forward reads.
    for index, (block, meta_block) in enumerate(zip(ours.blocks, reference.blocks)):
        table, meta_table = block.attn.freqs_cis, meta_block.attn.freqs_cis
        assert (table - meta_table).abs().max().item() < 1e-6, f"block {index}"
        cos, sin = (
            (ours.window_rope_cos, ours.window_rope_sin)
            if block.window
            else (ours.global_rope_cos, ours.global_rope_sin)
        )
        assert torch.equal(table.real, cos) and torch.equal(table.imag, sin), f"block {index}"


def test_trunk_refuses_another_image_size():
    _, ours = small_pair("padded")
    with pytest.raises(ValueError, match="patch grid"):
        ours(torch.zeros(1, 3, 140, 140))


@pytest.mark.parametrize("add_sam2_neck", [False, True])
def test_neck_matches_meta(add_sam2_neck):
    reference_trunk, ours_trunk = small_pair("padded")
    reference = meta_neck(reference_trunk, NECK_WIDTH, add_sam2_neck)
    ours = DualViTDetNeck(ours_trunk, d_model=NECK_WIDTH, add_sam2_neck=add_sam2_neck).eval()
    same_keys_and_shapes(ours, reference)
    ours.load_state_dict(perturbed(reference, seed=4), strict=True)
    size = SMALL["padded"]["image_size"]
    with torch.no_grad():
        expected = [reference(images(size, seed)) for seed in (5, 6)]
        got = [ours(images(size, seed)) for seed in (5, 6)]
    assert isinstance(got[0], VisionFeatures)
    sides = [32, 16, 8, 4]  # an 8x8 grid up by 4 and 2, itself, down by 2
    assert [level.shape for level in got[0].levels] == [(BATCH, NECK_WIDTH, s, s) for s in sides]
    assert (got[0].sam2_levels is None) == (not add_sam2_neck) and (got[0].sam2_pos is None) == (not add_sam2_neck)
    worst = 0.0
    for ours_out, (meta_levels, meta_pos, meta_sam2_levels, meta_sam2_pos) in zip(got, expected):
        pairs = [("level", ours_out.levels, meta_levels), ("pos", ours_out.pos, meta_pos)]
        if add_sam2_neck:
            pairs += [
                ("sam2 level", ours_out.sam2_levels, meta_sam2_levels),
                ("sam2 pos", ours_out.sam2_pos, meta_sam2_pos),
            ]
        for what, ours_list, meta_list in pairs:
            assert len(ours_list) == len(meta_list) == 4
            for index, (ours_tensor, meta_tensor) in enumerate(zip(ours_list, meta_list)):
                worst = max(worst, assert_close_logits(ours_tensor, meta_tensor, what=f"{what} {index}"))
    print(f"neck (sam2 neck: {add_sam2_neck}): max |diff| {worst:.2e}")
    for index in range(4):
        assert_not_trivial(got[0].levels[index], got[1].levels[index], f"level {index}")
        assert got[0].pos[index].std().item() > 0.1
        if add_sam2_neck:
            assert_not_trivial(got[0].sam2_levels[index], got[1].sam2_levels[index], f"sam2 level {index}")
            # the second pyramid has its own weights
            assert (got[0].sam2_levels[index] - got[0].levels[index]).abs().max().item() > 1e-2


def test_official_sizes_keys_and_tables_equal_meta():
    start = time.perf_counter()
    torch.manual_seed(0)
    reference = meta_neck(meta_vit(), d_model=256, add_sam2_neck=True)
    ours = DualViTDetNeck(add_sam2_neck=True)
    same_keys_and_shapes(ours, reference)
    assert ours.trunk.grid_side == 72 and ours.trunk.blocks[0].mlp.fc1.out_features == 4736
    assert [block.window for block in ours.trunk.blocks].count(0) == 4
    for index in (0, 7):  # a window block's table and a global block's, whose positions are scaled by 24 / 72
        table, meta_table = ours.trunk.blocks[index].attn.freqs_cis, reference.trunk.blocks[index].attn.freqs_cis
        assert (table - meta_table).abs().max().item() < 1e-6
    print(f"official sizes: built and compared in {time.perf_counter() - start:.1f} s")
