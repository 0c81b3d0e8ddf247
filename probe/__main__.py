"""`python -m probe`."""

from .cli import console

console()
