"""Sentences for the real-weights tests and benches, drawn from ../shared/data (absent: callers skip).

Hard cases first: upper-case Latin letters (the m3e tokenizer keeps case), digits, full-width characters and
over-long lines (truncated at max_length), then ordinary sentences, all distinct, in a fixed order.
"""

from __future__ import annotations

import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = ("LCQMC/LCQMC.test.data", "PAWSX/PAWSX.test.data", "STS-B/STS-B.test.data")
_UPPER = re.compile(r"[A-Z]")
_DIGIT = re.compile(r"[0-9０-９]")
_FULL_WIDTH = re.compile(r"[\uff01-\uff5e\u3000]")
LONG_CHARS = 64  # about 64 tokens or more for these models: cut at the default max length


def available() -> bool:
    return all((DATA / s).is_file() for s in SETS)


def distinct_sentences(n: int) -> list[str]:
    """n distinct sentences (fewer if the sets hold fewer): each hard kind in turn, then the rest."""
    pool: dict[str, None] = {}
    for name in SETS:
        with open(DATA / name, encoding="utf-8") as f:
            for line in f:
                for s in line.rstrip("\n").split("\t")[:2]:
                    if s.strip():
                        pool[s] = None
    everything = list(pool)
    kinds = [
        [s for s in everything if _UPPER.search(s)],
        [s for s in everything if _DIGIT.search(s)],
        [s for s in everything if _FULL_WIDTH.search(s)],
        sorted(everything, key=len, reverse=True)[:500],
    ]
    chosen: dict[str, None] = {}
    quota = n // 8  # up to half of the sample from the hard kinds
    for kind in kinds:
        for s in kind[:quota]:
            chosen[s] = None
    for s in everything:
        if len(chosen) >= n:
            break
        chosen[s] = None
    return list(chosen)[:n]


def lcqmc_sentences(n: int) -> list[str]:
    """The first n distinct sentences of LCQMC test (then valid): distinct, because simcli encodes a repeated
    sentence once and the benches compare model throughput."""
    out: dict[str, None] = {}
    for split in ("LCQMC.test.data", "LCQMC.valid.data"):
        with open(DATA / "LCQMC" / split, encoding="utf-8") as f:
            for line in f:
                out.update(dict.fromkeys(line.rstrip("\n").split("\t")[:2]))
                if len(out) >= n:
                    return list(out)[:n]
    return list(out)
