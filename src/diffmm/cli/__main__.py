"""``python -m diffmm.cli``: the ``diffmm`` command."""

from diffmm.cli import main

main()
