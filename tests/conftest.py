import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the test helpers (oracle.py, ...) import as top-level modules


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A checkpoint file of tiny with random weights, made once for the command-line tests."""
    from cli_support import make_checkpoint

    return make_checkpoint(tmp_path_factory.getbasetemp() / "checkpoints" / "tiny.pt")


@pytest.fixture
def sam2rt(capsys):
    """`sam2rt ARGS` run in this process: sam2rt("track", ...) gives its exit code and output."""
    from cli_support import invoke_in_process

    return lambda *args: invoke_in_process(capsys, *args)
