"""The ``medhub`` command line: one module per group of commands, all on the typer app of :mod:`medhub.cli.app`.

Each command imports its implementation when it runs, so ``medhub --help`` and
``medhub models`` never pay for the pipeline, highdicom or torch.
"""
