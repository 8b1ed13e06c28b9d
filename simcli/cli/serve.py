"""`simcli serve`: keep models and indexes warm behind an HTTP API (OpenAI-compatible embeddings, search,
similar, generate). FastAPI and uvicorn (the `serve` extra) are imported only when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simcli.cli._app import DeviceOpt, DTypeOpt, PoolingOpt, TokenizerOpt, app, reported_errors
from simcli.errors import MissingDependency
from simcli.serve.options import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INPUTS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_PORT,
    DEFAULT_TRIM_INTERVAL_S,
    ServeOptions,
)
from simcli.types import DEFAULT_MAX_LENGTH


def _note(message: str) -> None:
    typer.echo(f"simcli: {message}", err=True)


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Hub id or local model folder to serve (default: the models of the indexes).",
            envvar="SIMCLI_MODEL",
        ),
    ] = None,
    index: Annotated[
        list[str] | None,
        typer.Option(
            "--index",
            help="An index folder to serve (repeatable); NAME=DIR names it (default: the folder "
            "name without .idx). Its model, pooling, max length and whitening come from its manifest.",
        ),
    ] = None,
    whitening: Annotated[
        Path | None, typer.Option("--whitening", help="Whitening file for --model's vectors.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 for every one).")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="TCP port.")] = DEFAULT_PORT,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="Require 'Authorization: Bearer KEY' (except /health and /metrics).",
            envvar="SIMCLI_API_KEY",
            show_envvar=True,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    pooling: PoolingOpt = "auto",
    tokenizer: TokenizerOpt = None,
    max_length: Annotated[
        int, typer.Option("--max-length", help="Tokens per sentence for --model; longer input is truncated.")
    ] = DEFAULT_MAX_LENGTH,
    max_batch_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-batch-tokens",
            min=16,
            help="Token budget of one model batch (padded length x sentences); default 1024 on CPU, 16384 on CUDA.",
        ),
    ] = None,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, help="Longest a request waits for others to batch with.")
    ] = DEFAULT_MAX_WAIT_MS,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Requests waiting for the model before 503s.")
    ] = DEFAULT_MAX_QUEUE,
    max_inputs: Annotated[
        int, typer.Option("--max-inputs", min=1, help="Texts in one request.")
    ] = DEFAULT_MAX_INPUTS,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=1024, help="Largest request body (413 above).")
    ] = DEFAULT_MAX_BODY_BYTES,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="torch threads of the model (default: the cores, shared among --workers processes).",
        ),
    ] = None,
    trim_interval: Annotated[
        float,
        typer.Option(
            "--trim-interval",
            min=0,
            help="Seconds between returns of freed heap memory to the OS (glibc malloc_trim); 0: never.",
        ),
    ] = DEFAULT_TRIM_INTERVAL_S,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Server processes, each with its own copy of the models.")
    ] = 1,
) -> None:
    """Serve embeddings (OpenAI-compatible), search, similar and generate over HTTP, with dynamic batching.

    Example: simcli serve --model junnyu/roformer_chinese_sim_char_ft_small --index faq.idx --port 8000
    """
    with reported_errors():
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as e:
            raise MissingDependency(
                f"simcli serve needs the serve extra ({e.name} is missing): pip install -e '.[serve]' in the simcli source folder"
            ) from None
        from simcli.serve.server import serve as run

        options = ServeOptions(
            model=model, indexes=list(index or []), whitening=str(whitening) if whitening else None, host=host,
            port=port, api_key=api_key or None, device=device, dtype=dtype, pooling=pooling, tokenizer=tokenizer,
            max_length=max_length, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_queue=max_queue,
            max_inputs=max_inputs, max_body_bytes=max_body_bytes, workers=workers, threads=threads,
            trim_interval_s=trim_interval,
        )  # fmt: skip
        run(options, _note)
