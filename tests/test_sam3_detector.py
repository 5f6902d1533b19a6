"""SAM 3's detector end to end against Meta's `Sam3Image` (`sam3==0.1.4`): the same perturbed random weights, the
same image and phrases, and the raw outputs before any threshold (query logits, presence, boxes, mask logits),
for text prompts, exemplar boxes, and both. The official model's state-dict keys and shapes are checked too.
"""

from __future__ import annotations

import pytest
import torch
from oracle import assert_close_logits
from oracle_sam3 import SMALL_SPEC, meta_image_model, on_meta_device, perturbed, sam3_modules
from sam3_vocab import open_clip_bpe_path

from sam2rt.model.sam3.config import SAM3
from sam2rt.model.sam3.detector import Sam3Detector
from sam2rt.model.sam3.geometry import GeometricPrompt
from sam2rt.model.sam3.text import TextFeatures

SMALL = SMALL_SPEC
PHRASES = ["red car", "a person on a bicycle"]


@pytest.fixture(scope="module")
def bpe_path():
    sam3_modules()
    path = open_clip_bpe_path()
    if path is None:
        pytest.skip("Meta's tokenizer reads open_clip's BPE vocabulary: pip install --no-deps open_clip_torch")
    return str(path)


@pytest.fixture(scope="module")
def models(bpe_path):
    torch.manual_seed(0)
    meta = meta_image_model(SMALL, bpe_path)
    ours = Sam3Detector(SMALL).eval()
    ours.load_state_dict(perturbed(meta, seed=3), strict=True)
    return meta, ours


def _images(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, SMALL.image_size, SMALL.image_size, generator=generator) * 2 - 1  # normalised


def _meta_detect(meta, images, phrases, boxes=None, labels=None):
    """Meta's forward_grounding as its processor calls it: each phrase a prompt on image 0, boxes (B, Nb, 4)."""
    from sam3.model.data_misc import FindStage
    from sam3.model.geometry_encoders import Prompt

    backbone_out = meta.backbone.forward_image(images)
    backbone_out.update(meta.backbone.forward_text(phrases, device="cpu"))
    count = len(phrases)
    find = FindStage(
        img_ids=torch.zeros(count, dtype=torch.long),
        text_ids=torch.arange(count),
        input_boxes=None,
        input_boxes_mask=None,
        input_boxes_label=None,
        input_points=None,
        input_points_mask=None,
    )
    if boxes is None:
        prompt = meta._get_dummy_prompt(num_prompts=count)
    else:
        prompt = Prompt(
            box_embeddings=boxes.transpose(0, 1),  # (B, Nb, 4) -> (Nb, B, 4), sequence first
            box_mask=torch.zeros(boxes.shape[:2], dtype=torch.bool),
            box_labels=labels.transpose(0, 1),
        )
    out = meta.forward_grounding(backbone_out=backbone_out, find_input=find, find_target=None, geometric_prompt=prompt)
    return out["pred_logits"][..., 0], out["presence_logit_dec"], out["pred_boxes"], out["pred_masks"]


def _our_detect(ours, meta, images, phrases, boxes=None, labels=None):
    # the same token ids for both (the tokenizer is compared on its own in test_sam3_text.py)
    ids = meta.backbone.language_backbone.tokenizer(phrases, context_length=SMALL.text.context_length)
    text: TextFeatures = ours.encode_text(ids)
    geometry = None if boxes is None else GeometricPrompt.of_boxes(boxes, labels)
    found = ours.detect(ours.encode_image(images), text, geometry)
    return found.logits, found.presence_logits, found.boxes, found.mask_logits


def _compare(ours_out, meta_out):
    for name, mine, theirs in zip(("logits", "presence", "boxes", "mask logits"), ours_out, meta_out):
        assert mine.shape == theirs.shape, name
        assert_close_logits(mine, theirs, what=name)
    logits, _, boxes, masks = ours_out
    # not trivial: queries, prompts and pixels differ
    assert logits.std() > 1e-2 and boxes.std() > 1e-2 and masks.std() > 1e-2
    assert (logits[0] - logits[-1]).abs().max() > 1e-3 and (masks[0] - masks[-1]).abs().max() > 1e-3


@torch.no_grad()
def test_text_prompts_equal_meta(models):
    meta, ours = models
    images = _images()
    found = _our_detect(ours, meta, images, PHRASES)
    _compare(found, _meta_detect(meta, images, PHRASES))
    assert found[3].shape == (2, SMALL.queries, 32, 32)  # masks at the finest level: 4x the 8 x 8 grid


@torch.no_grad()
def test_exemplar_boxes_equal_meta(models):
    meta, ours = models
    images = _images(1)
    # a positive and a negative exemplar per prompt, with "visual" as the phrase (Meta's processor's choice)
    boxes = torch.tensor([[[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]], [[0.5, 0.5, 0.9, 0.8], [0.1, 0.9, 0.1, 0.1]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    _compare(
        _our_detect(ours, meta, images, ["visual", "visual"], boxes, labels),
        _meta_detect(meta, images, ["visual", "visual"], boxes, labels),
    )


@torch.no_grad()
def test_text_and_exemplars_together_equal_meta(models):
    meta, ours = models
    images = _images(2)
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4]], [[0.2, 0.3, 0.2, 0.2]]])
    labels = torch.ones(2, 1, dtype=torch.long)
    with_boxes = _our_detect(ours, meta, images, PHRASES, boxes, labels)
    _compare(with_boxes, _meta_detect(meta, images, PHRASES, boxes, labels))
    text_only = _our_detect(ours, meta, images, PHRASES)
    assert (with_boxes[0] - text_only[0]).abs().max() > 1e-3  # the exemplar is read


def test_official_model_has_the_checkpoint_keys_and_shapes(bpe_path):
    # built on the meta device: the 840M parameters' shapes without their memory or initialisation
    with on_meta_device():
        meta = meta_image_model(SAM3, bpe_path)
        ours = Sam3Detector(SAM3)
    theirs, mine = meta.state_dict(), ours.state_dict()
    assert set(mine) == set(theirs)
    assert {key: tuple(value.shape) for key, value in mine.items()} == {
        key: tuple(value.shape) for key, value in theirs.items()
    }
    assert sum(value.numel() for value in mine.values()) > 800e6
