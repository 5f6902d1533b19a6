"""SAM 3's gated files: what a user is told when the hub refuses them, and the cache used offline.

A local HTTP server plays the Hugging Face hub (`HF_ENDPOINT`): it answers as the hub does for a gated
repository (401 without a token, 403 with one whose licence is not accepted, each with `X-Error-Code:
GatedRepo`), or serves the file. Each case runs in a subprocess, since huggingface_hub reads its endpoint and
offline switch when imported.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")

CONTENT = b"not really a checkpoint, but bytes the cache must hold"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

FETCH = """
import sys
from sam2rt.checkpoints.files import CheckpointError
from sam2rt.checkpoints.hub import fetch
try:
    path = fetch(sys.argv[1], token=sys.argv[2] or None)
except CheckpointError as error:
    print("ERROR", error)
else:
    print("PATH", path)
"""


class _Hub(http.server.BaseHTTPRequestHandler):
    granted = False  # serve the files (the licence accepted) or refuse them (gated)
    requests: list = []

    def _answer(self, body: bool) -> None:
        type(self).requests.append((self.command, self.path, self.headers.get("Authorization")))
        if not type(self).granted or not self.headers.get("Authorization"):
            self.send_response(403 if self.headers.get("Authorization") else 401)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", "Access to model facebook/sam3 is restricted.")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = hashlib.sha256(CONTENT).hexdigest()
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Content-Length", str(len(CONTENT)))
        self.end_headers()
        if body:
            self.wfile.write(CONTENT)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hub.granted, _Hub.requests = False, []
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HOME=str(tmp_path / "hf"))
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", HF_HUB_ETAG_TIMEOUT="5")
    yield env
    server.shutdown()


def _fetch(env: dict, filename: str = "sam3.pt", token: str = "") -> str:
    done = subprocess.run([sys.executable, "-c", FETCH, filename, token], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_a_token_the_user_is_told_to_accept_the_licence_and_log_in(hub):
    answer = _fetch(hub)
    assert answer.startswith("ERROR cannot download sam3.pt")
    assert "https://huggingface.co/facebook/sam3" in answer and "licence" in answer
    assert "hf auth login" in answer and "HF_TOKEN" in answer
    assert _Hub.requests and _Hub.requests[0][2] is None  # asked, without credentials


def test_a_token_without_the_licence_accepted_is_told_to_ask_for_access(hub):
    answer = _fetch(hub, token="hf_not_granted")
    assert "has no access to facebook/sam3 yet" in answer and "accept Meta's licence" in answer
    assert _Hub.requests[0][2] == "Bearer hf_not_granted"


def test_a_granted_download_is_cached_and_read_back_offline(hub):
    _Hub.granted = True
    answer = _fetch(hub, token="hf_granted")
    assert answer.startswith("PATH"), answer
    path = Path(answer.split(" ", 1)[1])
    assert path.read_bytes() == CONTENT
    offline = dict(hub, HF_HUB_OFFLINE="1")
    _Hub.requests.clear()
    assert _fetch(offline) == answer  # the same cached file, no token needed
    assert _Hub.requests == []  # and nothing asked of the hub


def test_offline_with_nothing_cached_says_where_the_file_comes_from(hub):
    answer = _fetch(dict(hub, HF_HUB_OFFLINE="1"), "vocab.json")
    assert "vocab.json is not in the Hugging Face cache" in answer
    assert "https://huggingface.co/facebook/sam3" in answer and "--checkpoint" in answer
    assert _Hub.requests == []
