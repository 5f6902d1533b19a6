"""The image encoder of every SAM 2 variant other than sam2.1 tiny (covered module by module) against the oracle;
EdgeTAM's is in test_parity_edgetam.py."""

from __future__ import annotations

import pytest
import torch
from oracle import assert_close_logits, oracle_model, our_model

import sam2rt

# large at 512 keeps CI time sane; the others at the default 1024.
SAM2_VARIANTS = [name for name, spec in sam2rt.VARIANTS.items() if spec.release != "edgetam"]
CASES = [(v, 512 if v.endswith("large") else 1024) for v in SAM2_VARIANTS if v != "sam2.1_hiera_tiny"]


@pytest.mark.parametrize("variant,image_size", CASES, ids=[v for v, _ in CASES])
def test_image_encoder(variant, image_size):
    ours, ref = our_model(variant, image_size), oracle_model(variant, image_size)
    images = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(31))
    with torch.no_grad():
        mine = ours.encode_image(images)
        theirs = ref.forward_image(images)
    fpn = theirs["backbone_fpn"]
    assert_close_logits(mine.high_res[0], fpn[0], what="stride-4 skip")
    assert_close_logits(mine.high_res[1], fpn[1], what="stride-8 skip")
    assert_close_logits(mine.embed, fpn[2], what="stride-16 features")
