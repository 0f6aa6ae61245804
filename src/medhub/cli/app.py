"""The typer app every command registers on, and what all commands share: errors, options, exit codes.

Bad input ends with one line on stderr and exit code 2, never a traceback (``--debug`` shows
it). Exit codes of ``run`` (README, "Exit codes"): 0 every chosen series succeeded, 1 one succeeded and
another was skipped or failed, 2 nothing could be done (also: no chosen series succeeded).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from medhub import __version__
from medhub.errors import MedhubError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

COMMAND_ORDER = ("run", "view", "doctor", "models", "info", "pull", "check", "new", "schema", "serve", "listen",
                 "heads", "idc")


class _InOrder(TyperGroup):
    """Lists commands in the order a user meets them (``run`` first), not in the order modules register them."""

    # ctx is typer's own click Context (typer 0.28 vendors click as the private typer._click; click itself
    # is not one of medhub's dependencies, so importing it broke `medhub` on an install without it).
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    cls=_InOrder,
    help="Run published medical imaging models on raw DICOM; write valid DICOM SEG / RTSTRUCT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's own help layout: typer's rich layout imports rich, markdown-it and pygments (~0.15 s
    # of a ~0.3 s `medhub --help`, issue 14); the text is the same.
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"medhub {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Show medhub's version and exit.")] = False,
) -> None:
    """Options of ``medhub`` itself (before the command)."""


class _LazyConsole:
    """rich's Console, made on first use, so that commands that print no table never import rich.

    ``medhub --help``, ``--version`` and a ``run`` with ``--json-progress`` answer ~0.1 s sooner.
    Output to a log file or a pipe is not wrapped at 80 columns.
    """

    _console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if _LazyConsole._console is None:
            from rich.console import Console

            made = Console()
            _LazyConsole._console = made if made.is_terminal else Console(width=200)
        return getattr(_LazyConsole._console, name)


console: Console = _LazyConsole()  # type: ignore[assignment]


def new_table(title: str | None = None) -> Table:
    """A rich Table (rich imported on first use, see :class:`_LazyConsole`)."""
    from rich.table import Table

    return Table(title=title)


F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_SOME_FAILED, EXIT_NOTHING_DONE = 0, 1, 2


def user_errors(function: F) -> F:
    """Turn MedhubError into one line + exit 2, and unexpected errors into one line + exit 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug"))
        try:
            return function(*args, **kwargs)
        except MedhubError as exc:
            if debug:
                raise
            typer.echo(f"medhub: {exc}", err=True)
            raise typer.Exit(EXIT_NOTHING_DONE) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if debug:
                raise
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            typer.echo(f"medhub: internal error: {message} (run with --debug for the traceback)", err=True)
            raise typer.Exit(EXIT_SOME_FAILED) from None

    return wrapper  # type: ignore[return-value]


DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


