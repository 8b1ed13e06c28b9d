"""`simcli train generator`: the UniLM premise, both losses against transformers and numpy, the noise, learning
(greedy generation returns the trained targets), resume, the written layouts, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.models.encoder import load_encoder
from simcli.models.native import NativeBackbone
from simcli.models.unilm import build_mlm_head
from simcli.paraphrase import load_paraphraser
from simcli.training import TrainOptions, train_generator
from simcli.training.distillation import seq2seq_inputs
from simcli.training.generator import (
    MASK_BELOW,
    GeneratorTrainer,
    generator_losses,
    noise_words,
    noisy_source,
    similarity_loss,
)
from simcli.training.loop import state_folder
from tests import checkpoints
from tests.generate.test_generate import mask_argument, unilm_mask
from tests.invoke import simcli
from tests.train_data import pairs, write_pairs

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
SOURCES = ["花呗怎么还款", "借呗额度怎么提升呢", "今天天气很好"]
TARGETS = ["花呗如何还钱", "怎么提高借呗的额度", "今天是个好天气啊"]


@pytest.fixture(scope="module")
def simbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoints.build_simbert(tmp_path_factory.mktemp("simbert") / "simbert")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain char BERT: no pooler; its MLM head is kept."""
    return checkpoints.build_simbert(tmp_path_factory.mktemp("bert") / "bert", with_pooler=False)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "train.tsv", pairs(200, 1))


def _parts(path: Path) -> tuple[NativeBackbone, torch.nn.Linear, torch.nn.Module, object]:
    enc = load_encoder(str(path))
    backbone = enc.model.backbone
    assert isinstance(backbone, NativeBackbone) and enc.model.pooler is not None
    head = build_mlm_head(backbone, enc.checkpoint.state_dict(), enc.checkpoint.weights_path)
    return backbone, enc.model.pooler, head, enc.tokenizer


# -- the model -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["roformer-sim", "simbert"])
def test_cls_state_of_a_pair_is_the_cls_state_of_its_source(
    family: str, roformer_sim_dir: Path, simbert_dir: Path
) -> None:
    """Under the UniLM mask the source never sees the target: [CLS] of `[CLS] a [SEP] b [SEP]` equals [CLS] of
    `[CLS] a [SEP]` alone, so the sentence vector and the generator share one forward pass."""
    backbone, _, _, tok = _parts(roformer_sim_dir if family == "roformer-sim" else simbert_dir)
    a, b = tok.encode(SOURCES[1]), tok.encode(TARGETS[1])  # type: ignore[attr-defined]
    ids, types, allowed, _ = seq2seq_inputs([a], [b], tok.pad_id)  # type: ignore[attr-defined]
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        pair = backbone(ids, token_type_ids=types, attention_bias=bias).last_hidden_state[0, 0]
        alone = backbone(torch.tensor([a])).last_hidden_state[0, 0]
        full = backbone(ids, token_type_ids=types).last_hidden_state[0, 0]
    torch.testing.assert_close(pair, alone, rtol=0, atol=1e-5)
    assert not torch.allclose(full, alone, atol=1e-3)  # premise: with full attention the target would leak


def _reference(family: str, path: Path) -> torch.nn.Module:
    if family == "roformer-sim":
        from transformers import RoFormerForCausalLM

        return RoFormerForCausalLM.from_pretrained(str(path), is_decoder=False).eval()
    from transformers import BertForMaskedLM

    return BertForMaskedLM.from_pretrained(str(path), attn_implementation="eager").eval()


@pytest.mark.parametrize("family", ["roformer-sim", "simbert"])
def test_losses_equal_transformers_and_numpy(family: str, roformer_sim_dir: Path, simbert_dir: Path) -> None:
    """seq2seq: transformers' own model, one row at a time with the explicit (seq, seq) UniLM mask, mean
    cross-entropy over every target token and final [SEP]. similarity: numpy over the pooler (no tanh) of
    transformers' [CLS] states, scale 20, the own cosine excluded, row i's positive row i XOR 1."""
    path = roformer_sim_dir if family == "roformer-sim" else simbert_dir
    backbone, pooler, head, tok = _parts(path)
    rows = []
    for a, b in zip(SOURCES, TARGETS, strict=True):
        rows += [(a, b), (b, a)]
    src = [tok.encode(a) for a, _ in rows]  # type: ignore[attr-defined]
    tgt = [tok.encode(b) for _, b in rows]  # type: ignore[attr-defined]
    with torch.no_grad():
        seq2seq, sim = generator_losses(backbone, pooler, head, src, tgt, tok.pad_id)  # type: ignore[attr-defined]

    ref = _reference(family, path)
    prefix = "roformer." if family == "roformer-sim" else "bert."
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    w, bias = sd[prefix + "pooler.dense.weight"].numpy(), sd[prefix + "pooler.dense.bias"].numpy()
    nll, cls = [], []
    for s, t in zip(src, tgt, strict=True):
        seq, types = s + t[1:], [0] * len(s) + [1] * (len(t) - 1)
        with torch.no_grad():
            out = ref(
                input_ids=torch.tensor([seq]),
                token_type_ids=torch.tensor([types]),
                attention_mask=mask_argument(unilm_mask(types)),
                output_hidden_states=True,
            )
        logp = torch.log_softmax(out.logits[0].double(), -1).numpy()
        nll += [-logp[p - 1, seq[p]] for p in range(len(s), len(seq))]  # position p - 1 predicts token p
        cls.append(out.hidden_states[-1][0, 0].numpy().astype(np.float64))
    assert float(seq2seq) == pytest.approx(np.mean(nll), rel=1e-5)

    v = np.stack(cls) @ w.T.astype(np.float64) + bias
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    s = 20.0 * v @ v.T
    np.fill_diagonal(s, -np.inf)
    logp = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1, keepdims=True)
    expected = -np.mean([logp[i, i ^ 1] for i in range(len(v))])
    assert float(sim) == pytest.approx(expected, rel=1e-5)
    assert len(nll) == sum(len(t) - 1 for t in tgt)  # every target token and its [SEP], nothing else


def test_similarity_loss_scale_and_partner() -> None:
    """Rows that equal their partner and differ from the others give a loss near 0; swapping the partners
    (row i's positive is not its neighbour) gives a large one."""
    e = torch.eye(4)
    paired = torch.stack([e[0], e[0], e[1], e[1], e[2], e[2], e[3], e[3]])
    assert float(similarity_loss(paired)) < 1e-6
    crossed = torch.stack([e[0], e[1], e[0], e[1], e[2], e[3], e[2], e[3]])
    assert float(similarity_loss(crossed)) > 10  # the partner is orthogonal at cosine 0, the rival at 1


# -- noise -------------------------------------------------------------------------------------------------------
def test_noise_rates_over_ten_thousand_words() -> None:
    """Per word: 12% masked, 1.5% kept, 1.5% random ids, the rest untouched, always the whole word."""
    rng = np.random.default_rng(0)
    words = [[1000 + 3 * i, 1001 + 3 * i, 1002 + 3 * i][: 1 + i % 3] for i in range(10_000)]
    ids = noise_words(words, rng, mask_id=103, vocab_size=40_000)
    assert len(ids) == sum(map(len, words))  # masking and replacing keep each word's length
    masked = replaced = 0
    pos = 0
    for w in words:
        got = ids[pos : pos + len(w)]
        pos += len(w)
        if 103 in got:
            assert got == [103] * len(w)  # whole words only
            masked += 1
        elif got != w:
            assert all(g != x for g, x in zip(got, w, strict=True))  # every token of the word replaced
            replaced += 1
    # binomial standard deviations over 10,000 words: 0.0032 and 0.0012; tolerance ~3 of them
    assert masked / 10_000 == pytest.approx(MASK_BELOW, abs=0.01)
    assert replaced / 10_000 == pytest.approx(0.015, abs=0.004)


def test_noise_share_of_sources_and_zero() -> None:
    rng = np.random.default_rng(1)
    words = [[1000 + i] for i in range(30)]
    kw = {"mask_id": 103, "vocab_size": 1702, "cls_id": 101, "sep_id": 102, "max_length": 16}
    noised = [noisy_source(words, rng, 0.5, **kw) for _ in range(4000)]
    rows = [r for r in noised if r is not None]
    assert len(rows) / 4000 == pytest.approx(0.5, abs=0.03)
    assert all(r[0] == 101 and r[-1] == 102 and len(r) == 16 for r in rows)  # cut to max_length
    assert all(noisy_source(words, rng, 0.0, **kw) is None for _ in range(100))


def test_batches_hold_both_orders_and_never_noise_the_target(roformer_sim_dir: Path, tmp_path: Path) -> None:
    """Rows 2i and 2i+1 are (a, b) and (b, a); with every source noised, the targets are still exactly the
    clean tokenisation, and the sources are masked on whole jieba words."""
    rows = [(a, b, "1") for a, b in zip(SOURCES, TARGETS, strict=True)]
    path = write_pairs(tmp_path / "p.tsv", rows)
    opts = TrainOptions(steps=1, batch_size=3, noise=1.0, loss="cosent")
    t = GeneratorTrainer([path], str(roformer_sim_dir), tmp_path / "o", opts)
    tok = t.encoder.tokenizer
    noised = 0
    for index in range(20):
        b = t.batch(index)
        sources, targets = b.rows[:6], b.rows[6:]
        for i in range(0, 6, 2):
            a_text, b_text = b.texts[i], b.texts[i + 1]
            assert {a_text, b_text} in ({s, x} for s, x in zip(SOURCES, TARGETS, strict=True))
            assert targets[i] == tok.encode(b_text) and targets[i + 1] == tok.encode(a_text)
        for src, text in zip(sources, b.texts, strict=True):
            clean = tok.encode(text)
            assert len(src) == len(clean)  # masking and replacing keep lengths
            noised += src != clean
    assert noised > 0  # premise: the sources were noised


def test_group_by_length_batches_pairs_of_similar_length(roformer_sim_dir: Path, tmp_path: Path) -> None:
    """Four short and four long pairs, batches of four: grouped, every batch is all short or all long (one
    mega-batch sorted); at random, with seed 42, some batch mixes them and pads the short rows."""
    short = [(f"问{i}", f"答{i}", "1") for i in range(4)]
    long = [(f"花呗怎么还款才能不逾期{i}", f"借呗额度怎么提升到更高{i}", "1") for i in range(4)]
    path = write_pairs(tmp_path / "p.tsv", short + long)

    def batches(group: bool) -> list[set[int]]:
        opts = TrainOptions.generator(steps=2, batch_size=4, noise=0.0, group_by_length=group)
        t = GeneratorTrainer([path], str(roformer_sim_dir), tmp_path / "o", opts)
        return [{len(r) for r in t.batch(i).rows} for i in range(2)]  # the token lengths of a batch's rows

    assert all(len(b) == 1 for b in batches(True))  # one length per batch: no padding
    assert any(len(b) > 1 for b in batches(False))


# -- learning, resume, output ------------------------------------------------------------------------------------
def test_overfitting_eight_pairs_generates_each_target(tmp_path: Path) -> None:
    """Noise off, 8 pairs: greedy decoding from each sentence returns its partner exactly, in both orders."""
    src = checkpoints.build_roformer_sim(tmp_path / "rsim", config=NO_DROPOUT)
    rows = [(a, b, "1") for a, b, _ in pairs(8, 11)]
    data = write_pairs(tmp_path / "eight.tsv", rows)
    opts = TrainOptions(steps=120, batch_size=8, lr=5e-3, noise=0.0)
    out, record = train_generator([data], str(src), tmp_path / "gen", opts)
    assert record["positive_pairs"] == 8 and record["steps"] == 120
    para = load_paraphraser(str(out), device="cpu", dtype="float32")
    for a, b, _ in rows:
        for source, target in ((a, b), (b, a)):
            ids = para.sample_ids([source], greedy=True, seed=0, max_new_tokens=20)[0][0]
            assert para.tokenizer.decode(ids) == target
    result = simcli("generate", rows[0][0], "--model", out, "--greedy", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["paraphrases"][0]["text"] == rows[0][1]


def test_resume_after_interruption_equals_an_uninterrupted_run(
    roformer_sim_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    opts = TrainOptions(steps=6, batch_size=8, lr=1e-3, save_every=2, log_every=2, loss="cosent")
    whole = GeneratorTrainer([train_file], str(roformer_sim_dir), tmp_path / "a", opts).train()

    class Killed(Exception):
        pass

    def kill(step: int, *_: float) -> None:
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        GeneratorTrainer([train_file], str(roformer_sim_dir), tmp_path / "b", opts).train(on_step=kill)
    assert (state_folder(tmp_path / "b") / "state.pt").is_file() and not (tmp_path / "b").exists()
    record = GeneratorTrainer([train_file], str(roformer_sim_dir), tmp_path / "b", opts).train(resume=True)
    assert record["steps"] == 6 and not state_folder(tmp_path / "b").exists()
    np.testing.assert_allclose(
        [h["loss"] for h in record["loss_history"]], [h["loss"] for h in whole["loss_history"]], rtol=1e-4
    )
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    original = torch.load(roformer_sim_dir / "pytorch_model.bin", weights_only=True)
    key = "roformer.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(a[key], original[key], atol=1e-5)  # premise: it trained


def _no_mlm_head(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint without its MLM head (as sentence encoders ship)."""
    import shutil

    shutil.copytree(src, dst)
    sd = torch.load(dst / "pytorch_model.bin", weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("cls.")}, dst / "pytorch_model.bin")
    return dst


def _start(layout: str, roformer_sim_dir: Path, roformer_char_dir: Path, bert_dir: Path, tmp: Path) -> Path:
    from tests.layouts import m3e_layout, st_layout

    if layout == "roformer-sim":
        return roformer_sim_dir
    if layout == "roformer-char":
        return roformer_char_dir
    if layout == "bert":
        return bert_dir
    if layout == "m3e":
        return m3e_layout(
            _no_mlm_head(bert_dir, tmp / "bare"), tmp / "m3e", None, uniem_embedding_strategy="last_mean"
        )
    return st_layout(bert_dir, tmp / "st", {"pooling_mode_mean_tokens": True}, normalize=True)


@pytest.mark.parametrize(
    ("layout", "family", "heads"),
    [
        ("roformer-sim", "roformer-sim", ("checkpoint", "checkpoint")),
        ("roformer-char", "roformer-sim", ("new (identity)", "checkpoint")),
        ("bert", "bert", ("new (identity)", "checkpoint")),
        ("m3e", "bert", ("new (identity)", "new (decoder tied to the word embeddings)")),
        ("sentence-transformers", "bert", ("new (identity)", "checkpoint")),
    ],
)
def test_output_is_the_family_layout_that_simcli_and_transformers_load(
    layout: str,
    family: str,
    heads: tuple[str, str],
    roformer_sim_dir: Path,
    roformer_char_dir: Path,
    bert_dir: Path,
    train_file: Path,
    tmp_path: Path,
) -> None:
    """A BERT start becomes SimBERT (pooler_activation linear), a RoFormer start RoFormer-Sim; simcli loads it
    as a generator with pooling auto = pooler, and transformers' own class gives the same MLM logits under the
    UniLM mask as simcli's head."""
    src = _start(layout, roformer_sim_dir, roformer_char_dir, bert_dir, tmp_path)
    out, record = train_generator(
        [train_file], str(src), tmp_path / "out", TrainOptions(steps=2, batch_size=4)
    )
    assert (record["heads"]["pooler"], record["heads"]["mlm_head"]) == heads
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["pooler_activation"] == "linear" and "uniem_embedding_strategy" not in config
    assert not (out / "modules.json").exists() and not (out / "1_Pooling").exists()
    enc = load_encoder(str(out))
    ck = enc.checkpoint
    assert ck.family == family and ck.similarity_trained and ck.has_mlm_head and enc.pooling == "pooler"

    backbone, _, head, tok = _parts(out)
    a, b = tok.encode(SOURCES[0]), tok.encode(TARGETS[0])  # type: ignore[attr-defined]
    ids, types, allowed, _ = seq2seq_inputs([a], [b], tok.pad_id)  # type: ignore[attr-defined]
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        ours = head(backbone(ids, token_type_ids=types, attention_bias=bias).last_hidden_state)
    if family == "roformer-sim":
        from transformers import RoFormerForCausalLM

        ref, info = RoFormerForCausalLM.from_pretrained(str(out), is_decoder=False, output_loading_info=True)
    else:
        from transformers import BertForMaskedLM

        ref, info = BertForMaskedLM.from_pretrained(
            str(out), attn_implementation="eager", output_loading_info=True
        )
    assert set(info["missing_keys"]) <= {"roformer.encoder.embed_positions.weight"}  # computed, as on the hub
    with torch.no_grad():
        theirs = ref.eval()(
            input_ids=ids,
            token_type_ids=types,
            attention_mask=mask_argument(unilm_mask(types[0].tolist())),
        ).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

    info_out = simcli("info", out, "--json")
    assert info_out.exit_code == 0, info_out.output
    shown = json.loads(info_out.stdout)
    assert shown["can_generate"] is True and shown["pooling"] == "pooler" and shown["family"] == family
    generated = simcli(
        "generate", "花呗怎么还款", "--model", out, "-n", "4", "-k", "2", "--max-new-tokens", "8"
    )
    assert generated.exit_code == 0, generated.output
