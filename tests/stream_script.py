"""A scripted stream driven through StreamTracker and through the official video predictor (SAM 2's or EdgeTAM's
fork) alike, and the comparison of their results after each step and each prompt.

Actions, scheduled by frame: ("points", obj, points, labels, clear_old_points), ("box", obj, box), ("mask", obj)
(the mask the caller gives, e.g. `box_mask`), ("remove", obj), in pixels of the frame.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from oracle import assert_close_logits, assert_close_scores
from visible import assert_nontrivial


def box_mask(height, width):
    """The mask prompt of the ("mask", obj) action: a box of a frame of (height, width), True inside."""
    mask = np.zeros((height, width), dtype=bool)
    mask[200:500, 300:700] = True
    return mask


def apply_ours(tracker, action, mask):
    """`action` on a StreamTracker (or a stream of a pool): its result. `mask` (H, W): a mask action's."""
    kind, obj = action[0], action[1]
    if kind == "points":
        return tracker.add_prompt(obj, points=action[2], labels=action[3], clear_old_points=action[4])
    if kind == "box":
        return tracker.add_prompt(obj, box=action[2])
    if kind == "mask":
        return tracker.add_prompt(obj, mask=mask)
    return tracker.remove_object(obj)


def apply_official(ref, state, t, action, mask):
    """`action` on the official video predictor's state, on frame t. `mask` (H, W): a mask action's."""
    kind, obj = action[0], action[1]
    if kind == "points":
        ref.add_new_points_or_box(state, t, obj, points=action[2], labels=action[3], clear_old_points=action[4])
    elif kind == "box":
        ref.add_new_points_or_box(state, t, obj, box=action[2])
    elif kind == "mask":
        ref.add_new_mask(state, t, obj, mask)
    else:
        ref.remove_object(state, obj)


def official_latest(state, t, frame_hw):
    """Each object's latest output on frame t: a pending prompt, else the stored output."""
    logits, scores = [], []
    for obj_idx in range(len(state["obj_ids"])):
        pending = state["temp_output_dict_per_obj"][obj_idx]
        stored = state["output_dict_per_obj"][obj_idx]
        out = (
            pending["cond_frame_outputs"].get(t)
            or pending["non_cond_frame_outputs"].get(t)
            or stored["cond_frame_outputs"].get(t)
            or stored["non_cond_frame_outputs"].get(t)
        )
        logits.append(F.interpolate(out["pred_masks"], size=frame_hw, mode="bilinear", align_corners=False)[:, 0])
        scores.append(out["object_score_logits"].reshape(1))
    return list(state["obj_ids"]), torch.cat(logits), torch.cat(scores)


def assert_result(result, expected, what):
    """Our FrameResult against `official_latest`'s (ids, logits, scores): the same objects, logits and scores."""
    ids, logits, scores = expected
    assert result.object_ids == ids, what
    for row, obj_id in enumerate(ids):
        assert_close_logits(result.mask_logits[row], logits[row], what=f"{what}, object {obj_id}")
        assert_close_scores(result.object_scores[row], scores[row], what=f"{what}, score of object {obj_id}")
    # An absent object's mask is the constant no-object logit; a present one's must hold object and background,
    # or its comparison would pass whatever the code under test did with the image.
    present = scores > 0
    if present.any():
        assert_nontrivial(logits[present], f"{what}: the oracle's masks of present objects")
