"""One training step equals Meta's SAM2Train + MultiStepMultiMasksAndIous: same weights, same batch,
same prompt choices (NumPy generator) and same clicks (torch generator) -> same losses and gradients.

fp32 on CPU, sam2.1_hiera_tiny at 256, dropout off on the oracle (our model has none to turn off).

The optimiser equals the one Meta's construct_optimizer builds from its fine-tuning config: per parameter,
the same learning rate (layer-wise decay in the trunk) and weight decay, and the same schedule.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle import perturbed_weights
from oracle_training import import_training, official_loss, official_train_model
from torch import nn

from sam2rt.train.clip_forward import ClipBatch, clip_forward
from sam2rt.train.loss import LossWeights, clip_loss
from sam2rt.train.prompts import PromptSettings, plan_clip, sample_box, sample_click

VARIANT, SIZE = "sam2.1_hiera_tiny", 256


def _oracle_train_model(settings: PromptSettings):
    """SAM2Train with the tiny config, the training options of `settings` and the shared perturbed weights."""
    model = official_train_model(VARIANT, SIZE, settings)
    model.load_state_dict(perturbed_weights(VARIANT, SIZE))
    for module in model.modules():  # dropout would draw from the torch generator and change the numbers
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_p"):
            module.dropout_p = 0.0
    return model


def _our_model():
    from oracle import our_model

    return our_model(VARIANT, SIZE).train()


def _shapes_batch(num_videos: int, num_frames: int, objects_per_video: list[int], seed: int) -> ClipBatch:
    """Random images; per object a moving ellipse, absent on some frame, so that every loss rule is exercised."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_videos * num_frames, 3, SIZE, SIZE, generator=generator)
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    index, masks = [], []
    for t in range(num_frames):
        frame_index, frame_masks = [], []
        for video, count in enumerate(objects_per_video):
            for obj in range(count):
                cx = 60 + 50 * obj + 12 * t + 5 * video
                cy = 80 + 30 * obj + 6 * t
                mask = ((xs - cx) / (30 + 5 * obj)) ** 2 + ((ys - cy) / 22) ** 2 <= 1
                if obj == 1 and t == num_frames - 1:
                    mask = torch.zeros_like(mask)  # the object left the frame
                frame_index.append(video * num_frames + t)
                frame_masks.append(mask)
        index.append(torch.tensor(frame_index))
        masks.append(torch.stack(frame_masks))
    return ClipBatch(images, torch.stack(index), torch.stack(masks))


def _oracle_datapoint(data_utils, batch: ClipBatch, num_videos: int):
    frames = batch.num_frames
    img_batch = batch.images.reshape(num_videos, frames, 3, SIZE, SIZE).transpose(0, 1)  # (T, V, 3, S, S)
    video = batch.image_index // frames
    frame = batch.image_index % frames
    return data_utils.BatchedVideoDatapoint(img_batch, torch.stack([frame, video], dim=-1), batch.masks)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _one_step(settings: PromptSettings, batch: ClipBatch, num_videos: int, seed: int):
    train_model, loss_fns, data_utils = import_training()
    oracle = _oracle_train_model(settings)
    criterion = official_loss(loss_fns)
    oracle.rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    outputs = oracle(_oracle_datapoint(data_utils, batch, num_videos))
    reference = criterion(outputs, batch.masks)
    reference["core_loss"].backward()

    ours = _our_model()
    plan = plan_clip(settings, batch.num_frames, np.random.default_rng(seed))
    torch.manual_seed(seed)
    steps = clip_forward(ours, batch, plan, settings.clicks_per_frame, settings.corrections_as_cond)
    terms = clip_loss(steps, batch.masks, LossWeights(), float(batch.num_objects))
    terms.total.backward()
    return reference, terms, _grads(oracle), _grads(ours), plan


def _assert_step_equal(reference, terms, reference_grads, our_grads) -> None:
    pairs = {
        "total": ("core_loss", terms.total),
        "mask": ("loss_mask", terms.mask),
        "dice": ("loss_dice", terms.dice),
        "iou": ("loss_iou", terms.iou),
        "object_score": ("loss_class", terms.object_score),
    }
    for name, (key, value) in pairs.items():
        expected = float(reference[key].detach())
        assert abs(float(value.detach()) - expected) <= 1e-4 * max(abs(expected), 1e-6), (
            f"{name}: {value} != {expected}"
        )
    assert set(our_grads) == set(reference_grads), set(our_grads) ^ set(reference_grads)
    scale = max(g.abs().max().item() for g in reference_grads.values())
    for name, expected in reference_grads.items():
        diff = (our_grads[name] - expected).abs().max().item()
        bound = 1e-3 * expected.abs().max().item() + 1e-5 * scale
        assert diff <= bound, f"gradient of {name}: max |diff| {diff:.3g} > {bound:.3g}"


@pytest.mark.parametrize(
    "settings, seed",
    [
        # clicks on 1-2 conditioning frames, corrections on up to 3 frames, corrected frames as memory
        (
            PromptSettings(
                prob_points=1.0, prob_box=0.0, num_init_cond_frames=2, num_frames_to_correct=3, clicks_per_frame=3
            ),
            3,
        ),
        # boxes, correction clicks partly drawn from the ground truth
        (PromptSettings(prob_points=1.0, prob_box=1.0, prob_clicks_from_gt=0.5, clicks_per_frame=3), 1),
        # mask prompts on two conditioning frames (no corrections)
        (PromptSettings(prob_points=0.0, num_init_cond_frames=2, random_init_cond_frames=False), 0),
    ],
    ids=["clicks", "boxes", "masks"],
)
def test_video_step_equals_official(settings: PromptSettings, seed: int) -> None:
    batch = _shapes_batch(num_videos=2, num_frames=3, objects_per_video=[2, 1], seed=seed)
    reference, terms, reference_grads, our_grads, plan = _one_step(settings, batch, 2, seed)
    if settings.prob_points == 1.0:
        assert plan.frames_to_correct, "the plan should exercise corrections"
    _assert_step_equal(reference, terms, reference_grads, our_grads)


def test_image_step_equals_official() -> None:
    """Images are clips of one frame: a click, then correction clicks (7 in the recipe, 4 here), as SAM is trained."""
    batch = _shapes_batch(num_videos=3, num_frames=1, objects_per_video=[2, 2, 1], seed=5)
    reference, terms, reference_grads, our_grads, plan = _one_step(PromptSettings(clicks_per_frame=4), batch, 3, 5)
    assert plan.use_points and plan.frames_to_correct == [0]
    _assert_step_equal(reference, terms, reference_grads, our_grads)


def test_click_and_box_sampling_equal_official() -> None:
    from sam2.modeling.sam2_utils import sample_box_points, sample_random_points_from_errors

    batch = _shapes_batch(num_videos=1, num_frames=2, objects_per_video=[3], seed=0)
    gt, prediction = batch.masks[0][:, None], batch.masks[1][:, None]
    prediction[2] = gt[2]  # one prediction right everywhere: a negative click on the background
    for ours, theirs in [
        (lambda: sample_click(gt, prediction), lambda: sample_random_points_from_errors(gt, prediction)),
        (lambda: sample_click(gt, None), lambda: sample_random_points_from_errors(gt, None)),
        (lambda: sample_box(gt), lambda: sample_box_points(gt)),
    ]:
        torch.manual_seed(7)
        coords, labels = ours()
        torch.manual_seed(7)
        expected_coords, expected_labels = theirs()
        torch.testing.assert_close(coords, expected_coords.float())
        assert torch.equal(labels, expected_labels)
    coords, labels = sample_click(gt, prediction)
    assert labels[2].item() == 0 and not gt[2, 0, int(coords[2, 0, 1]), int(coords[2, 0, 0])]


# -- the optimiser: parameter groups, layer-wise decay and schedule of Meta's fine-tuning config --------------

RECIPE = "configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml"  # in the sam2 wheel


class _CosineParamScheduler:
    """fvcore's CosineParamScheduler (fvcore is not installed here): start -> end along half a cosine."""

    def __init__(self, start_value: float, end_value: float) -> None:
        self.start_value, self.end_value = start_value, end_value

    def __call__(self, where: float) -> float:
        return self.end_value + 0.5 * (self.start_value - self.end_value) * (1 + math.cos(math.pi * where))


class _ConstantParamScheduler:
    """fvcore's ConstantParamScheduler."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, where: float) -> float:
        return self.value


@pytest.fixture
def recipe_optim(monkeypatch):
    """The `trainer.optim` section of Meta's fine-tuning config, read from the wheel's YAML; fvcore's two
    schedulers are stood in for when fvcore is missing, and the config's `divide` resolver is registered."""
    import importlib.util

    import sam2
    from omegaconf import OmegaConf

    import_training()  # Meta's training/ on sys.path: the config names training.optimizer.layer_decay_param_modifier
    if importlib.util.find_spec("fvcore") is None:
        schedulers = types.ModuleType("fvcore.common.param_scheduler")
        schedulers.CosineParamScheduler = _CosineParamScheduler
        schedulers.ConstantParamScheduler = _ConstantParamScheduler
        for name in ("fvcore", "fvcore.common"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setitem(sys.modules, "fvcore.common.param_scheduler", schedulers)
    registered = not OmegaConf.has_resolver("divide")
    if registered:
        OmegaConf.register_new_resolver("divide", lambda x, y: x / y)  # as training.utils.train_utils does
    config = OmegaConf.load(Path(sam2.__file__).parent / RECIPE)
    yield config
    if registered:
        OmegaConf.clear_resolver("divide")


def _meta_optimizer(model: nn.Module, config):
    """Meta's construct_optimizer as its Trainer calls it, on Meta's own model."""
    from training.optimizer import construct_optimizer

    optim = config.trainer.optim
    return construct_optimizer(model, optim.optimizer, optim.options, optim.param_group_modifiers)


def _per_parameter(model: nn.Module, optimizer: torch.optim.Optimizer, key: str) -> dict[str, tuple[float, float]]:
    """Parameter name -> (group[key], the group's weight decay)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g[key], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def _differing(ours: dict, theirs: dict) -> dict:
    """Parameter name -> ((our lr, our weight decay), (Meta's)) where they are not equal (to rounding)."""
    return {n: (ours[n], theirs[n]) for n in theirs if ours[n] != pytest.approx(theirs[n], rel=1e-9, abs=0)}


@pytest.mark.parametrize("custom", [False, True], ids=["recipe", "custom"])
def test_optimizer_groups_equal_official(recipe_optim, custom: bool) -> None:
    """Every parameter gets the learning rate (layer-wise decay in the trunk, vision_lr in the image encoder)
    and the weight decay (none on biases and torch LayerNorms) that Meta's construct_optimizer and
    layer_decay_param_modifier give it, under the config's own values and under other values set both ways;
    along the schedule too."""
    from oracle import config_path
    from sam2.build_sam import build_sam2

    import sam2rt
    from sam2rt.train.optim import OptimSettings, lr_factor, make_optimizer, set_learning_rates

    config = recipe_optim
    if custom:  # every number differs from the recipe's, so that a setting wired to the wrong place shows
        settings = OptimSettings(lr=4e-4, vision_lr=1.5e-4, layer_decay=0.7, weight_decay=0.03)
        config.scratch.base_lr, config.scratch.vision_lr = settings.lr, settings.vision_lr
        config.trainer.optim.param_group_modifiers[0].layer_decay_value = settings.layer_decay
        config.trainer.optim.options.weight_decay[0].scheduler.value = settings.weight_decay
    else:  # our defaults are the recipe
        settings = OptimSettings()
        assert settings.grad_clip == config.trainer.optim.gradient_clip.max_norm
    theirs_model = build_sam2(config_path(VARIANT), None, device="cpu", apply_postprocessing=False)
    theirs = _meta_optimizer(theirs_model, config)
    ours_model = sam2rt.build_model(VARIANT, image_size=SIZE)
    ours = make_optimizer(ours_model, settings)

    expected = _per_parameter(theirs_model, theirs.optimizer, "lr")  # Meta's Optimizer has set where=0
    got = _per_parameter(ours_model, ours, "peak_lr")
    assert got.keys() == expected.keys(), got.keys() ^ expected.keys()
    wrong = _differing(got, expected)
    assert not wrong, f"{len(wrong)} differ, (lr, weight decay) ours, Meta's: {dict(list(wrong.items())[:6])}"

    # The comparison is not vacuous: Meta's groups hold one rate per trunk layer (patch embedding, each
    # block, and the position embeddings, which its config's override keeps at the full rate), and weight
    # decay 0 on biases and LayerNorm weights.
    blocks = len(theirs_model.image_encoder.trunk.blocks)
    trunk_rates = {lr for n, (lr, _) in expected.items() if n.startswith("image_encoder.trunk.")}
    assert len(trunk_rates) == blocks + 2, sorted(trunk_rates)
    no_decay = {n for n, (_, wd) in expected.items() if wd == 0}
    assert any(n.endswith(".bias") for n in no_decay), "no bias without weight decay"
    assert any(n.endswith(".weight") for n in no_decay), "no LayerNorm weight without weight decay"
    assert "image_encoder.trunk.pos_embed" not in no_decay  # Meta decays position embeddings

    # The schedule (here through stand-ins with fvcore's formulas when fvcore is missing).
    total = 40
    for step in (1, 10, 20, 33, total - 1):
        theirs.step_schedulers(step / total, step)  # Trainer: where = step / total steps, before the step
        set_learning_rates(ours, lr_factor(step, total, settings))  # no warm-up, as in the recipe
        expected, got = _per_parameter(theirs_model, theirs.optimizer, "lr"), _per_parameter(ours_model, ours, "lr")
        wrong = _differing(got, expected)
        assert not wrong, f"step {step} of {total}: {len(wrong)} rates differ, e.g. {next(iter(wrong.items()))}"
