"""The WebSocket protocol between the browser app (or any client) and `sam2rt serve`.

Client -> server
- text: one JSON object per message, `{"type": ...}`:
    `source`  {"kind": "webcam"} (frames come from the client), {"kind": "media", "path": "clips/a.mp4"}
              (a file under the media root), {"kind": "upload", "upload": ID} (a file POSTed to /api/upload),
              {"kind": "url", "url": "rtsp://..."}; starts over: objects and frames are forgotten.
    `prompt`  {"frame": F, "obj_id": N, "points": [[x, y], ...], "labels": [1, 0, ...]} and/or
              {"box": [x0, y0, x1, y1]}: frame F is the id of the frame the user clicked on (see FRAME).
    `remove`  {"obj_id": N};  `reset` (forget every object);  `pause`;  `resume`;  `ping` (keeps the session).
    `text`    {"phrase": "person"}: every instance of the phrase found and tracked (SAM 3, when the server has
              it) instead of the clicked objects; {"phrase": null} clears it and clicks work again.
- binary: a frame of a `webcam` source: FRAME_HEADER (magic, format, frame id, width, height) then the
  image (JPEG, PNG, or raw RGB rows of width x height x 3 bytes).

Server -> client
- text: `session` {"id", "limits", "text"}; `source` {"kind", "width", "height", "fps"}; `result` (RESULT
  below); `text` {"phrase"} when a phrase is set or cleared (null); `error` {"message"}; `ended` {"reason"} when
  a server-side source has no more frames.
- binary: an image of a server-side source: FRAME_HEADER then a JPEG; the `result` with the same frame id
  follows it.

Frame ids are the client's for webcam frames and the source's frame number for server-side sources.
A result: {"type": "result", "frame": id, "index": tracker frame index, "objects": [{"id", "score",
"rle": {"size": [H, W], "counts": COCO compressed RLE}}], "stats": {...}}; while a phrase is tracked, the
result has "phrase" and each object a "label" (the phrase).
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass
from typing import Optional, Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

_CV2_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV 4.10 and later decode to RGB themselves
FRAME_MAGIC = b"S2RT"
FRAME_HEADER = struct.Struct("<4sBxxxIHH")  # magic, format, padding, frame id, width, height: 16 bytes
FORMAT_JPEG, FORMAT_PNG, FORMAT_RGB = 1, 2, 3
FORMAT_NAMES = {FORMAT_JPEG: "jpeg", FORMAT_PNG: "png", FORMAT_RGB: "rgb"}

MAX_TEXT_BYTES = 64 * 1024  # a prompt with hundreds of clicks fits many times over
MAX_FRAME_BYTES = 16 * 1024 * 1024  # a raw 1920 x 1080 RGB frame is 6.2 MB
MAX_FRAME_SIDE = 4096
MAX_OBJECT_ID = 255  # the DAVIS PNG export holds one byte per pixel
MAX_OBJECTS = 32  # per session: the GPU work grows with the objects
MAX_POINTS = 64  # per prompt
MAX_PHRASE_CHARS = 200  # SAM 3 reads 30 tokens of a phrase; a longer one is cut there
SOURCE_KINDS = ("webcam", "media", "upload", "url")


class ProtocolError(ValueError):
    """A message the server refuses; its text goes back to the client and the session goes on."""


@dataclass(frozen=True)
class SourceRequest:
    kind: str  # one of SOURCE_KINDS
    target: Optional[str]  # media path, upload id or URL; None for webcam


@dataclass(frozen=True)
class PromptRequest:
    frame: int
    obj_id: int
    points: Optional[list[list[float]]]  # [[x, y], ...] pixels of the frame
    labels: Optional[list[int]]
    box: Optional[list[float]]  # [x0, y0, x1, y1]


@dataclass(frozen=True)
class RemoveRequest:
    obj_id: int


@dataclass(frozen=True)
class ControlRequest:
    action: str  # reset, pause, resume, ping


@dataclass(frozen=True)
class TextRequest:
    phrase: Optional[str]  # stripped, 1 to MAX_PHRASE_CHARS printable characters; None clears the phrase


Request = Union[SourceRequest, PromptRequest, RemoveRequest, ControlRequest, TextRequest]


@dataclass(frozen=True)
class ReceivedFrame:
    """A frame of a session, decoded: from its browser (a binary message) or read from its server-side source."""

    frame_id: int  # the client's id (webcam) or the source's frame number
    image: Optional[np.ndarray]  # (H, W, 3) uint8 RGB; None once the frame is only kept for prompts
    encoded: Optional[bytes]  # as the client sent it; server-side frames are encoded (JPEG) when published
    format: int
    arrived: float  # time.monotonic() when the server got it


def _integer(message: dict, key: str, low: int, high: int) -> int:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"{key!r} must be an integer from {low} to {high}, got {value!r}")
    return value


def _numbers(value: object, what: str) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise ProtocolError(f"{what} must be a list of finite numbers, got {value!r:.80}")
    return [float(v) for v in value]


def _check_keys(message: dict, allowed: set[str]) -> None:
    unknown = sorted(set(message) - allowed - {"type"})
    if unknown:
        raise ProtocolError(f"unknown key(s) in a {message['type']!r} message: {', '.join(unknown)}")


def _prompt(message: dict) -> PromptRequest:
    _check_keys(message, {"frame", "obj_id", "points", "labels", "box"})
    frame = _integer(message, "frame", 0, 2**32 - 1)
    obj_id = _integer(message, "obj_id", 1, MAX_OBJECT_ID)
    points = message.get("points")
    labels = message.get("labels")
    box = message.get("box")
    if points is None and box is None:
        raise ProtocolError("a prompt needs 'points' or a 'box'")
    if points is not None:
        if not isinstance(points, list) or not 0 < len(points) <= MAX_POINTS:
            raise ProtocolError(f"'points' must be a list of 1 to {MAX_POINTS} [x, y] pairs")
        points = [_numbers(point, "a point") for point in points]
        if any(len(point) != 2 for point in points):
            raise ProtocolError("each point is [x, y]")
        labels = [1] * len(points) if labels is None else labels
        if not isinstance(labels, list) or len(labels) != len(points) or any(label not in (0, 1) for label in labels):
            raise ProtocolError("'labels' must hold one 0 (background) or 1 (object) per point")
        labels = [int(label) for label in labels]
    elif labels is not None:
        raise ProtocolError("'labels' go with 'points'")
    if box is not None:
        box = _numbers(box, "'box'")
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise ProtocolError("'box' is [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
    return PromptRequest(frame, obj_id, points, labels, box)


def _source(message: dict) -> SourceRequest:
    _check_keys(message, {"kind", "path", "upload", "url"})
    kind = message.get("kind")
    if kind not in SOURCE_KINDS:
        raise ProtocolError(f"'kind' must be one of {', '.join(SOURCE_KINDS)}, got {kind!r:.40}")
    key = {"webcam": None, "media": "path", "upload": "upload", "url": "url"}[kind]
    if key is None:
        return SourceRequest(kind, None)
    target = message.get(key)
    if not isinstance(target, str) or not 0 < len(target) <= 2048:
        raise ProtocolError(f"a {kind!r} source needs {key!r}: a string of 1 to 2048 characters")
    return SourceRequest(kind, target)


def _text(message: dict) -> TextRequest:
    _check_keys(message, {"phrase"})
    if "phrase" not in message:
        raise ProtocolError('a text request needs "phrase": a phrase to find, or null to clear it')
    phrase = message["phrase"]
    if phrase is None:
        return TextRequest(None)
    if not isinstance(phrase, str):
        raise ProtocolError(f"'phrase' must be a string or null, got {phrase!r:.40}")
    phrase = " ".join(phrase.split())  # runs of spaces, tabs and newlines as one space
    if not 0 < len(phrase) <= MAX_PHRASE_CHARS or not phrase.isprintable():
        raise ProtocolError(f"'phrase' must be 1 to {MAX_PHRASE_CHARS} printable characters, not blank")
    return TextRequest(phrase)


def parse_text(text: str) -> Request:
    """A client's JSON message as a request, or a ProtocolError that says what is wrong with it."""
    if len(text) > MAX_TEXT_BYTES:
        raise ProtocolError(f"message too large: {len(text)} characters (at most {MAX_TEXT_BYTES})")
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ProtocolError(f"malformed JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('a message is a JSON object with a "type"')
    kind = message["type"]
    if kind == "prompt":
        return _prompt(message)
    if kind == "source":
        return _source(message)
    if kind == "text":
        return _text(message)
    if kind == "remove":
        _check_keys(message, {"obj_id"})
        return RemoveRequest(_integer(message, "obj_id", 1, MAX_OBJECT_ID))
    if kind in ("reset", "pause", "resume", "ping"):
        _check_keys(message, set())
        return ControlRequest(kind)
    raise ProtocolError(f"unknown message type {kind!r:.40}")


def frame_header(frame_id: int, format: int, width: int, height: int) -> bytes:
    return FRAME_HEADER.pack(FRAME_MAGIC, format, frame_id, width, height)


def parse_frame(data: bytes, arrived: float) -> ReceivedFrame:
    """A binary frame message, received at `arrived`, decoded to RGB; or a ProtocolError (bad header, size, or image)."""
    if len(data) > MAX_FRAME_BYTES + FRAME_HEADER.size:
        raise ProtocolError(f"frame too large: {len(data)} bytes (at most {MAX_FRAME_BYTES})")
    if len(data) < FRAME_HEADER.size or data[:4] != FRAME_MAGIC:
        raise ProtocolError(f"a binary message is a frame: a {FRAME_HEADER.size}-byte header starting with 'S2RT'")
    _, format, frame_id, width, height = FRAME_HEADER.unpack_from(data)
    image = decode_payload(data[FRAME_HEADER.size :], format, width, height)
    return ReceivedFrame(frame_id, image, data[FRAME_HEADER.size :], format, arrived)


def decode_payload(payload: bytes, format: int, width: int, height: int) -> np.ndarray:
    """A frame's bytes as (H, W, 3) uint8 RGB; width and height are checked for raw RGB only."""
    if format == FORMAT_RGB:
        if not (0 < width <= MAX_FRAME_SIDE and 0 < height <= MAX_FRAME_SIDE):
            raise ProtocolError(f"frame sides must be 1 to {MAX_FRAME_SIDE} pixels, got {width} x {height}")
        if len(payload) != width * height * 3:
            raise ProtocolError(f"a {width} x {height} RGB frame has {width * height * 3} bytes, got {len(payload)}")
        return np.frombuffer(payload, dtype=np.uint8).reshape(height, width, 3)  # rows of RGB triples
    if format in (FORMAT_JPEG, FORMAT_PNG):
        return decode_image(payload, FORMAT_NAMES[format])
    raise ProtocolError(f"unknown frame format {format} (1 JPEG, 2 PNG, 3 raw RGB)")


def decode_image(payload: bytes, expected: str) -> np.ndarray:
    """A JPEG or PNG as (H, W, 3) uint8 RGB; its size is checked before the pixels are decoded.

    PIL reads the header (format, size, mode); an RGB image's pixels are decoded by OpenCV, which gives the same
    pixels (both are libjpeg-turbo and libpng with their defaults) in one call that frees the GIL throughout.
    PIL's decoder takes the GIL back for every chunk of the file, and the server's model thread takes it back
    after each of its hundreds of calls a tick: benchmarks/decode_gil.py measures what that costs it. Other modes
    (grey, palette, CMYK, 16-bit) are converted by PIL, as image files are."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            if image.format is None or image.format.lower() != expected:
                raise ProtocolError(f"the frame is not a {expected.upper()} image")
            width, height = image.size
            if not (0 < width <= MAX_FRAME_SIDE and 0 < height <= MAX_FRAME_SIDE):
                raise ProtocolError(f"frame sides must be 1 to {MAX_FRAME_SIDE} pixels, got {width} x {height}")
            if image.mode != "RGB":
                return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ProtocolError):
            raise
        raise ProtocolError(f"the frame is not a readable {expected.upper()} image: {error}") from None
    pixels = _decode_rgb(payload)
    if pixels is None or pixels.shape[:2] != (height, width):
        raise ProtocolError(f"the frame is not a readable {expected.upper()} image")
    return pixels


def _decode_rgb(payload: bytes) -> Optional[np.ndarray]:
    """OpenCV's decoding of an 8-bit colour image to (H, W, 3) RGB, or None where it cannot read it. EXIF
    orientation is ignored, as PIL ignores it: the frame is what the pixels stored are."""
    flags = (_CV2_RGB or cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(payload, np.uint8), flags)
    if pixels is not None and _CV2_RGB is None:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return pixels


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def error_message(message: str) -> str:
    return json.dumps({"type": "error", "message": message})
