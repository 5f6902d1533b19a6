import atexit
import faulthandler
import os
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


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """The run is over and reported: the process ends here, with its exit handlers run but without the
    interpreter's finalization. One full run in two on these machines ended there in a segmentation fault after
    every test had passed (exit code 139, which fails CI; no traceback, pytest's fault handler is off by then):
    that phase destroys the objects of the libraries the suite loads (torch, onnxruntime, Ray, Playwright) while
    their own threads may still run."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:  # no session ran (--help, a usage error): pytest ends as it would
        return
    sys.stdout.flush()
    sys.stderr.flush()
    faulthandler.enable()  # a fault in the exit handlers shows its threads' stacks
    atexit._run_exitfuncs()  # e.g. the ONNX tests' export folder is removed, Ray shut down
    os._exit(status)
