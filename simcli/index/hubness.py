"""Hubness: k-occurrence, its skewness, anti-hubs, neighbourhood radii and CSLS re-ranking (pure numpy).

In high dimension a few points (near the density centre) sit in the k-NN lists of very many others
("hubs") and many sit in nobody's ("anti-hubs"); a search keeps answering with the same few entries
(kexue.fm/archives/9147; Radovanovic et al. 2010, "Hubs in Space"). Measured here by:

- N_k(y): how many points have y among their k nearest neighbours, each point's own row excluded. Its mean is
  k; hubness is the skewness of its distribution (biased sample skewness, as `scipy.stats.skew`).
- r(y): the mean cosine of y to its K nearest neighbours (itself excluded), its "radius".

CSLS (Conneau et al. 2018, arXiv:1710.04087) scores a candidate y of query x by 2 cos(x, y) - r(x) - r(y).
r(x) is the same for every candidate of one query, so ranking by 2 cos(x, y) - r(y) is enough: a hub (large
r) is pushed down, an isolated point (small r) up.

Every function takes and returns plain arrays; ids < 0 are padding (a search that found fewer than k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CSLS_K = 10  # neighbours in r(y), as in Conneau et al. 2018
MIN_CANDIDATES = 50  # --candidates default: max(4 k, 50) cosine candidates re-ranked by CSLS
EXACT_CHUNK = 1024  # query rows per matrix product in `exact_knn`


def default_candidates(k: int) -> int:
    """Cosine candidates fetched for a CSLS re-rank of the top k: max(4 k, 50)."""
    return max(4 * k, MIN_CANDIDATES)


@dataclass(frozen=True)
class Neighbours:
    """k-NN lists of some points: ids (n, k) int64 (-1 = none) and their cosines (n, k) float32, best first."""

    ids: np.ndarray
    sims: np.ndarray

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])


def drop_self(ids: np.ndarray, sims: np.ndarray, self_ids: np.ndarray, k: int) -> Neighbours:
    """Each row's neighbours without the query's own id, cut to k (rows come from searching k + 1).

    A row that does not contain its own id (an exact duplicate ranked first, an approximate search) keeps its
    first k: the duplicate is a genuine neighbour.
    """
    out_ids = np.full((len(ids), k), -1, dtype=np.int64)
    out_sims = np.full((len(ids), k), np.nan, dtype=np.float32)
    for r, own in enumerate(np.asarray(self_ids)):
        keep = (ids[r] != own) & (ids[r] >= 0)
        kept_ids, kept_sims = ids[r][keep][:k], sims[r][keep][:k]
        out_ids[r, : len(kept_ids)] = kept_ids
        out_sims[r, : len(kept_sims)] = kept_sims
    return Neighbours(out_ids, out_sims)


def exact_knn(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    self_ids: np.ndarray | None = None,
    chunk: int = EXACT_CHUNK,
) -> Neighbours:
    """Exact top-k by inner product (cosine for unit rows), ties by lower id; `self_ids[i]` left out of row i.

    Chunked matrix products, so memory stays at chunk x len(corpus) floats.
    """
    n, m = len(queries), len(corpus)
    k_eff = min(k, m - (1 if self_ids is not None else 0))
    ids = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), np.nan, dtype=np.float32)
    if k_eff <= 0:
        return Neighbours(ids, sims)
    c = np.ascontiguousarray(corpus, dtype=np.float32)
    for start in range(0, n, chunk):
        s = np.asarray(queries[start : start + chunk], dtype=np.float32) @ c.T
        rows = np.arange(len(s))
        if self_ids is not None:
            s[rows, np.asarray(self_ids[start : start + chunk])] = -np.inf
        # argpartition then a stable sort of the few: ties broken by lower id
        part = (
            np.argpartition(-s, k_eff - 1, axis=1)[:, :k_eff]
            if k_eff < m
            else np.tile(np.arange(m), (len(s), 1))
        )
        part.sort(axis=1)
        vals = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        ids[start : start + len(s), :k_eff] = np.take_along_axis(part, order, axis=1)
        sims[start : start + len(s), :k_eff] = np.take_along_axis(vals, order, axis=1)
    return Neighbours(ids, sims)


def k_occurrence(ids: np.ndarray, n: int) -> np.ndarray:
    """N_k of points 0..n-1: how often each id appears in the neighbour lists `ids` (padding ignored)."""
    flat = np.asarray(ids).ravel()
    return np.bincount(flat[flat >= 0], minlength=n).astype(np.int64)


def skewness(x: np.ndarray) -> float:
    """Biased sample skewness m3 / m2^1.5 (`scipy.stats.skew` default); 0 for a constant sample (scipy: nan),
    which for N_k means every point is equally often a neighbour: no hubness."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return float("nan")
    d = x - x.mean()
    m2 = float(np.mean(d * d))
    if m2 <= 1e-14 * max(1.0, float(np.mean(x * x))):
        return 0.0
    return float(np.mean(d**3) / m2**1.5)


def anti_hub_share(nk: np.ndarray) -> float:
    """Share of points in nobody's k-NN list (N_k = 0)."""
    nk = np.asarray(nk)
    return float(np.mean(nk == 0)) if len(nk) else float("nan")


def radii(sims: np.ndarray) -> np.ndarray:
    """r(y) of each row: the mean cosine to its neighbours (NaN padding ignored; 0 for a row with none)."""
    sims = np.asarray(sims, dtype=np.float64)
    valid = ~np.isnan(sims)
    count = valid.sum(axis=1)
    total = np.where(valid, sims, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


def kth_similarity(sims: np.ndarray) -> np.ndarray:
    """The cosine of each row's last (k-th) neighbour; -inf for a row with fewer than k neighbours (so any
    new point enters that neighbourhood)."""
    last = np.asarray(sims, dtype=np.float32)[:, -1]
    return np.where(np.isnan(last), -np.inf, last).astype(np.float32)


def csls_scores(cos: np.ndarray, r: np.ndarray) -> np.ndarray:
    """2 cos(x, y) - r(y): the CSLS score without the query's own r(x), which does not change the order."""
    return 2.0 * np.asarray(cos, dtype=np.float32) - np.asarray(r, dtype=np.float32)


def csls_rerank(
    ids: np.ndarray, cos: np.ndarray, r: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-rank each row of cosine candidates by CSLS and keep the top k.

    Args:
        ids: (q, M) candidate ids, -1 padding.
        cos: (q, M) their cosines to the query.
        r: (n,) the radius of every indexed point.
        k: results kept per row.

    Returns:
        (ids, cos, csls), each (q, k), best CSLS first, ties by lower id; padding -1 / NaN.
    """
    ids = np.asarray(ids, dtype=np.int64)
    cos = np.asarray(cos, dtype=np.float32)
    valid = ids >= 0
    score = np.where(valid, csls_scores(cos, np.asarray(r)[np.where(valid, ids, 0)]), -np.inf)
    # lexsort keys, last is primary: -score, then id (padding, at -inf, sorts last)
    order = np.lexsort((np.where(valid, ids, np.iinfo(np.int64).max), -score), axis=1)[:, :k]
    out_ids = np.take_along_axis(np.where(valid, ids, -1), order, axis=1)
    out_cos = np.take_along_axis(np.where(valid, cos, np.nan), order, axis=1)
    out_csls = np.take_along_axis(np.where(valid, score, np.nan), order, axis=1).astype(np.float32)
    width = min(k, ids.shape[1])
    pad = k - width
    if pad:
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        out_cos = np.pad(out_cos, ((0, 0), (0, pad)), constant_values=np.nan)
        out_csls = np.pad(out_csls, ((0, 0), (0, pad)), constant_values=np.nan)
    return out_ids, out_cos, out_csls


@dataclass(frozen=True)
class HubnessStats:
    """What `simcli index stats` reports about one set of k-NN lists."""

    k: int
    points: int
    skewness: float
    anti_hubs: float  # share with N_k = 0
    mean_knn_cosine: float  # mean over points of their mean cosine to their k neighbours
    max_nk: int
    top: list[tuple[int, int]]  # (id, N_k) of the biggest hubs, largest first


def hubness_stats(neighbours: Neighbours, n: int, top: int = 10) -> tuple[HubnessStats, np.ndarray]:
    """Summary statistics of k-NN lists over points 0..n-1, and the N_k array itself."""
    nk = k_occurrence(neighbours.ids, n)
    order = np.lexsort((np.arange(n), -nk))[:top]
    r = radii(neighbours.sims)
    stats = HubnessStats(
        k=neighbours.k,
        points=n,
        skewness=skewness(nk),
        anti_hubs=anti_hub_share(nk),
        mean_knn_cosine=float(np.mean(r)) if len(r) else float("nan"),
        max_nk=int(nk.max()) if n else 0,
        top=[(int(i), int(nk[i])) for i in order],
    )
    return stats, nk
