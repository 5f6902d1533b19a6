"""SAM 3's weights in Hugging Face transformers' format, converted by `checkpoints.sam3_keys` and loaded strictly
into our detector, against transformers' own `Sam3Model` (the second oracle): the same perturbed random weights,
the same images and token ids, and the raw outputs (query logits, presence logits, boxes, mask logits) for text
prompts and for exemplar boxes. The official sizes' keys are checked on the meta device.

transformers' SAM 3 calls `torchvision.ops.roi_align`, and PyPI has no CPU torchvision. The suite's torchvision
stand-in (oracle.py) has no version, which transformers' import-time version checks cannot parse; so while
transformers' modules are imported the stand-in (if another test registered it) is taken out of `sys.modules`
and put back after, and `modeling_sam3.torchvision` is given the reference RoIAlign of oracle_sam3.py. That
attribute of transformers' module is the only thing changed; nothing else of the suite's is.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch
from oracle import assert_close_logits
from oracle_sam3 import SMALL_SPEC, perturbed, reference_roi_align

from sam2rt.checkpoints.files import CheckpointError
from sam2rt.checkpoints.sam3_keys import (
    POINT_PROMPT_KEYS,
    VIDEO_DETECTOR_PREFIX,
    checkpoint_format,
    detector_from_transformers,
)
from sam2rt.model.sam3.config import SAM3, Sam3Spec
from sam2rt.model.sam3.detector import Sam3Detector
from sam2rt.model.sam3.geometry import GeometricPrompt

SMALL = SMALL_SPEC
SOT, EOT = 49406, 49407  # CLIP's start and end tokens; 0 pads


def _import_transformers_sam3():
    """transformers' Sam3Model and Sam3Config, importable on a CPU torch without torchvision (see above)."""
    pytest.importorskip("transformers", reason="the second oracle is Hugging Face transformers' Sam3Model")
    hidden = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "torchvision"}
    for name in hidden:
        del sys.modules[name]
    try:
        from transformers.utils import import_utils

        import_utils.is_torchvision_available.cache_clear()  # answered while the stand-in was registered, maybe
        # the module itself: the package's lazy attribute would be a placeholder without torchvision
        modeling_sam3 = importlib.import_module("transformers.models.sam3.modeling_sam3")
        Sam3Config = modeling_sam3.Sam3Config
    finally:
        sys.modules.update(hidden)
    modeling_sam3.torchvision = types.SimpleNamespace(ops=types.SimpleNamespace(roi_align=reference_roi_align))
    return modeling_sam3.Sam3Model, Sam3Config


def _hf_config(spec: Sam3Spec, Sam3Config, vit_layer_norm_eps: float = 1e-5):
    """transformers' configuration of the sizes of `spec` (the ViT's LayerNorm eps: Meta's 1e-5 unless said)."""
    vision, text, d = spec.vision, spec.text, spec.d_model
    grid = vision.grid
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=vision.width,
                intermediate_size=int(vision.width * vision.mlp_ratio),
                num_hidden_layers=vision.depth,
                num_attention_heads=vision.heads,
                image_size=vision.image_size,
                patch_size=vision.patch_size,
                window_size=vision.window_size,
                global_attn_indexes=list(vision.global_blocks),
                pretrain_image_size=vision.pretrain_image_size,
                layer_norm_eps=vit_layer_norm_eps,
            ),
            fpn_hidden_size=d,
            backbone_feature_sizes=[[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
            scale_factors=list(spec.neck_scales),
        ),
        text_config=dict(
            model_type="clip_text_model",
            vocab_size=text.vocab_size,
            hidden_size=text.width,
            intermediate_size=4 * text.width,
            projection_dim=512,
            num_hidden_layers=text.layers,
            num_attention_heads=text.heads,
            max_position_embeddings=text.context_length,
            hidden_act="gelu",
        ),
        geometry_encoder_config=dict(
            hidden_size=d,
            num_layers=spec.geometry_layers,
            num_attention_heads=spec.heads,
            intermediate_size=spec.feedforward,
            roi_size=spec.roi_size,
        ),
        detr_encoder_config=dict(
            hidden_size=d,
            num_layers=spec.encoder_layers,
            num_attention_heads=spec.heads,
            intermediate_size=spec.feedforward,
        ),
        detr_decoder_config=dict(
            hidden_size=d,
            num_layers=spec.decoder_layers,
            num_attention_heads=spec.heads,
            intermediate_size=spec.feedforward,
            num_queries=spec.queries,
        ),
        mask_decoder_config=dict(
            hidden_size=d, num_attention_heads=spec.heads, num_upsampling_stages=spec.upsampling_stages
        ),
    )


@pytest.fixture(scope="module")
def transformers_sam3():
    return _import_transformers_sam3()


@pytest.fixture(scope="module")
def models(transformers_sam3):
    Sam3Model, Sam3Config = transformers_sam3
    torch.manual_seed(0)
    theirs = Sam3Model(_hf_config(SMALL, Sam3Config)).eval()
    weights = perturbed(theirs, seed=5)
    ours = Sam3Detector(SMALL).eval()
    ours.load_state_dict(detector_from_transformers(weights, SMALL), strict=True)
    return theirs, ours, weights


def _images(count: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, SMALL.image_size, SMALL.image_size, generator=generator) * 2 - 1  # normalised


def _token_ids(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """A phrase of `length` words a row: start token, words, end token, then padding (id 0) to 32."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), SMALL.text.context_length, dtype=torch.long)
    for row, length in enumerate(lengths):
        words = torch.randint(300, 40000, (length,), generator=generator)
        ids[row, : length + 2] = torch.cat([torch.tensor([SOT]), words, torch.tensor([EOT])])
    return ids


def _theirs(model, images, ids, boxes=None, labels=None):
    """transformers' raw outputs, boxes back to centre x, centre y, width, height (it gives corners)."""
    out = model(
        pixel_values=images,
        input_ids=ids,
        attention_mask=(ids != 0).long(),
        input_boxes=boxes,
        input_boxes_labels=labels,
    )
    x0, y0, x1, y1 = out.pred_boxes.unbind(-1)
    boxes_cxcywh = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
    return out.pred_logits, out.presence_logits, boxes_cxcywh, out.pred_masks


def _ours(model, images, ids, boxes=None, labels=None):
    geometry = None
    if boxes is not None:
        padding = labels == -10  # transformers' padding label
        geometry = GeometricPrompt.of_boxes(boxes, labels.clamp(min=0), padding)
    found = model.detect(model.encode_image(images), model.encode_text(ids), geometry)
    return found.logits, found.presence_logits, found.boxes, found.mask_logits


def _compare(ours_out, theirs_out) -> dict[str, float]:
    diffs = {}
    for name, mine, reference in zip(("logits", "presence", "boxes", "mask logits"), ours_out, theirs_out):
        diffs[name] = assert_close_logits(mine, reference, what=name)
    logits, _, boxes, masks = ours_out
    # not trivial: queries, prompts and pixels differ
    assert logits.std() > 1e-2 and boxes.std() > 1e-2 and masks.std() > 1e-2
    assert (logits[0] - logits[-1]).abs().max() > 1e-3 and (masks[0] - masks[-1]).abs().max() > 1e-3
    return diffs


NO_BOX = torch.full((2, 1, 4), 0.5), torch.full((2, 1), -10)  # one box a prompt, all padding (label -10)


@torch.no_grad()
def test_text_prompts_equal_transformers(models):
    theirs, ours, _ = models
    images, ids = _images(), _token_ids([2, 5])
    found = _ours(ours, images, ids)
    # Meta's detector always runs the geometry encoder, whose CLS token joins a text prompt; transformers' runs it
    # only when given boxes: a box that is all padding makes it run, with nothing but that CLS token valid
    _compare(found, _theirs(theirs, images, ids, *NO_BOX))
    assert found[3].shape == (2, SMALL.queries, 32, 32)  # masks at the finest level: 4x the 8 x 8 grid


@torch.no_grad()
def test_transformers_text_alone_leaves_out_the_cls_token(models):
    # transformers' text-only path differs from Meta's (the prompt lacks the geometry encoder's CLS token): measured
    # here so that the day it changes is seen. With these weights the query logits move by ~0.08 (of ~0.3).
    theirs, ours, _ = models
    images, ids = _images(), _token_ids([2, 5])
    found, plain = _ours(ours, images, ids), _theirs(theirs, images, ids)
    assert (found[0] - plain[0]).abs().max() > 1e-2
    # ours without the CLS token: the fusion encoder then gives transformers' tokens exactly
    features, pos = ours.encode_image(images)
    text = ours.encode_text(ids)
    tokens = ours.transformer.encoder(features[-1], pos[-1], text.memory, text.padding_mask)
    encoded = theirs.detr_encoder(
        vision_features=[features[-1]], text_features=text.memory, vision_pos_embeds=[pos[-1]], text_mask=ids != 0
    )
    assert_close_logits(tokens, encoded.last_hidden_state, what="fusion encoder tokens")


@torch.no_grad()
def test_exemplar_boxes_equal_transformers(models):
    theirs, ours, _ = models
    images, ids = _images(seed=1), _token_ids([1, 1], seed=1)  # one word: "visual", as the processors give
    # centre x, centre y, width, height; a positive and a negative exemplar, and a positive one and a padding
    boxes = torch.tensor([[[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]], [[0.5, 0.5, 0.9, 0.8], [0.1, 0.9, 0.1, 0.1]]])
    labels = torch.tensor([[1, 0], [1, -10]])
    with_boxes = _ours(ours, images, ids, boxes, labels)
    _compare(with_boxes, _theirs(theirs, images, ids, boxes, labels))
    text_only = _ours(ours, images, ids)
    assert (with_boxes[0] - text_only[0]).abs().max() > 1e-3  # the exemplars are read


@torch.no_grad()
def test_transformers_vit_layer_norm_eps_is_within_tolerance(transformers_sam3):
    # transformers' ViT LayerNorms have eps 1e-6 (Sam3ViTConfig.layer_norm_eps), Meta's 1e-5: the trunk's output
    # moves by ~1e-5 of its scale, the detector's outputs stay within the tolerance.
    Sam3Model, Sam3Config = transformers_sam3
    torch.manual_seed(0)
    theirs = Sam3Model(_hf_config(SMALL, Sam3Config, vit_layer_norm_eps=1e-6)).eval()
    ours = Sam3Detector(SMALL).eval()
    ours.load_state_dict(detector_from_transformers(perturbed(theirs, seed=5), SMALL), strict=True)
    images, ids = _images(), _token_ids([2, 5])
    trunk = ours.backbone.vision_backbone.trunk(images).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
    reference = theirs.vision_encoder.backbone(images).last_hidden_state
    assert 0 < (trunk - reference).abs().max() < 1e-4 * reference.abs().max()
    _compare(_ours(ours, images, ids), _theirs(theirs, images, ids, *NO_BOX))


def test_converted_keys_are_used_and_filled(models):
    _, ours, weights = models
    state = ours.state_dict()
    # the rotary tables are the ones the detector builds itself (its forward pass reads real copies)
    fresh = Sam3Detector(SMALL).state_dict()
    for key in (k for k in fresh if k.endswith("freqs_cis")):
        assert torch.equal(state[key], fresh[key]), key
    for key in POINT_PROMPT_KEYS:  # transformers has no point prompts: zeros
        assert not state[key].any()
    # packed in Meta's order: q, k, v
    prefix = "detr_decoder.layers.1.text_cross_attn."
    packed = state["transformer.decoder.layers.1.ca_text.in_proj_weight"]
    assert torch.equal(packed, torch.cat([weights[prefix + p + "_proj.weight"] for p in "qkv"]))
    assert torch.equal(
        state["backbone.language_backbone.encoder.text_projection"], weights["text_encoder.text_projection.weight"].t()
    )


def test_video_model_keys_convert_the_same(models):
    _, _, weights = models
    video = {VIDEO_DETECTOR_PREFIX + key: value for key, value in weights.items()}
    video["tracker_model.memory_encoder.projection.weight"] = torch.zeros(3)
    video["tracker_neck.fpn_layers.0.proj1.weight"] = torch.zeros(3)
    assert checkpoint_format(video) == "transformers_video"
    assert checkpoint_format(weights) == "transformers"
    converted, direct = detector_from_transformers(video, SMALL), detector_from_transformers(weights, SMALL)
    assert converted.keys() == direct.keys()
    assert all(torch.equal(converted[key], direct[key]) for key in direct)


def test_formats_are_told_apart():
    assert checkpoint_format(["detector.backbone.vision_backbone.trunk.pos_embed", "tracker.maskmem_tpos_enc"]) == (
        "meta"
    )
    assert checkpoint_format(Sam3Detector(SMALL).state_dict()) == "detector"
    with pytest.raises(CheckpointError, match="not a SAM 3 state dict"):
        checkpoint_format(["image_encoder.trunk.patch_embed.proj.weight"])


def test_a_missing_or_unexpected_key_is_named(models):
    _, _, weights = models
    without = {key: value for key, value in weights.items() if key != "detr_decoder.layers.0.mlp.fc1.bias"}
    with pytest.raises(CheckpointError, match=r"missing 1 .*transformer\.decoder\.layers\.0\.linear1\.bias"):
        detector_from_transformers(without, SMALL)
    extra = dict(weights, **{"detr_decoder.layers.0.extra_norm.weight": torch.zeros(32)})
    with pytest.raises(CheckpointError, match=r"detector: .*extra_norm"):
        detector_from_transformers(extra, SMALL)
    half = {key: value for key, value in weights.items() if key != "mask_decoder.prompt_cross_attn.k_proj.weight"}
    with pytest.raises(CheckpointError, match=r"only q/v of q/k/v"):
        detector_from_transformers(half, SMALL)
    with pytest.raises(CheckpointError, match="another size"):
        detector_from_transformers(weights, Sam3Spec(**{**SMALL.__dict__, "queries": 10}))


def test_official_sizes_map_every_key(transformers_sam3):
    Sam3Model, Sam3Config = transformers_sam3
    # the official configuration's 840M parameters as shapes only, on the meta device
    with torch.device("meta"):
        theirs = Sam3Model(Sam3Config())
        ours = Sam3Detector(SAM3)
    converted = detector_from_transformers(theirs.state_dict(), SAM3)
    expected = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    assert sum(value.numel() for value in converted.values()) > 800e6
