"""SAM 3's memory selection without a model: the frame filter against Meta's, and a stream's bounded ring against
every frame kept (the offline archive) over a long stream of scores that pass the bar or not."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from oracle_sam3 import sam3_modules

from sam2rt.model.variants import ModelConfig, get_variant
from sam2rt.tracking.memory_arena import MemoryArena
from sam2rt.tracking.memory_gather import gather
from sam2rt.tracking.memory_selection import MemoryScore, group_score, memory_frames, object_scores, score_factors
from sam2rt.tracking.object_memory import ObjectOutput, OutputArchive, ScoredRingMemory, new_ring

CONFIG = ModelConfig(get_variant("sam2.1_hiera_tiny"), 64)
TOKENS = CONFIG.feature_size**2
THRESHOLD = 0.01
CPU = torch.device("cpu")


def _score(value: float) -> MemoryScore:
    return MemoryScore(torch.tensor(value))


def test_frame_filter_equals_metas():
    """Random histories (tracked frames with scores, frames without, prompted frames): the same frames chosen."""
    sam3_modules()
    from sam3.model.sam3_tracker_base import Sam3TrackerBase

    rng = random.Random(0)
    long_selections = 0
    for case in range(300):
        num_frames = rng.choice([5, 16, 40])
        reverse = rng.random() < 0.3
        frame_idx = rng.randrange(num_frames)
        outputs: dict[int, dict] = {}
        for t in range(num_frames):
            kind = rng.random()
            if kind < 0.5:
                outputs[t] = {"eff_iou_score": torch.tensor(rng.choice([0.0, 0.005, 0.0101, 0.3]))}
            elif kind < 0.6:
                outputs[t] = {}  # tracked without a score (a prompted frame's consolidated output)
        stub = SimpleNamespace(max_obj_ptrs_in_encoder=CONFIG.max_obj_ptrs, mf_threshold=THRESHOLD)
        expected = Sam3TrackerBase.frame_filter(
            stub, {"non_cond_frame_outputs": outputs}, reverse, frame_idx, num_frames, 1
        )
        side = range(frame_idx + 1, num_frames) if reverse else range(frame_idx - 1, -1, -1)
        candidates = [(t, outputs[t].get("eff_iou_score")) for t in side if t in outputs]
        candidates = [(t, None if score is None else MemoryScore(score)) for t, score in candidates]
        max_pointers = min(num_frames, CONFIG.max_obj_ptrs)
        got = memory_frames(iter(candidates), frame_idx, reverse, num_frames, max_pointers, THRESHOLD)
        assert got == expected, f"case {case}"
        long_selections += len(expected) >= 8
    assert long_selections > 20


def test_memory_scores_equal_metas():
    """Presence rescaled to [0, 1] (0 when absent) times the best predicted IoU, per object; a batch's score (Meta's
    tracker state of several objects): Meta's `cal_mem_score` of the batch."""
    sam3_modules()
    from sam3.model.sam3_tracker_base import Sam3TrackerBase

    logits = torch.tensor([[2.0], [-1.0], [0.0], [0.3]])
    ious = torch.tensor([[0.2, 0.9, 0.5], [0.8, 0.8, 0.8], [1.0, 1.0, 1.0], [0.4, 0.1, 0.3]])
    scores = object_scores(score_factors(logits, ious))
    for row, score in enumerate(scores):
        expected = Sam3TrackerBase.cal_mem_score(None, logits[row : row + 1], ious[row : row + 1].max(-1)[0])
        torch.testing.assert_close(score.value, expected, atol=0, rtol=0)
    assert scores[0].value > 0.5 and scores[1].value == 0 and scores[2].value == 0
    batch = Sam3TrackerBase.cal_mem_score(None, logits, ious.max(-1)[0])
    torch.testing.assert_close(group_score(scores).value, batch, atol=1e-7, rtol=0)
    assert batch != sum(score.value for score in scores) / len(scores)  # not the mean of the objects' scores


def _frame_output(t: int, score) -> ObjectOutput:
    """An output whose memory and pointer hold its frame number, so that a gather shows which frames it read."""
    memory = torch.full((TOKENS, CONFIG.memory_dim), float(t))
    return ObjectOutput(None, torch.full((CONFIG.hidden_dim,), float(t)), None, memory, score)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ring_reads_what_every_frame_kept_would(seed):
    """A 300-frame stream with scores that pass the bar or not (runs of either) and a few corrections: on every
    frame, the ring's gather for the next frame and for a correction on this one equals the archive's, which keeps
    every frame; the ring never holds more than its fixed slots."""
    rng = random.Random(seed)
    arena = MemoryArena(CONFIG, 8, lambda: (torch.float32, CPU), memory_threshold=THRESHOLD)
    ring, archive = new_ring(arena), OutputArchive()
    assert isinstance(ring, ScoredRingMemory) and len(ring.recent_pointer_frame) == CONFIG.max_obj_ptrs + 1
    first = _frame_output(0, None)
    ring.write_conditioning(0, first.memory, first.pointer)
    archive.cond[0] = first
    passing = True
    reads_far_back = 0
    for t in range(1, 300):
        if rng.random() < 0.15:
            passing = not passing  # runs of frames where the object is lost, then found
        if t % 61 == 0:  # a correction that becomes a prompted frame
            out = _frame_output(t, None)
            ring.write_conditioning(t, out.memory, out.pointer)
            archive.cond[t] = out
        else:
            value = rng.choice([0.3, 0.05]) if passing else rng.choice([0.0, 0.004])
            out = _frame_output(t, _score(value))
            ring.write_tracked(t, out.memory, out.pointer, out.memory_score)
            archive.non_cond[t] = out
        for frame in (t + 1, t):  # the next frame, and a correction on this one (which reads its memory)
            got = gather([ring], [frame], False, CONFIG, CPU, -1, None, None, THRESHOLD)
            expected = gather([archive], [frame], False, CONFIG, CPU, -1, None, None, THRESHOLD)
            for name, a, b in zip(got._fields, got, expected):
                assert (a is None) == (b is None), f"frame {t}: {name}"
                if a is not None:
                    torch.testing.assert_close(a, b, atol=0, rtol=0, msg=f"frame {t} -> {frame}: {name}")
            read = got.pointers[0, :, 0].tolist()
            reads_far_back += any(frame - f > CONFIG.max_obj_ptrs for f in read)
    assert reads_far_back > 10, "the stream never read a frame that the plain ring would have dropped"
