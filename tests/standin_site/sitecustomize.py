"""Run at the start of every Python process whose PYTHONPATH holds this folder: the tests' stand-in for torchvision
(oracle.install_torchvision_standin), so that commands given `--variant edgetam` import timm for EdgeTAM's trunk on
the CPU torch these machines have (PyPI has no CPU torchvision)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where the stand-in lives

from oracle import install_torchvision_standin  # noqa: E402

install_torchvision_standin()
