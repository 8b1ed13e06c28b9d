"""Search parameters (nprobe / efSearch), their tuning for recall, exact ground truth and recall@k.

the faiss wiki: never leave nprobe at 1. The parameter is tuned at build time: the smallest value from a
ladder whose recall@k against exact search, on a sample of the indexed vectors used as queries (each
query's own row left out), reaches TARGET_RECALL. It is recorded in the manifest and can be overridden
per query.

Parameters travel with each call as a faiss `SearchParameters` object (`index.search(x, k, params=...)`),
never set on the shared index: concurrent searches with different parameters do not see each other's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import faiss
import numpy as np

from simcli.errors import UsageError

TARGET_RECALL = 0.97  # tuned above the 0.95 promise: the tuning sample is not the user's queries
TUNE_QUERIES = 500
TUNE_K = 10
NPROBE_LADDER = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # never 1 (the faiss wiki)
EF_SEARCH_LADDER = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
PLATEAU = 0.002  # a lossy index (PQ) stops improving below the target: stop there


def search_parameter(index: faiss.Index) -> str | None:
    """The parameter that trades speed for recall: "nprobe" (IVF), "efSearch" (HNSW) or None (exact).

    Read from a CPU index: a GPU one (simcli.index.gpu.GpuIndex) answers through the CPU index it was cloned
    from, since GpuIndexIVF* and IndexReplicas are no IndexIVF to `extract_index_ivf`.
    """
    index = getattr(index, "cpu", index)
    try:
        faiss.extract_index_ivf(index)
        return "nprobe"
    except RuntimeError:
        pass
    inner = index
    while isinstance(inner, faiss.IndexPreTransform | faiss.IndexRefine):
        inner = faiss.downcast_index(
            inner.index if isinstance(inner, faiss.IndexPreTransform) else inner.base_index
        )
    if isinstance(faiss.downcast_index(inner), faiss.IndexHNSW):
        return "efSearch"
    return None


class SearchParams:
    """Per-call faiss search parameters for one index: `.faiss` goes to `index.search(..., params=)`.

    Holds every nested faiss object: faiss keeps raw pointers to them (e.g. a refine index's base params).
    """

    def __init__(self, index: faiss.Index, params: dict[str, int], what: str = "this index") -> None:
        self.values = dict(params)
        name = search_parameter(index)
        unknown = [p for p in params if p != name]
        if unknown:
            have = name or "none (exact search)"
            raise UsageError(f"{', '.join(unknown)} does not apply to {what} (its parameter: {have})")
        self._keep: list[Any] = []
        inner: Any = None
        if name in params:
            # SearchParametersIVF / SearchParametersHNSW, filled field by field (the stubs lack their kwargs)
            inner = getattr(faiss, "SearchParametersIVF" if name == "nprobe" else "SearchParametersHNSW")()
            setattr(inner, name, int(params[name]))
        self._keep.append(inner)
        # a refine index wants its own params object around its base index's (pre-transforms pass them on)
        for refine in reversed(_refine_layers(index)):
            if inner is None:
                break
            outer = faiss.IndexRefineSearchParameters()
            outer.base_index_params = inner
            outer.k_factor = refine.k_factor
            self._keep.append(outer)
            inner = outer
        self.faiss: Any = inner


def _refine_layers(index: faiss.Index) -> list[Any]:
    """The IndexRefine wrappers from the outside in (through pre-transforms)."""
    out = []
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform | faiss.IndexRefine):
        if isinstance(inner, faiss.IndexRefine):
            out.append(inner)
            inner = faiss.downcast_index(inner.base_index)
        else:
            inner = faiss.downcast_index(inner.index)
    return out


def set_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set nprobe / efSearch on an index, through any pre-transform (OPQ) or replicas: the defaults for
    callers that search it without per-call parameters (faiss users of the saved or loaded index)."""
    if not params:
        return
    # a GPU build's GpuParameterSpace reaches GPU indexes at any depth and hands CPU ones to ParameterSpace
    space = getattr(faiss, "GpuParameterSpace", faiss.ParameterSpace)()
    for name, value in params.items():
        space.set_index_parameter(index, name, int(value))


def ground_truth(
    queries: np.ndarray, db_chunks: Iterable[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of `queries` over vectors given chunk by chunk (scores, ids)."""
    from faiss.contrib.exhaustive_search import knn_ground_truth

    # CPU on purpose: a few hundred sample queries take seconds even at 1M vectors, and the GPU cloner would
    # need a second copy of every chunk on the device
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return knn_ground_truth(q, db_chunks, k, faiss.METRIC_INNER_PRODUCT, ngpu=0)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of the true top-k ids (ids < 0 are padding, not counted) that appear in the found top-k."""
    hits = total = 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        want = set(t[t >= 0].tolist())
        hits += len(set(f[f >= 0].tolist()) & want)
        total += len(want)
    return hits / total if total else 1.0


def drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's ids without the query's own id, cut to k (rows come from searching k + 1)."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for r, (row, own) in enumerate(zip(ids, self_ids, strict=True)):
        kept = row[row != own][:k]
        out[r, : len(kept)] = kept
    return out


def tune(
    index: faiss.Index,
    queries: np.ndarray,
    query_ids: np.ndarray,
    truth: np.ndarray,
    *,
    k: int = TUNE_K,
    target: float = TARGET_RECALL,
    log: Callable[[str], None] | None = None,
    search: Callable[[np.ndarray, int, dict[str, int]], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[dict[str, int], float]:
    """The smallest search parameter on the ladder reaching `target` recall@k (self excluded).

    Args:
        index: a trained, filled CPU index (its type and list count give the ladder).
        search: (queries, k, params) -> (scores, ids) on the device holding the index (a GpuIndex's
            `search`); default: `index` itself.
        queries: (q, d) indexed vectors used as queries.
        query_ids: (q,) their ids (left out of both result lists).
        truth: (q, k) exact ids, self already dropped.

    Returns:
        ({name: value} or {} for exact indexes, the recall@k measured at that value).
    """

    def run(params: dict[str, int]) -> np.ndarray:
        if search is not None:
            return search(queries, k + 1, params)[1]
        return index.search(queries, k + 1, params=SearchParams(index, params).faiss)[1]  # type: ignore[call-arg]

    name = search_parameter(index)
    if name is None:
        return {}, recall_at_k(drop_self(run({}), query_ids, k), truth, k)
    if name == "nprobe":
        nlist = faiss.extract_index_ivf(index).nlist
        ladder = [v for v in NPROBE_LADDER if v < nlist] + [nlist]
        ladder = [v for v in ladder if v >= min(NPROBE_LADDER[0], nlist)]
    else:
        ladder = list(EF_SEARCH_LADDER)
    results: list[tuple[int, float]] = []
    for value in ladder:
        found = drop_self(run({name: value}), query_ids, k)
        recall = recall_at_k(found, truth, k)
        if log is not None:
            log(f"{name} {value}: recall@{k} {recall:.4f}")
        results.append((value, recall))
        if recall >= target:
            break
        # a lossy index (PQ) levels off below the target: two steps without gain end the search
        if len(results) >= 3 and results[-1][1] - results[-3][1] < PLATEAU:
            break
    top = max(r for _, r in results)
    value, recall = next((v, r) for v, r in results if r >= min(target, top - PLATEAU))
    return {name: value}, recall
