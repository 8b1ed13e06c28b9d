"""The re-rank step of a search: candidates from faiss in, re-scored candidates out.

`Index.search` runs: query vectors -> faiss candidates (`Candidates`) -> `Rerank` -> hits. A re-rank may ask
for more candidates than the k hits wanted (`depth`), re-score them (e.g. CSLS against hubness: the cosine
minus the mean similarity of each side to its nearest neighbours) and return them in any order: the hits are
sorted, cut to k and filtered by `min_score` in one place (`simcli.index.folder`), after the re-rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Candidates:
    """What faiss found for a batch of queries.

    Attributes:
        queries: (q, d) the query vectors in index space (whitened, L2-normalised).
        scores: (q, m) their inner products (cosines) with the candidates, best first.
        ids: (q, m) candidate ids; -1 pads rows where faiss found fewer than m.
        k: the hits wanted per query (m >= k when the re-rank asked for more).
        cosines: (q, m) the faiss cosines, kept by a re-rank that replaced `scores` (None otherwise).
    """

    queries: np.ndarray
    scores: np.ndarray
    ids: np.ndarray
    k: int
    cosines: np.ndarray | None = None


class Rerank(Protocol):
    """A re-rank step. It must be safe to call from several threads at once (no mutable state per call)."""

    def depth(self, k: int) -> int:
        """How many candidates to fetch from faiss for k hits."""
        ...

    def __call__(self, candidates: Candidates) -> Candidates:
        """The candidates re-scored (same shapes; ids < 0 are padding and are dropped afterwards)."""
        ...


class Identity:
    """No re-rank: the faiss cosines as they are."""

    def depth(self, k: int) -> int:
        return k

    def __call__(self, candidates: Candidates) -> Candidates:
        return candidates


IDENTITY = Identity()
