"""The model seams: EncoderConfig -> load_encoder, and the differentiable SentenceModel under the encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.models.encoder import load_encoder
from simcli.models.sentence import SentenceModel
from simcli.types import EncoderConfig, EncodeStats

SENTENCES = ["花呗怎么还款", "借呗额度怎么提升", "今天天气很好，我们去公园散步吧", "ok"]


def test_config_is_the_one_way_to_load(roformer_sim_dir: Path) -> None:
    """A config and the name-plus-options shorthand load the same encoder; the config is kept on it and its
    batch budget is the encoder's default (a tiny budget means one sentence a batch: more padding-free rows)."""
    config = EncoderConfig(str(roformer_sim_dir), pooling="cls", dtype="float32", batch_tokens=8)
    enc = load_encoder(config)
    assert enc.config == config and enc.batch_tokens == 8 and enc.spec.pooling == "cls"
    same = load_encoder(str(roformer_sim_dir), pooling="cls", dtype="float32")
    assert same.batch_tokens == 1024  # the CPU default
    np.testing.assert_allclose(enc.encode(SENTENCES), same.encode(SENTENCES), atol=1e-5)
    small, big = EncodeStats(), EncodeStats()
    enc.encode(SENTENCES, stats=small)
    same.encode(SENTENCES, stats=big)
    assert small.padded_tokens == small.tokens < big.padded_tokens  # one row a batch: no padding at all
    assert config.with_options(dtype=None, device="cpu") == EncoderConfig(
        str(roformer_sim_dir), pooling="cls", dtype="float32", batch_tokens=8, device="cpu"
    )


def test_bad_batch_tokens_names_the_flag(roformer_sim_dir: Path) -> None:
    from simcli.errors import UsageError

    with pytest.raises(UsageError, match="--batch-tokens must be at least 1, got 0"):
        load_encoder(EncoderConfig(str(roformer_sim_dir), batch_tokens=0))


def test_sentence_model_is_the_encoders_forward_and_trains(roformer_sim_dir: Path) -> None:
    """The encoder's numbers come from its SentenceModel; outside inference mode the same module gives
    gradients to the backbone and the trained pooler, and one SGD step on a cosine loss moves the cosine."""
    enc = load_encoder(str(roformer_sim_dir), dtype="float32")
    model = enc.model
    assert isinstance(model, SentenceModel) and model.backbone is enc.backbone and model.pooler is enc.pooler
    ids = [enc.tokenizer.encode(t, 64) for t in SENTENCES[:2]]
    longest = max(map(len, ids))
    input_ids = torch.tensor([r + [enc.tokenizer.pad_id] * (longest - len(r)) for r in ids])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in ids])
    out = model(input_ids, mask)
    assert out.requires_grad
    np.testing.assert_allclose(out.detach().numpy(), enc.encode(SENTENCES[:2]), atol=1e-5)

    def cosine() -> torch.Tensor:
        a, b = model(input_ids, mask)
        return torch.nn.functional.cosine_similarity(a, b, dim=0)

    before = cosine()
    (-before).backward()  # pull the two sentences together
    assert model.pooler is not None and model.pooler.weight.grad is not None
    layer0 = model.backbone.encoder.layer[0].attention.self.query.weight
    assert layer0.grad is not None and float(layer0.grad.abs().sum()) > 0
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    assert float(cosine().detach()) > float(before.detach())
