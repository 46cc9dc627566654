"""`python -m ironflow.services.server` is the `ironflow` command."""

from .cli import main

main()
