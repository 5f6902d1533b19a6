"""`sam2rt image IMAGE|FOLDER --everything`: every mask of each image, as COCO JSON with RLE and overlays."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import typer
from PIL import Image

from ..io.atomic import write_atomically
from ..io.coco import CocoDataset
from ..io.overlay import draw_overlay
from ..io.sinks import OutputError, check_writable_file, check_writable_folder, make_folder
from .common import RunFailed, read_image


class EverythingSettings(NamedTuple):
    points_per_side: int
    pred_iou_thresh: float
    stability_score_thresh: float
    crop_n_layers: int


def image_files(path: Path) -> list[Path]:
    """The image itself, or the images of a folder (by file extension, sorted by name)."""
    if path.is_dir():
        suffixes = set(Image.registered_extensions())
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise RunFailed(f"no images in the folder {path}")
        return files
    if not path.exists():
        raise RunFailed(f"no such image file or folder: {path}")
    return [path]


def overlay_paths(images: list[Path], overlay: Optional[Path], single: bool) -> list[Optional[Path]]:
    """One overlay per image: `overlay` itself for one image given with an image suffix, else `<overlay>/<stem>.png`."""
    if overlay is None:
        return [None] * len(images)
    if single and overlay.suffix.lower() in Image.registered_extensions():
        return [check_writable_file(overlay)]
    check_writable_folder(overlay)
    return [overlay / f"{image.stem}.png" for image in images]


def labels_of(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (H, W) int32 mask number per pixel (1..N); smaller masks are drawn over larger ones."""
    labels = np.zeros(masks.shape[1:], dtype=np.int32)
    for index in np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable"):
        labels[masks[index]] = index + 1
    return labels


def segment_everything(
    model, image_path: Path, output: Path, overlay: Optional[Path], settings: EverythingSettings
) -> None:
    from ..images.mask_generator import MaskGenerator
    from ..io.rle import decode_rle

    if output.suffix.lower() != ".json":
        raise OutputError(f"--output must name the COCO JSON file to write (.json), got {output}")
    check_writable_file(output)
    images = image_files(image_path)
    overlays = overlay_paths(images, overlay, not image_path.is_dir())
    generator = MaskGenerator(model, output_mode="coco_rle", **settings._asdict())
    dataset = CocoDataset(["object"], {"description": f"sam2rt image --everything {image_path}"})
    for path, overlay_path in zip(images, overlays):
        rgb = read_image(path)
        records = generator.generate(rgb)
        image_id = dataset.add_image(path.name, *rgb.shape[:2])
        for record in records:
            dataset.add_annotation(
                image_id, 0, record["segmentation"], record["bbox"], record["area"], record["predicted_iou"]
            )
        typer.echo(f"{path.name}: {len(records)} masks")
        if overlay_path is not None:
            masks = np.stack([decode_rle(r["segmentation"]) for r in records]) if records else None
            labels = labels_of(masks) if masks is not None else np.zeros(rgb.shape[:2], np.int32)
            picture = draw_overlay(rgb, labels, list(range(1, len(records) + 1)))
            try:
                make_folder(overlay_path.parent)
            except OSError as error:
                raise OutputError(f"cannot write {overlay_path}: {error}") from None
            write_atomically(overlay_path, lambda temporary: Image.fromarray(picture).save(temporary))
    dataset.write(output)
    typer.echo(f"wrote {output} ({len(images)} images, {len(dataset.annotations)} masks)")
