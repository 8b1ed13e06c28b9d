"""The vectors an index holds, given back: samples of ids, reconstruction, and the lossless check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from simcli.errors import CorruptArtifact
from simcli.index.manifest import IndexManifest

BLOCK = 65536


def sample_ids(n: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct ids below n (all of them when n <= size), sorted, from a seeded generator."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def reconstruct(index: faiss.Index, ids: np.ndarray) -> np.ndarray | None:
    """The stored vectors of `ids` (None when the index cannot give them back)."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    try:
        if ivf is not None:
            ivf.make_direct_map(True)
        return index.reconstruct_batch(np.asarray(ids, dtype=np.int64))
    except RuntimeError:
        return None
    finally:
        if ivf is not None:
            ivf.make_direct_map(False)


def is_lossless(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> bool:
    """Whether the index gives the vectors of `ids` back as they went in (no quantisation)."""
    back = reconstruct(index, ids)
    return back is not None and back.shape == vectors.shape and bool(np.allclose(back, vectors, atol=1e-6))


def stored_vectors(folder: Path, manifest: IndexManifest, cpu_index: Any) -> Iterator[np.ndarray]:
    """All the index's (normalised) vectors in id order, BLOCK at a time: from the vectors file of a lossy
    index, else reconstructed from the index itself."""
    if "vectors" in manifest.files:
        v = np.load(folder / manifest.files["vectors"].name, mmap_mode="r", allow_pickle=False)
        for i in range(0, len(v), BLOCK):
            yield np.asarray(v[i : i + BLOCK], dtype=np.float32)
        return
    for i in range(0, manifest.count, BLOCK):
        back = reconstruct(cpu_index, np.arange(i, min(i + BLOCK, manifest.count)))
        if back is None:
            raise CorruptArtifact(
                f"{folder}: the index cannot give its vectors back and no vectors file is kept"
            )
        yield back
