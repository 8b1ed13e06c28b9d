"""GenerationConfig: the sampling options, declared and checked once."""

from __future__ import annotations

from pathlib import Path

import pytest

from simcli.errors import UsageError
from simcli.paraphrase import GenerationConfig, Paraphraser, load_paraphraser


def test_checked_when_made_and_changed_by_fields() -> None:
    with pytest.raises(UsageError, match="--top-p must be in"):
        GenerationConfig(top_p=1.5)
    base = GenerationConfig(n=8, seed=3)
    assert GenerationConfig.of(base, k=2) == GenerationConfig(n=8, k=2, seed=3)
    assert GenerationConfig.of(None, n=5) == GenerationConfig(n=5)
    with pytest.raises(UsageError, match="-k must be at least 1, got 0"):
        GenerationConfig.of(base, k=0)
    assert (base.samples, GenerationConfig(n=8, greedy=True).samples) == (8, 1)


@pytest.fixture(scope="module")
def para(roformer_sim_dir: Path) -> Paraphraser:
    return load_paraphraser(str(roformer_sim_dir), device="cpu", dtype="float32")


def test_config_and_keywords_are_the_same_call(para: Paraphraser) -> None:
    """A config, keywords, and a config with keyword overrides generate the same paraphrases; progress
    counts every sample with the tokens it generated."""
    import simcli

    config = GenerationConfig(n=12, k=4, seed=7, max_new_tokens=6)
    seen: list[tuple[int, int]] = []
    a = para.generate(["花呗怎么还款", "今天天气"], config, progress=lambda n, t: seen.append((n, t)))
    b = para.generate(["花呗怎么还款", "今天天气"], n=12, k=4, seed=7, max_new_tokens=6)
    c = para.generate(
        ["花呗怎么还款", "今天天气"], GenerationConfig(n=12, k=9, seed=7), k=4, max_new_tokens=6
    )
    assert a == b == c and len(a[0]) == 4
    assert sum(n for n, _ in seen) == 24
    ids = para.sample_ids(["花呗怎么还款", "今天天气"], config)
    assert sum(t for _, t in seen) == sum(len(r) for rows in ids for r in rows)
    assert simcli.generate("花呗怎么还款", config, model=para) == a[0]
