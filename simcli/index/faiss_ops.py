"""Making, training and filling a FAISS index, on the GPU when there is one (the faiss wiki).

All cosine: the vectors reaching this module are L2-normalised float32 and every index uses the
inner-product metric. With CUDA and faiss GPU support (`faiss.get_num_gpus() > 0`) training, adding and
searching run on the GPU (simcli.index.gpu); the CPU form is what gets saved.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from simcli.errors import UsageError
from simcli.index.choose import MAX_TRAIN_POINTS_PER_LIST, IndexChoice

OPQ_ITERATIONS = 10  # faiss's 50 takes minutes on 2 cores; the rotation gains little after 10
KMEANS_ITERATIONS = 10  # autofaiss uses 10 too; faiss's 25 costs 2.5x the training time for no recall here
SEED = 1234


def make_index(choice: IndexChoice, dim: int) -> faiss.Index:
    """An empty inner-product index from the choice's factory string (UsageError for a bad string)."""
    try:
        index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "rejected"
        raise UsageError(
            f"--index {choice.factory!r}: faiss cannot build it for dimension {dim} ({first})"
        ) from None
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.cp.seed = SEED
        # we pass at most MAX_TRAIN_POINTS_PER_LIST x nlist points: let k-means use them all, silently
        ivf.cp.max_points_per_centroid = max(ivf.cp.max_points_per_centroid, MAX_TRAIN_POINTS_PER_LIST)
    _tune_opq(index)
    return index


def _tune_opq(index: faiss.Index) -> None:
    if not isinstance(index, faiss.IndexPreTransform):
        return
    for i in range(index.chain.size()):  # type: ignore[attr-defined]  # a C++ vector, not a list
        vt = faiss.downcast_VectorTransform(index.chain.at(i))  # type: ignore[attr-defined]
        if isinstance(vt, faiss.OPQMatrix):
            vt.niter = OPQ_ITERATIONS


def train(index: faiss.Index, sample: np.ndarray) -> None:
    """Train an index (k-means lists, OPQ rotation, PQ codebooks) on normalised sample vectors."""
    if index.is_trained:
        return
    if len(sample) == 0:
        raise UsageError("the index needs training vectors, and the corpus is empty")
    try:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    except RuntimeError as e:
        raise UsageError(
            f"faiss could not train the index on {len(sample)} vectors ({faiss_message(e)})"
        ) from None


@contextmanager
def faiss_stderr() -> Iterator[list[str]]:
    """Capture the warnings faiss's C++ code prints on stderr (fd 2) meanwhile, such as k-means's "WARNING
    clustering N points to K centroids" once per PQ sub-quantizer; the caller folds them into one message."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.startswith("WARNING"):
                    lines.append(line)
                elif line.strip():  # anything else printed meanwhile is not faiss's to fold: pass it on
                    print(line, file=sys.stderr)


def add(index: faiss.Index, chunks: Iterable[np.ndarray]) -> int:
    """Add normalised vectors chunk by chunk (ids follow on from index.ntotal); returns vectors added."""
    added = 0
    for chunk in chunks:
        if len(chunk):
            index.add(np.ascontiguousarray(chunk, dtype=np.float32))
            added += len(chunk)
    return added


def faiss_message(e: Exception) -> str:
    """The useful line of a faiss RuntimeError (its C++ message, without the stack)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error:"):
            return line.removeprefix("Error:").strip()
    return lines[-1] if lines else type(e).__name__
