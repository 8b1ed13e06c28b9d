"""`simcli serve`: keep models and indexes warm behind an HTTP API (OpenAI-compatible embeddings, search,
similar, generate). FastAPI and uvicorn (the `serve` extra) are imported only when the command runs."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from simcli.cli._app import app, note, reported_errors
from simcli.cli.options import (
    BatchTokensOpt,
    DeviceOpt,
    DTypeOpt,
    MaxLengthOpt,
    OptionalModelOpt,
    PoolingOpt,
    TokenizerOpt,
    WhiteningFileOpt,
    encoder_config,
    fields_of,
)
from simcli.errors import MissingDependency, UsageError
from simcli.serve.options import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INPUTS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_PORT,
    DEFAULT_TRIM_INTERVAL_S,
)
from simcli.types import DEFAULT_MAX_LENGTH

MIN_BATCH_TOKENS = 16  # a smaller budget could not hold one short sentence

# The old spelling of --batch-tokens, still accepted (hidden from --help): a parameter of its own, since a
# second name on the same option cannot be hidden alone.
OldBatchTokensOpt = Annotated[int | None, typer.Option("--max-batch-tokens", hidden=True)]

ServeIndexOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--index",
        help="An index folder to serve (repeatable); NAME=DIR names it (default: the folder "
        "name without .idx). Its model, pooling, max length and whitening come from its manifest.",
    ),
]
HostOpt = Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 for every one).")]
PortOpt = Annotated[int, typer.Option(help="TCP port.")]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="Require 'Authorization: Bearer KEY' (except /health and /metrics).",
        envvar="SIMCLI_API_KEY",
        show_envvar=True,
    ),
]
MaxWaitOpt = Annotated[
    float, typer.Option("--max-wait-ms", min=0, help="Longest a request waits for others to batch with.")
]
MaxQueueOpt = Annotated[
    int, typer.Option("--max-queue", min=1, help="Requests waiting for the model before 503s.")
]
MaxInputsOpt = Annotated[int, typer.Option("--max-inputs", min=1, help="Texts in one request.")]
MaxBodyOpt = Annotated[
    int, typer.Option("--max-body-bytes", min=1024, help="Largest request body (413 above).")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="torch threads of each worker's model (default: the cores shared among the workers).",
    ),
]
TrimIntervalOpt = Annotated[
    float,
    typer.Option(
        "--trim-interval",
        min=0,
        help="Seconds between returns of freed heap memory to the OS (glibc malloc_trim); 0: never.",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Server processes, each with its own copy of the models and indexes (default: one a core, as "
        "far as memory allows; 1 on a GPU). The choice and its reason are printed at start.",
    ),
]


@app.command()
def serve(
    ctx: typer.Context,
    model: OptionalModelOpt = None,
    index: ServeIndexOpt = None,
    whitening: WhiteningFileOpt = None,
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = DEFAULT_PORT,
    api_key: ApiKeyOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    pooling: PoolingOpt = "auto",
    tokenizer: TokenizerOpt = None,
    max_length: MaxLengthOpt = DEFAULT_MAX_LENGTH,
    batch_tokens: BatchTokensOpt = None,
    max_batch_tokens: OldBatchTokensOpt = None,
    max_wait_ms: MaxWaitOpt = DEFAULT_MAX_WAIT_MS,
    max_queue: MaxQueueOpt = DEFAULT_MAX_QUEUE,
    max_inputs: MaxInputsOpt = DEFAULT_MAX_INPUTS,
    max_body_bytes: MaxBodyOpt = DEFAULT_MAX_BODY_BYTES,
    threads: ThreadsOpt = None,
    trim_interval: TrimIntervalOpt = DEFAULT_TRIM_INTERVAL_S,
    workers: WorkersOpt = None,
) -> None:
    """Serve embeddings (OpenAI-compatible), search, similar and generate over HTTP, with dynamic batching.

    --model is optional: without it the models of the indexes are served. Its pooling, tokenizer and max
    length apply to --model only (an index brings its own); --device and --dtype to every model.

    Example: simcli serve --model junnyu/roformer_chinese_sim_char_ft_small --index faq.idx --port 8000
    """
    with reported_errors():
        _require_serve_extra()
        from simcli.serve.options import ServeOptions
        from simcli.serve.server import serve as run

        budget = _token_budget(batch_tokens, max_batch_tokens)
        encoder = replace(
            encoder_config(ctx, model or ""), batch_tokens=budget
        )  # "": the indexes' models only
        options = ServeOptions(
            encoder=encoder,
            indexes=list(index or []),
            whitening=str(whitening) if whitening else None,
            api_key=api_key or None,
            trim_interval_s=trim_interval,
            **fields_of(ctx, ServeOptions, skip=("encoder", "indexes", "whitening", "api_key")),
        )
        run(options, note)


def _token_budget(batch_tokens: int | None, old: int | None) -> int | None:
    """--batch-tokens, or its old spelling --max-batch-tokens; at least MIN_BATCH_TOKENS."""
    if batch_tokens is not None and old is not None and batch_tokens != old:
        raise UsageError("--max-batch-tokens is the old name of --batch-tokens: give one of them")
    budget = batch_tokens if batch_tokens is not None else old
    if budget is not None and budget < MIN_BATCH_TOKENS:
        raise UsageError(f"--batch-tokens must be at least {MIN_BATCH_TOKENS}, got {budget}")
    return budget


def _require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingDependency(
            f"simcli serve needs the serve extra ({e.name} is missing): pip install -e '.[serve]' in the simcli source folder"
        ) from None
