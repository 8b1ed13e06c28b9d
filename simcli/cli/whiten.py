"""`simcli whiten fit` and `simcli whiten info`: BERT-whitening files (kexue.fm/archives/8069)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from simcli.cli._app import aligned, app, counted, from_environment, read_summary, reported_errors
from simcli.cli.options import (
    BatchTokensOpt,
    ColumnOpt,
    DeviceOpt,
    DTypeOpt,
    ErrorsOpt,
    FieldOpt,
    HeaderOpt,
    JsonOpt,
    MaxLengthOpt,
    OptionalModelOpt,
    OverwriteOpt,
    PoolingOpt,
    RayOpt,
    TokenizerOpt,
    encoder_config,
)
from simcli.cli.progress import progress_bar
from simcli.errors import OutputExists, UsageError
from simcli.types import DEFAULT_MAX_LENGTH, EncoderConfig, dtype_label

if TYPE_CHECKING:
    from simcli.io import ReadOptions
    from simcli.whitening import Whitening

whiten_app = typer.Typer(
    help="Fit BERT-whitening on a vector store or on text, and inspect whitening files.", no_args_is_help=True
)
app.add_typer(whiten_app, name="whiten")


@whiten_app.command("fit")
def fit(
    ctx: typer.Context,
    sources: Annotated[
        list[Path],
        typer.Argument(help="A vector store folder (`simcli encode --out`), or text files with --model."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The whitening file to write (e.g. corpus.whiten).")
    ],
    dim: Annotated[
        int | None, typer.Option("--dim", "-k", help="Output dimension k (default: all d dimensions).")
    ] = None,
    beta: Annotated[float, typer.Option(help="Share of the mean removed: 1 whitening, 0 none.")] = 1.0,
    gamma: Annotated[
        float,
        typer.Option(help="Eigenvalue power: 1 whitening, 0 rotation only (with beta 0: keeps cosines)."),
    ] = 1.0,
    clamp: Annotated[
        bool, typer.Option("--clamp", help="Lower --dim to the covariance rank instead of refusing.")
    ] = False,
    overwrite: OverwriteOpt = False,
    model: OptionalModelOpt = None,
    pooling: PoolingOpt = "auto",
    tokenizer: TokenizerOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    max_length: MaxLengthOpt = DEFAULT_MAX_LENGTH,
    batch_tokens: BatchTokensOpt = None,
    column: ColumnOpt = None,
    header: HeaderOpt = None,
    field: FieldOpt = None,
    errors: ErrorsOpt = "strict",
    json_out: JsonOpt = False,
    ray_address: RayOpt = None,
) -> None:
    """Fit whitening on raw sentence vectors and save it.

    Example: simcli whiten fit corpus.vec --dim 256 --out corpus.whiten
    """
    with reported_errors():
        from simcli.io import ReadOptions

        if out.exists() and not overwrite:
            raise OutputExists(f"--out {out} exists (use --overwrite to replace it)")
        stores = [s for s in sources if s.is_dir()]
        if stores:
            if len(sources) > 1:
                raise UsageError(f"a store folder ({stores[0]}) must be the only SOURCE")
            if model is not None and not from_environment(ctx, "model"):  # SIMCLI_MODEL applies to text only
                raise UsageError("--model is for text sources: a store records its model")
            w = _fit_store(stores[0], dim, beta, gamma, clamp, ray_address)
        else:
            if ray_address is not None:
                raise UsageError("--ray fits on a vector store folder (`simcli encode --ray` makes one)")
            if model is None:
                raise UsageError("text sources need --model (or give a store folder)")
            config = encoder_config(ctx, model)
            # whitening is fitted on sentences: empty lines carry none, so they are always skipped
            read = ReadOptions(column=column, field=field, header=header, errors=errors, skip_empty=True)
            w = _fit_texts(sources, config, dim, beta, gamma, clamp, read)
        _report(w, out, json_out)


def _fit_store(
    store: Path, dim: int | None, beta: float, gamma: float, clamp: bool, ray_address: str | None
) -> Whitening:
    from simcli import whitening

    moments = None
    if ray_address is not None:
        from simcli.scale.runtime import connect
        from simcli.scale.whiten import moments_on_ray

        moments = moments_on_ray(connect(ray_address))
    return whitening.fit_store(store, dim=dim, beta=beta, gamma=gamma, clamp=clamp, moments=moments)


def _report(w: Whitening, out: Path, json_out: bool) -> None:
    """Save `w` to `out` and say what was written."""
    w.save(out)
    if w.clamped_from is not None:
        typer.echo(
            f"simcli: warning: --dim {w.clamped_from} lowered to the covariance rank {w.rank} "
            f"({w.n} vectors of dimension {w.dim_in})",
            err=True,
        )
    if json_out:
        typer.echo(json.dumps({"out": str(out), **w.metadata()}, ensure_ascii=False, sort_keys=True))
    else:
        typer.echo(
            f"wrote {out}: {w.n} vectors, {w.dim_in} -> {w.dim_out} dimensions, "
            f"beta {w.beta:g}, gamma {w.gamma:g}, rank {w.rank}"
        )


def _fit_texts(
    sources: list[Path],
    config: EncoderConfig,
    dim: int | None,
    beta: float,
    gamma: float,
    clamp: bool,
    read: ReadOptions,
) -> Any:
    from simcli import whitening
    from simcli.io import ReadStats

    stats = ReadStats()
    records = read.records([str(s) for s in sources], stats=stats)
    from simcli.models.encoder import load_encoder

    enc = load_encoder(config)
    spec = enc.spec
    typer.echo(
        f"simcli: {spec.model} ({spec.family}, {spec.pooling}, dim {spec.dim}) on {enc.device} "
        f"{dtype_label(enc.dtype)}",
        err=True,
    )
    with progress_bar() as bar:
        task = bar.add_task("encoding", total=None)
        fitted = whitening.fit_texts(
            (r.text for r in records),
            enc,
            dim=dim,
            beta=beta,
            gamma=gamma,
            clamp=clamp,
            source=", ".join(str(s) for s in sources),
            progress=lambda n, _tokens: bar.advance(task, n),
        )
    written = f"fitted on {counted(stats.records, 'sentence')}"
    typer.echo(f"simcli: {read_summary(stats.rows, written, stats.empty_skipped)}", err=True)
    return fitted


@whiten_app.command("info")
def info(
    file: Annotated[Path, typer.Argument(help="A whitening file from `simcli whiten fit`.")],
    json_out: JsonOpt = False,
) -> None:
    """Show what a whitening file holds: counts, dimensions, parameters, model, explained variance.

    Example: simcli whiten info corpus.whiten
    """
    with reported_errors():
        from simcli.whitening import Whitening

        w = Whitening.load(file)
        meta = w.metadata()
        lam = w.eigenvalues
        total = float(lam.sum())
        meta["kept_variance"] = float(lam[: w.dim_out].sum()) / total if total > 0 else 0.0
        if json_out:
            typer.echo(json.dumps({"file": str(file), **meta}, ensure_ascii=False, sort_keys=True))
            return
        spec = w.spec
        lowered = f" (asked {w.clamped_from}, lowered to the rank)" if w.clamped_from is not None else ""
        fields = {
            "file": file,
            "vectors": w.n,
            "dimensions": f"{w.dim_in} -> {w.dim_out}{lowered}",
            "beta": f"{w.beta:g}",
            "gamma": f"{w.gamma:g}",
            "rank": w.rank,
            "kept_variance": f"{100 * meta['kept_variance']:.2f}%",
            "model": spec.model if spec else None,
            "pooling": spec.pooling if spec else None,
            "max_length": spec.max_length if spec else None,
            "weights_sha256": spec.weights_sha256 if spec else None,
            "source": w.source,
            "sha256": w.sha256,
        }
        typer.echo(aligned(fields))
