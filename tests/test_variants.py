"""Every official variant: state-dict keys and shapes equal the official ones; derived sizes follow image_size."""

from __future__ import annotations

import pytest
import torch
from oracle import config_path

import sam2rt


# EdgeTAM's keys are compared with Meta's EdgeTAM code in test_parity_edgetam.py.
@pytest.mark.parametrize("variant", [name for name, spec in sam2rt.VARIANTS.items() if spec.release != "edgetam"])
def test_state_dict_keys_and_shapes_match_official(variant):
    from sam2.build_sam import build_sam2

    reference = {
        k: tuple(v.shape) for k, v in build_sam2(config_path(variant), None, device="cpu").state_dict().items()
    }
    ours = {k: tuple(v.shape) for k, v in sam2rt.build_model(variant).state_dict().items()}
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    assert {k: s for k, s in ours.items() if reference[k] != s} == {}


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(ValueError, match="sam2.1_hiera_tiny"):
        sam2rt.build_model("sam3_hiera_huge")


@pytest.mark.parametrize("image_size", [0, 500, -32])
def test_image_size_must_be_a_positive_multiple_of_32(image_size):
    with pytest.raises(ValueError, match="multiple of 32"):
        sam2rt.build_model("sam2.1_hiera_tiny", image_size=image_size)


@pytest.mark.parametrize("image_size", [512, 1024])
def test_sizes_follow_image_size(image_size):
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=image_size)
    side = image_size // 16
    with torch.no_grad():
        features = model.encode_image(torch.randn(1, 3, image_size, image_size))
    assert features.embed.shape == (1, 256, side, side)
    assert features.high_res[0].shape == (1, 32, 4 * side, 4 * side)
    assert features.high_res[1].shape == (1, 64, 2 * side, 2 * side)
    assert model.sam_prompt_encoder.mask_input_size == 4 * side
    assert model.memory_attention.rope_cos.shape == (side * side, 128)
