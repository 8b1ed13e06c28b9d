"""The store end to end with the real encoder on the tiny RoFormer-Sim checkpoint."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simcli.io import ReadStats, read_records
from simcli.store import VectorStore, encode_to_store

LINES = ["花呗怎么还款", "借呗的额度怎么提升", "", "余额宝的钱怎么转出来才不收手续费", "你好", "今天天气不错"]


@pytest.fixture(scope="module")
def encoder(roformer_sim_dir: Path):  # type: ignore[no-untyped-def]
    from simcli.models.encoder import load_encoder

    return load_encoder(str(roformer_sim_dir), dtype="float32", max_length=8)


class Crashing:
    """The real encoder, failing on its n-th call: an interrupted run."""

    def __init__(self, inner: Any, fail_on: int) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0
        self.spec, self.device, self.dtype = inner.spec, inner.device, inner.dtype

    def encode(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        return self.inner.encode(texts, **kw)


def test_real_encoder_store_resume_and_counts(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")

    def run(out: Path, enc: Any, resume: bool = False) -> Any:
        stats = ReadStats()
        return encode_to_store(
            read_records([src], stats=stats),
            enc,
            out,
            shard_size=2,
            inputs=[src],
            read_stats=stats,
            resume=resume,
        )

    summary = run(tmp_path / "full", encoder)
    store = VectorStore.open(tmp_path / "full")
    np.testing.assert_allclose(store.vectors(), encoder.encode(LINES), rtol=1e-5, atol=1e-5)
    assert store.texts() == LINES and store.spec == encoder.spec
    # Char tokenizer: a Chinese character is one token; [CLS] and [SEP] make two more (max_length 8).
    assert summary.truncated == sum(len(t) + 2 > 8 for t in LINES) == 2
    assert summary.empty_kept == 1
    manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert (manifest["truncated"], manifest["empty_lines_kept"]) == (2, 1)
    assert [s["computed_with"] for s in manifest["shards"]] == [{"device": "cpu", "dtype": "float32"}] * 3

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", Crashing(encoder, fail_on=3))
    again = Crashing(encoder, fail_on=0)
    resumed = run(tmp_path / "cut", again, resume=True)
    assert again.calls == 1 and resumed.shards_skipped == 2
    files = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "cut").iterdir())
    for name in files:
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
