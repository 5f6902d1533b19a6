"""A small HTTP server on 127.0.0.1 for the tests: byte ranges, and connections cut on purpose."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


@dataclass
class Served:
    """What the server holds and does: files by URL path, and a cut of the next N responses."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: Optional[int] = None  # close the next response after this many body bytes
    cuts_left: int = 0
    ranges: list[Optional[str]] = field(default_factory=list)  # the Range header of each request, in order


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        served = self.server.served  # type: ignore[attr-defined]
        header = self.headers.get("Range")
        served.ranges.append(header)
        body = served.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, end = 0, len(body)
        match = re.match(r"bytes=(\d+)-(\d*)$", header or "")
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) + 1 if match.group(2) else len(body)
            end = min(end, len(body))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        chunk = body[start:end]
        if served.cuts_left > 0 and served.cut_after is not None:
            served.cuts_left -= 1
            self.wfile.write(chunk[: served.cut_after])  # then the connection closes: a cut download
            self.wfile.flush()
            self.close_connection = True
            return
        try:
            self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):  # a client that stopped reading (a video player seeking)
            pass


class LocalServer:
    """`with LocalServer() as server:` serves `server.served.files` at `server.url(path)`."""

    def __init__(self) -> None:
        self.served = Served()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.served = self.served  # type: ignore[attr-defined]
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str = "") -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def __enter__(self) -> "LocalServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
