"""``python -m medhub`` is the ``medhub`` command."""

from medhub.cli.main import main

main()
