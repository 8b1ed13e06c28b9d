"""The `simcli` command: a thin layer over the library (parse, call once, print).

Each command lives in its own module and registers itself on the shared app.
"""

from __future__ import annotations

from simcli.cli import demo as _demo  # noqa: F401  (registers commands)
from simcli.cli import encode as _encode  # noqa: F401

# isort: split
# `simcli --help` lists commands in the order they register: info stays next to encode
from simcli.cli import info as _info  # noqa: F401

# isort: split
from simcli.cli import evaluate as _evaluate  # noqa: F401
from simcli.cli import generate as _generate  # noqa: F401
from simcli.cli import hubness as _hubness  # noqa: F401
from simcli.cli import index as _index  # noqa: F401
from simcli.cli import serve as _serve  # noqa: F401
from simcli.cli import train as _train  # noqa: F401
from simcli.cli import whiten as _whiten  # noqa: F401
from simcli.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    import gc

    try:
        app()
    finally:
        # Spare the interpreter's final garbage collections the objects made so far (after `import torch`
        # alone ~170k): measured 0.5-0.7 s of a cold `simcli query`, spent after the answer is printed.
        # simcli closes its files explicitly (atomic writes), so no finaliser of cyclic garbage has work left.
        gc.freeze()
