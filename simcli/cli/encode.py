"""`simcli encode`: text files -> a vector store or JSON lines, in this process or on Ray (`--ray`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from simcli.cli._app import app, command_line, counted, note, read_summary, reported_errors
from simcli.cli.options import (
    BatchTokensOpt,
    ColumnOpt,
    DeviceOpt,
    DTypeOpt,
    ErrorsOpt,
    FieldOpt,
    HeaderOpt,
    MaxLengthOpt,
    ModelOpt,
    OverwriteOpt,
    PoolingOpt,
    ResumeOpt,
    SkipEmptyOpt,
    TokenizerOpt,
    WhiteningFileOpt,
    encoder_config,
)
from simcli.cli.progress import encode_progress
from simcli.errors import UsageError
from simcli.io import ReadOptions, count_rows, is_uri
from simcli.store import DEFAULT_SHARD_SIZE, DEFAULT_STORE_DTYPE, parse_shard
from simcli.types import DEFAULT_MAX_LENGTH, EncoderConfig, ProgressFn, StoreDType

if TYPE_CHECKING:
    from simcli.io import ReadStats
    from simcli.models.encoder import Encoder
    from simcli.store import StoreSummary


def _shard_option(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_shard(value)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="'--shard'") from None
    return value


def _expected_rows(
    paths: Sequence[str],
    column: str | int | None,
    shard: tuple[int, int] | None,
    size: int,
    header: bool | None = None,
) -> int | None:
    """Rows the reader will give to this worker, for the ETA; None when reading stdin."""
    if any(is_uri(p) for p in paths):
        return None
    total = count_rows(paths, column, header)
    if shard is None or total is None:
        return total
    i, n = shard
    blocks = -(-total // size)
    return sum(min(size, total - b * size) for b in range(i, blocks, n))


def _warn_counts(empty_kept: int, truncated: int, max_length: int) -> None:
    if empty_kept:
        note(f"warning: {counted(empty_kept, 'empty line')} kept (use --skip-empty)")
    if truncated:
        note(f"warning: {counted(truncated, 'line')} truncated at --max-length {max_length}")


# The options of `simcli encode` alone (those several commands share come from _app).
InputsArg = Annotated[
    list[str],
    typer.Argument(
        help="Input files: .txt (a sentence a line), .tsv/.csv, .data (tab-separated, no header), .jsonl; - for stdin."
    ),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Store folder to write.")]
JsonLinesOpt = Annotated[
    bool, typer.Option("--json", help='{"id", "text", "vector"} lines on stdout instead of --out.')
]
NormalizeOpt = Annotated[bool, typer.Option("--normalize", help="L2-normalise the vectors.")]
StoreDTypeOpt = Annotated[StoreDType, typer.Option("--store-dtype", help="Vectors on disk.")]
ShardSizeOpt = Annotated[int, typer.Option("--shard-size", min=1, help="Sentences per shard.")]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        callback=_shard_option,
        help="i/N with 0 <= i < N: encode worker i's slice (blocks of --shard-size rows; block b goes "
        "to worker b % N).",
    ),
]
AllowMixedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-mixed", help="With --resume: accept another device dtype than the finished shards'."
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Encode on Ray: local (a runtime on this machine), auto (the running cluster, else local) "
        "or a cluster address. Inputs may then be parquet or URIs (s3://, gs://); --out must be a "
        "folder every worker sees.",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="With --ray: encoder actors (default: one a GPU, else one a CPU)."),
]
GpusPerWorkerOpt = Annotated[
    float, typer.Option("--gpus-per-worker", min=0, help="With --ray: GPUs of each actor.")
]
CpusPerWorkerOpt = Annotated[
    float | None,
    typer.Option("--cpus-per-worker", min=0.01, help="With --ray: CPUs (and torch threads) of each actor."),
]


@app.command()
def encode(
    ctx: typer.Context,
    inputs: InputsArg,
    model: ModelOpt,
    out: OutOpt = None,
    json_lines: JsonLinesOpt = False,
    column: ColumnOpt = None,
    header: HeaderOpt = None,
    field: FieldOpt = None,
    pooling: PoolingOpt = "auto",
    tokenizer: TokenizerOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    max_length: MaxLengthOpt = DEFAULT_MAX_LENGTH,
    batch_tokens: BatchTokensOpt = None,
    normalize: NormalizeOpt = False,
    whitening: WhiteningFileOpt = None,
    store_dtype: StoreDTypeOpt = DEFAULT_STORE_DTYPE,
    shard_size: ShardSizeOpt = DEFAULT_SHARD_SIZE,
    shard: ShardOpt = None,
    resume: ResumeOpt = False,
    allow_mixed: AllowMixedOpt = False,
    overwrite: OverwriteOpt = False,
    skip_empty: SkipEmptyOpt = False,
    errors: ErrorsOpt = "strict",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0,
    cpus_per_worker: CpusPerWorkerOpt = None,
) -> None:
    """Encode sentences into a vector store folder (or JSON lines with --json).

    Example: simcli encode questions.tsv --column question --model ./roformer_sim --out q.vec

    With --whitening FILE (from `simcli whiten fit`) the vectors are whitened and L2-normalised.
    """
    with reported_errors():
        from simcli.io import expand_uri_globs

        inputs = expand_uri_globs(inputs)  # s3://bucket/corpus/*.jsonl: the shell cannot expand it
        if (out is None) == (not json_lines):
            raise UsageError("give --out DIR to write a store, or --json for JSON lines on stdout")
        if json_lines and (resume or overwrite):
            raise UsageError("--resume and --overwrite apply to --out, not --json")
        split = parse_shard(shard) if shard is not None else None
        if ray_address is None and (workers is not None or gpus_per_worker or cpus_per_worker is not None):
            raise UsageError("--workers, --gpus-per-worker and --cpus-per-worker apply with --ray")
        config = encoder_config(ctx, model)
        if resume and out is not None and config.dtype == "auto":
            config = _as_begun(config, out)
        read = ReadOptions(column=column, field=field, header=header, errors=errors, skip_empty=skip_empty)
        if ray_address is not None:
            if out is None or split is not None:
                raise UsageError("--ray writes a store: give --out, not --json or --shard")
            # the driver lists landed shards in order: an interrupted run resumes like a local one
            with _kept_on_interrupt(ctx, out):
                _encode_on_ray(
                    ray_address, inputs, out, config, whitening=whitening, normalize=normalize,
                    store_dtype=store_dtype, shard_size=shard_size, resume=resume, overwrite=overwrite,
                    allow_mixed=allow_mixed, read=read, workers=workers,
                    gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                )  # fmt: skip
            return
        _encode_here(
            ctx, inputs, out, config, whitening=whitening, normalize=normalize, split=split,
            read=read, shard_size=shard_size, store_dtype=store_dtype, resume=resume,
            overwrite=overwrite, allow_mixed=allow_mixed,
        )  # fmt: skip


def _as_begun(config: EncoderConfig, out: Path) -> EncoderConfig:
    """`--resume` with `--dtype auto`: the dtype the finished shards were computed in. auto measures its
    speed probes at every start, and a reading on the other side of its threshold would otherwise refuse the
    resume (or, with --allow-mixed, mix two dtypes in one store)."""
    from simcli.models.device import recorded_dtype
    from simcli.store import kept_shards

    dtype = recorded_dtype(
        [s["computed_with"] for s in kept_shards(out) if "computed_with" in s], config.device
    )
    if dtype == "auto":
        return config
    note(f"--resume: dtype {dtype}, as the finished shards (--dtype chooses another)")
    return replace(config, dtype=dtype)


def _encode_here(
    ctx: typer.Context,
    inputs: list[str],
    out: Path | None,
    config: EncoderConfig,
    *,
    whitening: Path | None,
    normalize: bool,
    split: tuple[int, int] | None,
    read: ReadOptions,
    shard_size: int,
    store_dtype: StoreDType,
    resume: bool,
    overwrite: bool,
    allow_mixed: bool,
) -> None:
    """`simcli encode` in this process: JSON lines on stdout, or a store folder."""
    from simcli.io import ReadStats, with_first_row
    from simcli.store import check_output_folder

    if out is not None:
        check_output_folder(out, resume=resume, overwrite=overwrite)
    read_stats = ReadStats()
    # an empty input fails before the model loads
    records = with_first_row(read.records(inputs, stats=read_stats), inputs, read_stats, "encode")
    enc = _load(config, whitening)
    normalize = normalize or whitening is not None
    column, header = read.column, read.header
    total = _expected_rows(inputs, column, split, shard_size, header) if sys.stderr.isatty() else None
    with _kept_on_interrupt(ctx, out), encode_progress(total) as progress:
        if out is None:
            _encode_json(records, enc, shard_size, normalize, split, read_stats, progress)
            return
        from simcli.store import encode_to_store

        summary = encode_to_store(
            records, enc, out, shard_size=shard_size, store_dtype=store_dtype, normalize=normalize,
            resume=resume, overwrite=overwrite, shard=split, inputs=inputs, read_options=read,
            read_stats=read_stats, progress=progress, allow_mixed=allow_mixed,
        )  # fmt: skip
    summarize(summary, store_dtype, enc.max_length)


def _load(config: EncoderConfig, whitening: Path | None) -> Encoder:
    """The encoder, whitened by the file from `simcli whiten fit` when one is given; its line printed."""
    from simcli.models.encoder import describe, load_encoder

    enc: Any = load_encoder(config)
    if whitening is not None:
        # (x - beta*mu) W[:, :k], L2-normalised (kexue.fm/archives/8069); the file must fit this model and pooling.
        from simcli.whitening import WhitenedEncoder

        enc = WhitenedEncoder.from_file(enc, whitening)
    note(describe(enc.info()))
    return enc  # type: ignore[no-any-return]


def _encode_on_ray(
    address: str,
    inputs: Sequence[str],
    out: Path,
    config: EncoderConfig,
    *,
    whitening: Path | None,
    normalize: bool,
    store_dtype: StoreDType,
    shard_size: int,
    resume: bool,
    overwrite: bool,
    allow_mixed: bool,
    read: ReadOptions,
    workers: int | None,
    gpus_per_worker: float,
    cpus_per_worker: float | None,
) -> None:
    """`simcli encode --ray`: the folder, inputs and model checked before Ray starts, then the run on Ray."""
    from simcli.scale.encode import encode_on_ray, probe
    from simcli.scale.runtime import connect

    column = read.column
    probed = probe(
        inputs,
        out,
        config,
        whitening=whitening,
        read_options=read.as_dict(),
        resume=resume,
        overwrite=overwrite,
    )
    ray = connect(address)

    # the bar opens after the line about the pool; the ETA counts rows of local text files only
    def progress() -> AbstractContextManager[ProgressFn | None]:
        local = sys.stderr.isatty() and not any(p.lower().endswith(".parquet") for p in inputs)
        return encode_progress(_expected_rows(inputs, column, None, shard_size) if local else None)

    summary = encode_on_ray(
        ray, probed, inputs, out, workers=workers, cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker, shard_size=shard_size, store_dtype=store_dtype, normalize=normalize,
        resume=resume, overwrite=overwrite, allow_mixed=allow_mixed, read_options=read.as_dict(), log=note,
        progress=progress,
    )  # fmt: skip
    summarize(summary, store_dtype, probed.max_length)


@contextmanager
def _kept_on_interrupt(ctx: typer.Context, out: Path | None) -> Iterator[None]:
    """Ctrl-C inside: say what the store in `out` kept and how to continue (see `interrupted`)."""
    from simcli.store import first_missing

    created = first_missing(out) if out is not None else None
    try:
        yield
    except KeyboardInterrupt:
        interrupted(ctx, out, created)


def interrupted(ctx: typer.Context, out: Path | None, created: Path | None) -> NoReturn:
    """After Ctrl-C: one line saying what the store in `out` kept and how to continue; exit code 130.

    Before the first finished shard, what the run wrote is removed (and the folders it made), so the same
    command runs again."""
    from simcli.store import kept_shards, remove_unfinished

    if out is None:
        note("interrupted")
        raise typer.Exit(130)
    shards = kept_shards(out)
    if not shards:
        remove_unfinished(out, created)
        note(f"interrupted before the first shard was finished: nothing kept in {out}")
        raise typer.Exit(130)
    rows = sum(int(s["count"]) for s in shards)
    note(
        f"interrupted: {out} keeps {counted(len(shards), 'shard')} ({counted(rows, 'row')}); "
        f"continue with: {command_line(ctx, drop=('--overwrite',), add=('--resume',))}"
    )
    raise typer.Exit(130)


def summarize(summary: StoreSummary, store_dtype: str, max_length: int) -> None:
    """The warnings and the summary line of a store written by `simcli encode` (with or without --ray)."""
    _warn_counts(summary.empty_kept, summary.truncated, max_length)
    earlier = f", {summary.shards_skipped} finished earlier" if summary.shards_skipped else ""
    written = (
        f"wrote {counted(summary.count, 'vector')} (dim {summary.dim}, {store_dtype}) in "
        f"{counted(summary.shards, 'shard')} to {summary.out}{earlier}"
    )
    elsewhere = summary.rows_read - summary.empty_skipped - summary.count
    note(read_summary(summary.rows_read, written, summary.empty_skipped, max(elsewhere, 0)))


def _encode_json(
    records: Iterator[Any],
    enc: Encoder,
    chunk_size: int,
    normalize: bool,
    split: tuple[int, int] | None,
    read_stats: ReadStats,
    progress: ProgressFn | None,
) -> None:
    from simcli.store import encode_records
    from simcli.types import EncodeStats

    stats = EncodeStats()
    count = empty = 0
    write = sys.stdout.write
    for rid, rec, vec in encode_records(
        records,
        enc,
        chunk_size=chunk_size,
        normalize=normalize,
        shard=split,
        stats=stats,
        progress=progress,
    ):
        write(json.dumps({"id": rid, "text": rec.text, "vector": vec.tolist()}, ensure_ascii=False) + "\n")
        count += 1
        empty += not rec.text
    sys.stdout.flush()
    _warn_counts(empty, stats.truncated, enc.max_length)
    elsewhere = read_stats.records - count
    written = f"encoded {counted(count, 'sentence')} (dim {enc.dim})"
    note(read_summary(read_stats.rows, written, read_stats.empty_skipped, elsewhere))
