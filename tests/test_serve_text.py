"""`sam2rt serve`'s text box: a session sends a phrase and gets every instance of it, tracked (SAM 3).

A small SAM 3 (tests/oracle_sam3.py's SMALL_SPEC widened to the tracker's 256 channels), random weights with the
detector's score bias shifted so that some queries pass the thresholds and the tracker's object-score bias so
that tracks stay present (as tests/test_concept_tracker.py and tests/test_sam3_track_cli.py do). A client sends
webcam frames and a phrase; the masks it receives must be ConceptTracker's on the same frames, under the
session's ids. Also: the text request's parsing, hiding an object, clicks refused while a phrase is tracked,
clearing it, a server without SAM 3 refusing phrases with a message that says how to start it, and the command's
refusal of a SAM 2 checkpoint as --sam3-checkpoint.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from cli_support import assert_clean_error, clip_frames, invoke_in_process, make_checkpoint
from oracle_sam3 import SMALL_SPEC
from sam3_vocab import open_clip_bpe_path, write_clip_vocab
from serve_support import Client, decode_masks, load_test_model, running_asgi

from sam2rt.serve.app import ServerConfig, create_app
from sam2rt.serve.concepts import ConceptModels, SessionIds
from sam2rt.serve.protocol import MAX_OBJECT_ID, MAX_PHRASE_CHARS, ProtocolError, TextRequest, parse_text
from sam2rt.serve.scheduler import default_engine

SPEC = dataclasses.replace(SMALL_SPEC, d_model=256)  # the tracker's heads read the backbone's 256 channels
FRAME_SIZE = (96, 128)
FRAMES = 8
PHRASE = "a red square"
NOISE = 0.05
DETECTOR_SHIFT = 3.5
SCORE_SPREAD = 4.0
PRESENT_BIAS = 5.0
HIGH_RES_SCALE = 0.45
MASK_BIAS = 0.6  # x the sum of the mask head's weights: pixel embeddings (ReLU outputs, about 0.4 each) centred below 0

_built: dict[str, ConceptModels] = {}


def small_concept_models(folder) -> ConceptModels:
    """SPEC's detector and tracker with noisy weights that find and keep objects, and CLIP's tokenizer (built once
    per process: servers and trackers only read them)."""
    if "models" in _built:
        return _built["models"]
    from sam2rt.checkpoints.sam3 import tracker_config
    from sam2rt.model.sam2 import SAM2Model
    from sam2rt.model.sam3.detector import Sam3Detector
    from sam2rt.processing.text import TextTokenizer

    bpe = open_clip_bpe_path()
    if bpe is None:
        pytest.skip("the test's vocabulary is written from open_clip's BPE file: pip install --no-deps open_clip_torch")
    tokenizer = TextTokenizer.from_files(*write_clip_vocab(bpe, folder))
    torch.manual_seed(0)
    detector, tracker = Sam3Detector(SPEC, tracker_neck=True), SAM2Model(tracker_config(SPEC))
    generator = torch.Generator().manual_seed(1)
    for model in (detector, tracker):
        weights = model.state_dict()
        for key, value in weights.items():
            if value.is_floating_point():
                weights[key] = value + NOISE * torch.randn(value.shape, generator=generator)
        model.load_state_dict(weights, strict=True)
    d, t = detector.state_dict(), tracker.state_dict()
    presence = next(k for k in d if k.startswith("transformer.decoder.presence_token_head") and k.endswith("2.bias"))
    d[presence] += DETECTOR_SHIFT
    for name in ("weight", "bias"):  # query scores spread: some far above the bars, some far below
        d[f"dot_prod_scoring.prompt_proj.{name}"] *= SCORE_SPREAD
    head = "segmentation_head.instance_seg_head."  # masks cover part of the frame: several objects
    d[head + "bias"] = -MASK_BIAS * d[head + "weight"].sum(dim=(1, 2, 3))
    t["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(PRESENT_BIAS)
    for layer in (0, 3):  # nearest-neighbour upscaling: masks in pieces bigger than the specks hole filling removes
        key = f"sam_mask_decoder.output_upscaling.{layer}.weight"
        t[key] = t[key].mean(dim=(2, 3), keepdim=True).expand_as(t[key]).clone()
    for conv in ("conv_s0", "conv_s1"):
        t[f"sam_mask_decoder.{conv}.weight"] *= HIGH_RES_SCALE
    detector.load_state_dict(d, strict=True)
    tracker.load_state_dict(t, strict=True)
    # sam3.pt has one vision backbone, the detector's: the tracker's image encoder takes its weights
    tracker.image_encoder.load_state_dict(detector.backbone.vision_backbone.state_dict(), strict=True)
    detector.backbone.vision_backbone = tracker.image_encoder  # one backbone, as load_sam3_video makes them
    _built["models"] = ConceptModels(detector.eval(), tracker.eval(), tokenizer)
    return _built["models"]


def frames() -> list[np.ndarray]:
    return clip_frames(FRAMES, FRAME_SIZE)


def expected_results(models: ConceptModels, images: list[np.ndarray]) -> list[dict[int, tuple[np.ndarray, float]]]:
    """ConceptTracker's visible masks and scores per frame under the session's ids (1, 2, ... in the order tracks
    are first visible): [{id: (mask (H, W) bool, score)}]."""
    from sam2rt.tracking.concepts import ConceptTracker

    tracker = ConceptTracker(models.detector, models.tracker, models.tokenizer, PHRASE)
    return as_sent([tracker.step(image) for image in images])


def as_sent(per_frame) -> list[dict[int, tuple[np.ndarray, float]]]:
    """A session's ConceptFrames as the session sends them: per frame, {session id (1, 2, ... in the order tracks
    are first visible): (mask (H, W) bool, score)}."""
    session_ids: dict[int, int] = {}
    sent = []
    for found in per_frame:
        ids, masks = found.visible_masks()
        scores = found.scores[torch.nonzero(found.visible).flatten()]
        sent.append(
            {
                session_ids.setdefault(track_id, len(session_ids) + 1): (mask.numpy(), float(score))
                for track_id, mask, score in zip(ids, masks, scores)
            }
        )
    return sent


def assert_result_is(result: dict, expected: dict[int, tuple[np.ndarray, float]], where: str) -> None:
    ids, masks = decode_masks(result, FRAME_SIZE)
    assert ids == sorted(expected), f"{where}: ids {ids}, expected {sorted(expected)}"
    for obj_id, mask, sent in zip(ids, masks, result["objects"]):
        assert np.array_equal(mask, expected[obj_id][0]), f"{where}, object {obj_id}: mask"
        assert sent["score"] == pytest.approx(expected[obj_id][1], abs=1e-4), f"{where}, object {obj_id}: score"
        assert sent["label"] == PHRASE
    assert result["phrase"] == PHRASE


# The protocol


def test_text_requests_are_parsed_and_checked():
    assert parse_text('{"type": "text", "phrase": "person"}') == TextRequest("person")
    assert parse_text('{"type": "text", "phrase": "  red \\n car\\t"}') == TextRequest("red car")
    assert parse_text('{"type": "text", "phrase": null}') == TextRequest(None)
    assert parse_text('{"type": "text", "phrase": "' + "a" * MAX_PHRASE_CHARS + '"}') == TextRequest("a" * 200)
    for message, problem in (
        ('{"type": "text"}', 'needs "phrase"'),
        ('{"type": "text", "phrase": ""}', "not blank"),
        ('{"type": "text", "phrase": "  \\t "}', "not blank"),
        ('{"type": "text", "phrase": "' + "a" * (MAX_PHRASE_CHARS + 1) + '"}', f"1 to {MAX_PHRASE_CHARS}"),
        ('{"type": "text", "phrase": "cat\\u0000"}', "printable"),
        ('{"type": "text", "phrase": 3}', "a string or null"),
        ('{"type": "text", "phrase": ["cat"]}', "a string or null"),
        ('{"type": "text", "phrase": "cat", "score": 0.5}', "unknown key(s) in a 'text' message: score"),
    ):
        with pytest.raises(ProtocolError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            parse_text(message)


def test_session_ids_are_small_and_given_again_once_all_were_given():
    ids = SessionIds()
    assert [ids.wire_id(track) for track in (7, 3, 7, 12)] == [1, 2, 1, 3]
    assert ids.forget([3, 99]) == {2}
    for track in range(100, 100 + MAX_OBJECT_ID - 3):
        ids.wire_id(track)
    assert ids.wire_id(500) == 2  # every id given once: the smallest free one
    assert ids.wire_id(501) is None and ids.held(2) and not ids.held(0)
    ids.clear()
    assert ids.wire_id(501) == 1


# The server


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return small_concept_models(tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def sam2_engine(tmp_path_factory):
    return default_engine(load_test_model(tmp_path_factory.mktemp("serve-model")))


def test_a_phrase_is_tracked_as_concept_tracker_tracks_it(models, sam2_engine):
    images = frames()
    expected = expected_results(models, images)
    # the test must be able to fail: objects found, several on a frame, one followed over frames, masks with area
    shown = [obj for found in expected for obj in found]
    assert max(len(found) for found in expected) >= 2, [list(found) for found in expected]
    assert max(shown.count(obj) for obj in set(shown)) >= 3, [list(found) for found in expected]
    areas = [mask.mean() for found in expected for mask, _ in found.values()]
    assert 0.01 < max(areas) < 0.95, areas

    app = create_app(sam2_engine, ServerConfig(batch_wait_s=0.0), models)
    with running_asgi(app) as server:
        client = Client(server.ws_url)
        assert client.session["text"] is True
        client.send({"type": "source", "kind": "webcam"})
        assert client.step(0, images[0])["objects"] == []  # no phrase yet, no click
        client.send({"type": "text", "phrase": PHRASE})
        assert client.next("text")["phrase"] == PHRASE
        first = client.next("result")  # the phrase is tracked on the frame shown at once
        assert first["frame"] == 0 and first["prompted"]
        assert_result_is(first, expected[0], "frame 0")
        for index in range(1, FRAMES):
            assert_result_is(client.step(index, images[index]), expected[index], f"frame {index}")

        # clicks are for SAM 2's objects: refused while a phrase is tracked
        client.send({"type": "prompt", "frame": FRAMES - 1, "obj_id": 1, "points": [[10, 10]]})
        assert "clear it to click objects" in client.next("error")["message"]
        # an object of the phrase hidden: the frame shown again without it, and the next frames too
        hidden = sorted(expected[-1])[0]
        client.send({"type": "remove", "obj_id": hidden})
        again = client.next("result")
        assert again["prompted"] and sorted(o["id"] for o in again["objects"]) == sorted(expected[-1])[1:]
        assert hidden not in [o["id"] for o in client.step(FRAMES, images[-1])["objects"]]
        client.send({"type": "remove", "obj_id": MAX_OBJECT_ID})
        assert "no object 255 of the phrase" in client.next("error")["message"]

        # cleared: no objects, and clicks work again (SAM 2)
        client.send({"type": "text", "phrase": None})
        assert client.next("text")["phrase"] is None
        cleared = client.next("result")
        assert cleared["objects"] == [] and "phrase" not in cleared
        assert client.step(FRAMES + 1, images[0])["objects"] == []
        client.send({"type": "prompt", "frame": FRAMES + 1, "obj_id": 1, "points": [[60, 40]]})
        clicked = client.next("result")
        assert [o["id"] for o in clicked["objects"]] == [1] and "label" not in clicked["objects"][0]
        client.close()


def test_a_server_without_sam3_refuses_a_phrase_and_says_how_to_start_it(sam2_engine):
    with running_asgi(create_app(sam2_engine, ServerConfig(batch_wait_s=0.0))) as server:
        client = Client(server.ws_url)
        assert client.session["text"] is False
        client.send({"type": "text", "phrase": "person"})
        message = client.next("error")["message"]
        assert "this server has no SAM 3 model" in message and "sam2rt serve --sam3" in message
        client.send({"type": "source", "kind": "webcam"})
        assert client.step(0, frames()[0])["objects"] == []  # the session goes on
        client.send({"type": "prompt", "frame": 0, "obj_id": 1, "points": [[60, 40]]})
        assert [o["id"] for o in client.next("result")["objects"]] == [1]
        client.send({"type": "text", "phrase": None})  # a clear without a phrase: the clicked objects stay
        assert client.next("text")["phrase"] is None
        assert [o["id"] for o in client.step(1, frames()[1])["objects"]] == [1]
        client.close()


def test_serve_refuses_a_sam2_checkpoint_as_sam3(capsys, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "tiny.pt")
    args = ["serve", "--checkpoint", checkpoint, "--device", "cpu", "--port", "0"]
    done = invoke_in_process(capsys, *args, "--sam3-checkpoint", checkpoint)
    assert_clean_error(done, "is a SAM 2 checkpoint")
    done = invoke_in_process(capsys, *args, "--sam3-checkpoint", tmp_path / "missing.pt")
    assert_clean_error(done, "is not a file")
