"""`simcli demo-model`: a small random checkpoint in a hub layout, to try every command without a model hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simcli.cli._app import app, reported_errors
from simcli.cli.options import OverwriteOpt
from simcli.types import DemoFamily

#: What a checkpoint that encodes can be given to (every family encodes; two also generate).
ENCODING_COMMANDS = "encode, index build, query, similar, whiten fit, eval, train, serve"


@app.command("demo-model")
def demo_model(
    out: Annotated[Path, typer.Argument(help="The model folder to write (created; must not hold anything).")],
    family: Annotated[
        DemoFamily,
        typer.Option(help="The hub layout to imitate; roformer-sim and simbert can also generate."),
    ] = "roformer-sim",
    hidden: Annotated[int, typer.Option(min=2, help="Hidden size.")] = 384,
    heads: Annotated[int, typer.Option(min=1, help="Attention heads (hidden / heads must be even).")] = 6,
    layers: Annotated[int, typer.Option(min=1, help="Layers.")] = 2,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a small checkpoint with random weights, in the real hub layout, to try simcli offline.

    Its vectors are random (their similarities mean nothing), but every command accepts it.

    Example: simcli demo-model ./tiny-model && simcli encode examples/faq.txt --model ./tiny-model --json
    """
    with reported_errors():
        from simcli.models.demo import DEMO_FAMILIES, write_demo_model

        write_demo_model(out, family, hidden=hidden, heads=heads, layers=layers, overwrite=overwrite)
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        fam = DEMO_FAMILIES[family]
        typer.echo(
            f"wrote {out}: random {family} weights in the hub layout of {fam.layout} "
            f"({layers} layers, hidden {hidden}, {heads} heads, {size / 1e6:.1f} MB)"
        )
        typer.echo(
            "its vectors are random, so their similarities mean nothing: it is for trying simcli offline"
        )
        generating = [name for name, f in DEMO_FAMILIES.items() if f.generates]
        typer.echo(
            f"it can encode ({ENCODING_COMMANDS}) and generate (generate)"
            if fam.generates
            else f"it can encode ({ENCODING_COMMANDS}); it cannot generate (only {' and '.join(generating)} can)"
        )
