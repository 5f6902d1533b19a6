import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the test helpers (oracle.py, ...) import as top-level modules


@pytest.fixture(scope="module", autouse=True)
def _torch_as_it_was_after_meta_sam3():
    """After each test module: torch without the CPU redirects that running Meta's SAM 3 needs (oracle_sam3)."""
    yield
    oracle_sam3 = sys.modules.get("oracle_sam3")
    if oracle_sam3 is not None:
        oracle_sam3.remove_cpu_redirects()


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
