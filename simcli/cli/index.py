"""`simcli index build/add/info/check`, `simcli query` and `simcli similar` (the faiss wiki).

Only stdlib, typer and light simcli modules at module level: numpy, faiss and torch load inside commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from simcli.cli._app import aligned, app, command_line, counted, from_environment, note, reported_errors
from simcli.cli.options import (
    BatchTokensOpt,
    ColumnOpt,
    DeviceOpt,
    DTypeOpt,
    ErrorsOpt,
    FieldOpt,
    HeaderOpt,
    JsonOpt,
    ModelLocationOpt,
    ModelOpt,
    OptionalMaxLengthOpt,
    OptionalModelOpt,
    OverwriteOpt,
    PoolingOpt,
    RayOpt,
    SkipEmptyOpt,
    TokenizerOpt,
    WhiteningFileOpt,
    encoder_config,
)
from simcli.errors import BadInput, UsageError
from simcli.io import ReadOptions
from simcli.types import EncoderConfig

index_app = typer.Typer(
    help="Build, grow, inspect and check FAISS cosine indexes (query them with `simcli query`).",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")

IndexDirArg = Annotated[Path, typer.Argument(help="An index folder (`simcli index build --out`).")]
NprobeOpt = Annotated[
    int | None,
    typer.Option("--nprobe", min=1, help="IVF lists to visit (default: tuned at build, in the manifest)."),
]
EfSearchOpt = Annotated[
    int | None, typer.Option("--ef-search", min=1, help="HNSW search breadth (default: tuned at build).")
]
IndexDTypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="auto | float32 | bfloat16 | float16 | int8 for encoding (default: the dtype the index's vectors were "
        "computed with, when on the same kind of device; else auto).",
    ),
]

IndexTypeOpt = Annotated[
    str,
    typer.Option(
        "--index", help="auto | flat | hnsw | ivf | ivfpq | a faiss factory string (e.g. IVF1024,Flat)."
    ),
]
WhitenSettingOpt = Annotated[
    str,
    typer.Option(
        "--whiten",
        help="auto | none | full | K: auto = none for RoFormer-Sim / SimBERT / sentence-bert (m3e, sentence-transformers), for unsupervised encoders "
        "whitening to 256-d (base; 128 small, 384 large).",
    ),
]
MemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--memory", help="Memory budget of the index for --index auto, e.g. 2GB (default: half the RAM)."
    ),
]
CslsOpt = Annotated[
    bool,
    typer.Option("--csls", help="Also compute the CSLS radii for `query --rerank csls` (`index hubness`)."),
]
QueryFileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="Queries, one a line (.txt, or .tsv/.csv/.jsonl; - for stdin)."),
]
MinScoreOpt = Annotated[
    float | None,
    typer.Option(
        "--min-score", help="Drop hits below this score (the cosine; the CSLS score with --rerank csls)."
    ),
]
RerankOpt = Annotated[
    str,
    typer.Option(
        "--rerank",
        help="none | csls: re-rank the cosine candidates by CSLS, 2 cos - r(y), which demotes hubs "
        "(needs `simcli index hubness` first).",
    ),
]
CandidatesOpt = Annotated[
    int | None,
    typer.Option(
        "--candidates", min=1, help="Cosine candidates --rerank csls re-ranks [default: max(4k, 50)]."
    ),
]
QueryJsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help='{"query", "results": [{"rank", "id", "score", "text"}]} lines ("csls" too when re-ranked).',
    ),
]


def _params(nprobe: int | None, ef_search: int | None) -> dict[str, int] | None:
    params = {k: v for k, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v is not None}
    return params or None


def _bar_progress(bar: Any) -> Any:
    task = bar.add_task("encoding", total=None)
    return lambda n, _tokens: bar.advance(task, n)


@index_app.command("build")
def build(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Text files (.txt/.tsv/.csv/.jsonl, - for stdin) with --model, or one vector store folder."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The index folder to write.")],
    model: OptionalModelOpt = None,
    index: IndexTypeOpt = "auto",
    whiten: WhitenSettingOpt = "auto",
    whitening: WhiteningFileOpt = None,
    memory: MemoryOpt = None,
    column: ColumnOpt = None,
    header: HeaderOpt = None,
    field: FieldOpt = None,
    skip_empty: SkipEmptyOpt = False,
    errors: ErrorsOpt = "strict",
    pooling: PoolingOpt = "auto",
    tokenizer: TokenizerOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    max_length: OptionalMaxLengthOpt = None,  # None: load_encoder's default
    batch_tokens: BatchTokensOpt = None,
    overwrite: OverwriteOpt = False,
    csls: CslsOpt = False,
    json_out: JsonOpt = False,
    ray_address: RayOpt = None,
) -> None:
    """Build a cosine index folder from text (with --model) or from a vector store.

    Example: simcli index build faq.txt --model junnyu/roformer_chinese_sim_char_ft_small --out faq.idx
    """
    with reported_errors():
        from simcli.cli.progress import progress_bar
        from simcli.index import Index

        if from_environment(ctx, "model") and all(Path(x).is_dir() for x in inputs):
            model = None  # SIMCLI_MODEL is for text inputs: a vector store records its model
        config = _build_encoder(ctx, inputs, model)
        moments, fill = _ray_hooks(ray_address, inputs, config)
        read = ReadOptions(column=column, field=field, header=header, errors=errors, skip_empty=skip_empty)
        try:
            with progress_bar() as bar:
                idx = Index.build(
                    inputs,
                    out=out,
                    model=config,
                    index=index,
                    whiten=whiten,
                    whitening=whitening,
                    memory=memory,
                    read_options=read,
                    overwrite=overwrite,
                    csls=csls,
                    progress=_bar_progress(bar),
                    log=note,
                    moments=moments,
                    fill=fill,
                )
        except KeyboardInterrupt:
            # a generation becomes the index only when its manifest lands, so nothing half-built stays
            note(
                f"interrupted: {out} unchanged (an index is written whole once built); start again with: "
                f"{command_line(ctx)}"
            )
            raise typer.Exit(130) from None
        _print_built(out, idx.info(), json_out)


def _print_built(out: Path, info: dict[str, Any], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(info, ensure_ascii=False, sort_keys=True))
    else:
        typer.echo(
            f"wrote {out}: {info['count']} vectors, dim {info['dim']}, {info['index']}, "
            f"search {_fmt_params(info['search_params'])}, recall@10 {info['tuned_recall_at_10']:.3f}"
        )


def _build_encoder(ctx: typer.Context, inputs: list[str], model: str | None) -> EncoderConfig | None:
    """The encoder of text inputs; None for a vector store, which fixes its model, pooling and length (a
    flag contradicting the store is refused rather than ignored; the same values are fine)."""
    from simcli.index.inputs import check_store_flags, is_store

    if len(inputs) == 1 and is_store(inputs[0]):
        p = ctx.params
        check_store_flags(
            inputs[0], model=model, pooling=p["pooling"], tokenizer=p["tokenizer"], max_length=p["max_length"]
        )
        return None
    return None if model is None else encoder_config(ctx, model)


def _ray_hooks(ray_address: str | None, inputs: list[str], config: EncoderConfig | None) -> tuple[Any, Any]:
    """The whitening's moments and the adding on Ray (the driver never holds the corpus); (None, None)
    without --ray."""
    if ray_address is None:
        return None, None
    from simcli.index.inputs import is_store

    if config is not None or not (len(inputs) == 1 and is_store(inputs[0])):
        raise UsageError("--ray builds from one vector store folder (`simcli encode --ray` makes one)")
    from simcli.scale.index import build_hooks_on_ray
    from simcli.scale.runtime import connect

    return build_hooks_on_ray(connect(ray_address), inputs[0], note)


def _fmt_params(params: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items()) or "exact"


@index_app.command("add")
def add(
    folder: IndexDirArg,
    inputs: Annotated[
        list[str],
        typer.Argument(help="Text files (- for stdin), or a vector store folder of the same model."),
    ],
    column: ColumnOpt = None,
    header: HeaderOpt = None,
    field: FieldOpt = None,
    skip_empty: SkipEmptyOpt = False,
    errors: ErrorsOpt = "strict",
    model: ModelLocationOpt = None,
    device: DeviceOpt = "auto",
    dtype: IndexDTypeOpt = None,
) -> None:
    """Append sentences to an index without rebuilding it (same model and whitening as recorded).

    Example: simcli index add faq.idx more_faq.txt
    """
    with reported_errors():
        from simcli.cli.progress import progress_bar
        from simcli.index import Index

        idx = Index.load(folder, device=device, dtype=dtype, model=model)
        with progress_bar() as bar:
            n = idx.add(
                inputs,
                read_options=ReadOptions(
                    column=column, field=field, header=header, errors=errors, skip_empty=skip_empty
                ),
                progress=_bar_progress(bar),
                log=note,
            )
        typer.echo(f"added {counted(n, 'vector')} to {folder}: {idx.count} in all")


@index_app.command("info")
def info(folder: IndexDirArg, json_out: JsonOpt = False) -> None:
    """Show what an index holds: count, model, whitening, index type, search parameters, size.

    Every file's size and sha256 are checked first, as `simcli query` does (an altered file is an error).

    Example: simcli index info faq.idx
    """
    with reported_errors():
        from simcli.index import Index

        index = Index.load(folder)  # sizes and hashes, as query: an altered file fails here, naming it
        data = index.info()
        if json_out:
            typer.echo(json.dumps(data, ensure_ascii=False, sort_keys=True))
            return
        w = data["whitening"]
        data["whitening"] = f"{w['dim_in']} -> {w['dim_out']} (fitted on {w['n']})" if w else "none"
        data["search_params"] = _fmt_params(data["search_params"])
        data["files"] = f"{len(index.manifest.files)}, sizes and sha256 as the manifest records"
        typer.echo(aligned(data))


@index_app.command("check")
def check(
    folder: IndexDirArg,
    sample: Annotated[int, typer.Option("--sample", min=1, help="Indexed vectors used as queries.")] = 1000,
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours compared.")] = 10,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check file hashes, then recall@k against exact search and latency on a sample.

    Example: simcli index check faq.idx --sample 500
    """
    with reported_errors():
        from simcli.index import Index

        idx = Index.load(folder)
        r = idx.check(sample=sample, k=k, params=_params(nprobe, ef_search))
        if json_out:
            typer.echo(json.dumps(r, sort_keys=True))
            return
        typer.echo(
            f"{folder}: {r['count']} vectors, files ok; recall@{r['k']} {r['recall']:.4f} on {r['queries']} "
            f"sample queries ({_fmt_params(r['params'])}); {r['ms_per_query']:.2f} ms a query, "
            f"{r['queries_per_s']:.0f} queries/s batched (exact: {r['exact_queries_per_s']:.0f}/s)"
        )


def _queries(texts: list[str], file: Path | None, read: ReadOptions) -> list[str]:
    from simcli.io import STDIN

    if texts and file is not None:
        raise UsageError("give queries as arguments or --file, not both")
    if texts == [STDIN]:  # `simcli query idx -`: the queries come on stdin, as for `simcli encode -`
        file = Path(STDIN)
    elif texts:
        if read.column is not None or read.field is not None:
            raise UsageError("--column and --field choose the text of --file (or of - for stdin)")
        return texts
    elif file is None:
        if sys.stdin.isatty():
            raise UsageError("give queries as arguments, --file FILE, or on stdin (-)")
        file = Path(STDIN)
    name = STDIN if str(file) == STDIN else str(file)
    return [r.text for r in read.records([name])]


@app.command()
def query(
    folder: IndexDirArg,
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="Queries (or --file, or one a line on stdin: - or nothing)."),
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Hits per query.")] = 10,
    file: QueryFileOpt = None,
    column: ColumnOpt = None,
    header: HeaderOpt = None,
    field: FieldOpt = None,
    errors: ErrorsOpt = "strict",
    min_score: MinScoreOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    rerank: RerankOpt = "none",
    candidates: CandidatesOpt = None,
    json_out: QueryJsonOpt = False,
    model: ModelLocationOpt = None,
    device: DeviceOpt = "auto",
    dtype: IndexDTypeOpt = None,
) -> None:
    """Find the indexed sentences closest to each query (cosine, same model and whitening as the index).

    With --rerank csls each line shows the CSLS score, then the cosine.

    Example: simcli query faq.idx "花呗怎么还款" "借呗额度" -k 5
    """
    with reported_errors():
        read = ReadOptions(column=column, field=field, header=header, errors=errors, skip_empty=True)
        queries = _queries(texts or [], file, read)
        from simcli.index import Index

        idx = Index.load(folder, device=device, dtype=dtype, model=model)
        if not queries:
            raise BadInput("no queries (empty input)")
        if candidates is not None and rerank.strip().lower() != "csls":
            raise UsageError("--candidates is for --rerank csls")
        step = idx.csls(candidates) if rerank.strip().lower() == "csls" else rerank
        results = idx.search(
            queries, k=k, min_score=min_score, params=_params(nprobe, ef_search), rerank=step
        )
        _print_hits(queries, results, json_out)


def _print_hits(queries: list[str], results: list[Any], json_out: bool) -> None:
    """A JSON line a query, or the query then a line a hit (rank, score, the cosine when re-ranked, text)."""
    out = []
    for q, hits in zip(queries, results, strict=True):
        if json_out:
            rows = [h.to_json() for h in hits]
            out.append(json.dumps({"query": q, "results": rows}, ensure_ascii=False))
        else:
            out.append(q)
            out.extend(
                f"{h.rank:>4}  {h.score:.4f}  {h.text}"
                if h.cosine is None
                else f"{h.rank:>4}  {h.score:.4f}  {h.cosine:.4f}  {h.text}"
                for h in hits
            )
            out.append("")
    typer.echo("\n".join(out).rstrip("\n"))


@app.command()
def similar(
    texts: Annotated[
        list[str], typer.Argument(help="Two sentences (their cosine) or more (a cosine matrix).")
    ],
    model: ModelOpt,
    whitening: WhiteningFileOpt = None,
    pooling: PoolingOpt = "auto",
    tokenizer: TokenizerOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    max_length: OptionalMaxLengthOpt = None,  # None: load_encoder's default
    json_out: JsonOpt = False,
) -> None:
    """Cosine similarity of two sentences, or the matrix of several.

    Example: simcli similar "我喜欢北京" "我不喜欢北京" --model junnyu/roformer_chinese_sim_char_ft_small
    """
    with reported_errors():
        if len(texts) < 2:
            raise UsageError(f"give at least two sentences, got {len(texts)}")
        from simcli.index.similar import cosine_matrix

        config = EncoderConfig(model).with_options(
            pooling=pooling, tokenizer=tokenizer, device=device, dtype=dtype, max_length=max_length
        )
        m = cosine_matrix(texts, config, whitening=whitening)
        if len(texts) == 2:
            if json_out:
                typer.echo(
                    json.dumps(
                        {"a": texts[0], "b": texts[1], "cosine": round(float(m[0, 1]), 6)}, ensure_ascii=False
                    )
                )
            else:
                typer.echo(f"{m[0, 1]:.4f}")
            return
        if json_out:
            rows = [[round(float(v), 6) for v in row] for row in m]
            typer.echo(json.dumps({"texts": texts, "cosine": rows}, ensure_ascii=False))
            return
        n = len(texts)
        width = len(str(n))
        typer.echo(" " * width + "".join(f"  {j + 1:>7}" for j in range(n)) + "  text")
        for i in range(n):
            cells = "".join(f"  {m[i, j]:>7.4f}" for j in range(n))
            typer.echo(f"{i + 1:>{width}}{cells}  {texts[i]}")
