"""RepViT, EdgeTAM's image trunk (https://arxiv.org/abs/2307.09283), as timm builds it.

timm's own module, created without pretrained weights (the checkpoint brings them), with its
feature-extraction wrapper: the four stages' outputs at strides 4, 8, 16 and 32. timm is imported
here only, when an EdgeTAM model is built.
"""

from __future__ import annotations

from torch import Tensor, nn

from .variants import RepVitSpec


class RepVit(nn.Module):
    def __init__(self, spec: RepVitSpec) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as error:
            raise ImportError(
                f"EdgeTAM's trunk comes from timm, which failed to import ({error}): pip install timm"
            ) from None
        self.body = timm.create_model(spec.timm_name, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3))
        self.stage_dims: tuple[int, ...] = tuple(self.body.feature_info.channels())

    def layers(self) -> tuple[nn.Module, list[nn.Module]]:
        """The stem, then each stage's downsampling (where it has one) and blocks in order: the layers of layer-wise
        learning-rate decay and of activation checkpointing (Hiera's `layers`)."""
        blocks: list[nn.Module] = []
        for name, stage in self.body.named_children():
            if name.startswith("stages_"):
                if not isinstance(stage.downsample, nn.Identity):
                    blocks.append(stage.downsample)
                blocks.extend(stage.blocks)
        return self.body.stem, blocks

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, S, S) -> the output of each stage, highest resolution first: (B, C_i, S/4/2**i, S/4/2**i)."""
        return list(self.body(images))
