"""What `sam2rt annotate` leaves for a trainer: `images/` beside `labels/`, and `data.yaml` naming the classes.

The YOLO tools find an image's labels by its path (`.../images/x.jpg` -> `.../labels/x.txt`) and read the
class names from data.yaml, so the output folder is a dataset they train on as it is. Images are hard links
to the originals (no space taken, and the dataset survives the originals being moved) where the file
system allows, copies otherwise or when asked.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from ..io.atomic import write_atomically, write_text_atomically
from ..io.sinks import make_folder
from .images import LabelError

CLASS_NAME_FILES = ("classes.txt", "obj.names")  # one name per line: labelImg, CVAT's YOLO export, darknet


def read_class_names(labels: Path) -> Optional[list[str]]:
    """The class names of a YOLO label folder, from its classes.txt (or obj.names) if it has one."""
    for name in CLASS_NAME_FILES:
        path = labels / name
        if path.is_file():
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if not names:
                raise LabelError(f"{path} names no class")
            return names
    return None


def class_names(records: Sequence[dict], given: Optional[Sequence[str]]) -> list[str]:
    """The names of classes 0, 1, ...: those given (a class beyond them is an error), else "0", "1", ..."""
    largest = max((a["category_id"] for record in records for a in record["annotations"]), default=-1)
    if given is None:
        return [str(index) for index in range(largest + 1)]
    if largest >= len(given):
        raise LabelError(f"class {largest} is labelled, but only {len(given)} class names are given")
    return list(given)


def place_images(sources: Sequence[tuple[Path, str]], folder: Path, copy: bool) -> int:
    """Each image (its file, its name relative to the images folder) as `<folder>/<relative name>`, subfolders
    mirrored as the labels' are: a hard link, or a copy (`copy`, or where no link can be made).

    An image already in place (a resumed run) is left as it is. Returns how many were copied.
    """
    make_folder(folder)
    copied = []

    def place(source: Path, temporary: Path) -> None:
        if not copy:
            try:
                os.link(source, temporary)
                return
            except OSError:  # another file system, or one without links
                pass
        shutil.copyfile(source, temporary)
        copied.append(source)

    for source, relative in sources:
        target = make_folder((folder / relative).parent) / Path(relative).name
        if target.exists() and (target.samefile(source) or target.stat().st_size == source.stat().st_size):
            continue
        write_atomically(target, lambda temporary, source=source: place(source, temporary))
    return len(copied)


def write_data_yaml(output: Path, names: Sequence[str]) -> Path:
    """`<output>/data.yaml` for the YOLO trainers: its images (train and val: split them for a real validation)
    and the class names. No `path`: the trainers take the file's folder as the root, so the dataset can move.
    Names are written as JSON strings, which YAML reads as they are."""
    lines = [
        "# Written by sam2rt annotate: yolo segment train data=<this file>",
        "train: images",
        "val: images  # the same images: move some to a folder of their own for a real validation",
        f"nc: {len(names)}",
        "names:",
        *(f"  {index}: {json.dumps(name)}" for index, name in enumerate(names)),
    ]
    path = output / "data.yaml"
    write_text_atomically(path, "\n".join(lines) + "\n")
    return path
