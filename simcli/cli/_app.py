"""The Typer app, the output helpers and the one place errors become exit codes (options: cli/options.py).

Only stdlib, typer and light simcli modules are imported here: `simcli --help` must start fast.
"""

from __future__ import annotations

import os
import shlex
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

from simcli.errors import InputWarning, SimcliError

# Click's exception classes, wherever this Typer takes click from (newer Typers vendor it as typer._click).
_ClickException: type[Any] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_UsageError: type[Any] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_NoArgsIsHelp: type[Any] | tuple[()] = getattr(sys.modules[_UsageError.__module__], "NoArgsIsHelpError", ())


class _OneLineErrors(TyperGroup):
    """The root command: a usage error (missing option, bad value) is one line on stderr, exit code 2, like
    every other simcli error, instead of Typer's boxed multi-line message; `--help` stays rich."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _hide_flag_types(self)

    def make_context(self, info_name: str | None, args: list[str], *rest: Any, **extra: Any) -> Any:
        given = list(args)  # before parsing consumes them: the command line a hint can repeat
        ctx = super().make_context(info_name, args, *rest, **extra)
        ctx.meta[ARGV] = given
        return ctx

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.pop("standalone_mode", True):
            return super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        except _NoArgsIsHelp as e:  # `simcli index` alone: its help, not an error
            if e.ctx is not None:
                e.ctx.command.format_help(e.ctx, e.ctx.make_formatter())  # Typer prints it rich
            sys.exit(e.exit_code)
        except _UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "simcli"
            message = " ".join(e.format_message().split()).rstrip(".")
            typer.echo(f"simcli: error: {message} (see {where} --help)", err=True)
            sys.exit(e.exit_code)
        except _ClickException as e:
            typer.echo(f"simcli: error: {' '.join(e.format_message().split())}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("simcli: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _hide_flag_types(command: typer.core.TyperCommand | TyperGroup) -> None:
    # Typer's rich help shows a type column; for an on/off flag it would read "<bool>", which takes no value.
    for param in command.params:
        if param.param_type_name == "option" and getattr(param, "is_flag", False):
            param.metavar = ""
    get_help_option = command.get_help_option  # --help is made on demand, per command

    def help_option(ctx: Any) -> Any:
        option = get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option  # type: ignore[method-assign,assignment]
    for sub in getattr(command, "commands", {}).values():
        _hide_flag_types(sub)


class _DefaultContext(typer.Context):
    @property
    def command_path(self) -> str:
        return str(super().command_path).rstrip()  # the default command has no name of its own


class _DefaultCommand(typer.core.TyperCommand):
    """A group's default command: shown and reported as the group itself (`Usage: simcli train ...`)."""

    context_class = _DefaultContext

    def make_context(self, info_name: str | None, args: list[str], *rest: Any, **extra: Any) -> Any:
        return super().make_context("", args, *rest, **extra)


class DefaultCommandGroup(TyperGroup):
    """A group with a default command: a first word that names none of its visible sub-commands (a file, an
    option, --help) goes to the command registered with `default_command()`. So `simcli train PAIRS...`
    fine-tunes, while `simcli train distill ...` is a sub-command with its own options and --help."""

    DEFAULT = "default"  # hidden: never matched from the command line, whose words all go to the default

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        visible = {n for n, c in self.commands.items() if not c.hidden}
        if args and args[0] not in visible:
            args = [self.DEFAULT, *args]
        return super().parse_args(ctx, args)  # type: ignore[no-any-return]


def default_command(group: typer.Typer) -> Any:
    """Register the decorated function as `group`'s default command (group made with DefaultCommandGroup)."""
    return group.command(DefaultCommandGroup.DEFAULT, hidden=True, cls=_DefaultCommand, no_args_is_help=True)


app = typer.Typer(
    cls=_OneLineErrors,
    name="simcli",
    help="Chinese sentence embeddings from the shell: encode, whiten, index, query, generate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


ARGV = "simcli.argv"


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a SimcliError into one line on stderr and its exit code (anything else keeps its traceback), and
    each distinct InputWarning into one `simcli: warning:` line."""
    shown: set[str] = set()

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, InputWarning):
            default_show(message, category, *args, **kwargs)
        elif str(message) not in shown:  # inputs checked twice (a driver and its plan) warn once
            shown.add(str(message))
            typer.echo(f"simcli: warning: {message}", err=True)

    with warnings.catch_warnings():
        default_show = warnings.showwarning
        warnings.simplefilter("always", InputWarning)
        warnings.showwarning = show
        try:
            yield
        except SimcliError as e:
            if os.environ.get("SIMCLI_DEBUG"):
                raise
            typer.echo(f"simcli: error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None


def command_line(ctx: typer.Context, *, drop: Sequence[str] = (), add: Sequence[str] = ()) -> str:
    """The command line this run was started with (`simcli` and its arguments, shell-quoted), without the
    flags in `drop` and with those in `add` that it lacks: a hint the user can paste."""
    given = [a for a in ctx.meta.get(ARGV, []) if a not in drop]
    return shlex.join(["simcli", *given, *(a for a in add if a not in given)])


def from_environment(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` took its value from its environment variable (SIMCLI_MODEL, ...), not the line."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "ENVIRONMENT"


def note(message: str) -> None:
    """One line for the user on stderr, `simcli: ` first (stdout holds only data)."""
    typer.echo(f"simcli: {message}", err=True)


def counted(n: int, noun: str) -> str:
    """ "1 shard", "2 shards", "1 line truncated": the count and the noun in the right number."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def aligned(fields: dict[str, object], notes: dict[str, str] | None = None) -> str:
    """The text of an info command: one `key  value` line a field, the values in one column (None shows as
    -); a field's note follows its value in parentheses, the notes in a column of their own."""
    notes = notes or {}
    values = {k: "-" if v is None else str(v) for k, v in fields.items()}
    width = max(map(len, values), default=0)
    value_width = max((len(v) for k, v in values.items() if k in notes), default=0)
    return "\n".join(
        f"{k:<{width}}  {v:<{value_width}}{f'  ({notes[k]})' if k in notes else ''}".rstrip()
        for k, v in values.items()
    )


def read_summary(rows: int, written: str, skipped: int, elsewhere: int = 0) -> str:
    """ "read 2,001 rows: wrote 1,998 vectors ..., skipped 3 empty": rows read = rows written + rows skipped."""
    parts = [f"skipped {skipped:,} empty"] if skipped else []
    if elsewhere:
        parts.append(f"left {elsewhere:,} to the other --shard workers")
    return f"read {counted(rows, 'row')}: {written}" + "".join(f", {p}" for p in parts)
