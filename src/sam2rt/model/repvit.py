"""RepViT, EdgeTAM's image trunk (https://arxiv.org/abs/2307.09283), as timm builds it.

timm's own module, created without pretrained weights (the checkpoint brings them), with its
feature-extraction wrapper: the four stages' outputs at strides 4, 8, 16 and 32. timm is imported
here only, when an EdgeTAM model is built.
"""

from __future__ import annotations

import copy

import torch
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
        # The body's inference form and what it was folded from; kept out of the module tree (not a submodule: the
        # state dict holds the official keys only). Listing the body's tensors walks its modules (1 ms): the list
        # is kept, and made again after a load (an assigning one gives the body other tensors; a move keeps them,
        # their storage changed, which the fold's key sees).
        self.__dict__["_folded"] = None  # Optional[tuple[key, nn.Module]]
        self.__dict__["_tensors"] = None  # Optional[list[Tensor]]
        self.register_load_state_dict_post_hook(lambda module, _: module._forget_folded())

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
        """(B, 3, S, S) -> the output of each stage, highest resolution first: (B, C_i, S/4/2**i, S/4/2**i).

        At inference, the body's folded form (`_folded_body`) runs, channels last: on 2 CPU threads at 512 px, 62 ms
        against 105 as trained (71 folded, channels first); the same numbers within float rounding.
        """
        if self.training or torch.is_grad_enabled():
            return list(self.body(images))
        # The stages stay channels last: the neck's convolutions take them so in a quarter of the time (5 ms).
        return list(self._folded_body()(images.contiguous(memory_format=torch.channels_last)))

    def fold_batch_norms(self) -> None:
        """Replace the body by its inference form for good, as `export` does: the state dict no longer takes the
        official keys, and batch statistics can no longer train."""
        self.body = self._folded_body()
        self._forget_folded()

    def _forget_folded(self) -> None:
        self.__dict__["_folded"] = self.__dict__["_tensors"] = None

    @torch.compiler.disable  # a Python check of the parameters, run as it is: compiled code runs the body it returns
    def _folded_body(self) -> nn.Module:
        """The body as RepViT is meant to run once trained: each convolution's BatchNorm folded into its weights, and
        each block's three depthwise branches (3x3, 1x1, identity) summed into one 3x3 convolution (timm's `fuse`).
        Made again whenever a parameter or statistic has changed since (a load, a training step, a move)."""
        if self._tensors is None:
            self.__dict__["_tensors"] = [*self.body.parameters(), *self.body.buffers()]
        tensors = self._tensors
        # A step or a copy into a tensor bumps its version. Tensors made under inference_mode keep none; they can
        # change only by a load (which forgets the fold) or in place under inference_mode, which nothing here does.
        key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            dtype = tensors[0].dtype
            folded = copy.deepcopy(self.body).float().eval()  # folded in fp32, then cast: bf16 would round twice
            with torch.no_grad():
                _fold_children(folded)
            folded = folded.to(dtype=dtype, memory_format=torch.channels_last).requires_grad_(False)
            self.__dict__["_folded"] = (key, folded)
        return self._folded[1]


def _fold_children(module: nn.Module) -> None:
    """Replace, depth first, each child that timm can fold (`fuse()`) by its folded module."""
    for name, child in module.named_children():
        if hasattr(child, "fuse"):
            child = child.fuse()
            setattr(module, name, child)
        _fold_children(child)
