"""Files the server may read: videos under the media root, and videos uploaded by the browser.

Nothing outside the media root is ever opened: a requested path must be relative, without `..`,
and must still lie inside the root once every symlink is resolved. Uploads are written to a
private temporary folder under unguessable names, with a size cap, and belong to one session.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Optional

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
MAX_LISTED = 1000


class MediaError(ValueError):
    """A media path or upload the server refuses; the message says why."""


def resolve_media_path(root: Optional[Path], relative: str) -> Path:
    """The file `relative` names inside `root`, or a MediaError (outside the root, missing, not a file)."""
    if root is None:
        raise MediaError("this server has no media root (start it with --media-root DIR)")
    if "\x00" in relative or "\\" in relative:
        raise MediaError(f"not a valid media path: {relative!r:.80}")
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise MediaError(f"media paths are relative to the media root, without '..': {relative!r:.80}")
    base = root.resolve()
    try:
        resolved = (base / path).resolve()
        inside = resolved.is_relative_to(base)
        found = inside and resolved.is_file()
    except OSError as error:  # a name too long, a loop of links, ...
        raise MediaError(f"not a usable media path: {relative!r:.80} ({error.strerror or error})") from None
    if not inside:
        raise MediaError(f"{relative!r:.80} leads outside the media root")
    if not found:
        raise MediaError(f"no such file in the media root: {relative!r:.80}")
    return resolved


def list_media(root: Optional[Path]) -> list[str]:
    """The video files under `root` (relative POSIX paths, sorted); links that leave the root are left out."""
    if root is None:
        return []
    base = root.resolve()
    found: list[str] = []
    for folder, _, files in os.walk(base):
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() in VIDEO_SUFFIXES and path.resolve().is_relative_to(base):
                found.append(path.relative_to(base).as_posix())
            if len(found) >= MAX_LISTED:
                return sorted(found)
    return sorted(found)


class UploadStore:
    """Uploaded videos in a private temporary folder, each owned by the session that sent it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.folder: Optional[Path] = None  # made on the first upload: a server that gets none leaves no folder
        self._owners: dict[str, str] = {}  # upload id -> session id

    def new_path(self, session_id: str, suffix: str) -> tuple[str, Path]:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="sam2rt-uploads-"))
        upload_id = secrets.token_urlsafe(16)
        suffix = suffix.lower() if suffix.lower() in VIDEO_SUFFIXES else ".bin"
        self._owners[upload_id] = session_id
        return upload_id, self.folder / f"{upload_id}{suffix}"

    def path(self, session_id: str, upload_id: str) -> Path:
        """The file of an upload of this session; another session's upload is as unknown as a missing one."""
        if self._owners.get(upload_id) != session_id or self.folder is None:
            raise MediaError("no such upload in this session")
        matches = [p for p in self.folder.glob(f"{upload_id}.*") if p.stem == upload_id]
        if not matches:
            raise MediaError("no such upload in this session")
        return matches[0]

    def discard(self, upload_id: str) -> None:
        self._owners.pop(upload_id, None)
        if self.folder is None:  # nothing was ever uploaded
            return
        for path in self.folder.glob(f"{upload_id}.*"):
            path.unlink(missing_ok=True)

    def discard_session(self, session_id: str) -> None:
        for upload_id in [u for u, owner in self._owners.items() if owner == session_id]:
            self.discard(upload_id)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
