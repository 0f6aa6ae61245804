"""Exceptions that carry a one-line, user-facing message.

The CLI prints ``str(error)`` of these without a traceback; anything else is a bug and gets
a traceback only with ``--debug``.
"""

import difflib


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


def did_you_mean(name: str, known: list[str]) -> str:
    """``did you mean 'x'? `` for the closest of ``known``, or nothing: a typo's one line names its fix."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'? " if match else ""
