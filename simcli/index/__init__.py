"""FAISS cosine retrieval: choosing, building, saving, loading and querying an index folder.

Modules, one job each:
    choose    the auto rule, factory strings (no faiss import)
    space     which whitening a build applies; raw vectors -> index space (whitened, L2-normalised)
    inputs    where an index's raw vectors come from: arrays, stores, text through an encoder
    encoders  the build's and the queries' encoder (loaded once, behind a lock; the dtype rule)
    pipeline  build and add: prepare the vectors once, train, add, tune, write a generation
    faiss_ops faiss make/train/add, GPU moves
    search    per-call search parameters (nprobe/efSearch), tuning, ground truth, recall
    manifest  the typed manifest (IndexManifest) and the declared file roles (FILE_ROLES)
    persist   the folder on disk: atomic generations, hashes, random access to the texts
    stored    the index's vectors given back (sampling, reconstruction, lossless check)
    rerank    the re-rank step between faiss candidates and hits (Identity by default)
    hubness   hubness math: k-occurrence, skewness, radii, CSLS scores (pure numpy)
    neighbourhood  the index's own neighbourhoods: `index stats`, the CSLS radii and their refresh on add
    csls      the CSLS re-rank step and the radii file
    folder    the `Index` class, a loaded index folder: load, search (candidates -> re-rank -> hits), add,
              check, info
    check     recall and latency against exact search
"""

from __future__ import annotations

import importlib.util

from simcli.errors import MissingDependency

if importlib.util.find_spec("faiss") is None:  # neither extra installed: say which one to install
    raise MissingDependency(
        "the index commands need faiss: pip install -e '.[cpu]' (or '.[gpu]' on a CUDA 12 machine, "
        "after pip uninstall -y faiss-cpu)"
    )

from simcli.index.choose import IndexChoice
from simcli.index.folder import Index
from simcli.index.manifest import FILE_ROLES, FileEntry, FileRole, IndexManifest
from simcli.index.rerank import IDENTITY, Candidates, Rerank

__all__ = [
    "FILE_ROLES",
    "IDENTITY",
    "Candidates",
    "FileEntry",
    "FileRole",
    "Index",
    "IndexChoice",
    "IndexManifest",
    "Rerank",
]
