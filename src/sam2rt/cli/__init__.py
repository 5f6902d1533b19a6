"""The `sam2rt` command: one thin module per job over the library.

Each module registers its commands on the one typer app of `common`; importing them here is what
makes them part of the command.
"""

from .common import app

# The order of registration is the order of `sam2rt --help`.
from . import models  # noqa: E402, F401
from . import image  # noqa: E402, F401
from . import track  # noqa: E402, F401
from . import export  # noqa: E402, F401
from . import train  # noqa: E402, F401
from . import eval  # noqa: E402, F401
from . import serve  # noqa: E402, F401
from . import annotate  # noqa: E402, F401


def main() -> None:
    app()
