"""The one way tests run the `simcli` command: in this process, as a shell would call it."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner, Result

from simcli.cli import app


def simcli(*args: Any, stdin: str | bytes | None = None, env: dict[str, str] | None = None) -> Result:
    """`simcli ARGS...` with `stdin` fed and `env` added; the Result keeps stdout and stderr apart."""
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin, env=env, prog_name="simcli")
