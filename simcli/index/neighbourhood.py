"""The neighbourhoods of an index's own vectors: k-occurrence statistics and the CSLS radii r(y).

Each indexed vector is searched against the index (k + 1 hits, its own id dropped). Through a flat index
that is exact; through IVF / HNSW it is the index's own approximate search, which is what users of that
index get (the report says which). The math lives in `hubness` (pure numpy); this module feeds it.

Radii after `index add`: a new vector y' changes the K-NN list of an old vector y only if cos(y, y') beats
y's current K-th neighbour. So the radii file keeps, next to r(y), the cosine of y's K-th neighbour; an add
computes r for the new vectors, finds the old ones some new vector enters (an exact search of every old
vector against the new ones), and re-searches only those. Unaffected lists keep the same K cosines, so
their r is unchanged: for a flat index the result equals a fresh computation. When the new vectors are many
(more than REFRESH_ALL_SHARE of the index, or the index was smaller than K + 1) every r is recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from simcli.index.check import take_rows
from simcli.index.hubness import (
    CSLS_K,
    HubnessStats,
    Neighbours,
    drop_self,
    exact_knn,
    hubness_stats,
    kth_similarity,
    radii,
    skewness,
)

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (queries, k) -> (sims, ids)
ChunksFn = Callable[[], Iterator[np.ndarray]]  # the stored unit vectors, chunk by chunk, in id order
QUERY_BATCH = 4096
REFRESH_ALL_SHARE = 0.25


def search_self(search: SearchFn, chunks: Iterator[np.ndarray], k: int, first_id: int = 0) -> Neighbours:
    """The k nearest indexed neighbours of vectors given chunk by chunk (ids from `first_id` on), each
    one's own id left out."""
    ids_out, sims_out = [], []
    start = first_id
    for chunk in chunks:
        for i in range(0, len(chunk), QUERY_BATCH):
            q = np.ascontiguousarray(chunk[i : i + QUERY_BATCH], dtype=np.float32)
            sims, ids = search(q, k + 1)
            nb = drop_self(ids, sims, np.arange(start, start + len(q)), k)
            ids_out.append(nb.ids)
            sims_out.append(nb.sims)
            start += len(q)
    if not ids_out:
        return Neighbours(np.empty((0, k), np.int64), np.empty((0, k), np.float32))
    return Neighbours(np.concatenate(ids_out), np.concatenate(sims_out))


@dataclass(frozen=True)
class Radii:
    """r(y) of every indexed vector and the cosine of its K-th neighbour (what `index add` needs)."""

    r: np.ndarray  # (n,) float32
    kth: np.ndarray  # (n,) float32, -inf when y has fewer than K neighbours
    k: int

    def to_array(self) -> np.ndarray:
        """The (n, 2) float32 array stored in the index folder: columns r, K-th cosine."""
        return np.stack([self.r, self.kth], axis=1).astype(np.float32)

    @classmethod
    def from_array(cls, a: np.ndarray, k: int) -> Radii:
        a = np.asarray(a, dtype=np.float32)
        return cls(a[:, 0].copy(), a[:, 1].copy(), k)


def compute_radii(search: SearchFn, chunks: Iterator[np.ndarray], k: int = CSLS_K) -> Radii:
    """r(y) = mean cosine of y to its k nearest indexed neighbours (itself excluded), for every vector."""
    nb = search_self(search, chunks, k)
    return Radii(radii(nb.sims), kth_similarity(nb.sims), k)


def refresh_radii(
    old: Radii, search: SearchFn, old_chunks: ChunksFn, new_vectors: np.ndarray, count_before: int
) -> tuple[Radii, int]:
    """Radii after vectors were added (`search` already sees them): r of the new ones, r of the old ones whose
    neighbourhood a new vector entered re-searched, the rest kept. Returns (radii, old vectors re-searched).

    Falls back to recomputing every r when the new vectors are many or the index held fewer than k + 1.
    """
    k = old.k
    n_new = len(new_vectors)
    if count_before <= k or n_new > REFRESH_ALL_SHARE * count_before:

        def everything() -> Iterator[np.ndarray]:
            yield from old_chunks()
            yield new_vectors

        return compute_radii(search, everything(), k), count_before
    fresh = search_self(search, iter([new_vectors]), k, first_id=count_before)
    # the best cosine of each old vector to any new one, exactly
    best = np.full(count_before, -np.inf, dtype=np.float32)
    start = 0
    for chunk in old_chunks():
        best[start : start + len(chunk)] = exact_knn(chunk, new_vectors, 1).sims[:, 0]
        start += len(chunk)
    affected = np.flatnonzero(best > old.kth)
    r, kth = old.r.copy(), old.kth.copy()
    if len(affected):
        vectors = take_rows(old_chunks(), affected, new_vectors.shape[1])
        ids_out, sims_out = [], []
        for i in range(0, len(affected), QUERY_BATCH):
            sims, ids = search(np.ascontiguousarray(vectors[i : i + QUERY_BATCH]), k + 1)
            nb = drop_self(ids, sims, affected[i : i + QUERY_BATCH], k)
            ids_out.append(nb.ids)
            sims_out.append(nb.sims)
        sims_all = np.concatenate(sims_out)
        r[affected] = radii(sims_all)
        kth[affected] = kth_similarity(sims_all)
    return (
        Radii(np.concatenate([r, radii(fresh.sims)]), np.concatenate([kth, kth_similarity(fresh.sims)]), k),
        len(affected),
    )


@dataclass(frozen=True)
class NeighbourhoodReport:
    """What `simcli index stats` measured, and how."""

    stats: HubnessStats
    nk: np.ndarray  # N_k of the measured points
    point_ids: np.ndarray  # index ids of the measured points (all, or the sample)
    count: int  # vectors in the index
    method: str  # how the neighbours were found, in words
    exact: bool
    sample: int | None  # sample size when the index was larger than the sample


def neighbourhood_stats(
    search: SearchFn,
    chunks: ChunksFn,
    count: int,
    dim: int,
    *,
    k: int,
    sample: int,
    exact: bool,
    how: str,
    top: int = 10,
    seed: int = 0,
) -> NeighbourhoodReport:
    """k-occurrence statistics of an index's vectors.

    Up to `sample` vectors: every vector searched through the index (`search`, exact or not as `exact` says;
    `how` names it). Above: a uniform random sample of `sample` stored vectors, with exact k-NN within the
    sample (N_k of a corpus of that size drawn from this one).
    """
    if count < 2:
        raise ValueError("k-occurrence needs at least two vectors")
    if count > sample:
        ids = np.sort(np.random.default_rng(seed).choice(count, size=sample, replace=False))
        x = take_rows(chunks(), ids, dim)
        nb = exact_knn(x, x, k, self_ids=np.arange(len(ids)))
        stats, nk = hubness_stats(nb, len(ids), top=top)
        stats = replace(stats, top=[(int(ids[i]), c) for i, c in stats.top])
        method = f"exact k-NN within a random sample of {sample} of the {count} vectors"
        return NeighbourhoodReport(stats, nk, ids, count, method, True, sample)
    nb = search_self(search, chunks(), k)
    stats, nk = hubness_stats(nb, count, top=top)
    method = f"every vector searched through the index: {how}"
    return NeighbourhoodReport(stats, nk, np.arange(count), count, method, exact, None)


def plot_k_occurrence(nk: np.ndarray, k: int, out: str | Path, title: str = "") -> None:
    """A PNG histogram of N_k (log count axis): a long right tail is hubness, the bar at 0 the anti-hubs."""
    from simcli.evaluate import require_matplotlib
    from simcli.io import atomic_write_with

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = int(nk.max())
    bins: int | list[float] = [b - 0.5 for b in range(top + 2)] if top < 200 else 100
    ax.hist(nk, bins=bins, color="C0")
    ax.set_yscale("log")
    ax.axvline(k, color="C1", linestyle="--", linewidth=1, label=f"mean = k = {k}")
    ax.set_xlabel(f"N_{k}: times a vector is among the {k} nearest neighbours of the others")
    ax.set_ylabel("vectors")
    ax.set_title(title or f"k-occurrence (skewness {skewness(nk):.2f})")
    ax.legend()
    fig.tight_layout()
    atomic_write_with(Path(out), lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


STATS_SAMPLE = 20000  # above this many vectors, `index stats` measures a random sample of this size


def index_stats(index: Any, k: int = 10, sample: int = STATS_SAMPLE, top: int = 10) -> NeighbourhoodReport:
    """k-occurrence statistics of a loaded `Index`'s own vectors (see `neighbourhood_stats`)."""
    from simcli.errors import UsageError

    if k < 1 or sample < 2:
        raise UsageError(f"-k must be at least 1 and --sample at least 2, got k {k}, sample {sample}")
    if index.count < 2:
        raise UsageError(f"{index.path}: {index.count} vector(s); k-occurrence needs at least two")
    k = min(k, index.count - 1)
    factory = index.manifest.index.factory
    exact = exact_search(index.faiss_index, index.manifest.index.lossless)
    if exact:
        how = f"exact ({factory})"
    else:
        params = ", ".join(f"{n} {v}" for n, v in index.search_params.items())
        how = f"approximate ({factory}{', ' + params if params else ''})"
    return neighbourhood_stats(
        index.self_search,
        index.stored_vectors,
        index.count,
        index.dim,
        k=k,
        sample=sample,
        exact=exact,
        how=how,
        top=top,
    )


def exact_search(faiss_index: Any, lossless: bool) -> bool:
    """Whether searching this index is exact: no nprobe / efSearch trade-off, and vectors kept as they are."""
    from simcli.index.search import search_parameter

    return search_parameter(faiss_index) is None and bool(lossless)
