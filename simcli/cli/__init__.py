"""The `simcli` command: a thin layer over the library (parse, call once, print).

Each command lives in its own module and registers itself on the shared app.
"""

from __future__ import annotations

from simcli.cli import encode as _encode  # noqa: F401  (registers commands)
from simcli.cli import evaluate as _evaluate  # noqa: F401
from simcli.cli import generate as _generate  # noqa: F401
from simcli.cli import index as _index  # noqa: F401
from simcli.cli import whiten as _whiten  # noqa: F401
from simcli.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
