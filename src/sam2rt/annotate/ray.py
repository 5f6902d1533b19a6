"""`sam2rt annotate --ray`: the same work spread over a Ray cluster with Ray Data, one model per worker.

Every worker writes the files a single-process run writes (labels/<stem>.txt and .parts/<stem>.json
in the shared output folder, <stem> the image's name relative to the images folder without its suffix),
so the driver assembles the same COCO file afterwards, and an interrupted run resumes the same way. Ray is an optional extra: `pip install sam2rt[ray]`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from .images import Item, LabelError


class ModelSpec(NamedTuple):
    """What a worker needs to load its own copy of the model."""

    checkpoint: Optional[str]
    variant: str
    image_size: int
    device: str  # as the driver resolved it: "cpu", "cuda" (the GPU Ray assigns), "mps"
    fast: bool
    compile: bool
    cpu_bf16: bool = False


class _Worker:
    """A Ray Data actor: loads the model once, then annotates the images of each batch it is given."""

    def __init__(self, spec: ModelSpec, output: str, yolo: bool, per_piece: bool) -> None:
        from ..checkpoints import load_model
        from ..runtime import with_speed_options
        from .images import BoxSegmenter

        model = load_model(spec.variant, spec.checkpoint and Path(spec.checkpoint), spec.device, spec.image_size)
        self.segmenter = BoxSegmenter(with_speed_options(model, spec.fast, spec.compile, spec.cpu_bf16))
        self.output = Path(output)
        self.yolo, self.per_piece = yolo, per_piece

    def __call__(self, batch: dict) -> dict:
        from .images import annotate_item

        counts = []
        for row in zip(batch["image"], batch["label"], batch["detections"], batch["name"]):
            item = item_of_row(*row)
            counts.append(
                len(annotate_item(item, self.segmenter, self.output, self.yolo, self.per_piece)["annotations"])
            )
        return {"name": batch["name"], "masks": counts}


def row_of_item(item: Item) -> dict:
    """What a worker is sent of an item: plain strings, so any Ray Data block format carries them."""
    return {
        "image": str(item.image),
        "label": str(item.label_file) if item.label_file is not None else "",
        "detections": json.dumps([[d.class_id, *d.box] for d in item.detections or []]),  # ragged: as text
        "name": item.relative_name,  # where its outputs go: the image's subfolders, mirrored
    }


def item_of_row(image: str, label: str, detections: str, name: str) -> Item:
    """The item a row was made of (row_of_item), rebuilt in the worker."""
    from .images import Detection

    found = None if label else [Detection(int(c), tuple(b)) for c, *b in json.loads(detections)]
    return Item(Path(image), Path(label) if label else None, found, str(name))


def annotate_on_ray(
    items: Sequence[Item],
    spec: ModelSpec,
    output: Path,
    yolo: bool,
    per_piece: bool,
    address: Optional[str],
    workers: int,
) -> list[tuple[str, int]]:
    """Annotate `items` on a Ray cluster (joined at `address`, or this process's Ray, or a local one)."""
    try:
        import ray
    except ImportError:
        raise LabelError("--ray needs the ray package, which is not installed (pip install 'sam2rt[ray]')") from None
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    dataset = ray.data.from_items([row_of_item(item) for item in items]).map_batches(
        _Worker,
        fn_constructor_args=(spec, str(output), yolo, per_piece),
        batch_size=1,
        concurrency=workers,
        num_gpus=1 if spec.device.startswith("cuda") else 0,
    )
    return [(str(row["name"]), int(row["masks"])) for row in dataset.take_all()]
