"""The official implementation (`sam2==1.1.0`) as the reference for every number.

Both models get the same weights: the oracle's own random initialisation, every tensor perturbed
with noise so that no zero or one initialisation hides a wrong path.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import sam2rt
from sam2rt.model.variants import get_variant

OBJECT_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
OBJECT_SCORE_SHIFT = 0.45  # added to OBJECT_SCORE_BIAS unless a test asks for another shift (see perturbed_weights)

# The shift of OBJECT_SCORE_BIAS per variant for the tracking parity tests (test_parity_stream.py,
# test_parity_video.py), chosen so that on their schedules objects are judged both present and absent
# (their tests assert it) and tracked objects are present (an absent object's mask is a constant: nothing
# would be compared). Random weights make the object-score head nearly blind to the image: a score is
# the shifted bias plus a term that moves by hundredths from frame to frame, and by a tenth or two
# between a first prompt, a correction and a tracked frame. Each value was found by running each test's
# schedule on sam2rt alone (it matches the oracle) with shifts in steps of 0.02 to 0.1, printing every
# object's score: each score moves with the shift, so each has the shift at which it changes sign.
# The value is the middle of the widest range of shifts between two such crossings where both signs
# occur and tracked objects are present; the smallest |score| of each test (its margin) is given.
# - sam2.1_hiera_tiny (256 px): 0.45, the default; first prompts are absent (about -0.1), tracked frames
#   present (about +0.33).
# - sam2_hiera_tiny: tracked frames cross at 0.049 (stream, 256 px; below it every tracked object is absent)
#   and below 0 (video, 128 px); the box on frame 15 of the stream at 0.07, the first correction click on
#   frame 7 at 0.086 (its second click then lies near -0.2), the video's box on frame 3 at 0.13 and its
#   later correction clicks above 0.2. Both signs with present tracking: 0.049 to 0.07, or 0.07 to 0.086;
#   0.06 (margins: stream 0.011, video 0.065).
# - sam2.1_hiera_base_plus (128 px): first prompts cross at 0.29 and above in both tests, tracked frames at
#   0.02 (video) and below 0 (stream), the stream's second correction click at 0.01, the video's corrections
#   on frame 10 at 0.094 and 0.194; 0.15 (margins: stream 0.14, video 0.044).
TRACKING_OBJECT_SCORE_SHIFT = {
    "sam2.1_hiera_tiny": OBJECT_SCORE_SHIFT,
    "sam2_hiera_tiny": 0.06,
    "sam2.1_hiera_base_plus": 0.15,
}
_CONFIG_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def config_path(variant: str) -> str:
    release, size = variant.split("_hiera_")
    return f"configs/{release}/{release}_hiera_{_CONFIG_SUFFIX[size]}.yaml"


def _overrides(image_size: int) -> list[str]:
    return [f"++model.image_size={image_size}"]


@lru_cache(maxsize=None)
def perturbed_weights(
    variant: str, image_size: int = 1024, seed: int = 0, object_score_shift: float = OBJECT_SCORE_SHIFT
) -> dict[str, torch.Tensor]:
    """A state dict of the official shapes: the oracle's initialisation plus Gaussian noise on every tensor,
    and `object_score_shift` added to the object-score bias."""
    from sam2.build_sam import build_sam2

    get_variant(variant)  # fail early on a typo
    torch.manual_seed(seed)
    reference = build_sam2(config_path(variant), None, device="cpu", hydra_overrides_extra=_overrides(image_size))
    generator = torch.Generator().manual_seed(seed + 1)
    weights = {
        key: value + 0.05 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in reference.state_dict().items()
    }
    # Random weights judge every object absent (score logits near -0.4), which would reduce every
    # tracked mask to the constant no-object score; this shift makes present and absent both occur.
    weights[OBJECT_SCORE_BIAS] = weights[OBJECT_SCORE_BIAS] + object_score_shift
    return weights


def _weights(variant: str, image_size: int, seed: int, object_score_shift: Optional[float]) -> dict[str, torch.Tensor]:
    if object_score_shift is None or object_score_shift == OBJECT_SCORE_SHIFT:  # cached under the other tests' key
        return perturbed_weights(variant, image_size, seed)
    return perturbed_weights(variant, image_size, seed, object_score_shift)


def oracle_model(
    variant: str,
    image_size: int = 1024,
    seed: int = 0,
    video: bool = False,
    object_score_shift: Optional[float] = None,
    **attributes,
):
    """The official SAM2Base (or SAM2VideoPredictor with `video=True`) carrying the perturbed weights.

    `object_score_shift`: that of perturbed_weights (None: its default). `attributes` are set on the built
    model (e.g. fill_hole_area=0), after the builder's own settings.
    """
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    build = build_sam2_video_predictor if video else build_sam2
    model = build(config_path(variant), None, device="cpu", hydra_overrides_extra=_overrides(image_size))
    model.load_state_dict(_weights(variant, image_size, seed, object_score_shift))
    set_options(model, attributes)
    if video:
        _promote_memory_to_fp32(model.memory_attention)
    return model.eval()


def set_options(model, attributes: dict) -> None:
    """Set `attributes` on an official model (sam2's or a fork's), refusing a name it does not have."""
    for name, value in attributes.items():
        if not hasattr(model, name):
            raise AttributeError(f"the official model has no option {name!r}")
        setattr(model, name, value)


def _promote_memory_to_fp32(memory_attention: nn.Module) -> None:
    """Let the official predictor's fp32 CPU path run on frames without object pointers.

    It stores memories in bf16 and relies on CUDA autocast to mix them with fp32 weights.
    Concatenating them with the fp32 object pointers promotes them to fp32 on almost every
    frame; on a frame without pointers (an object tracked before its first prompt) nothing
    does, and F.linear fails. Casting there is what the concatenation does everywhere else.
    """
    forward = memory_attention.forward

    def promoted(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        return forward(curr, memory.float(), curr_pos, memory_pos.float(), num_obj_ptr_tokens)

    memory_attention.forward = promoted


def oracle_video_state(predictor, frames: list, resize: str) -> dict:
    """The official init_state over frames preprocessed exactly as sam2rt preprocesses them with `resize`.

    The comparison is of the models, so both sides get identical input tensors (test_parity_frames.py
    compares with the official loader itself, on a JPEG folder). As with the official loader's default, the
    frames are put on the model's device up front.
    """
    from unittest import mock

    from sam2rt.processing.images import as_rgb_tensor
    from sam2rt.processing.preprocess import model_input

    size, device = predictor.image_size, predictor.device
    images = torch.cat([model_input(as_rgb_tensor(frame), size, resize, device) for frame in frames])
    height, width = frames[0].shape[:2]

    def load_video_frames(**_):
        return images, height, width

    with mock.patch("sam2.sam2_video_predictor.load_video_frames", load_video_frames):
        return predictor.init_state(video_path="<frames>")


def our_model(
    variant: str, image_size: int = 1024, seed: int = 0, object_score_shift: Optional[float] = None
) -> sam2rt.SAM2Model:
    model = sam2rt.build_model(variant, image_size=image_size)
    model.load_state_dict(_weights(variant, image_size, seed, object_score_shift), strict=True)
    return model


def assert_close_logits(ours: torch.Tensor, reference: torch.Tensor, rel: float = 1e-4, what: str = "logits") -> float:
    """Max |difference| <= rel * max(1, largest |reference value|); returns the difference."""
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(reference.shape)}"
    ours, reference = ours.float(), reference.float()
    assert torch.isfinite(reference).all(), f"{what}: the reference is not finite"
    diff = (ours - reference).abs().max().item() if ours.numel() else 0.0
    bound = rel * max(1.0, reference.abs().max().item() if reference.numel() else 0.0)
    assert diff <= bound, f"{what}: max |diff| {diff:.3g} > {bound:.3g}"
    return diff


def assert_close_scores(ours: torch.Tensor, reference: torch.Tensor, what: str = "scores") -> float:
    return assert_close_logits(ours, reference, rel=1e-5, what=what)


class _ToTensor:
    """torchvision.transforms.ToTensor for HxWxC uint8 arrays."""

    def __call__(self, picture):
        tensor = torch.from_numpy(picture.transpose((2, 0, 1))).contiguous()
        return tensor.to(torch.float32).div(255)


class _Resize(nn.Module):
    """torchvision.transforms.Resize on tensors: bilinear with antialiasing, as torchvision does it."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batched = x.unsqueeze(0)
        out = F.interpolate(batched, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return out.squeeze(0)


class _Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return (x - mean) / std


def _reference_box_area(boxes: torch.Tensor) -> torch.Tensor:
    """torchvision.ops.boxes.box_area: (x1 - x0) * (y1 - y0)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _reference_batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """torchvision.ops.boxes.batched_nms, the textbook way (a test helper, deliberately not sam2rt's code).

    Highest score first (a stable sort, as torchvision's kernels sort); a box is dropped when a kept
    box of the same category overlaps it with IoU > iou_threshold. Returns the kept indices by rank.
    """
    values, score_list, categories = boxes.double().tolist(), scores.tolist(), idxs.tolist()
    order = sorted(range(len(score_list)), key=lambda i: -score_list[i])
    area = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in values]
    kept: list[int] = []
    for i in order:
        suppressed = False
        for j in kept:
            if categories[i] != categories[j]:
                continue
            width = min(values[i][2], values[j][2]) - max(values[i][0], values[j][0])
            height = min(values[i][3], values[j][3]) - max(values[i][1], values[j][1])
            inter = max(width, 0.0) * max(height, 0.0)
            union = area[i] + area[j] - inter
            if union > 0 and inter / union > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


class _Placeholder(type):
    """A name of the stand-in that nothing here calls: a class whose attributes are placeholders too."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Placeholder(name, (), {})
        setattr(cls, name, value)  # the same object at each access (timm keys dicts by them)
        return value


def _placeholders(module: types.ModuleType) -> types.ModuleType:
    """Give `module` a placeholder for each name it lacks (module-level __getattr__)."""

    def missing(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Placeholder(name, (), {})
        setattr(module, name, value)
        return value

    module.__getattr__ = missing
    return module


class _StandinSubmodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves every other `torchvision.*` module as an empty module of placeholders."""

    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("torchvision.") and fullname not in sys.modules:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _placeholders(types.ModuleType(spec.name))
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


def install_torchvision_standin() -> None:
    """Register a minimal `torchvision` so that the oracle's image predictor and timm (EdgeTAM's trunk) import
    on a CPU-only torch.

    PyPI has no CPU torchvision, and its wheel pins an exact torch. The stand-in implements the
    three transforms the oracle uses the way torchvision implements them for tensors, and the box
    NMS of its automatic mask generator. timm imports many more names at import time (dataset classes,
    transforms, FrozenBatchNorm2d) that building a RepViT never calls: those are placeholders.
    """
    try:
        import torchvision  # noqa: F401  (the real one, or the stand-in installed before)

        return
    except ImportError:
        pass
    standin = _placeholders(types.ModuleType("torchvision"))
    standin.__path__ = []
    # A spec as an imported package has: torch.onnx's exporter asks importlib for one (a traceback per operator).
    standin.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    transforms = _placeholders(types.ModuleType("torchvision.transforms"))
    transforms.__path__ = []
    transforms.ToTensor = _ToTensor
    transforms.Resize = _Resize
    transforms.Normalize = _Normalize
    standin.transforms = transforms
    ops = _placeholders(types.ModuleType("torchvision.ops"))
    ops.__path__ = []
    boxes = _placeholders(types.ModuleType("torchvision.ops.boxes"))
    boxes.batched_nms = _reference_batched_nms
    boxes.box_area = _reference_box_area
    ops.boxes = boxes
    standin.ops = ops
    sys.modules["torchvision"] = standin
    sys.modules["torchvision.transforms"] = transforms
    sys.modules["torchvision.ops"] = ops
    sys.modules["torchvision.ops.boxes"] = boxes
    sys.meta_path.append(_StandinSubmodules())


def _reference_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sam2.utils.misc.get_connected_components by OpenCV: 8-connected components of masks (N, 1, H, W), their
    labels (0 off the mask) and each pixel's component area (0 off the mask), both (N, 1, H, W) int32."""
    import cv2

    binary = mask.to(torch.uint8).cpu().numpy()
    labels, areas = np.zeros(binary.shape, np.int32), np.zeros(binary.shape, np.int32)
    for index in range(binary.shape[0]):
        _, found, stats, _ = cv2.connectedComponentsWithStats(binary[index, 0], connectivity=8)
        component_area = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        component_area[0] = 0  # OpenCV's label 0 is the background of the mask
        labels[index, 0], areas[index, 0] = found, component_area[found]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(areas).to(mask.device)


def install_connected_components_standin() -> None:
    """Give the oracle's hole filling and sprinkle removal the connected components of its CUDA extension.

    Built without it (SAM2_BUILD_CUDA=0), the official code warns and skips both post-processing steps; with
    this stand-in, the defaults users run (hole filling in tracking, max_hole_area / max_sprinkle_area in
    the image predictor) are compared as well. The extension's components are 8-connected, as OpenCV's here.
    """
    import sam2.utils.misc

    sam2.utils.misc.get_connected_components = _reference_connected_components
