"""The encode loop as it runs on CUDA, checked on the CPU: no device syncs to find the padding (lengths are
known on the host), and the CUDA token budget alone sizes a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.models.encoder import load_encoder
from simcli.models.native import Packing

SENTENCES = ["花呗怎么还款", "借呗额度怎么提升了吗", "我", "今天天气很好", "信用卡"]


def test_host_packing_equals_the_mask_packing() -> None:
    lengths = [5, 3, 1, 5, 2]
    mask = torch.zeros(5, 5, dtype=torch.long)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
    host = Packing.of_lengths(lengths, 5, torch.device("cpu"))
    assert torch.equal(host.index, Packing.of(mask).index) and (host.batch, host.seq) == (5, 5)


def test_a_padded_batch_needs_no_mask_all_nor_nonzero(
    roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mask.all()` and `nonzero()` each wait for the GPU: the encode loop no longer calls them, and its vectors
    are those of the mask-driven pass."""
    enc = load_encoder(str(roformer_sim_dir), dtype="float32")
    assert enc.engine == "native"
    ids = enc.tokenizer.encode_batch(SENTENCES, enc.max_length).ids
    assert len({len(x) for x in ids}) > 1, "premise: the batch is padded"
    longest = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), longest), enc.tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for r, row in enumerate(ids):
        input_ids[r, : len(row)] = torch.as_tensor(row)
        mask[r, : len(row)] = 1
    with torch.inference_mode():
        want = enc.model.pool_all(input_ids, mask, [enc.pooling])[enc.pooling].numpy()

    def sync(*_: object, **__: object) -> None:
        raise AssertionError("a device sync in the encode loop")

    monkeypatch.setattr(torch.Tensor, "nonzero", sync)
    monkeypatch.setattr(torch.Tensor, "all", sync)
    got = enc.forward(ids, [enc.pooling])[enc.pooling]
    np.testing.assert_array_equal(got, want)


def test_the_cuda_token_budget_is_not_capped_at_256_rows(
    roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = load_encoder(str(roformer_sim_dir), dtype="float32")
    rows: list[int] = []

    def forward(ids: list[list[int]], modes: list[str]) -> dict[str, np.ndarray]:
        rows.append(len(ids))
        return {m: np.zeros((len(ids), enc.dim), np.float32) for m in modes}

    monkeypatch.setattr(enc, "forward", forward)
    ids = [[101, 1000 + i, 102] for i in range(600)]  # distinct (duplicates are encoded once), 3 tokens each
    enc.encode_ids(ids)  # CPU: 1024 tokens a batch
    assert rows == [256, 256, 88]  # 341 rows of 3 tokens fit 1024, the CPU's row cap is 256
    rows.clear()
    enc.device = torch.device("cuda")  # only the batch plan reads it here: forward is replaced
    enc.encode_ids(ids)  # the CUDA default budget: 16,384 tokens
    assert rows == [600]
