"""The `auto` index rule at its boundaries, with exact factory strings (no faiss needed)."""

from __future__ import annotations

import math

import pytest

from simcli.errors import UsageError
from simcli.index import choose as ch

BIG = 1 << 40  # a budget nothing exceeds


@pytest.mark.parametrize(
    ("n", "dim", "memory", "factory"),
    [
        (ch.FLAT_MAX_N - 1, 256, BIG, "Flat"),
        (ch.FLAT_MAX_N, 256, BIG, "HNSW32"),
        (ch.HNSW_MAX_N - 1, 256, BIG, "HNSW32"),
        (ch.HNSW_MAX_N, 256, BIG, "IVF2048,Flat"),  # 4 sqrt(500k) = 2828: log2 11.47 rounds to 2^11
        (999_999, 256, BIG, "IVF4096,Flat"),
        (1_000_000, 256, BIG, "IVF4096,Flat"),
        (20_000_000, 256, BIG, "IVF16384_HNSW32,Flat"),
        # HNSW does not fit, IVF-Flat does
        (100_000, 256, 110 * 10**6, "IVF1024,Flat"),
        # IVF-Flat does not fit: PQ with the largest m (bytes a vector) that fits, <= dim / 4
        (1_000_000, 256, 200 * 10**6, "IVF4096,PQ64"),
        (1_000_000, 256, 50 * 10**6, "IVF4096,PQ32"),
        (1_000_000, 256, 30 * 10**6, "IVF4096,PQ16"),
        # below FLAT_MAX_N: exact while it fits (41 MB here), else straight to PQ (HNSW and IVF-Flat are bigger)
        (40_000, 256, 45 * 10**6, "Flat"),
        (40_000, 256, 30 * 10**6, "IVF1024,PQ64"),
    ],
)
def test_auto_factory_strings_at_the_boundaries(n: int, dim: int, memory: int, factory: str) -> None:
    """auto: exact below FLAT_MAX_N, HNSW while it fits and N < HNSW_MAX_N, then IVF-Flat, then IVF-PQ."""
    assert ch.choose("auto", n, dim, memory).factory == factory


def test_auto_memory_estimates_decide() -> None:
    """The premise of the budget rows above: each budget sits between the two index sizes it separates."""
    assert ch.ivf_bytes(100_000, 256, 1024) < 110 * 10**6 < ch.hnsw_bytes(100_000, 256)
    assert ch.ivfpq_bytes(1_000_000, 256, 4096, 64) < 200 * 10**6 < ch.ivf_bytes(1_000_000, 256, 4096)
    assert ch.ivfpq_bytes(1_000_000, 256, 4096, 32) < 50 * 10**6 < ch.ivfpq_bytes(1_000_000, 256, 4096, 64)


def test_auto_refuses_a_budget_nothing_fits() -> None:
    with pytest.raises(UsageError, match=r"--memory .* too small for 1000000 vectors"):
        ch.choose("auto", 1_000_000, 256, 1_000_000)


@pytest.mark.parametrize("n", [100, 10_000, 123_456, 1_000_000, 4_000_000])
def test_nlist_follows_the_guideline(n: int) -> None:
    """nlist is a power of two within 2x of 4 sqrt(N) (guideline 4..16 sqrt(N)), >= 39 points a list."""
    nlist = ch.choose_nlist(n)
    assert nlist & (nlist - 1) == 0
    assert n / nlist >= ch.MIN_POINTS_PER_LIST
    if n >= 10_000:
        assert 2 * math.sqrt(n) <= nlist <= 8 * math.sqrt(n)
    assert ch.train_size(n, nlist) == min(n, ch.MAX_TRAIN_POINTS_PER_LIST * nlist)
    assert 30 * nlist <= ch.train_size(n, nlist) or ch.train_size(n, nlist) == n


def test_named_and_factory_choices() -> None:
    assert ch.choose("flat", 10, 8).factory == "Flat"
    assert ch.choose("HNSW", 10, 8).factory == "HNSW32"
    assert ch.choose("ivf", 100_000, 64).factory == "IVF1024,Flat"
    assert ch.choose("ivfpq", 100_000, 64).factory == "IVF1024,PQ16"
    c = ch.choose("IVF256,SQ8", 100_000, 64)
    assert (c.kind, c.factory, c.nlist, c.train_size) == (
        "factory",
        "IVF256,SQ8",
        256,
        256 * ch.MAX_TRAIN_POINTS_PER_LIST,
    )


@pytest.mark.parametrize("bad", ["ivf-flat", "exact", "IVF 256;Flat", ""])
def test_bad_index_names_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="--index must be one of auto, flat, hnsw, ivf, ivfpq"):
        ch.choose(bad, 100, 8)


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("2GB", 2 << 30),
        ("512MB", 512 << 20),
        ("1.5g", int(1.5 * (1 << 30))),
        ("800k", 800 << 10),
        ("100", 100),
    ],
)
def test_parse_memory(text: str, nbytes: int) -> None:
    assert ch.parse_memory(text) == nbytes


@pytest.mark.parametrize("bad", ["2 parsecs", "-1GB", "0", "GB"])
def test_parse_memory_refuses(bad: str) -> None:
    with pytest.raises(UsageError, match="--memory must be a size"):
        ch.parse_memory(bad)
