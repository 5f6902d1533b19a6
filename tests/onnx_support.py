"""One ONNX export of the visible test weights, made once per test session through the real command and shared by
the ONNX test files (an export takes about a minute on 2 cores)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
from cli_support import VARIANT, make_checkpoint, run_sam2rt, smallest_size, variant_env

pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install sam2rt[onnx])")
pytest.importorskip("onnxscript", reason="needs onnxscript (pip install sam2rt[onnx])")


@lru_cache(maxsize=None)
def _workdir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="sam2rt-onnx-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def checkpoint(variant: str = VARIANT) -> Path:
    return make_checkpoint(_workdir() / f"visible-{variant}.pt", variant)


@lru_cache(maxsize=None)
def exported(variant: str = VARIANT) -> Path:
    """`sam2rt export -c visible.pt --variant VARIANT --image-size SIZE -o DIR` (SIZE: `smallest_size`): the folder."""
    folder = _workdir() / f"export-{variant}"
    args = ["export", "-c", checkpoint(variant), "--variant", variant, "--image-size", smallest_size(variant)]
    result = run_sam2rt(*args, "-o", folder, env=variant_env(variant), timeout=600)
    assert result.returncode == 0, f"export failed\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return folder
