"""The CLI reference page (docs/cli.md), generated from the commands' own declarations.

`python -m simcli.cli.reference > docs/cli.md` writes it; tests/docs/test_readme.py fails when the page and the code
disagree, so the reference cannot drift from `--help`.

typer 0.29 carries its own copy of click, so commands and parameters are read by their attributes
(`list_commands`, `param_type_name`) rather than checked against click's classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from simcli.cli import app
from simcli.cli._app import DefaultCommandGroup

HEADER = """# CLI reference

Every command, argument and option, generated from the code by `python -m simcli.cli.reference > docs/cli.md`
(a test fails when this page and the code disagree). `simcli COMMAND --help` prints the same on the terminal.
"""


def _commands(group: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    ctx = group.context_class(group, info_name=prefix)
    if isinstance(group, DefaultCommandGroup):  # `simcli train PAIRS...`: the group's own usage
        yield prefix, group.get_command(ctx, group.DEFAULT)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        path = f"{prefix} {name}"
        if hasattr(command, "list_commands"):
            yield from _commands(command, path)
        else:
            yield path, command


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(param: Any) -> str:
    default = param.default
    if default is None or default == () or getattr(param, "is_flag", False) and default is False:
        return ""
    if callable(default):
        return ""
    return f"`{default}`" if not isinstance(default, bool) else f"`{str(default).lower()}`"


def _option_names(param: Any) -> str:
    names = [*param.opts, *param.secondary_opts]
    return ", ".join(f"`{n}`" for n in names)


def _command_section(path: str, command: Any) -> str:
    ctx = command.context_class(command, info_name=path)
    usage = " ".join([path, *command.collect_usage_pieces(ctx)])
    lines = [
        f"## `{path}`",
        "",
        (command.help or "").strip().split("\n\n")[0].strip(),
        "",
        "```text",
        usage,
        "```",
    ]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name == "option" and not p.hidden]
    if arguments:
        lines += ["", "| argument | required | about |", "|---|---|---|"]
        for arg in arguments:
            about = _cell(getattr(arg, "help", None) or "")
            lines.append(
                f"| `{(arg.metavar or arg.name.upper())}` | {'yes' if arg.required else 'no'} | {about} |"
            )
    if options:
        lines += ["", "| option | default | about |", "|---|---|---|"]
        for opt in options:
            lines.append(f"| {_option_names(opt)} | {_default(opt)} | {_cell(opt.help or '')} |")
    return "\n".join(lines)


def render() -> str:
    """The whole page, as Markdown."""
    root = typer.main.get_command(app)
    sections = [_command_section(path, command) for path, command in _commands(root, "simcli")]
    return HEADER + "\n" + "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    print(render(), end="")
