"""Generation with a SimBERT-layout checkpoint (BERT with a trained pooler and an MLM head, char vocab):
the same UniLM procedure over transformers' BertModel, checked against full forwards with the UniLM mask."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.errors import ModelError
from simcli.paraphrase import Paraphraser, load_paraphraser
from tests import checkpoints
from tests.checkpoints import build_simbert
from tests.generate.test_generate import SOURCES, mask_argument, unilm_mask


@pytest.fixture(scope="module")
def simbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_simbert(tmp_path_factory.mktemp("simbert") / "simbert")


@pytest.fixture(scope="module")
def para(simbert_dir: Path) -> Paraphraser:
    return load_paraphraser(str(simbert_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(simbert_dir: Path) -> torch.nn.Module:
    from transformers import BertForMaskedLM

    return BertForMaskedLM.from_pretrained(str(simbert_dir), attn_implementation="eager").eval()


def full_logits(ref: torch.nn.Module, source: list[int], generated: list[int]) -> np.ndarray:
    seq, types = source + generated, [0] * len(source) + [1] * len(generated)
    with torch.no_grad():
        out = ref(
            input_ids=torch.tensor([seq]),
            token_type_ids=torch.tensor([types]),
            attention_mask=mask_argument(unilm_mask(types)),
        )
    return out.logits[0, -1].numpy()


def test_simbert_is_detected_as_bert_with_pooler(para: Paraphraser) -> None:
    assert para.encoder.checkpoint.family == "bert"
    assert para.encoder.checkpoint.has_pooler
    assert not para.unilm.rotary


def test_simbert_greedy_matches_full_unilm_forward(para: Paraphraser, reference: torch.nn.Module) -> None:
    """Greedy continuations (sources batched, different lengths) equal step-by-step argmax of full forwards
    with the explicit UniLM mask, and the logits agree to 1e-4 along the way."""
    batched = para.sample_ids(SOURCES, greedy=True, seed=0, max_new_tokens=6)
    assert batched == [para.sample_ids([t], greedy=True, seed=0, max_new_tokens=6)[0] for t in SOURCES]
    for text, rows in zip(SOURCES, batched):
        source = para.tokenizer.encode(text, 64)
        want: list[int] = []
        for _ in range(6):
            nxt = int(full_logits(reference, source, want).argmax())
            if nxt == checkpoints.SEP_ID:
                break
            want.append(nxt)
        assert rows[0] == want
    # the cached logits themselves, at every step of one source
    model, source = para.unilm, para.tokenizer.encode(SOURCES[0], 64)
    cache, logits = model.prefill(torch.tensor([source]), torch.tensor([len(source)]))
    cache = cache.select(torch.tensor([0]), capacity=len(source) + 5)
    bias = model.key_bias(torch.ones((1, cache.capacity), dtype=torch.bool))
    generated: list[int] = []
    for t in range(5):
        np.testing.assert_allclose(logits[0].numpy(), full_logits(reference, source, generated), atol=1e-4)
        token = int(np.argsort(-logits[0].numpy())[t % 3])  # not always the argmax: vary the path
        generated.append(token)
        logits = model.step(
            torch.tensor([token]), torch.tensor([len(source) + t]), bias[..., : cache.length + 1], cache
        )


def test_simbert_generate_end_to_end(para: Paraphraser) -> None:
    out = para.generate(SOURCES[:2], n=20, k=4, seed=1, max_new_tokens=6)
    assert [len(x) for x in out] == [4, 4]
    assert all(a.score >= b.score for found in out for a, b in itertools.pairwise(found))


def test_bert_without_pooler_is_refused(tmp_path: Path) -> None:
    path = build_simbert(tmp_path / "bert", with_pooler=False)
    with pytest.raises(ModelError, match=r"is not SimBERT \(no trained pooler"):
        load_paraphraser(str(path), device="cpu", dtype="float32")


def test_plain_bert_with_its_nsp_pooler_is_not_simbert(tmp_path: Path) -> None:
    """bert-base-chinese and friends carry a (tanh) NSP pooler and an MLM head too: not SimBERT, so no
    generation, first-last-avg by default; the same weights declared linear are SimBERT."""
    from simcli.models.encoder import load_encoder

    plain = build_simbert(tmp_path / "plain", config={"pooler_activation": "tanh"})
    with pytest.raises(ModelError, match='needs "pooler_activation": "linear"'):
        load_paraphraser(str(plain), device="cpu", dtype="float32")
    enc = load_encoder(str(plain), dtype="float32")
    assert (enc.spec.pooling, enc.info()["can_generate"]) == ("first-last-avg", False)
    simbert = load_encoder(str(build_simbert(tmp_path / "simbert")), dtype="float32")
    assert (simbert.spec.pooling, simbert.info()["can_generate"]) == ("pooler", True)
