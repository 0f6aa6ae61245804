"""Progress reporting: a rich display for people, one JSON event per line for programs.

The pipeline only calls :class:`ProgressSink` methods; the CLI picks the implementation.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class ProgressSink(Protocol):
    def event(self, kind: str, **data: Any) -> None:
        """One thing happened (``scan_file``, ``selected``, ``series_start``, ``step``, ``series_done``, ...)."""

    def close(self) -> None: ...


class SilentProgress:
    def event(self, kind: str, **data: Any) -> None:
        pass

    def close(self) -> None:
        pass


class JsonLinesProgress:
    """Streams events as JSON lines (``--json-progress``), flushed at once so a reader can follow."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def event(self, kind: str, **data: Any) -> None:
        record = {"event": kind, "time": round(time.time(), 3), **data}
        self.stream.write(json.dumps(record, default=str) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class RichProgress:
    """A bar for the scan (files), one for the series, and one for the steps of the current series."""

    def __init__(self, console: Console | None = None) -> None:
        console = console or Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,  # logs and pipes get the report, not bar redraws
        )
        self.progress.start()
        self.scan_task = self.progress.add_task("scanning", total=None)
        self.series_task: Any = None
        self.step_task: Any = None
        self.fetch_task: Any = None

    def event(self, kind: str, **data: Any) -> None:
        if kind == "fetch":  # an input being downloaded (DICOMweb, IDC): instances present of expected
            if self.fetch_task is None:
                self.fetch_task = self.progress.add_task("downloading", total=data.get("total"))
            self.progress.update(self.fetch_task, completed=data.get("done", 0), total=data.get("total"))
        elif kind == "scan_file":
            self.progress.update(self.scan_task, completed=data.get("files", 0))
        elif kind == "scan_done":
            files = data.get("files", 0)
            self.progress.update(
                self.scan_task, total=files, completed=files,
                description=f"scanned: {data.get('series', 0)} series",
            )
        elif kind == "selected":
            self.series_task = self.progress.add_task("series", total=data.get("chosen", 0))
        elif kind == "series_start":
            if self.step_task is not None:
                self.progress.remove_task(self.step_task)
            self.step_task = self.progress.add_task(f"  {str(data.get('key', ''))[:40]}", total=None)
        elif kind == "step" and self.step_task is not None:
            self.progress.update(self.step_task, description=f"  {str(data.get('key', ''))[:40]}: {data.get('step')}")
        elif kind == "series_done" and self.series_task is not None:
            self.progress.advance(self.series_task)

    def close(self) -> None:
        self.progress.stop()
