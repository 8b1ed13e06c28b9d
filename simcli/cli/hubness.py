"""`simcli index stats` (k-occurrence skewness, hubs, anti-hubs) and `simcli index hubness` (CSLS radii).

Hubness: kexue.fm/archives/9147; CSLS: Conneau et al. 2018, arXiv:1710.04087. The math is in
simcli/index/hubness.py, the index side in simcli/index/neighbourhood.py.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from simcli.cli._app import reported_errors
from simcli.cli.index import IndexDirArg, index_app
from simcli.cli.options import JsonOpt, PlotOpt


@index_app.command("stats")
def stats(
    folder: IndexDirArg,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours per vector (N_k).")] = 10,
    sample: Annotated[
        int,
        typer.Option(
            "--sample", min=2, help="Above this many vectors, measure a random sample of this size."
        ),
    ] = 20000,
    top: Annotated[int, typer.Option("--top", min=0, help="Hubs to list.")] = 10,
    plot: PlotOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Hubness of an index: k-occurrence N_k of every vector, its skewness, anti-hubs, top hubs.

    N_k(y) counts the vectors that have y among their k nearest neighbours (themselves excluded); its mean
    is k. A large positive skewness means a few hubs answer many queries. Exact through a flat index,
    through the index's own search otherwise; on a random sample when the index is larger than --sample.

    --plot draws the histogram of N_k.

    Example: simcli index stats faq.idx -k 10 --plot nk.png
    """
    with reported_errors():
        from simcli.index import Index
        from simcli.index.neighbourhood import index_stats, plot_k_occurrence

        if plot is not None:
            from simcli.evaluate import require_matplotlib

            require_matplotlib()
        idx = Index.load(folder, verify=False)
        rep = index_stats(idx, k=k, sample=sample, top=top)
        s = rep.stats
        texts = {r["id"]: r["text"] for r in idx.rows([i for i, _ in s.top])}
        data: dict[str, Any] = {
            "path": str(folder),
            "count": rep.count,
            "points": s.points,
            "sample": rep.sample,
            "k": s.k,
            "method": rep.method,
            "exact": rep.exact,
            "skewness": round(s.skewness, 6),
            "anti_hubs": round(s.anti_hubs, 6),
            "anti_hub_count": int((rep.nk == 0).sum()),
            "max_nk": s.max_nk,
            "mean_knn_cosine": round(s.mean_knn_cosine, 6),
            "top_hubs": [{"id": i, "nk": c, "text": texts[i]} for i, c in s.top],
        }
        if plot is not None:
            plot_k_occurrence(rep.nk, s.k, plot, title=f"{folder.name}: N_{s.k}, skewness {s.skewness:.2f}")
        if json_out:
            typer.echo(json.dumps(data, ensure_ascii=False, sort_keys=True))
            return
        of = f"{s.points} sampled of {rep.count}" if rep.sample else f"{rep.count}"
        lines = [
            f"{folder}: {of} vectors, k = {s.k}; {rep.method}",
            f"N_{s.k} skewness             {s.skewness:.3f}",
            f"anti-hubs (N_{s.k} = 0)       {100 * s.anti_hubs:.1f}% ({data['anti_hub_count']} vectors)",
            f"largest N_{s.k}               {s.max_nk} (mean {s.k})",
            f"mean cosine to {s.k} nearest  {s.mean_knn_cosine:.4f}",
        ]
        if s.top:
            lines.append("top hubs:")
            lines.append(f"{'N_' + str(s.k):>7}  {'id':>7}  text")
            lines.extend(f"{c:>7}  {i:>7}  {texts[i]}" for i, c in s.top)
        typer.echo("\n".join(lines))


@index_app.command("hubness")
def hubness(
    folder: IndexDirArg,
    k: Annotated[
        int, typer.Option("-k", "--k", min=1, help="Neighbours in r(y) (Conneau et al. use 10).")
    ] = 10,
    json_out: JsonOpt = False,
) -> None:
    """Compute the CSLS radii r(y) of every indexed vector, for `simcli query --rerank csls`.

    r(y) is the mean cosine of y to its k nearest indexed neighbours (itself excluded), found through the
    index's own search; it is stored in the index folder with its hash in the manifest, and kept up to date
    by `simcli index add`.

    Example: simcli index hubness faq.idx -k 10
    """
    with reported_errors():
        from simcli.index import Index

        idx = Index.load(folder)
        radii = idx.hubness(k=k, log=lambda m: typer.echo(f"simcli: {m}", err=True))
        entry = idx.manifest.files["radii"]
        assert idx.manifest.csls is not None
        data = {
            "path": str(folder),
            "count": idx.count,
            "k": k,
            "search": idx.manifest.csls.search,
            "file": entry.name,
            "sha256": entry.sha256,
            "mean_r": round(float(radii.r.mean()), 6),
        }
        if json_out:
            typer.echo(json.dumps(data, sort_keys=True))
        else:
            typer.echo(
                f"wrote {folder / entry.name}: r(y) of {idx.count} vectors, k {k}, {data['search']} "
                f"search, mean r {data['mean_r']:.4f}"
            )
