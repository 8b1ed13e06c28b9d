"""Choosing a FAISS index: the `auto` rule, the named types, factory strings and search parameters.

The rule follows the faiss wiki "Guidelines to choose an index" (criteo/autofaiss encodes
the same rules):

- fewer than FLAT_MAX_N vectors: exact search (`Flat`), it is fast enough and has recall 1;
- HNSW (`HNSW32`) when its graph fits the memory budget and N < HNSW_MAX_N: the best speed/recall, but its
  build cost grows quickly with N on a CPU (100k x 256 took 40 s on 2 cores), so past HNSW_MAX_N:
- IVF-Flat (`IVF{nlist},Flat`) with nlist a power of two near 4 sqrt(N) (the guideline's range is
  4..16 sqrt(N)), at least MIN_POINTS_PER_LIST training points per list; an HNSW coarse quantizer from
  HNSW_QUANTIZER_NLIST lists on, where assigning to a flat quantizer would dominate;
- when even IVF-Flat does not fit the budget: IVF + PQ (`IVF{nlist},PQ{m}`), m bytes a vector, the largest m
  that fits. The guideline adds an OPQ rotation; it is not the default because training it took 18-95 s
  for 10k x 64 vectors on this 2-core machine (10-40x the IVF-PQ training). Ask for it with a factory
  string, e.g. `--index OPQ32,IVF4096,PQ32`.

Nothing here imports faiss: the choice is pure arithmetic, so it is cheap to test at the boundaries.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from simcli.errors import UsageError

FLAT_MAX_N = 50_000
HNSW_MAX_N = 500_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40  # faiss's default
HNSW_QUANTIZER_NLIST = 16_384
MIN_POINTS_PER_LIST = 39  # faiss k-means warns below 39 training points per centroid
MAX_TRAIN_POINTS_PER_LIST = (
    40  # guideline 30..256; k-means time grows with it (1M x 256: 64 a list took 323 s on 2 busy cores)
)
PQ_BYTES = (64, 32, 16, 8)  # bytes per vector tried for OPQ+PQ, largest first
ID_BYTES = 8  # an IVF list stores an int64 id per vector
MEMORY_SHARE = 0.5  # default budget: half the physical memory

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")


@dataclass(frozen=True)
class IndexChoice:
    """A FAISS index to build: its factory string and what it needs.

    Attributes:
        kind: flat | hnsw | ivf | ivfpq | factory (a user's factory string).
        factory: the faiss `index_factory` string (metric: inner product).
        nlist: inverted lists of an IVF index (None otherwise).
        train_size: vectors to train on (0: no training).
        reason: one line saying why (what `index info` shows).
    """

    kind: str
    factory: str
    nlist: int | None = None
    train_size: int = 0
    reason: str = ""


def parse_memory(value: str | int | None) -> int | None:
    """Bytes from "2GB", "512MB", "1.5G", "800k", or a plain number of bytes (None stays None).

    Raises:
        UsageError: a value that is not a positive size.
    """
    if value is None or isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", value.lower())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--memory must be a size such as 2GB, 512MB or 800KB, got {value!r}")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def default_memory() -> int:
    """The default memory budget: MEMORY_SHARE of the physical memory (8 GiB when unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    return int(total * MEMORY_SHARE)


def flat_bytes(n: int, dim: int) -> int:
    return n * dim * 4


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M) -> int:
    # float32 vectors + level-0 links (2M int32) + upper levels (about 1/M of the nodes, M links each)
    return n * (dim * 4 + 2 * m * 4 + 4 + 8)


def ivf_bytes(n: int, dim: int, nlist: int) -> int:
    return n * (dim * 4 + ID_BYTES) + nlist * dim * 4


def ivfpq_bytes(n: int, dim: int, nlist: int, m: int) -> int:
    return n * (m + ID_BYTES) + nlist * dim * 4 + 256 * dim * 4


def choose_nlist(n: int) -> int:
    """A power of two near 4 sqrt(N), with at least MIN_POINTS_PER_LIST vectors per list."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 1 << max(round(math.log2(target)), 0)
    while nlist > 1 and n / nlist < MIN_POINTS_PER_LIST:
        nlist //= 2
    return nlist


def train_size(n: int, nlist: int) -> int:
    """Training vectors for `nlist` lists: MAX_TRAIN_POINTS_PER_LIST each, at most the corpus."""
    return min(n, nlist * MAX_TRAIN_POINTS_PER_LIST)


def _ivf_factory(nlist: int, tail: str, prefix: str = "") -> str:
    quantizer = f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_NLIST else f"IVF{nlist}"
    return f"{prefix}{quantizer},{tail}"


def pq_bytes_for(dim: int, budget_per_vector: float | None = None) -> int:
    """Bytes per vector m for PQ: the largest of PQ_BYTES that divides dim, fits the budget and is <= dim/4.

    At least 4 dimensions per sub-quantizer: narrower ones cost OPQ/PQ training time for little accuracy.
    """
    for m in PQ_BYTES:
        if dim % m == 0 and m * 4 <= dim and (budget_per_vector is None or m <= budget_per_vector):
            return m
    for m in range(min(max(dim // 4, 1), PQ_BYTES[0]), 0, -1):  # odd dimensions: any divisor
        if dim % m == 0 and (budget_per_vector is None or m <= budget_per_vector):
            return m
    return 1


def named_choice(kind: str, n: int, dim: int, memory: int | None = None) -> IndexChoice:
    """The IndexChoice of a named type (flat, hnsw, ivf, ivfpq) for n vectors of dimension dim."""
    if kind == "flat":
        return IndexChoice("flat", "Flat", reason="exact search")
    if kind == "hnsw":
        return IndexChoice("hnsw", f"HNSW{HNSW_M}", reason=f"HNSW graph, M={HNSW_M}")
    nlist = choose_nlist(n)
    if kind == "ivf":
        return IndexChoice(
            "ivf",
            _ivf_factory(nlist, "Flat"),
            nlist,
            train_size(n, nlist),
            f"IVF-Flat, nlist {nlist} ~ 4 sqrt(N)",
        )
    if kind == "ivfpq":
        fixed = nlist * dim * 4 + 256 * dim * 4
        per_vector = None if memory is None else (memory - fixed) / max(n, 1) - ID_BYTES
        m = pq_bytes_for(dim, per_vector)
        return IndexChoice(
            "ivfpq",
            _ivf_factory(nlist, f"PQ{m}"),
            nlist,
            train_size(n, nlist),
            f"IVF-PQ, nlist {nlist}, {m} bytes a vector",
        )
    raise UsageError(
        f"--index must be one of {', '.join(INDEX_TYPES)} or a faiss factory string, got {kind!r}"
    )


def choose_auto(n: int, dim: int, memory: int | None = None) -> IndexChoice:
    """The `auto` index for n vectors of dimension dim under a memory budget in bytes (module docstring).

    Args:
        n: vectors to index.
        dim: their dimension (after whitening).
        memory: budget in bytes for the index in memory (None: half the physical memory).
    """
    budget = default_memory() if memory is None else memory
    if n < FLAT_MAX_N and flat_bytes(n, dim) <= budget:
        c = named_choice("flat", n, dim)
        return IndexChoice(c.kind, c.factory, reason=f"auto: {n} < {FLAT_MAX_N} vectors, exact search")
    if n < HNSW_MAX_N and hnsw_bytes(n, dim) <= budget:
        c = named_choice("hnsw", n, dim)
        return IndexChoice(
            c.kind,
            c.factory,
            reason=f"auto: {n} vectors, HNSW{HNSW_M} fits {_size(budget)} ({_size(hnsw_bytes(n, dim))})",
        )
    nlist = choose_nlist(n)
    if ivf_bytes(n, dim, nlist) <= budget:
        c = named_choice("ivf", n, dim)
        why = "past HNSW's build cost" if n >= HNSW_MAX_N else f"HNSW does not fit {_size(budget)}"
        return IndexChoice(c.kind, c.factory, c.nlist, c.train_size, f"auto: {n} vectors, {why}; {c.reason}")
    c = named_choice("ivfpq", n, dim, budget)
    need = ivfpq_bytes(
        n, dim, nlist, pq_bytes_for(dim, (budget - nlist * dim * 4 - 256 * dim * 4) / max(n, 1) - ID_BYTES)
    )
    if need > budget:
        raise UsageError(
            f"--memory {_size(budget)} is too small for {n} vectors of dimension {dim} "
            f"(the smallest index, {c.factory}, needs about {_size(need)})"
        )
    return IndexChoice(
        c.kind, c.factory, c.nlist, c.train_size, f"auto: IVF-Flat does not fit {_size(budget)}; {c.reason}"
    )


def factory_choice(factory: str, n: int) -> IndexChoice:
    """An IndexChoice for a user's faiss factory string (trained on up to MAX_TRAIN_POINTS_PER_LIST x nlist)."""
    m = re.search(r"IVF(\d+)", factory)
    nlist = int(m.group(1)) if m else None
    size = train_size(n, nlist) if nlist else min(n, 100_000)
    return IndexChoice("factory", factory, nlist, size, f"factory string {factory!r}")


def check_index_name(index: str) -> str:
    """The `--index` value, stripped (lower case for the named types); UsageError when it cannot be one."""
    key = index.strip()
    if key.lower() in INDEX_TYPES:
        return key.lower()
    if not re.fullmatch(r"[A-Za-z0-9_,.x]+", key) or not re.match(r"[A-Z]", key):
        raise UsageError(
            f"--index must be one of {', '.join(INDEX_TYPES)} or a faiss factory string "
            f"(e.g. IVF1024,Flat or HNSW32), got {index!r}"
        )
    return key


def choose(index: str, n: int, dim: int, memory: int | None = None) -> IndexChoice:
    """Resolve `--index` (auto | flat | hnsw | ivf | ivfpq | a factory string) for n vectors of dim."""
    key = check_index_name(index)
    if key == "auto":
        return choose_auto(n, dim, memory)
    if key in INDEX_TYPES:
        return named_choice(key, n, dim, memory)
    return factory_choice(key, n)


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f}{unit}"
    return f"{nbytes}B"
