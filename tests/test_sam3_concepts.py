"""ConceptPredictor against Meta's `Sam3Processor` (`sam3==0.1.4`) on the same image: the instances it keeps, their
masks at the image's size, their boxes in pixels and their scores, for phrases and for exemplar boxes.

Meta's processor resizes with torchvision, absent here; both sides get the image as our `concept_model_input`
makes it (which does what torchvision's uint8 resize does on a CPU: tested on its own below), and the processor's
own `_forward_grounding` does the rest (thresholds, upsampling, boxes). Random weights score every query near
0.25, so the threshold is lowered to keep some and drop others; the test checks that both happen.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracle_sam3 import SMALL_SPEC, meta_image_model, perturbed, sam3_modules
from sam3_vocab import open_clip_bpe_path, write_clip_vocab

from sam2rt.images.concepts import ConceptPredictor
from sam2rt.model.sam3.detector import Sam3Detector
from sam2rt.processing.preprocess import concept_model_input
from sam2rt.processing.text import TextTokenizer

THRESHOLD = 0.215


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    sam3_modules()
    bpe = open_clip_bpe_path()
    if bpe is None:
        pytest.skip("Meta's tokenizer reads open_clip's BPE vocabulary: pip install --no-deps open_clip_torch")
    torch.manual_seed(0)
    meta = meta_image_model(SMALL_SPEC, str(bpe))
    ours = Sam3Detector(SMALL_SPEC).eval()
    ours.load_state_dict(perturbed(meta, seed=5), strict=True)
    tokenizer = TextTokenizer.from_files(*write_clip_vocab(bpe, tmp_path_factory.mktemp("vocab")))
    return meta, ConceptPredictor(ours, tokenizer, score_threshold=THRESHOLD)


def _image(seed: int = 0, size=(75, 130)) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return generator.integers(0, 256, (*size, 3), dtype=np.uint8)


def _meta_processor(meta, image: np.ndarray):
    """Meta's Sam3Processor with its image set from our model input (its torchvision resize is not here)."""
    from sam3.model.sam3_image_processor import Sam3Processor

    processor = Sam3Processor.__new__(Sam3Processor)  # its __init__ builds torchvision transforms
    processor.model, processor.resolution, processor.device = meta, SMALL_SPEC.image_size, "cpu"
    processor.confidence_threshold = THRESHOLD
    from sam3.model.data_misc import FindStage

    processor.find_stage = FindStage(
        img_ids=torch.tensor([0]), text_ids=torch.tensor([0]), input_boxes=None, input_boxes_mask=None,
        input_boxes_label=None, input_points=None, input_points_mask=None,
    )  # fmt: skip
    pixels = concept_model_input(torch.from_numpy(image).permute(2, 0, 1), SMALL_SPEC.image_size, torch.device("cpu"))
    state = {
        "original_height": image.shape[0],
        "original_width": image.shape[1],
        "backbone_out": meta.backbone.forward_image(pixels),
    }
    return processor, state


def _assert_same_instances(found, state):
    order = torch.argsort(state["scores"], descending=True)
    assert len(found) == len(order)
    np.testing.assert_allclose(found.scores, state["scores"][order].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(found.boxes, state["boxes"][order].numpy(), rtol=1e-4, atol=1e-3)
    expected = state["masks"][order, 0].numpy()
    assert found.masks.shape == expected.shape
    # a pixel whose logit is within rounding of 0 may fall either side
    assert found.masks.size == 0 or (found.masks != expected).mean() < 1e-3


@torch.no_grad()
def test_phrases_give_metas_instances(pair):
    meta, predictor = pair
    image = _image()
    predictor.set_image(image)
    results = predictor.predict(["red car", "a person"])
    kept_any = dropped_any = False
    for found, phrase in zip(results, ["red car", "a person"]):
        processor, state = _meta_processor(meta, image)
        state = processor.set_text_prompt(phrase, state)
        _assert_same_instances(found, state)
        kept_any |= len(found) > 0
        dropped_any |= len(found) < SMALL_SPEC.queries
        for mask in found.masks:
            assert 0 < mask.mean() < 1  # masks of the image's size that are not constant
    assert kept_any and dropped_any and results[0].masks.shape[1:] == image.shape[:2]


@torch.no_grad()
def test_exemplar_boxes_give_metas_instances(pair):
    meta, predictor = pair
    image = _image(1)
    height, width = image.shape[:2]
    box = [20.0, 10.0, 90.0, 60.0]  # pixels, x0 y0 x1 y1
    predictor.set_image(image)
    (found,) = predictor.predict(boxes=[box])
    processor, state = _meta_processor(meta, image)
    # Meta's processor takes the box as normalised centre, size
    centre_size = [(box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height, 70 / width, 50 / height]
    state = processor.add_geometric_prompt(centre_size, True, state)
    _assert_same_instances(found, state)
    assert found.phrase == "visual" and 0 < len(found) < SMALL_SPEC.queries


def test_the_cpu_resize_is_torchvisions_uint8_kernel():
    image = torch.from_numpy(_image(2, (61, 83))).permute(2, 0, 1)
    ours = concept_model_input(image, 112, torch.device("cpu"))
    # torchvision resizes uint8 on a CPU with torch's own uint8 kernel: the uint8 result, scaled and normalised
    resized = F.interpolate(image[None], size=(112, 112), mode="bilinear", antialias=True, align_corners=False)
    assert resized.dtype == torch.uint8
    torch.testing.assert_close(ours, (resized.float() / 255 - 0.5) / 0.5, rtol=0, atol=0)
    assert ours.min() >= -1 and ours.max() <= 1


def test_bad_prompts_are_refused(pair):
    _, predictor = pair
    predictor.set_image(_image())
    with pytest.raises(ValueError, match="text prompt, exemplar boxes"):
        predictor.predict()
    with pytest.raises(ValueError, match="non-empty strings"):
        predictor.predict(["car", "  "])
    with pytest.raises(ValueError, match="x0 < x1"):
        predictor.predict(boxes=[[50, 10, 20, 40]])
    with pytest.raises(ValueError, match="one 0 or 1 per box"):
        predictor.predict(boxes=[[5, 10, 20, 40]], box_labels=[2])


def test_phrases_are_encoded_once_and_give_what_a_fresh_encoding_gives(pair, monkeypatch):
    """The predictor keeps the text encoder's output of the phrases asked: a second image with the same phrases
    reads it (no encoding) and finds what a predictor without it finds; other phrases are encoded."""
    _, predictor = pair
    encoded = []
    real = predictor.model.encode_text
    monkeypatch.setattr(predictor.model, "encode_text", lambda ids: encoded.append(len(ids)) or real(ids))
    predictor._texts.clear()
    for seed in (3, 4):
        predictor.set_image(_image(seed))
        kept = predictor.predict(["red car", "a person"])
    assert encoded == [2]
    fresh = ConceptPredictor(predictor.model, predictor.tokenizer, predictor.score_threshold)
    fresh.set_image(_image(4))
    for got, expected in zip(kept, fresh.predict(["red car", "a person"])):
        assert np.array_equal(got.scores, expected.scores) and np.array_equal(got.masks, expected.masks)
    assert sum(len(found) for found in kept) > 0  # instances compared, not empty lists
    predictor.predict("a person")
    assert encoded == [2, 2, 1]  # the fresh predictor's, then the new phrase's
