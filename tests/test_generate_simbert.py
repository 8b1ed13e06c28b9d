"""Generation with a SimBERT-layout checkpoint (BERT with a trained pooler and an MLM head, char vocab):
the same UniLM procedure over transformers' BertModel, checked against full forwards with the UniLM mask."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.errors import ModelError
from simcli.paraphrase import Paraphraser, load_paraphraser
from tests import checkpoints
from tests.test_generate import SOURCES, unilm_mask


def build_simbert(path: Path, seed: int = 5, with_pooler: bool = True) -> Path:
    """BertForMaskedLM keys plus bert.pooler.dense.*, a char vocab and pooler_activation linear (SimBERT)."""
    from transformers import BertConfig, BertForMaskedLM

    path.mkdir(parents=True, exist_ok=True)
    vocab = checkpoints.char_vocab()
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": 40,
        "num_attention_heads": 5,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "vocab_size": len(vocab),
        "pad_token_id": 0,
        "pooler_activation": "linear",
    }
    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    checkpoints._perturb(model, seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if with_pooler:
        g = torch.Generator().manual_seed(seed + 1)
        sd["bert.pooler.dense.weight"] = 0.3 * torch.randn(40, 40, generator=g)
        sd["bert.pooler.dense.bias"] = 0.1 * torch.randn(40, generator=g)
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"]
    checkpoints._save(path, sd, "bin")
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    checkpoints._write_vocab(path, vocab)
    return path


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
            attention_mask=torch.from_numpy(unilm_mask(types))[None, None],
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
    with pytest.raises(ModelError, match=r"no trained pooler, so not SimBERT"):
        load_paraphraser(str(path), device="cpu", dtype="float32")
