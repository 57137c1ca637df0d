"""``python -m runtime.cli``: the ``loom`` command."""

from . import main

main()
