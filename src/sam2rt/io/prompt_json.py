"""A prompts file read as untrusted JSON: bounded in size, depth and number length; repeated keys found.

Python's json module takes any of these and fails late or not at all: a file of millions of points
becomes gigabytes of Python objects, deep nesting raises RecursionError, a 5000-digit integer
raises ValueError from int(), and a key given twice silently keeps its last value. Here the first
three are refused with a message that names the file, and repeated keys are reported to the caller,
who names the entry. `NaN` and `Infinity` (not JSON, but Python's json reads them) come back as
floats for the caller's checks to refuse, also with the entry named.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any, Optional

MAX_FILE_BYTES = 8 * 2**20  # some 100,000 prompts of several points each: far beyond any hand-made file
MAX_DEPTH = 16  # a prompts file needs 4 levels (list > entry > points > [x, y]); deeper is refused
MAX_DIGITS = 40  # an integer's digits: ids, frames and pixels need at most 10 or so

_preview = reprlib.Repr()
_preview.maxlist = _preview.maxdict = 4
_preview.maxlevel = 3
_preview.maxstring = _preview.maxother = 40


def preview(value: Any) -> str:
    """A short repr for messages, whatever the value's size or depth: `[[1, 2], [3, 4], ...]`."""
    return _preview.repr(value)


class JsonLimitError(ValueError):
    """A JSON file beyond the limits, or not JSON."""


class _Entry(dict):
    """A JSON object; `repeated` holds the first key it had twice (json keeps the last value, silently)."""

    repeated: Optional[str] = None


def _object(pairs: list[tuple[str, Any]]) -> _Entry:
    entry = _Entry()
    for key, value in pairs:
        if key in entry and entry.repeated is None:
            entry.repeated = key
        entry[key] = value
    return entry


def repeated_key(value: Any) -> Optional[str]:
    """The key a JSON object of the file gave twice, if any."""
    return value.repeated if isinstance(value, _Entry) else None


def load_json(path: Path, what: str) -> Any:
    """The content of a JSON file of at most MAX_FILE_BYTES, nested at most MAX_DEPTH deep.

    `what` names the file in messages: "prompts file".
    """
    with open(path, "rb") as file:  # OSError (missing, unreadable) is the caller's to word
        data = file.read(MAX_FILE_BYTES + 1)  # never more: the file may be huge or endless
    if len(data) > MAX_FILE_BYTES:
        raise JsonLimitError(f"{what} {path} is larger than {MAX_FILE_BYTES // 2**20} MiB, the most a {what} may be")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonLimitError(f"{what} {path} is not UTF-8 text: {error.reason} at byte {error.start}") from None
    try:
        content = json.loads(text, parse_int=_integer(path), object_pairs_hook=_object)
    except json.JSONDecodeError as error:
        raise JsonLimitError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    except RecursionError:
        raise JsonLimitError(f"{path}: JSON nested deeper than {MAX_DEPTH} levels") from None
    _check_depth(content, path)
    return content


def _integer(path: Path):
    def parse(text: str) -> int:
        digits = len(text.lstrip("-"))
        if digits > MAX_DIGITS:
            raise JsonLimitError(
                f"{path}: the number {text[:12]}... has {digits} digits; numbers in it have at most {MAX_DIGITS}"
            )
        return int(text)

    return parse


def _check_depth(content: Any, path: Path) -> None:
    """Refuse nesting deeper than MAX_DEPTH, walking without recursion."""
    level = [content]
    for depth in range(1, MAX_DEPTH + 2):
        containers = [v for v in level if isinstance(v, (list, dict))]
        if not containers:
            return
        if depth > MAX_DEPTH:
            raise JsonLimitError(f"{path}: JSON nested deeper than {MAX_DEPTH} levels")
        level = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)]
