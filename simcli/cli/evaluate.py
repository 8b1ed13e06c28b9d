"""`simcli eval sts` (Spearman x100 of cosine against label) and `simcli eval retrieval` (MRR, recall, nDCG,
hubness), per pooling and whitening setting."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from simcli.cli._app import app, reported_errors
from simcli.cli.options import (
    BatchTokensOpt,
    DeviceOpt,
    DTypeOpt,
    JsonOpt,
    ModelOpt,
    OptionalMaxLengthOpt,
    PlotOpt,
    TokenizerOpt,
)
from simcli.cli.progress import progress_bar
from simcli.errors import UsageError
from simcli.types import EncoderConfig, dtype_label

eval_app = typer.Typer(
    help="Evaluate encoders and whitening on labelled sentence pairs.", no_args_is_help=True
)
app.add_typer(eval_app, name="eval")

# The options both evaluations take.
PoolingsOpt = Annotated[
    str, typer.Option(help="Comma-separated poolings: auto, pooler, cls, last-avg, first-last-avg.")
]
WhitenSettingsOpt = Annotated[
    str, typer.Option(help="Comma-separated whitening settings: none, full, or a dimension k (e.g. 256).")
]
BetaOpt = Annotated[float, typer.Option(help="Whitening beta for every setting but none.")]
GammaOpt = Annotated[float, typer.Option(help="Whitening gamma for every setting but none.")]
PairColumnsOpt = Annotated[
    str | None,
    typer.Option(
        help="first,second,label columns: 0-based indexes (no header) or header names / jsonl keys "
        "[default: 0,1,2, or sentence1,sentence2,label when named so].",
    ),
]
LimitOpt = Annotated[int | None, typer.Option(help="Use only the first N pairs of each file.")]

FitOnOpt = Annotated[
    Path | None,
    typer.Option(
        "--fit-on",
        help="Fit whitening on this file (one sentence a line, or a pair file) instead of each task's "
        "own sentences.",
    ),
]
CorpusOpt = Annotated[
    Path | None,
    typer.Option("--corpus", help="Distractor sentences added to every corpus (one a line, or a pair file)."),
]
RerankSettingsOpt = Annotated[
    str,
    typer.Option(help="Comma-separated: none (cosine), csls (CSLS re-rank of the cosine candidates)."),
]
CandidatesOpt = Annotated[
    int | None,
    typer.Option("--candidates", help="Cosine candidates CSLS re-ranks [default: max(4k, 50) = 50]."),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(help="A pair is a paraphrase when its label is above this [default: mid label range]."),
]


def _encoder_note(cut: str | None = None) -> Callable[[Any], None]:
    """What `on_encoder` prints once a model is loaded: model, family, dim (and max length), device, dtype."""

    def show(enc: Any) -> None:
        spec = enc.spec
        length = f", max length {cut}" if cut is not None else ""
        typer.echo(
            f"simcli: {spec.model} ({spec.family}, dim {spec.dim}{length}) on "
            f"{enc.device} {dtype_label(enc.dtype)}",
            err=True,
        )

    return show


def _task_progress(bar: Any) -> Callable[[str, int], Any]:
    """The `progress` of the evaluations: a bar per task, advanced by each encoded chunk."""

    def progress(name: str, total: int) -> Any:
        task = bar.add_task(name, total=total)
        return lambda n, _tokens: bar.advance(task, n)

    return progress


@eval_app.command("sts")
def sts(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Pair files: s1<TAB>s2<TAB>label (.data/.txt/.tsv), .csv or .jsonl (see --columns)."
        ),
    ],
    model: ModelOpt,
    pooling: PoolingsOpt = "auto",
    whiten: WhitenSettingsOpt = "none,full",
    beta: BetaOpt = 1.0,
    gamma: GammaOpt = 1.0,
    fit_on: FitOnOpt = None,
    columns: PairColumnsOpt = None,
    limit: LimitOpt = None,
    max_length: OptionalMaxLengthOpt = None,
    tokenizer: TokenizerOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    batch_tokens: BatchTokensOpt = None,
    plot: PlotOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score an encoder on labelled pairs: Spearman x100 between cosine and label.

    Several --model values, comma-separated, give a row per model. --max-length applies to every file; by
    default each file gets the length the published tables use (64, and 128 for PAWSX). --plot draws the
    score against the whitening dimension.

    Example: simcli eval sts LCQMC.test.data --model M --pooling cls,first-last-avg --whiten none,full,256
    """
    with reported_errors():
        from simcli.evaluate import StsResult, evaluate_sts, parse_columns, parse_whiten, require_matplotlib

        parse_whiten(whiten)  # usage errors before the model loads
        cols = parse_columns(columns)
        if plot is not None:
            require_matplotlib()

        cut = str(max_length) if max_length is not None else _published_cuts(files)
        models = model_list(model)
        if plot is not None and len(models) > 1:
            raise UsageError("--plot draws one model: give one --model")
        by_model: dict[str, list[StsResult]] = {}
        with progress_bar() as bar:
            for name in models:  # one model at a time: a row per model and setting
                config = EncoderConfig(name).with_options(
                    tokenizer=tokenizer, device=device, dtype=dtype, batch_tokens=batch_tokens
                )
                by_model[name] = evaluate_sts(
                    files,
                    config,
                    poolings=pooling,
                    whiten=whiten,
                    beta=beta,
                    gamma=gamma,
                    fit_on=fit_on,
                    columns=cols,
                    limit=limit,
                    max_length=max_length,
                    progress=_task_progress(bar),
                    on_encoder=_encoder_note(cut),
                )
        _report_sts(by_model, plot, json_out, beta, gamma, fit_on)


def _report_sts(
    by_model: dict[str, list[Any]],
    plot: Path | None,
    json_out: bool,
    beta: float,
    gamma: float,
    fit_on: Path | None,
) -> None:
    """Notes on lowered dimensions (stderr), then the plot, and the table or JSON lines (stdout)."""
    from simcli.evaluate import plot_scores

    results = [r for rs in by_model.values() for r in rs]
    for r in results:
        if r.clamped_from is not None:
            typer.echo(
                f"simcli: note: {r.dataset} {r.pooling} whiten {r.whiten}: k {r.clamped_from} lowered "
                f"to the covariance rank {r.dim} ({r.fit_n} vectors)",
                err=True,
            )
    if plot is not None:
        plot_scores(results, plot)
    if json_out:
        for name, rs in by_model.items():
            for r in rs:  # which model, when there are several
                row = r.to_dict() if len(by_model) == 1 else {"model": name, **r.to_dict()}
                typer.echo(json.dumps(row, ensure_ascii=False))
    else:
        _print_table(by_model, beta, gamma, fit_on)


def _published_cuts(files: list[Path]) -> str:
    """The max lengths the published tables use for these files: "64", "128", or "64 (PAWSX 128)"."""
    from simcli.evaluate import dataset_names, published_max_length

    names = dataset_names(files)
    cuts = {published_max_length(n) for n in names}
    if len(cuts) == 1:
        return str(cuts.pop())
    pawsx = [n for n in names if published_max_length(n) != min(cuts)]
    return f"{min(cuts)} ({', '.join(pawsx)} {max(cuts)})"


def model_list(value: str) -> list[str]:
    """`--model a,b`: the models to evaluate in turn, split as --pooling is (a path that exists is one model)."""
    from simcli.evaluate import parse_list

    return [value] if Path(value).exists() else parse_list(value) or [value]


def _print_table(by_model: dict[str, list], beta: float, gamma: float, fit_on: Path | None) -> None:  # type: ignore[type-arg]
    from rich.console import Console
    from rich.table import Table

    from simcli.evaluate import summary_rows

    several = len(by_model) > 1
    rows: list[tuple[list[str], list[float], float]] = []
    for name, results in by_model.items():
        datasets, model_rows = summary_rows(results)
        rows += [([name] * several + [p, w], scores, avg) for p, w, scores, avg in model_rows]
    table = Table()
    if several:
        table.add_column("model")
    table.add_column("pooling")
    table.add_column("whiten")
    for ds in datasets:
        table.add_column(ds, justify="right")
    table.add_column("avg", justify="right")
    for labels, scores, avg in rows:
        table.add_row(*labels, *(f"{s:.2f}" for s in scores), f"{avg:.2f}")
    console = Console()
    if not console.is_terminal:
        console.width = 200  # a pipe or file: never cut columns
    title = "Spearman x100"
    if any(r.fit_on is not None for rs in by_model.values() for r in rs):  # some setting whitens: say how
        fitted = f"fitted on {fit_on}" if fit_on is not None else "fitted on each task"
        title += f"; whitening beta {beta:g}, gamma {gamma:g}, {fitted}"
    console.print(title, highlight=False)
    console.print(table)


@eval_app.command("retrieval")
def retrieval(
    files: Annotated[
        list[Path],
        typer.Argument(help="Labelled pair files, as for `eval sts` (label above --threshold = paraphrase)."),
    ],
    model: ModelOpt,
    corpus: CorpusOpt = None,
    pooling: PoolingsOpt = "auto",
    whiten: WhitenSettingsOpt = "none,full",
    rerank: RerankSettingsOpt = "none,csls",
    candidates: CandidatesOpt = None,
    threshold: ThresholdOpt = None,
    beta: BetaOpt = 1.0,
    gamma: GammaOpt = 1.0,
    columns: PairColumnsOpt = None,
    limit: LimitOpt = None,
    max_length: OptionalMaxLengthOpt = None,
    tokenizer: TokenizerOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    batch_tokens: BatchTokensOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score retrieval on labelled pairs: MRR@10, recall@1/10, nDCG@10 and hubness (N_10 skewness).

    Queries are the first sentences of the positive pairs, the corpus every distinct sentence (plus
    --corpus), each query left out of its own results; its relevant documents are its paraphrases.
    --max-length defaults to the length the published tables use (64, and 128 for PAWSX).

    Example: simcli eval retrieval LCQMC.test.data --model M --whiten none,256 --rerank none,csls
    """
    with reported_errors():
        from simcli.evaluate import parse_columns, parse_whiten
        from simcli.retrieval import evaluate_retrieval, parse_rerank

        parse_whiten(whiten)  # usage errors before the model loads
        parse_rerank(rerank)
        if len(model_list(model)) > 1:
            raise UsageError("eval retrieval takes one --model (eval sts takes a comma list)")
        cols = parse_columns(columns)

        with progress_bar() as bar:
            results = evaluate_retrieval(
                files,
                model,
                poolings=pooling,
                whiten=whiten,
                rerank=rerank,
                candidates=candidates,
                corpus=corpus,
                threshold=threshold,
                beta=beta,
                gamma=gamma,
                columns=cols,
                limit=limit,
                max_length=max_length,
                tokenizer=tokenizer,
                device=device,
                dtype=dtype,
                batch_tokens=batch_tokens,
                progress=_task_progress(bar),
                on_encoder=_encoder_note(),
            )
        if json_out:
            for r in results:
                typer.echo(json.dumps(r.to_dict(), ensure_ascii=False))
            return
        _print_retrieval(results)


def _print_retrieval(results: list) -> None:  # type: ignore[type-arg]
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for name in ("data", "pooling", "whiten", "rerank"):
        table.add_column(name)
    for name in ("MRR@10", "R@1", "R@10", "nDCG@10", "N10 skew", "anti-hubs", "queries", "corpus"):
        table.add_column(name, justify="right")
    for r in results:
        table.add_row(
            r.dataset,
            r.pooling,
            r.whiten,
            r.rerank if r.candidates is None else f"{r.rerank} (M {r.candidates})",
            f"{r.mrr_at_10:.4f}",
            f"{r.recall_at_1:.4f}",
            f"{r.recall_at_10:.4f}",
            f"{r.ndcg_at_10:.4f}",
            f"{r.skewness:.2f}",
            f"{100 * r.anti_hubs:.1f}%",
            str(r.queries),
            str(r.corpus),
        )
    console = Console()
    if not console.is_terminal:
        console.width = 200  # a pipe or file: never cut columns
    console.print("Retrieval, exact search; each query left out of its own results", highlight=False)
    console.print(table)
