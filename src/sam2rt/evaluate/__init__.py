"""Evaluation the official way: J&F of video object masks, and the VOS predictions to score.

result = evaluate_folders(gt_dir, pred_dir)              # EvalResult: .scores.jf, .videos, .as_json()
run_vos_inference(model, jpeg_root, annotation_dir, out_dir)  # then evaluate_folders(annotation_dir, out_dir)
"""

from .folders import EvalError, EvalResult, Scores, VideoResult, evaluate_folders, read_labels
from .metrics import SequenceScorer, frame_scores
from .vos_inference import VosVideo, run_vos_inference, track_vos_videos, vos_videos

__all__ = [
    "EvalError",
    "EvalResult",
    "Scores",
    "SequenceScorer",
    "VideoResult",
    "VosVideo",
    "evaluate_folders",
    "frame_scores",
    "read_labels",
    "run_vos_inference",
    "track_vos_videos",
    "vos_videos",
]
