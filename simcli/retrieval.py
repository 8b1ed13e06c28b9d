"""Retrieval metrics (MRR@k, recall@k, nDCG@k with binary gains) and retrieval tasks built from pair files.

A task from a labelled pair file: the queries are the first sentences of the positive pairs (label above a
threshold); the corpus is every distinct sentence of the file plus optional distractors; a query is left out
of its own results; its relevant documents are the sentences it is paired with positively (either column).
Metrics are computed per query and averaged, as in the BEIR / MTEB retrieval tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simcli.errors import BadInput


# -- metrics --------------------------------------------------------------------------------------------
def _first_k(ranked: Sequence[int], k: int) -> list[int]:
    return [int(i) for i in list(ranked)[:k] if int(i) >= 0]


def reciprocal_rank(ranked: Sequence[int], relevant: set[int], k: int = 10) -> float:
    """1 / rank of the first relevant id among the first k (0 when none is there)."""
    for rank, i in enumerate(_first_k(ranked, k), 1):
        if i in relevant:
            return 1.0 / rank
    return 0.0


def recall(ranked: Sequence[int], relevant: set[int], k: int) -> float:
    """Relevant ids among the first k / all relevant ids."""
    if not relevant:
        raise ValueError("recall of a query without relevant documents")
    return len(set(_first_k(ranked, k)) & relevant) / len(relevant)


def ndcg(ranked: Sequence[int], relevant: set[int], k: int = 10) -> float:
    """nDCG@k with binary gains: sum of 1/log2(rank + 1) over relevant hits, over its best possible value."""
    if not relevant:
        raise ValueError("nDCG of a query without relevant documents")
    dcg = sum(1.0 / np.log2(rank + 1) for rank, i in enumerate(_first_k(ranked, k), 1) if i in relevant)
    ideal = sum(1.0 / np.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return float(dcg / ideal)


@dataclass(frozen=True)
class RetrievalScores:
    """Metrics averaged over queries."""

    mrr_at_10: float
    recall_at_1: float
    recall_at_10: float
    ndcg_at_10: float
    queries: int


def score_rankings(ranked: np.ndarray, relevant: Sequence[set[int]]) -> RetrievalScores:
    """Average MRR@10, recall@1, recall@10 and nDCG@10 of ranked ids (q, >= 10), -1 padding."""
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings for {len(relevant)} queries")
    if not len(relevant):
        raise ValueError("no queries")
    rows = [
        (reciprocal_rank(r, rel, 10), recall(r, rel, 1), recall(r, rel, 10), ndcg(r, rel, 10))
        for r, rel in zip(ranked, relevant, strict=True)
    ]
    m = np.mean(np.asarray(rows, dtype=np.float64), axis=0)
    return RetrievalScores(float(m[0]), float(m[1]), float(m[2]), float(m[3]), len(relevant))


# -- tasks ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrievalTask:
    """Queries over a corpus with known relevant documents. Every query is itself a corpus entry
    (`query_ids`), left out of its own results."""

    name: str
    corpus: list[str]
    query_ids: np.ndarray  # (q,) corpus id of each query
    relevant: list[set[int]]  # corpus ids relevant to each query
    threshold: float
    distractors: int  # corpus entries that come from --corpus only
    dropped: int  # queries whose only positives were themselves (identical pairs)

    @property
    def queries(self) -> list[str]:
        return [self.corpus[i] for i in self.query_ids]


def default_threshold(labels: np.ndarray) -> float:
    """0.5 for 0/1 labels; otherwise the middle of the label range (2.5 for STS-B's 0-5 scores)."""
    if set(np.unique(labels).tolist()) <= {0.0, 1.0}:
        return 0.5
    return (float(np.min(labels)) + float(np.max(labels))) / 2.0


def retrieval_task(
    name: str,
    s1: Sequence[str],
    s2: Sequence[str],
    labels: np.ndarray,
    *,
    threshold: float | None = None,
    distractors: Sequence[str] = (),
    source: str = "",
) -> RetrievalTask:
    """The retrieval task of one pair file (see the module docstring); label > threshold is a positive.

    Raises:
        BadInput: no positive pair (names `source` and the threshold).
    """
    th = default_threshold(labels) if threshold is None else float(threshold)
    corpus = list(dict.fromkeys([*s1, *s2]))
    own = len(corpus)
    seen = set(corpus)
    corpus.extend(t for t in dict.fromkeys(distractors) if t and t not in seen)
    ids = {t: i for i, t in enumerate(corpus)}
    positives: dict[int, set[int]] = {}
    first: list[int] = []
    for a, b, y in zip(s1, s2, labels, strict=True):
        if y > th:
            ia, ib = ids[a], ids[b]
            if ia not in positives:
                first.append(ia)
            positives.setdefault(ia, set()).add(ib)
    if not first:
        raise BadInput(f"{source or name}: no positive pairs (label > {th:g}; see --threshold)")
    # a paraphrase pair is symmetric: b is relevant to a, and a to b when b is a query too
    for a, b, y in zip(s1, s2, labels, strict=True):
        if y > th and ids[b] in positives:
            positives[ids[b]].add(ids[a])
    query_ids, relevant, dropped = [], [], 0
    for q in first:
        rel = positives[q] - {q}
        if rel:
            query_ids.append(q)
            relevant.append(rel)
        else:
            dropped += 1
    return RetrievalTask(
        name=name,
        corpus=corpus,
        query_ids=np.asarray(query_ids, dtype=np.int64),
        relevant=relevant,
        threshold=th,
        distractors=len(corpus) - own,
        dropped=dropped,
    )


# -- the evaluation -------------------------------------------------------------------------------------
RERANKS = ("none", "csls")


@dataclass(frozen=True)
class RetrievalResult:
    """One row of `simcli eval retrieval`."""

    dataset: str
    pooling: str
    whiten: str  # none | full | k
    rerank: str  # none | csls
    dim: int
    mrr_at_10: float
    recall_at_1: float
    recall_at_10: float
    ndcg_at_10: float
    skewness: float  # of the corpus's N_10 under this setting's ranking
    anti_hubs: float  # share of corpus entries with N_10 = 0
    queries: int
    corpus: int
    candidates: int | None  # cosine candidates re-ranked (csls)

    def to_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        return asdict(self)


def parse_rerank(value: str | Sequence[str]) -> list[str]:
    """`--rerank none,csls` into a list (duplicates dropped, order kept)."""
    from simcli.errors import UsageError
    from simcli.evaluate import parse_list

    items = [i.lower() for i in parse_list(value)]
    bad = [i for i in items if i not in RERANKS]
    if bad or not items:
        raise UsageError(f"--rerank {bad[0] if bad else value!r}: expected none or csls (comma-separated)")
    return items


def rank_corpus(
    vectors: np.ndarray, rerank: Sequence[str], candidates: int, k: int = 10
) -> dict[str, np.ndarray]:
    """Every corpus entry searched against the others (itself left out): its top-k ids for each re-rank.

    `vectors` are unit rows. CSLS re-ranks the top `candidates` by cosine with r(y) over the CSLS_K nearest.
    """
    from simcli.index.hubness import CSLS_K, csls_rerank, exact_knn, radii

    n = len(vectors)
    width = max(candidates if "csls" in rerank else k, k, CSLS_K)
    nb = exact_knn(vectors, vectors, width, self_ids=np.arange(n))
    out: dict[str, np.ndarray] = {}
    for how in rerank:
        if how == "none":
            out[how] = nb.ids[:, :k]
        else:
            r = radii(nb.sims[:, :CSLS_K])
            out[how] = csls_rerank(nb.ids[:, :candidates], nb.sims[:, :candidates], r, k)[0]
    return out


def evaluate_retrieval(
    files: Sequence[str | Path],
    model: Any,
    *,
    poolings: str | Sequence[str] = ("auto",),
    whiten: str | Sequence[str] = ("none",),
    rerank: str | Sequence[str] = ("none", "csls"),
    candidates: int | None = None,
    corpus: str | Path | None = None,
    threshold: float | None = None,
    beta: float = 1.0,
    gamma: float = 1.0,
    columns: tuple[str, str, str] | None = None,
    limit: int | None = None,
    max_length: int | None = None,
    tokenizer: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_tokens: int | None = None,
    progress: Any = None,
    on_encoder: Any = None,
) -> list[RetrievalResult]:
    """MRR@10, recall@1/10, nDCG@10 and the corpus's N_10 skewness per file x pooling x whitening x re-rank.

    Whitening is fitted per data set and pooling on its corpus (each distinct sentence once, distractors
    included): the retrieval corpus is what an index would be built and fitted on. Search is exact.

    Args:
        files: pair files (see `simcli.evaluate.read_pairs`).
        model: a hub id / folder, or an already loaded Encoder.
        poolings, whiten: as `evaluate_sts` ("auto", "none,full,256").
        rerank: "none", "csls" or both.
        candidates: cosine candidates CSLS re-ranks (default max(4 k, 50) = 50 at k = 10).
        corpus: a file of distractor sentences added to every corpus (one a line, or a pair file).
        threshold: a pair is positive when its label is above it (default: the middle of the label range).
        progress, on_encoder: as `evaluate_sts`.
    """
    from simcli.evaluate import check_whiten_dims, parse_whiten, published_max_length

    settings = parse_whiten(whiten)
    reranks = parse_rerank(rerank)
    pools, m = _check_retrieval_args(files, poolings, candidates)
    tasks = _read_tasks(files, corpus=corpus, columns=columns, limit=limit, threshold=threshold)
    encoder = _encoder(
        model,
        pools[0],
        tokenizer,
        device,
        dtype,
        max(max_length or published_max_length(t.name) for t in tasks),
    )
    if on_encoder is not None:
        on_encoder(encoder)
    modes = list(dict.fromkeys(encoder.spec_for(p).pooling for p in pools))
    check_whiten_dims(settings, int(encoder.spec.dim))

    results: list[RetrievalResult] = []
    for task in tasks:
        cb = progress(task.name, len(task.corpus)) if progress is not None else None
        vectors = encoder.encode_poolings(
            task.corpus,
            modes,
            batch_tokens=batch_tokens,
            progress=cb,
            max_length=max_length or published_max_length(task.name),
        )
        for mode in modes:
            spec = encoder.spec_for(mode)
            results.extend(_score_pooling(task, vectors[mode], mode, spec, settings, reranks, m, beta, gamma))
    return results


def _check_retrieval_args(
    files: Sequence[str | Path], poolings: str | Sequence[str], candidates: int | None
) -> tuple[list[str], int]:
    """The poolings asked for and the CSLS candidate count, checked before anything is read."""
    from simcli.errors import UsageError
    from simcli.evaluate import check_poolings_and_files
    from simcli.index.hubness import default_candidates

    pools = check_poolings_and_files(poolings, files)
    m = default_candidates(10) if candidates is None else int(candidates)
    if m < 10:
        raise UsageError(f"--candidates must be at least 10 (the metrics look at the top 10), got {m}")
    return pools, m


def _read_tasks(
    files: Sequence[str | Path],
    *,
    corpus: str | Path | None,
    columns: tuple[str, str, str] | None,
    limit: int | None,
    threshold: float | None,
) -> list[RetrievalTask]:
    """One retrieval task per pair file, each corpus extended with the distractors of `corpus`."""
    from simcli.evaluate import dataset_names, read_pairs, read_sentences

    paths = [Path(f) for f in files]
    names = dataset_names(paths)
    extra = read_sentences(corpus, columns=columns) if corpus is not None else []
    tasks = []
    for p, name in zip(paths, names, strict=True):
        pairs = read_pairs(p, columns=columns, limit=limit, name=name)
        tasks.append(
            retrieval_task(
                name, pairs.s1, pairs.s2, pairs.labels, threshold=threshold, distractors=extra, source=str(p)
            )
        )
    return tasks


def _score_pooling(
    task: RetrievalTask,
    v: np.ndarray,
    mode: str,
    spec: Any,
    settings: Sequence[Any],
    reranks: Sequence[str],
    m: int,
    beta: float,
    gamma: float,
) -> list[RetrievalResult]:
    """The rows of one task and pooling: each whitening setting (fitted on the corpus) x each re-rank."""
    from simcli.index.hubness import k_occurrence, skewness
    from simcli.whitening import MomentAccumulator, Whitening

    acc = MomentAccumulator(int(spec.dim))
    acc.add(v)
    rows = []
    for s in settings:
        if s.enabled:
            w = Whitening.from_moments(acc, dim=s.dim, beta=beta, gamma=gamma, spec=spec, clamp=True)
            unit = w.transform(v, normalize=True)
        else:
            norms = np.linalg.norm(v, axis=1, keepdims=True)
            unit = v / np.where(norms > 0, norms, 1.0)
        ranked = rank_corpus(np.ascontiguousarray(unit, dtype=np.float32), reranks, m)
        for how in reranks:
            scores = score_rankings(ranked[how][task.query_ids], task.relevant)
            nk = k_occurrence(ranked[how], len(task.corpus))
            rows.append(
                RetrievalResult(
                    dataset=task.name,
                    pooling=mode,
                    whiten=s.label,
                    rerank=how,
                    dim=int(unit.shape[1]),
                    mrr_at_10=scores.mrr_at_10,
                    recall_at_1=scores.recall_at_1,
                    recall_at_10=scores.recall_at_10,
                    ndcg_at_10=scores.ndcg_at_10,
                    skewness=skewness(nk),
                    anti_hubs=float(np.mean(nk == 0)),
                    queries=scores.queries,
                    corpus=len(task.corpus),
                    candidates=m if how == "csls" else None,
                )
            )
    return rows


def _encoder(
    model: Any, pooling: str, tokenizer: str | None, device: str, dtype: str, max_length: int
) -> Any:
    """The one place this module loads an encoder (a loaded one passes through)."""
    if not isinstance(model, str):
        return model
    from simcli.models.encoder import load_encoder

    return load_encoder(
        model, pooling=pooling, tokenizer=tokenizer, device=device, dtype=dtype, max_length=max_length
    )
