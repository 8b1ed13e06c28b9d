"""`index check`: recall@k of a loaded index against exact search, and its latency, on a sample of its own
vectors used as queries (each query's own row left out of both lists, so finding itself scores nothing)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from simcli.errors import UsageError
from simcli.index.search import drop_self, ground_truth, recall_at_k
from simcli.index.stored import sample_ids

SEED = 1
SINGLE_QUERIES = 200  # queries timed one at a time


def take_rows(chunks: Iterator[np.ndarray], ids: np.ndarray, dim: int) -> np.ndarray:
    """Rows `ids` (sorted) of vectors given chunk by chunk."""
    out = np.empty((len(ids), dim), dtype=np.float32)
    start = filled = 0
    for chunk in chunks:
        stop = start + len(chunk)
        hi = int(np.searchsorted(ids, stop))
        out[filled:hi] = chunk[ids[filled:hi] - start]
        filled, start = hi, stop
    return out


def check(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    dim: int,
    stored: Callable[[], Iterator[np.ndarray]],
    params: dict[str, int],
    *,
    count: int,
    sample: int = 1000,
    k: int = 10,
) -> dict[str, Any]:
    """Recall@k and latency of an index's search (`params` are what it searches with, for the report).

    Args:
        search: (queries, k) -> (scores, ids) through the index as loaded (CPU or GPU).
        dim: the vectors' dimension.
        stored: the index's normalised vectors in id order (the ground truth's database).
        count: vectors in the index.

    Returns:
        {"queries", "k", "recall", "params", "ms_per_query" (one at a time), "queries_per_s" (batched),
        "exact_queries_per_s", "count"}.
    """
    if sample < 1 or k < 1:
        raise UsageError("--sample and -k must be at least 1")
    ids = sample_ids(count, sample, SEED)
    queries = take_rows(stored(), ids, dim)
    t0 = time.perf_counter()
    _, truth = ground_truth(queries, stored(), k + 1)
    exact_s = time.perf_counter() - t0
    truth = drop_self(truth, ids, k)
    t0 = time.perf_counter()
    _, found = search(queries, k + 1)
    batch_s = time.perf_counter() - t0
    single = queries[: min(len(queries), SINGLE_QUERIES)]
    t0 = time.perf_counter()
    for q in single:
        search(q[None, :], k)
    single_s = (time.perf_counter() - t0) / len(single)
    return {
        "queries": len(ids),
        "k": k,
        "recall": recall_at_k(drop_self(found, ids, k), truth, k),
        "params": dict(params),
        "ms_per_query": single_s * 1000,
        "queries_per_s": len(ids) / batch_s if batch_s > 0 else float("inf"),
        "exact_queries_per_s": len(ids) / exact_s if exact_s > 0 else float("inf"),
        "count": count,
    }
