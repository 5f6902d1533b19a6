#!/usr/bin/env bash
# Set up .venv on a fresh machine: PyTorch, sam2rt and its dependencies.
#   bash scripts/setup.sh          what running sam2rt needs
#   bash scripts/setup.sh --test   plus pytest and the official sam2==1.1.0, the reference for the parity tests,
#                                  and Debian's chromium for the browser test of `sam2rt serve` (apt, as root)
# torch==2.13.0 is installed first: on the CPU machines this project is developed on, that pins the
# CPU wheel they hold and keeps pip from pulling several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q torch==2.13.0
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test,sam3]"
  # The oracle: built without its optional CUDA extension, without its torchvision dependency
  # (PyPI has no CPU torchvision; the tests stand in for the two transforms it uses).
  SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install -q --no-deps --no-build-isolation sam2==1.1.0
  # EdgeTAM's trunk (the `edgetam` extra) without torchvision, which would replace the CPU torch; the tests
  # stand in for the torchvision names timm imports.
  .venv/bin/python -m pip install -q huggingface_hub pyyaml
  .venv/bin/python -m pip install -q --no-deps timm
  # Meta's SAM 3, the reference of the SAM 3 tests, without its pins (huggingface_hub<2, numpy<2.4) and its
  # torchvision (the tests stand in for it); open_clip for the BPE vocabulary its tokenizer reads.
  .venv/bin/python -m pip install -q einops ftfy regex psutil
  .venv/bin/python -m pip install -q --no-deps sam3==0.1.4 open_clip_torch  # last: pip checks pins at each install
  # The browser test drives the system's Chromium through Playwright (never `playwright install`).
  if [ ! -x /usr/bin/chromium ]; then
    apt-get update -q && apt-get install -y -q chromium
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
