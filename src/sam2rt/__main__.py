"""`python -m sam2rt`: the sam2rt command."""

from .cli import main

main()
