"""`sam2rt track --text`: SAM 3's concept tracking from the command line, into the outputs of `track`.

A small SAM 3 in Meta's sam3.pt layout (`detector.*` and `tracker.*`, written here from our two models' keys with
the inverse of `sam3_tracker_keys`): tests/oracle_sam3.py's SMALL_SPEC widened to the tracker's 256 channels,
random weights with the detector's score bias shifted so that some queries pass the thresholds and the tracker's
object-score bias so that tracks stay present (as tests/test_concept_tracker.py does). The command runs in this
process with SAM 3's sizes patched to the small ones; its COCO masks and PNG masks must equal ConceptTracker's on
the same decoded frames. Several phrases share one backbone pass a frame, each tracked as its own ConceptTracker
would alone. A SAM 2 checkpoint, a SAM 3 file without the tracker, transformers' format, clicks with
--text, and no checkpoint cached offline are refused with messages that say what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import torch
from cli_support import assert_clean_error, decode_video, invoke_in_process, make_checkpoint, run_sam2rt, write_clip
from oracle import OBJECT_SCORE_BIAS
from oracle_sam3 import SMALL_SPEC
from PIL import Image
from sam3_vocab import open_clip_bpe_path, write_clip_vocab

from sam2rt.checkpoints.files import CheckpointError
from sam2rt.checkpoints.sam3_tracker_keys import DECODER_MLP, RENAMED

pytest.importorskip("huggingface_hub")
pytest.importorskip("tokenizers")

SPEC = dataclasses.replace(SMALL_SPEC, d_model=256)  # the tracker's heads read the backbone's 256 channels
FRAMES = 8
DETECTOR_SHIFT = 3.5
SCORE_SPREAD = 4.0
PRESENT_BIAS = 5.0  # the tracker's object-score bias: tracks judged present (tests/visible.py's)
HIGH_RES_SCALE = 0.45  # tracks that last, several on a frame (0.1: every mask full; 1: every mask specks)
RELU_MEAN = 0.399  # E[max(0, z)] for z ~ N(0, 1): the pixel decoder's output per channel, about
NOISE = 0.05


def _meta_tracker_key(ours: str) -> str:
    """Our tracker's key -> sam3.pt's (the inverse of sam3_tracker_keys.tracker_key for the tracker's own keys)."""
    for theirs, mine in RENAMED:
        if ours.startswith(mine):
            return "tracker." + theirs + ours[len(mine) :]
    mlp = re.match(r"^(sam_mask_decoder\.transformer\.layers\.\d+\.mlp\.)layers\.([01])\.", ours)
    if mlp:
        ours = f"{mlp[1]}lin{int(mlp[2]) + 1}." + ours[mlp.end() :]
        assert DECODER_MLP.match(ours)
    return "tracker." + ours


def _small_sam3_weights() -> dict[str, torch.Tensor]:
    """sam3.pt's state dict for SPEC: our models' initialisation plus noise, the score biases shifted."""
    from sam2rt.checkpoints.sam3 import tracker_config
    from sam2rt.model.sam2 import SAM2Model
    from sam2rt.model.sam3.detector import Sam3Detector

    torch.manual_seed(0)
    detector = Sam3Detector(SPEC, tracker_neck=True)
    tracker = SAM2Model(tracker_config(SPEC))
    weights = {f"detector.{key}": value for key, value in detector.state_dict().items()}
    for key, value in tracker.state_dict().items():
        if not key.startswith("image_encoder."):  # the tracker reads the detector's vision backbone
            weights[_meta_tracker_key(key)] = value
    generator = torch.Generator().manual_seed(1)
    weights = {
        key: value + NOISE * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in weights.items()
    }
    presence = next(
        key
        for key in weights
        if key.startswith("detector.transformer.decoder.presence_token_head") and key.endswith("layers.2.bias")
    )
    weights[presence] = weights[presence] + DETECTOR_SHIFT
    for name in ("weight", "bias"):  # query scores spread: some far above the bars, some far below
        key = f"detector.dot_prod_scoring.prompt_proj.{name}"
        weights[key] = weights[key] * SCORE_SPREAD
    weights["tracker." + OBJECT_SCORE_BIAS] = torch.full_like(weights["tracker." + OBJECT_SCORE_BIAS], PRESENT_BIAS)
    # Pixel embeddings centred (the pixel decoder ends in a ReLU): the detector's masks cover part of the frame
    head = "detector.segmentation_head.instance_seg_head."
    weights[head + "bias"] = -RELU_MEAN * weights[head + "weight"].sum(dim=(1, 2, 3))
    # The tracker's upscaling as nearest-neighbour and its high-resolution features muted (random weights draw a
    # pattern with the period of a patch there): its masks come in pieces bigger than the specks hole filling removes
    for layer in (0, 3):
        key = f"tracker.sam_mask_decoder.output_upscaling.{layer}.weight"
        weights[key] = weights[key].mean(dim=(2, 3), keepdim=True).expand_as(weights[key]).clone()
    for conv in ("conv_s0", "conv_s1"):
        key = f"tracker.sam_mask_decoder.{conv}.weight"
        weights[key] = HIGH_RES_SCALE * weights[key]
    return weights


@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory):
    """A folder with a small sam3.pt (Meta's layout) and CLIP's vocabulary, and a short clip."""
    bpe = open_clip_bpe_path()
    if bpe is None:
        pytest.skip("the test's vocabulary is written from open_clip's BPE file: pip install --no-deps open_clip_torch")
    folder = tmp_path_factory.mktemp("sam3")
    write_clip_vocab(bpe, folder)
    torch.save({"model": _small_sam3_weights()}, folder / "sam3.pt")
    write_clip(folder / "clip.mp4", count=FRAMES)
    return folder


@pytest.fixture
def small_sam3(sam3_folder, monkeypatch):
    """The small sam3.pt, with the commands' SAM 3 sizes patched to its."""
    import sam2rt.checkpoints.sam3 as sam3_checkpoints

    monkeypatch.setattr(sam3_checkpoints, "SAM3", SPEC)
    return sam3_folder / "sam3.pt"


def _decoded_frames(path) -> list[np.ndarray]:
    """The clip's frames as `track` reads them."""
    from sam2rt.io.track_source import open_track_source

    source = open_track_source(str(path))
    try:
        return [image for _, image in source]
    finally:
        source.close()


def _expected(checkpoint, frames: list[np.ndarray], phrases: list[str]) -> list[dict[int, tuple[int, np.ndarray]]]:
    """ConceptTracker's visible masks per frame, a tracker per phrase, under the run-wide ids the command gives
    (1, 2, ... in the order tracks first show, phrase by phrase on a frame): {id: (phrase index, mask)}."""
    from sam2rt.checkpoints.sam3 import load_sam3_video, load_text_tokenizer
    from sam2rt.tracking.concepts import ConceptTracker

    detector, tracker_model = load_sam3_video(checkpoint, "cpu")
    tokenizer = load_text_tokenizer(beside=checkpoint)
    trackers = [ConceptTracker(detector, tracker_model, tokenizer, phrase) for phrase in phrases]
    run_wide: dict[tuple[int, int], int] = {}
    per_frame = []
    for frame in frames:
        found = {}
        for phrase_index, tracker in enumerate(trackers):
            ids, masks = tracker.step(frame).visible_masks()
            for track_id, mask in zip(ids, masks):
                obj = run_wide.setdefault((phrase_index, track_id), len(run_wide) + 1)
                found[obj] = (phrase_index, mask.numpy())
        per_frame.append(found)
    return per_frame


def _assert_coco_matches(path, expected: list[dict[int, tuple[int, np.ndarray]]], phrases: list[str]) -> None:
    """Each frame's annotations: the visible non-empty masks, under their ids and their phrase's category."""
    from sam2rt.io.rle import decode_rle

    written = json.loads(path.read_text())
    assert [c["name"] for c in written["categories"]] == phrases
    category_ids = [c["id"] for c in written["categories"]]
    assert len(written["images"]) == len(expected)
    for index, found in enumerate(expected):
        annotations = [a for a in written["annotations"] if a["image_id"] == index + 1]
        got = {a["object_id"]: (a["category_id"], decode_rle(a["segmentation"]).astype(bool)) for a in annotations}
        assert sorted(got) == sorted(obj for obj, (_, mask) in found.items() if mask.any()), f"frame {index}"
        for obj, (category, mask) in got.items():
            phrase_index, expected_mask = found[obj]
            assert category == category_ids[phrase_index], f"frame {index}, object {obj}: category"
            assert np.array_equal(mask, expected_mask), f"frame {index}, object {obj}"


def test_load_sam3_video_shares_one_backbone_and_loads_strictly(small_sam3):
    from sam2rt.checkpoints.sam3 import load_sam3_video
    from sam2rt.checkpoints.sam3_tracker_keys import tracker_state_dict

    detector, tracker = load_sam3_video(small_sam3, "cpu")
    assert detector.backbone.vision_backbone is tracker.image_encoder
    assert not detector.training and not tracker.training
    weights = torch.load(small_sam3)["model"]
    ours = tracker.state_dict()
    mapped = tracker_state_dict(weights)
    assert set(ours) == set(mapped)
    for key in ("memory_attention.layers.0.self_attn.q_proj.weight", "image_encoder.trunk.patch_embed.proj.weight"):
        assert torch.equal(ours[key], mapped[key]), key
    prompt_proj = "dot_prod_scoring.prompt_proj.weight"
    assert torch.equal(detector.state_dict()[prompt_proj], weights["detector." + prompt_proj])


def test_track_text_writes_the_concept_trackers_masks(capsys, tmp_path, small_sam3):
    clip = small_sam3.parent / "clip.mp4"
    frames = _decoded_frames(clip)
    expected = _expected(small_sam3, frames, ["thing"])
    shown = [obj for found in expected for obj in found]
    # the test must be able to fail: objects found, several on a frame, followed over frames, masks neither empty
    # nor full
    assert max(len(found) for found in expected) >= 2, expected
    assert max(shown.count(obj) for obj in shown) >= 3, expected
    areas = [mask.mean() for found in expected for _, mask in found.values()]
    assert 0.05 < max(areas) < 0.95, areas  # (a visible track may lose every pixel to a likelier one)

    coco, png_dir, overlay = tmp_path / "out.json", tmp_path / "masks", tmp_path / "out.mp4"
    args = ["track", clip, "--text", "thing", "--coco", coco, "--png-dir", png_dir, "--overlay", overlay]
    done = invoke_in_process(capsys, *args, "--checkpoint", small_sam3, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert f"tracked {FRAMES} frames" in done.stdout and f"{len(set(shown))} objects" in done.stdout, done.stdout

    _assert_coco_matches(coco, expected, ["thing"])
    for index, found in enumerate(expected):
        labels = np.asarray(Image.open(png_dir / f"{index:05d}.png"))
        drawn = np.zeros(labels.shape, np.int64)
        for obj, (_, mask) in found.items():
            drawn[mask] = obj
        assert np.array_equal(labels, drawn), f"frame {index}: PNG labels"
    count, size, _ = decode_video(overlay)
    assert count == FRAMES and size == frames[0].shape[:2]


def test_several_phrases_have_unique_ids_and_a_category_each(capsys, tmp_path, small_sam3):
    clip = small_sam3.parent / "clip.mp4"
    phrases, count = ["thing", "red car"], 4
    expected = _expected(small_sam3, _decoded_frames(clip)[:count], phrases)
    assert {phrase for found in expected for phrase, _ in found.values()} == {0, 1}, "a phrase found nothing"

    coco, yolo = tmp_path / "out.json", tmp_path / "labels"
    args = ["track", clip, "--text", ",".join(phrases), "--coco", coco, "--yolo-dir", yolo, "--max-frames", count]
    done = invoke_in_process(capsys, *args, "--checkpoint", small_sam3, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert f"tracked {count} frames" in done.stdout, done.stdout
    _assert_coco_matches(coco, expected, phrases)
    assert len(list(yolo.glob("*.txt"))) == count


def test_phrases_share_one_backbone_pass_and_track_as_they_would_alone(small_sam3):
    """PhraseTracks encodes each frame once for all its phrases; each phrase's tracks (ids, masks, scores, which are
    visible, which removed) are those of its own ConceptTracker stepping alone, a backbone pass of its own a frame."""
    from sam2rt.checkpoints.sam3 import load_sam3_video, load_text_tokenizer
    from sam2rt.tracking.concept_run import PhraseTracks
    from sam2rt.tracking.concepts import ConceptTracker

    detector, tracker_model = load_sam3_video(small_sam3, "cpu")
    tokenizer = load_text_tokenizer(beside=small_sam3)
    phrases, count = ["thing", "red car"], 4
    frames = _decoded_frames(small_sam3.parent / "clip.mp4")[:count]
    passes = []  # one entry per run of the trunk, the backbone's costly part
    counter = tracker_model.image_encoder.trunk.register_forward_hook(lambda *_: passes.append(1))
    try:
        alone = [ConceptTracker(detector, tracker_model, tokenizer, phrase) for phrase in phrases]
        expected = [[tracker.step(frame) for tracker in alone] for frame in frames]
        assert len(passes) == count * len(phrases)  # the counter counts: alone, a pass per phrase and frame
        passes.clear()
        tracks = PhraseTracks([ConceptTracker(detector, tracker_model, tokenizer, phrase) for phrase in phrases])
        got = [tracks.concept_frames(frame) for frame in frames]
    finally:
        counter.remove()
    assert len(passes) == count, f"{len(passes)} backbone passes for {count} frames of {len(phrases)} phrases"

    for t, (ours, theirs) in enumerate(zip(got, expected)):
        for phrase, shared, own in zip(phrases, ours, theirs):
            where = f"frame {t}, {phrase!r}"
            assert shared.object_ids == own.object_ids, where
            assert torch.equal(shared.masks, own.masks), where
            assert torch.equal(shared.scores, own.scores), where
            assert torch.equal(shared.tracker_scores, own.tracker_scores), where
            assert torch.equal(shared.visible, own.visible), where
            assert shared.removed_ids == own.removed_ids, where
    # the test must be able to fail: two phrases find objects, some followed over frames, masks neither empty nor full
    visible = [(p, i) for frame in expected for p, found in enumerate(frame) for i in found.visible_masks()[0]]
    assert len({p for p, _ in visible}) >= 2, visible
    assert max(visible.count(obj) for obj in visible) >= 3, visible
    areas = [float(mask.float().mean()) for frame in expected for found in frame for mask in found.visible_masks()[1]]
    assert 0.05 < max(areas) < 0.95, areas  # (a visible track may lose every pixel to a likelier one)


def test_phrase_tracks_refuse_trackers_of_other_models(small_sam3):
    from sam2rt.checkpoints.sam3 import load_sam3_video, load_text_tokenizer
    from sam2rt.tracking.concept_run import PhraseTracks
    from sam2rt.tracking.concepts import ConceptTracker

    tokenizer = load_text_tokenizer(beside=small_sam3)
    trackers = [ConceptTracker(*load_sam3_video(small_sam3, "cpu"), tokenizer, phrase) for phrase in ("a", "b")]
    with pytest.raises(ValueError, match="must share SAM 3's models"):
        PhraseTracks(trackers)


def test_track_text_with_a_sam2_checkpoint_is_refused(capsys, tmp_path, sam3_folder):
    checkpoint = make_checkpoint(tmp_path / "tiny.pt")
    clip = sam3_folder / "clip.mp4"
    done = invoke_in_process(capsys, "track", clip, "--text", "car", "--checkpoint", checkpoint, "--device", "cpu")
    assert done.returncode == 1
    assert "is a SAM 2 checkpoint (sam2.1_hiera_tiny); text prompts need SAM 3's" in done.stderr


def test_files_without_sams_tracker_are_refused(tmp_path, small_sam3):
    from sam2rt.checkpoints.sam3 import load_sam3_video

    weights = torch.load(small_sam3)["model"]
    image_only = {key: value for key, value in weights.items() if key.startswith("detector.")}
    image_only["tracker.no_mem_embed"] = weights["tracker.no_mem_embed"]
    transformers = {"detector_model.vision_encoder.x": torch.zeros(1), "tracker_model.y": torch.zeros(1)}
    for name, state, message in (
        ("image_only.pt", image_only, "does not fit SAM 3's tracker"),
        ("transformers.pt", transformers, "transformers' format, whose tracker sam2rt does not read yet"),
    ):
        torch.save({"model": state}, tmp_path / name)
        with pytest.raises(CheckpointError, match=re.escape(message)):
            load_sam3_video(tmp_path / name, "cpu")


def test_track_text_usage_errors(capsys, sam3_folder):
    clip = sam3_folder / "clip.mp4"
    for args, message in (
        (["--point", "3,4"], "it takes no --point"),
        (["--prompts", "p.json"], "it takes no --prompts"),
        (["--backend", "onnxruntime", "--onnx", "x"], "--onnx, --backend onnxruntime"),
        (["--score-threshold", "1.5"], "must be in [0, 1)"),
        (["--variant", "sam2.1_hiera_tiny"], "--text needs SAM 3"),
    ):
        done = invoke_in_process(capsys, "track", clip, "--text", "car", *args, "--device", "cpu")
        said = " ".join(re.sub("[│╭╮╰╯─]", " ", done.stderr).split())  # the message as one line, out of its box
        assert done.returncode == 2 and message in said, (args, done.stderr)


def test_track_text_without_a_cached_checkpoint_says_what_to_download(tmp_path, sam3_folder):
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "empty-hf-home"), HF_HUB_OFFLINE="1")
    done = run_sam2rt("track", sam3_folder / "clip.mp4", "--text", "car", "--device", "cpu", env=env)
    assert_clean_error(done, "sam3.pt is not in the Hugging Face cache")
    assert "https://huggingface.co/facebook/sam3" in done.stderr and "--checkpoint" in done.stderr
