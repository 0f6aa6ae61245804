"""Exceptions that carry a one-line, user-facing message.

The CLI prints ``str(error)`` of these without a traceback; anything else is a bug and gets
a traceback only with ``--debug``.
"""


class MedhubError(Exception):
    """A problem the user can fix (bad path, bad option, missing data); printed as one line."""


class SeriesSkipped(MedhubError):
    """A series cannot be processed; ``reason`` is a sentence a person understands.

    Raised by check/load steps ("4D: 150 images at 50 positions", "missing slice: ...").
    The pipeline records it in the report and goes on with the other series.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
