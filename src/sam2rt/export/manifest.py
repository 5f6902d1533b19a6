"""What an export folder holds: the model's sizes, the memory's fixed capacity and the graphs' files.

Written by `onnx_export` beside the graphs, read by `onnx_tracker` before any graph is loaded, so that a
folder of another format, or one with a file missing, is refused in one line. No PyTorch here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

FORMAT = "sam2rt-onnx-tracker"
FORMAT_VERSION = 2  # 2: memory attention in several capacities, mask prompts
MANIFEST_NAME = "sam2rt_onnx.json"

# The steps of a tracking pass, one graph each.
IMAGE_ENCODER = "image_encoder.onnx"
MASK_DECODER = "mask_decoder.onnx"  # several candidates, the best kept: tracking, and a single click
MASK_DECODER_SINGLE = "mask_decoder_single.onnx"  # one mask: two clicks or more, or a box
MEMORY_ATTENTION = "memory_attention.onnx"  # the full capacity; smaller ones: `ExportManifest.memory_attention`
MEMORY_ENCODER = "memory_encoder.onnx"
MASK_PROMPT = "mask_prompt.onnx"  # a mask given as an object's segmentation: its pointer and low-resolution logits
GRAPHS = (IMAGE_ENCODER, MASK_DECODER, MASK_DECODER_SINGLE, MEMORY_ATTENTION, MEMORY_ENCODER, MASK_PROMPT)


class ExportError(Exception):
    """An export folder that cannot be used: missing, of another format, or incomplete."""


@dataclass(frozen=True)
class ExportManifest:
    variant: str
    image_size: int  # S: frames are resized to S x S
    feature_size: int  # h = w = S / 16
    memory_tokens: int  # N: tokens of one frame's spatial memory (h*w, or EdgeTAM's perceiver's)
    hidden_dim: int  # C
    memory_dim: int  # C_mem
    num_maskmem: int  # the memory's temporal encodings: num_maskmem - 1 recent frames, and prompted frames
    max_obj_ptrs: int  # object pointers of the frames just before, the frame's own distance included
    max_cond_frames: int  # prompted frames kept per object (the first prompt always)
    memory_frames: int  # F: spatial memory slots memory attention reads, max_cond_frames + num_maskmem - 1
    pointer_slots: int  # P: pointer slots memory attention reads, max_cond_frames + max_obj_ptrs - 1
    # [F, P] of each memory attention graph, smallest first, the last (memory_frames, pointer_slots). Slots are
    # attended whether full or empty: a memory that fits a smaller graph runs there (one prompted frame: half the
    # keys of eight).
    memory_capacities: list[list[int]]
    opset: int
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def memory_attention(self, frames: int, pointers: int) -> str:
        """The file of the memory attention graph with `frames` spatial and `pointers` pointer slots."""
        if [frames, pointers] == [self.memory_frames, self.pointer_slots]:
            return MEMORY_ATTENTION
        return f"memory_attention_{frames}x{pointers}.onnx"

    def graphs(self) -> list[str]:
        """Every graph file of the export."""
        return list(GRAPHS) + [self.memory_attention(*capacity) for capacity in self.memory_capacities[:-1]]

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Union[str, Path]) -> ExportManifest:
        """The manifest of an export folder; ExportError when the folder is not a complete export of this format."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ExportError(f"no ONNX export folder at {folder} (make one with `sam2rt export -o {folder}`)")
        path = folder / MANIFEST_NAME
        try:
            fields = json.loads(path.read_text())
        except FileNotFoundError:
            raise ExportError(f"{folder} holds no {MANIFEST_NAME}: not a folder written by `sam2rt export`") from None
        except (OSError, ValueError) as error:
            raise ExportError(f"{path} cannot be read: {error}") from None
        if not isinstance(fields, dict) or fields.get("format") != FORMAT:
            raise ExportError(f"{path} is not a sam2rt ONNX export manifest")
        if fields.get("format_version") != FORMAT_VERSION:
            raise ExportError(
                f"{path} is of format version {fields.get('format_version')}, this sam2rt reads version "
                f"{FORMAT_VERSION}: export the model again"
            )
        try:
            manifest = cls(**fields)
        except TypeError as error:
            raise ExportError(f"{path} does not hold the fields of a manifest: {error}") from None
        missing = [name for name in manifest.graphs() if not (folder / name).is_file()]
        if missing:
            raise ExportError(f"{folder} lacks {', '.join(missing)}: export the model again")
        return manifest
