"""Outputs that would destroy an input, or each other, refused before any work.

`sam2rt track clip.mp4 --overlay clip.mp4` would replace the user's video with the overlay;
`--png-dir frames/` on a folder of frames would mix masks into the frames (and overwrite PNG
frames of the same name); two outputs on one path would overwrite each other. Paths are compared
as the file system sees them: through symbolic links, `..`, and hard links of existing files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from .atomic import OutputError


class NamedPath(NamedTuple):
    role: str  # how messages name it: "--overlay", "the input video", "the mask of prompts.json entry 2"
    path: Path


class OutputPath(NamedTuple):
    option: str  # "--png-dir"
    path: Path
    folder_suffix: Optional[str] = None  # for a folder output: the suffix of the files it writes there (".png")


def same_path(first: Path, second: Path) -> bool:
    """Whether two paths name the same file or folder (links followed)."""
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies somewhere under `folder` (links followed)."""
    return folder.is_dir() and path.resolve().is_relative_to(folder.resolve())


def check_clashes(inputs: Sequence[NamedPath], outputs: Sequence[OutputPath]) -> None:
    """Refuse an output that is an input, lies inside an input folder, or would overwrite an input in its folder.

    Also refuses two outputs on the same path.
    """
    for output in outputs:
        for source in inputs:
            if same_path(output.path, source.path):
                raise OutputError(
                    f"{output.option} {output.path} is {source.role} {source.path}: "
                    f"sam2rt does not overwrite its inputs, choose another path"
                )
            if is_inside(output.path, source.path):
                raise OutputError(
                    f"{output.option} {output.path} is inside {source.role} {source.path}: "
                    f"outputs there would mix with the input, choose a path outside it"
                )
            if (
                output.folder_suffix is not None
                and source.path.suffix.lower() == output.folder_suffix
                and same_path(source.path.parent, output.path)
            ):
                raise OutputError(
                    f"{output.option} {output.path} holds {source.role} {source.path}, which the "
                    f"{output.folder_suffix} files written there could overwrite: choose another folder"
                )
    for position, output in enumerate(outputs):
        for other in outputs[position + 1 :]:
            if same_path(output.path, other.path):
                raise OutputError(
                    f"{output.option} and {other.option} are the same path {output.path}: give each its own"
                )
