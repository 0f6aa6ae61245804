"""``python -m medhub`` is the ``medhub`` command."""

from medhub.cli import main

main()
