"""FAISS cosine retrieval: choosing, building, saving, loading and querying an index folder.

Modules: `choose` (the auto rule, factory strings; no faiss import), `build` (make/train/add, GPU),
`search` (nprobe/efSearch, tuning, recall), `sources` (arrays, stores, text), `persist` (the folder on disk),
`core` (the `Index` class).
"""

from __future__ import annotations

from simcli.index.choose import IndexChoice
from simcli.index.core import Index

__all__ = ["Index", "IndexChoice"]
