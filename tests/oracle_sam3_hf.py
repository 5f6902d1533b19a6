"""Hugging Face transformers' SAM 3 video model (`Sam3VideoModel`) as a second reference for concept tracking.

The model is built at a small configuration equal to a `Sam3Spec` (the detector, as test_sam3_hf_weights.py builds
transformers' Sam3Model) with SAM 3's official tracker heads over it, and the official concept options where its
config has them. Its state dict, perturbed, is the source of both sides' weights: the detector's keys go through
`checkpoints.sam3_keys` (the library's own conversion), the tracker's through `tracker_from_transformers` here
(transformers' `tracker_model.*` and `tracker_neck.*` -> our SAM2Model of a SAM 3 variant), every key used.

transformers runs its NMS and its hole filling with a kernel downloaded from the hub (`kernels-community/cv-utils`,
CUDA only), and skips both when it cannot load it. `install_cv_utils_standin` gives it one written the textbook
way, so that it runs the official values: greedy NMS over the IoU matrix (highest score first, a stable sort;
a detection goes when its IoU with a kept one is above the bar), and 8-connected components with each pixel's
component size (scikit-image's labelling, which Meta's CPU path also uses).
"""

from __future__ import annotations

import importlib
import re
import sys
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_sam2_heads import head_key
from oracle_sam3 import perturbed
from test_sam3_hf_weights import _hf_config, _import_transformers_sam3

from sam2rt.checkpoints.sam3_keys import VIDEO_DETECTOR_PREFIX, detector_from_transformers
from sam2rt.model.sam3.config import Sam3Spec
from sam2rt.tracking.concept_plan import ConceptOptions

TRACKER = "tracker_model."
TRACKER_NECK = "tracker_neck."
VISION = "backbone.vision_backbone."  # our detector's vision backbone: the tracker's image encoder


def import_transformers_sam3_video() -> SimpleNamespace:
    """transformers' SAM 3 video classes, importable on a CPU torch without torchvision (test_sam3_hf_weights.py
    says how); skips without transformers."""
    _, Sam3Config = _import_transformers_sam3()
    hidden = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "torchvision"}
    for name in hidden:
        del sys.modules[name]
    try:
        video = importlib.import_module("transformers.models.sam3_video.modeling_sam3_video")
        importlib.import_module("transformers.models.sam3_tracker_video.modeling_sam3_tracker_video")  # AutoModel's
        tracker = importlib.import_module("transformers.models.sam3_tracker_video.configuration_sam3_tracker_video")
    finally:
        sys.modules.update(hidden)
    return SimpleNamespace(
        Sam3Config=Sam3Config,
        Sam3VideoConfig=video.Sam3VideoConfig,
        Sam3TrackerVideoConfig=tracker.Sam3TrackerVideoConfig,
        Sam3VideoModel=video.Sam3VideoModel,
        Session=video.Sam3VideoInferenceSession,
        modeling=video,
    )


def video_config(hf: SimpleNamespace, spec: Sam3Spec, options: ConceptOptions = ConceptOptions()):
    """Sam3VideoConfig of `spec`'s detector, SAM 3's official tracker heads over its backbone, and `options` for
    every concept option transformers has (the official values by default)."""
    detector = _hf_config(spec, hf.Sam3Config)
    grid = spec.vision.grid
    tracker = hf.Sam3TrackerVideoConfig(
        vision_config=detector.vision_config.to_dict(),
        prompt_encoder_config={"image_size": spec.vision.image_size, "patch_size": spec.vision.patch_size},
        memory_attention_rope_feat_sizes=[grid, grid],
        image_size=spec.vision.image_size,
    )
    o = options
    return hf.Sam3VideoConfig(
        detector_config=detector,
        tracker_config=tracker,
        low_res_mask_size=4 * grid,  # the decoders' masks: 4x the feature grid (288 at 1008 px)
        score_threshold_detection=o.score_threshold_detection,
        det_nms_thresh=o.det_nms_thresh,
        assoc_iou_thresh=o.assoc_iou_thresh,
        trk_assoc_iou_thresh=o.trk_assoc_iou_thresh,
        new_det_thresh=o.new_det_thresh,
        recondition_on_trk_masks=False,  # Meta re-prompts with the detection's mask (transformers' default: True)
        hotstart_delay=o.hotstart_delay,
        hotstart_unmatch_thresh=o.hotstart_unmatch_thresh,
        hotstart_dup_thresh=o.hotstart_dup_thresh,
        suppress_unmatched_only_within_hotstart=o.suppress_unmatched_only_within_hotstart,
        init_trk_keep_alive=o.init_trk_keep_alive,
        max_trk_keep_alive=o.max_trk_keep_alive,
        min_trk_keep_alive=o.min_trk_keep_alive,
        suppress_overlapping_based_on_recent_occlusion_threshold=(
            o.suppress_overlapping_based_on_recent_occlusion_threshold
        ),
        decrease_trk_keep_alive_for_empty_masklets=o.decrease_trk_keep_alive_for_empty_masklets,
        fill_hole_area=o.fill_hole_area,
        max_num_objects=o.object_limit,
        recondition_every_nth_frame=o.recondition_every_nth_frame,
        high_conf_thresh=o.high_conf_thresh,
        high_iou_thresh=o.high_iou_thresh,
    )


def shifted_video_weights(
    model, seed: int, detector_shift: float, score_spread: float, tracker_shift: float, mask_gain: float
) -> dict[str, torch.Tensor]:
    """transformers' own initialisation of a Sam3VideoModel perturbed (`perturbed`), then shifted so that random
    weights behave like trained ones where a stream needs it; loaded into `model` and returned:
    `detector_shift` is added to the presence head's bias (queries pass the bars), the scoring's text projection is
    scaled by `score_spread` (query scores far above and below them), `tracker_shift` is added to the tracker's
    object-score bias (tracked objects present) and its mask hypernetworks' last layers are scaled by `mask_gain`
    (mask logits far from 0: masks with edges)."""
    weights = perturbed(model, seed=seed)
    weights["detector_model.detr_decoder.presence_head.layer3.bias"] += detector_shift
    for name in ("weight", "bias"):
        weights[f"detector_model.dot_product_scoring.text_proj.{name}"] *= score_spread
    weights["tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias"] += tracker_shift
    for key in [k for k in weights if k.startswith("tracker_model.mask_decoder.output_hypernetworks_mlps")]:
        if ".proj_out." in key:
            weights[key] = weights[key] * mask_gain
    # transformers holds the prompt encoder's Fourier matrix twice: one matrix, as in every checkpoint
    fourier = weights["tracker_model.shared_image_embedding.positional_embedding"]
    weights["tracker_model.prompt_encoder.shared_embedding.positional_embedding"] = fourier
    model.load_state_dict(weights, strict=True)
    return weights


# The tracker's pyramid (Meta's sam2_convs, transformers' tracker_neck): transformers numbers the up-sampling
# layers with the GELU between them (0, 1, 2).
_NECK_PARTS = {"proj1": "conv_1x1", "proj2": "conv_3x3", "scale_layers.2": "dconv_2x2_1"}


def transformers_head_key(key: str) -> str:
    """A key of our tracker's heads (not its image encoder) as transformers' Sam3TrackerVideoModel names it."""
    return head_key(key)


def _neck_key(key: str, scale: float) -> str:
    """`tracker_neck.fpn_layers.<i>.<part>` -> `sam2_convs.<i>.<part>` of our image encoder."""
    level, part = re.fullmatch(r"fpn_layers\.(\d+)\.(.+)", key).groups()
    path, _, param = part.rpartition(".")
    if path == "scale_layers.0":
        ours = "dconv_2x2_0" if scale == 4.0 else "dconv_2x2"  # one up-sampling layer at 2x, two at 4x
    else:
        ours = _NECK_PARTS[path]
    return f"sam2_convs.{level}.{ours}.{param}"


def tracker_from_transformers(state: dict[str, torch.Tensor], spec: Sam3Spec, expected_keys) -> dict[str, torch.Tensor]:
    """transformers' Sam3VideoModel state dict -> our SAM 3 tracker's (SAM2Model of a sam3 variant at `spec`'s
    size; `expected_keys` its state dict's keys), for `load_state_dict(strict=True)`.

    The image encoder is the detector's vision backbone (converted by `detector_from_transformers`) with the
    tracker's pyramid from `tracker_neck.*`. The heads are renamed (`transformers_head_key`), but for: the prompt
    encoder's four point embeddings, one (4, C) table in transformers; and the prompt encoder's random Fourier
    matrix, which transformers holds twice (its prompt encoder's and the model's `shared_image_embedding`): the two
    must be equal. Raises AssertionError when a transformers key is not used or one of ours is not filled.
    """
    used = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return state[key]

    detector = detector_from_transformers(state, spec)
    used.update(key for key in state if key.startswith(VIDEO_DETECTOR_PREFIX))
    ours = {"image_encoder." + key[len(VISION) :]: value for key, value in detector.items() if key.startswith(VISION)}
    for key in [k for k in state if k.startswith(TRACKER_NECK)]:
        level = int(key.split(".")[2])
        ours["image_encoder." + _neck_key(key[len(TRACKER_NECK) :], spec.neck_scales[level])] = take(key)
    points = take(TRACKER + "prompt_encoder.point_embed.weight")  # (4, C)
    fourier = take(TRACKER + "shared_image_embedding.positional_embedding")
    other = take(TRACKER + "prompt_encoder.shared_embedding.positional_embedding")
    assert fourier.is_meta or torch.equal(fourier, other), "transformers' two copies of the Fourier matrix differ"
    for key in expected_keys:
        if key in ours:
            continue
        point = re.fullmatch(r"sam_prompt_encoder\.point_embeddings\.(\d)\.weight", key)
        if point:
            ours[key] = points[int(point[1]) : int(point[1]) + 1]  # (1, C)
        elif key == "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            ours[key] = fourier
        else:
            ours[key] = take(TRACKER + transformers_head_key(key))
    unused = sorted(key for key in state if key not in used)
    assert not unused, f"transformers keys with no place in our tracker: {unused[:8]}"
    return ours


def _greedy_nms(ious: torch.Tensor, probs: torch.Tensor, iou_threshold: float, use_iou_matrix: bool = True):
    """cv-utils' generic_nms over an IoU matrix: kept indices, highest score first."""
    assert use_iou_matrix
    order = torch.sort(probs, descending=True, stable=True).indices.tolist()
    overlaps = (ious.double() > iou_threshold).tolist()
    kept = []
    for i in order:
        if not any(overlaps[k][i] for k in kept):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


def _components(masks: torch.Tensor, get_counts: bool = True):
    """cv-utils' cc_2d: masks (N, 1, H, W) uint8 -> 8-connected labels and each pixel's component size."""
    from skimage.measure import label

    labels = np.zeros(masks.shape, dtype=np.int32)
    counts = np.zeros(masks.shape, dtype=np.int32)
    for n, mask in enumerate(masks[:, 0].numpy()):
        labelled = label(mask, connectivity=2)
        sizes = np.bincount(labelled.ravel())
        sizes[0] = 0
        labels[n, 0], counts[n, 0] = labelled, sizes[labelled]
    return torch.from_numpy(labels), torch.from_numpy(counts)


def install_cv_utils_standin(hf: SimpleNamespace):
    """transformers' NMS and hole filling with the stand-in kernel (see above); returns what transformers had
    (None: not loaded yet), to be put back. Skips without scikit-image."""
    pytest.importorskip("skimage", reason="the stand-in of transformers' cv-utils kernel labels with scikit-image")
    kernel = hf.modeling.cv_utils_kernel
    hf.modeling.cv_utils_kernel = SimpleNamespace(generic_nms=_greedy_nms, cc_2d=_components)
    return kernel


class TransformersStream:
    """transformers' Sam3VideoModel fed one frame at a time (`add_new_frame`, then `forward` on that frame), with a
    phrase's token ids (transformers' processor needs torchvision and the hub's tokenizer files; the ids are ours).

    Four of transformers' choices are set back to Meta's here, each by a switch, so that what is compared is
    computed the same way on both sides (the test measures what each changes):

    - `cls_token`: Meta's detector always runs the geometry encoder, whose CLS token joins a text prompt;
      transformers' video model runs its detector without geometry. One box of padding (label -10) makes it add
      exactly that token (test_sam3_hf_weights.py measures the same on the image model).
    - `min_frames`: transformers' tracker normalises the temporal positions of object pointers by
      min(frames in the session, 16) - 1, the frames seen so far on a stream; Meta by min(frames of the video, 16)
      - 1, which our stream takes as 16 (a long stream). The session says it holds at least `min_frames` frames.
    - `streaming`: transformers' `forward(frame=...)` turns hotstart removals off (no future frames to judge by);
      Meta's video model (and ours) removes tracks on probation as they fail. Without it, frames are added with
      `add_new_frame` and run by index, which keeps transformers' removals on.
    - `memory_size_masks`: before encoding the memories of the tracks propagated, Meta resizes their masks to the
      memory encoder's input size (4x the decoder's) and then clears those that resolving overlaps would shrink
      below 30% and scores them by area; transformers does both at the decoder's size and resizes after. The
      masks are handed to its `_tracker_update_memories` at the memory encoder's size (bilinear, as Meta), where
      it then does what Meta does. (Reconditioning, every 16th frame, would then fail: its masks stay small.)

    With every switch off (`cls_token=False, min_frames=None, streaming=True, memory_size_masks=False`) it is
    transformers' own streaming, as a user runs it (benchmarks/concept_tracking.py times it so).

    With `record`, each frame's detections (`detections`, after threshold and NMS) and the memories its
    `_tracker_update_memories` encodes for the tracks propagated (`tracked_memories`, object order of the session
    then) are kept. The session runs on `device`, its frames and state there too, in `dtype`.
    """

    def __init__(
        self,
        hf,
        model,
        ids: torch.Tensor,
        frame_hw,
        cls_token=True,
        min_frames: Optional[int] = 16,
        streaming=False,
        memory_size_masks=True,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        record=True,
    ):
        Session = hf.Session
        if min_frames is not None:

            class Session(hf.Session):
                @property
                def num_frames(self):
                    return max(min_frames, len(self.processed_frames or {}))

        self.model, self.streaming, self.record = model, streaming, record
        self.session = Session(
            video_height=frame_hw[0],
            video_width=frame_hw[1],
            inference_device=device,
            inference_state_device=device,
            video_storage_device=device,
            dtype=dtype,
        )
        prompt = self.session.add_prompt("phrase")
        self.session.prompt_input_ids[prompt] = ids
        self.session.prompt_attention_masks[prompt] = (ids != 0).long()
        self.detections: list[dict] = []
        self.tracked_memories: dict[int, torch.Tensor] = {}
        self._cls_token, self._memory_size_masks = cls_token, memory_size_masks
        self._memory_mask_size = 4 * model.tracker_model.prompt_encoder.mask_input_size[0]

    def step(self, pixels: torch.Tensor):
        """Run the next frame, (1, 3, S, S) normalised as the model takes it. Returns the frame's output
        (Sam3VideoSegmentationOutput)."""
        model = self.model
        detect, encode_memory, detector = model.run_detection, model.run_memory_encoder, model.detector_model.forward
        update_memories = model._tracker_update_memories

        def run_detection(inference_session, vision_embeds):
            found = detect(inference_session, vision_embeds)
            self.detections.append(found[0])
            return found

        def run_memory_encoder(inference_session, frame_idx, high_res_masks, object_score_logits):
            memory, position = encode_memory(inference_session, frame_idx, high_res_masks, object_score_logits)
            self.tracked_memories[frame_idx] = memory  # (HW, M, C)
            return memory, position

        def with_cls_token(*args, **kwargs):
            kwargs.setdefault("input_boxes", torch.full((1, 1, 4), 0.5))
            kwargs.setdefault("input_boxes_labels", torch.full((1, 1), -10))
            return detector(*args, **kwargs)

        def at_memory_size(inference_session, frame_idx, low_res_masks, reconditioned_masks=None):
            side = self._memory_mask_size
            masks = F.interpolate(low_res_masks[:, None], size=(side, side), mode="bilinear", align_corners=False)
            return update_memories(inference_session, frame_idx, masks[:, 0], reconditioned_masks)  # (M, S, S)

        if self.record:
            model.run_detection, model.run_memory_encoder = run_detection, run_memory_encoder
        if self._cls_token:
            model.detector_model.forward = with_cls_token
        if self._memory_size_masks:
            model._tracker_update_memories = at_memory_size
        try:
            if self.streaming:
                return model(inference_session=self.session, frame=pixels)
            index = self.session.add_new_frame(pixels)
            return model(inference_session=self.session, frame_idx=index)
        finally:  # the model's own methods back (instance attributes hid them)
            for name in ("run_detection", "run_memory_encoder", "_tracker_update_memories"):
                model.__dict__.pop(name, None)
            model.detector_model.__dict__.pop("forward", None)

    def frame_outputs(self, obj_id: int, frame_idx: int) -> dict:
        """What the session keeps of one object on one frame (its memory, pointer, masks)."""
        outputs = self.session.output_dict_per_obj[self.session._obj_id_to_idx[obj_id]]
        for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
            if frame_idx in outputs[kind]:
                return outputs[kind][frame_idx]
        raise KeyError(f"object {obj_id} has no output on frame {frame_idx}")
