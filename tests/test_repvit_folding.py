"""EdgeTAM's RepViT trunk at inference runs its folded form (BatchNorms in the convolutions, each block's
depthwise branches summed): the same numbers as the trunk as trained, made again whenever a weight changes,
and never seen by the state dict."""

from __future__ import annotations

import pytest
import torch
from oracle import install_torchvision_standin

from sam2rt.model.repvit import RepVit
from sam2rt.model.variants import get_variant

SIZE = 128


@pytest.fixture
def trunk() -> RepVit:
    install_torchvision_standin()
    torch.manual_seed(0)
    trunk = RepVit(get_variant("edgetam").trunk)
    with torch.no_grad():  # statistics and scales far from their initial identity, so that folding them matters
        for module in trunk.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.3)
                module.bias.normal_(0, 0.3)
    return trunk.eval()


def as_trained(trunk: RepVit, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.enable_grad():  # autograd on: the body as the checkpoint has it
        return [stage.detach() for stage in trunk(images)]


def folded(trunk: RepVit, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        return trunk(images)


def assert_stages_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for index, (a, b) in enumerate(zip(got, expected)):
        scale = b.abs().max().item()
        assert scale > 0.1, f"stage {index} is near zero: nothing compared"
        assert (a - b).abs().max().item() <= 1e-4 * scale, f"stage {index} differs"


def test_inference_runs_the_folded_body_with_the_trained_numbers(trunk):
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    expected = as_trained(trunk, images)
    got = folded(trunk, images)
    assert_stages_close(got, expected)
    body = trunk._folded[1]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules()), "the inference body is not folded"
    assert all(stage.is_contiguous(memory_format=torch.channels_last) for stage in got)
    assert list(trunk.state_dict()) == list(trunk.body.state_dict(prefix="body.")), "the fold leaked into the keys"


def test_the_fold_follows_every_change_of_the_weights(trunk):
    images = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    before = folded(trunk, images)
    batch_norm = next(m for m in trunk.body.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        batch_norm.running_mean += 1.0  # as a training step would change a statistic in place
    changed = folded(trunk, images)
    assert (changed[0] - before[0]).abs().max() > 1e-2, "the folded body kept the old statistic"
    assert_stages_close(changed, as_trained(trunk, images))

    weights = {key: value * 1.1 for key, value in trunk.state_dict().items() if value.is_floating_point()}
    trunk.load_state_dict(weights, strict=False)
    assert_stages_close(folded(trunk, images), as_trained(trunk, images))
    trunk.load_state_dict({key: value.clone() for key, value in weights.items()}, strict=False, assign=True)
    assert_stages_close(folded(trunk, images), as_trained(trunk, images))  # new tensors: the kept list is remade


def test_training_mode_runs_the_body_as_trained(trunk):
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    trunk.train()
    with torch.no_grad():  # in training mode, BatchNorm normalises by the batch: nothing may be folded
        got = trunk(images)
    trunk.eval()
    assert (got[0] - as_trained(trunk, images)[0]).abs().max() > 1e-2
    assert trunk._folded is None
