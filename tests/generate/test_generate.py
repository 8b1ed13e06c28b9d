"""Generation with RoFormer-Sim's UniLM head, checked against plain transformers forward passes over the
whole `[CLS] a [SEP] b` sequence with the explicit UniLM mask (kexue.fm/archives/7427 and 8454)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.errors import ModelError, UsageError
from simcli.models.unilm import COMPACT_SHARE, Sampling, UniLM, choose_tokens
from simcli.paraphrase import Paraphraser, load_paraphraser
from tests.checkpoints import SEP_ID

SOURCES = ["今天天气怎么样", "花呗", "我想把信用卡的额度提高一点应该怎么操作", "北京到上海的高铁"]


@pytest.fixture(scope="module")
def para(roformer_sim_dir: Path) -> Paraphraser:
    return load_paraphraser(str(roformer_sim_dir), device="cpu", dtype="float32")


def _reference(path: Path) -> torch.nn.Module:
    from transformers import RoFormerForCausalLM

    # is_decoder=False: transformers then applies the 4D mask we pass, and nothing else.
    return RoFormerForCausalLM.from_pretrained(str(path), is_decoder=False).eval()


@pytest.fixture(scope="module")
def reference(roformer_sim_dir: Path) -> torch.nn.Module:
    return _reference(roformer_sim_dir)


def unilm_mask(token_types: list[int]) -> np.ndarray:
    """Additive mask from the UniLM rule: c = cumsum(token types); i attends j iff c[j] <= c[i]."""
    c = np.cumsum(token_types)
    allowed = c[None, :] <= c[:, None]
    return np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)


def mask_argument(additive: np.ndarray) -> torch.Tensor:
    """The (seq, seq) additive UniLM mask in the form transformers' forward takes: transformers 5 passes a 4D
    float mask through as an additive bias; 4.x accepts only a 3D 0/1 mask (1 = attend) and builds the bias."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return torch.from_numpy(additive)[None, None]
    return torch.from_numpy((additive == 0).astype(np.int64))[None]


def full_logits(
    ref: torch.nn.Module, source: list[int], generated: list[int], mask: str = "unilm"
) -> np.ndarray:
    """Logits after `[CLS] a [SEP] b` (the next token of b) from one full forward pass."""
    seq = source + generated
    types = [0] * len(source) + [1] * len(generated)
    if mask == "unilm":
        m = unilm_mask(types)
    elif mask == "causal":
        m = unilm_mask(list(range(len(seq))))  # every position its own segment: lower-triangular
    else:
        m = np.zeros((len(seq), len(seq)), np.float32)
    with torch.no_grad():
        out = ref(
            input_ids=torch.tensor([seq]),
            token_type_ids=torch.tensor([types]),
            attention_mask=mask_argument(m),
        )
    return out.logits[0, -1].numpy()


def test_unilm_mask_rule_premise() -> None:
    """The rule gives A bidirectional within A, B seeing all of A and causal within B."""
    m = unilm_mask([0, 0, 0, 1, 1]) == 0
    expected = np.array(
        [
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=bool,
    )
    assert (m == expected).all()


def test_cached_steps_equal_full_unilm_forward(para: Paraphraser, reference: torch.nn.Module) -> None:
    """At every step, for sources of different lengths batched together (right-padded), repeated rows and
    rows dropped midway, the cached incremental logits equal a full forward with the UniLM mask to 1e-4."""
    model, tok = para.unilm, para.tokenizer
    sources = [tok.encode(t, 64) for t in SOURCES[:3]]
    lengths = torch.tensor([len(s) for s in sources])
    assert len(set(lengths.tolist())) == 3, "premise: different source lengths, so padding is exercised"
    ids = torch.zeros((3, int(lengths.max())), dtype=torch.long)
    for i, s in enumerate(sources):
        ids[i, : len(s)] = torch.tensor(s)
    cache, logits = model.prefill(ids, lengths)
    rows = torch.tensor([0, 0, 1, 2, 2])  # n samples of a source share its encoding
    steps = 6
    cache = cache.select(rows, capacity=ids.shape[1] + steps)
    logits = logits[rows]
    src_of = rows.tolist()
    allowed = torch.ones((len(rows), cache.capacity), dtype=torch.bool)
    allowed[:, : ids.shape[1]] = torch.arange(ids.shape[1])[None] < lengths[rows][:, None]
    bias = model.key_bias(allowed)
    positions = lengths[rows]
    generated: list[list[int]] = [[] for _ in rows]
    g = torch.Generator().manual_seed(0)
    diffs = []
    for t in range(steps):
        for r in range(len(src_of)):
            want = full_logits(reference, sources[src_of[r]], generated[r])
            diffs.append(float(np.abs(logits[r].numpy() - want).max()))
            if t >= 1:  # the premise: the mask matters (full attention and a causal mask give other logits)
                assert not np.allclose(
                    want, full_logits(reference, sources[src_of[r]], generated[r], "full"), atol=1e-2
                )
                assert not np.allclose(
                    want, full_logits(reference, sources[src_of[r]], generated[r], "causal"), atol=1e-2
                )
        tokens = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]
        for r, x in enumerate(tokens.tolist()):
            generated[r].append(x)
        if t == 2:  # drop two rows, as finished samples are dropped
            keep = torch.tensor([0, 2, 4])
            cache, bias, positions, tokens = cache.select(keep), bias[keep], positions[keep], tokens[keep]
            src_of = [src_of[i] for i in keep.tolist()]
            generated = [generated[i] for i in keep.tolist()]
        logits = model.step(tokens, positions + t, bias[..., : cache.length + 1], cache)
    assert max(diffs) < 1e-4
    assert len(diffs) == 5 * 3 + 3 * 3


def _greedy_reference(ref: torch.nn.Module, source: list[int], steps: int) -> list[int]:
    out: list[int] = []
    for _ in range(steps):
        nxt = int(full_logits(ref, source, out).argmax())
        if nxt == SEP_ID:
            break
        out.append(nxt)
    return out


def test_greedy_batched_equals_one_by_one_and_reference(
    para: Paraphraser, reference: torch.nn.Module
) -> None:
    """Greedy output is the same for sources batched together, one by one, and by full forward passes."""
    batched = para.sample_ids(SOURCES, greedy=True, seed=0, max_new_tokens=10)
    single = [para.sample_ids([t], greedy=True, seed=0, max_new_tokens=10)[0] for t in SOURCES]
    assert batched == single
    for text, rows in zip(SOURCES, batched):
        assert len(rows) == 1  # greedy: one candidate per source
        assert rows[0] == _greedy_reference(reference, para.tokenizer.encode(text, 64), 10)
    assert len({tuple(r[0]) for r in batched}) == len(SOURCES)


@pytest.fixture(scope="module")
def sep_prone(tmp_path_factory: pytest.TempPathFactory, roformer_sim_dir: Path) -> Path:
    """A copy of the tiny model whose head favours [SEP], so that samples finish at different steps."""
    import shutil

    path = tmp_path_factory.mktemp("sep") / "sim"
    shutil.copytree(roformer_sim_dir, path)
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    for key in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        sd[key] = sd[key].clone()
        sd[key][SEP_ID] += 7.0  # from far below the top logits to among the top three at some steps
    torch.save(sd, path / "pytorch_model.bin")
    return path


def test_sampled_rows_follow_reference_distribution(sep_prone: Path) -> None:
    """Through the whole batched sampler (several sources, rows finishing and being dropped): every sampled
    token is among the reference's top-k at its prefix, and a row ends exactly where [SEP] was chosen."""
    para = load_paraphraser(str(sep_prone), device="cpu", dtype="float32")
    ref = _reference(sep_prone)
    max_new = 8
    out = para.sample_ids(SOURCES[:3], n=10, seed=3, top_k=3, top_p=1.0, max_new_tokens=max_new)
    lengths = [len(r) for rows in out for r in rows]
    assert len(set(lengths)) >= 4, "premise: rows finish at different steps"
    assert sum(n < max_new for n in lengths) >= COMPACT_SHARE * len(lengths), "premise: rows get dropped"
    for text, rows in zip(SOURCES[:3], out):
        assert len(rows) == 10
        source = para.tokenizer.encode(text, 64)
        for row in rows:
            for t in range(len(row) + (len(row) < max_new)):
                top3 = set(np.argsort(-full_logits(ref, source, row[:t]))[:3].tolist())
                token = row[t] if t < len(row) else SEP_ID  # a shorter row stopped on a chosen [SEP]
                assert token in top3
            assert SEP_ID not in row


def test_seeded_sampling_is_reproducible(para: Paraphraser) -> None:
    """Same seed, same samples; another seed, other samples; a text's samples do not depend on the other
    texts of the call (one random stream per source, keyed by its index)."""
    a = para.sample_ids(SOURCES, n=8, seed=11, max_new_tokens=6)
    b = para.sample_ids(SOURCES, n=8, seed=11, max_new_tokens=6)
    c = para.sample_ids(SOURCES, n=8, seed=12, max_new_tokens=6)
    assert a == b
    assert a != c
    alone = para.sample_ids([SOURCES[2]], keys=[2], n=8, seed=11, max_new_tokens=6)
    assert alone[0] == a[2]
    assert len({tuple(r) for r in a[0]}) > 1, "premise: the n samples differ from each other"


def test_rows_split_over_batches_keep_counts(roformer_sim_dir: Path) -> None:
    """With a tiny row cap, a source's n samples span several batches; counts and greedy output hold."""
    small = load_paraphraser(str(roformer_sim_dir), device="cpu", dtype="float32", max_rows=3)
    out = small.sample_ids(SOURCES[:2], n=7, seed=1, max_new_tokens=4)
    assert [len(rows) for rows in out] == [7, 7]
    assert all(len(r) <= 4 for rows in out for r in rows)
    big = load_paraphraser(str(roformer_sim_dir), device="cpu", dtype="float32")
    assert small.sample_ids(SOURCES, greedy=True, seed=0, max_new_tokens=5) == big.sample_ids(
        SOURCES, greedy=True, seed=0, max_new_tokens=5
    )


def test_choose_tokens_matches_truncated_distribution() -> None:
    """Inverse-CDF sampling with evenly spaced uniforms reproduces the renormalised nucleus / top-k
    distribution computed with numpy; greedy is argmax."""
    p = np.array([0.5, 0.05, 0.3, 0.15])
    logits = torch.tensor(np.log(p), dtype=torch.float32)[None].repeat(10000, 1)
    u = (torch.arange(10000) + 0.5) / 10000

    def freq(s: Sampling) -> np.ndarray:
        return np.bincount(choose_tokens(logits, s, u).numpy(), minlength=4) / 10000

    # top_p 0.9: 0.5 + 0.3 = 0.8 < 0.9, so 0.15 joins; 0.05 stays out
    np.testing.assert_allclose(freq(Sampling(top_p=0.9)), [0.5, 0, 0.3, 0.15] / np.float64(0.95), atol=2e-4)
    np.testing.assert_allclose(freq(Sampling(top_p=1.0, top_k=2)), [0.5 / 0.8, 0, 0.3 / 0.8, 0], atol=2e-4)
    t = p**0.5 / (p**0.5).sum()  # temperature 2 on log-probabilities
    np.testing.assert_allclose(freq(Sampling(top_p=1.0, temperature=2.0)), t, atol=2e-4)
    assert choose_tokens(logits[:2], Sampling(greedy=True), None).tolist() == [0, 0]


def test_nucleus_prefilter_equals_full_sort() -> None:
    """The top-256 prefilter is used only when it holds the whole nucleus; results equal a full sort."""
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(64, 3000, generator=g) * 0.1  # wide nucleus: the prefilter cannot cover 0.95
    peaked = torch.randn(64, 3000, generator=g) * 4.0  # narrow nucleus: the prefilter covers it
    u = torch.rand(64, generator=g)
    for logits in (flat, peaked):
        probs = logits.softmax(-1)
        values, index = probs.sort(-1, descending=True)
        before = values.cumsum(-1) - values
        kept = values.masked_fill(before >= 0.95, 0.0)
        cdf = kept.cumsum(-1)
        pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)
        want = index.gather(1, pick)[:, 0]
        assert torch.equal(choose_tokens(logits, Sampling(top_p=0.95), u), want)


def test_decode_slices_ids_and_keeps_ascii_words(para: Paraphraser) -> None:
    """Generated ids decode on their own: mixed Chinese/ASCII keeps its spaces; the port's approach
    (decode everything, delete spaces, strip the input) would glue words together."""
    tok = para.tokenizer
    text = "我用iphone拍hello world的app"
    ids = tok.encode(text, 64)[1:-1]
    assert tok.unk_id not in ids, "premise: every piece is in the tiny vocab"
    assert para.decode(ids) == text
    assert para.decode(ids).replace(" ", "") != text, "premise: deleting spaces would corrupt it"


def test_clean_drops_duplicates_empties_and_copies(para: Paraphraser) -> None:
    got = para.clean("用iPhone拍", ["用iphone拍", "用iPhone拍", "", "拍", "用 拍", "拍", " 用 拍 "])
    assert got == ["拍", "用 拍"]


def test_rerank_scores_are_pooler_cosines(para: Paraphraser) -> None:
    """Scores are cosines of the normalised pooler vectors (recomputed here with numpy), best first,
    top k, within --min-score/--max-score."""
    text, cands = "花呗怎么还款", ["花呗如何还款", "借呗额度", "今天天气", "花呗还款", "怎么还款"]
    vec = para.encoder.encode([text, *cands], pooling="pooler")
    vec = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    cos = vec[1:] @ vec[0]
    order = np.argsort(-cos)
    got = para.rerank([text], [cands], k=3)[0]
    assert [p.text for p in got] == [cands[i] for i in order[:3]]
    np.testing.assert_allclose([p.score for p in got], cos[order[:3]], atol=1e-5)
    lo, hi = float(np.sort(cos)[1]), float(np.sort(cos)[3])
    within = para.rerank([text], [cands], k=10, min_score=lo, max_score=hi)[0]
    assert sorted(p.text for p in within) == sorted(c for c, s in zip(cands, cos) if lo <= s <= hi)
    assert len(within) == 3


def test_mask_ratio_masks_source_tokens(para: Paraphraser) -> None:
    tok = para.tokenizer
    plain = para.source_ids(SOURCES[2], 64)
    masked = para.source_ids(SOURCES[2], 64, mask_ratio=0.5, mask_seed=4)
    inner = len(plain) - 2
    assert [masked[0], masked[-1]] == [tok.cls_id, tok.sep_id]
    changed = [i for i, (a, b) in enumerate(zip(plain, masked)) if a != b]
    assert len(changed) == round(0.5 * inner)
    assert all(masked[i] == tok.mask_id for i in changed)
    a = para.sample_ids([SOURCES[2]], n=6, seed=5, max_new_tokens=5)
    b = para.sample_ids([SOURCES[2]], n=6, seed=5, max_new_tokens=5, mask_ratio=0.5)
    assert a != b


def test_generate_end_to_end(para: Paraphraser) -> None:
    """k paraphrases per text, sorted by score, no copies, reproducible with a seed."""
    out = para.generate(SOURCES[:2], n=30, k=5, seed=2, max_new_tokens=6)
    again = para.generate(SOURCES[:2], n=30, k=5, seed=2, max_new_tokens=6)
    assert out == again
    for text, found in zip(SOURCES, out):
        assert len(found) == 5
        scores = [p.score for p in found]
        assert scores == sorted(scores, reverse=True)
        assert text not in [p.text for p in found]
        assert len({p.text for p in found}) == 5


@pytest.mark.parametrize("fixture", ["wobert_dir", "roformer_char_dir", "roformer_word_dir"])
def test_models_without_unilm_head_are_refused(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    with pytest.raises(ModelError, match="cannot generate: .* no UniLM-trained seq2seq head"):
        load_paraphraser(str(path), device="cpu", dtype="float32")


def test_checkpoint_without_mlm_head_is_refused(model_copy, roformer_sim_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = model_copy(roformer_sim_dir)
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("cls.")}, path / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"no MLM head \(cls.predictions"):
        load_paraphraser(str(path), device="cpu", dtype="float32")


def test_mlm_head_is_tied_and_matches_transformers(para: Paraphraser, reference: torch.nn.Module) -> None:
    head = para.unilm.head.predictions
    assert head.decoder.weight is para.encoder.backbone.embeddings.word_embeddings.weight
    h = torch.randn(3, para.encoder.backbone.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(para.unilm.head(h), reference.cls(h))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"n": 0}, "-n must be at least 1"),
        ({"k": 0}, "-k must be at least 1"),
        ({"top_p": 0.0}, "--top-p must be in"),
        ({"top_k": 0}, "--top-k must be at least 1"),
        ({"temperature": 0.0}, "--temperature must be above 0"),
        ({"mask_ratio": 1.0}, "--mask-ratio must be in"),
        ({"max_new_tokens": 0}, "--max-new-tokens must be at least 1"),
        ({"min_score": 0.9, "max_score": 0.5}, "--min-score 0.9 is above --max-score 0.5"),
        ({"max_length": 500, "max_new_tokens": 64}, "exceed the model's 512 positions"),
    ],
)
def test_bad_options(para: Paraphraser, option: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(UsageError, match=message):
        para.generate(["花呗"], **option)


def test_package_level_generate(para: Paraphraser) -> None:
    """`simcli.generate(texts, n=, k=)` is the function, also after its module has been imported."""
    import simcli
    import simcli.paraphrase

    one = simcli.generate("花呗怎么还款", n=10, k=3, model=para, seed=1, max_new_tokens=5)
    many = simcli.generate(["花呗怎么还款", "今天天气"], n=10, k=3, model=para, seed=1, max_new_tokens=5)
    # texts exactly; scores to float tolerance (a row's floats depend on the batch it was encoded in)
    assert [p.text for p in one] == [p.text for p in many[0]]
    assert [p.score for p in one] == pytest.approx([p.score for p in many[0]], abs=1e-6)
    assert len(one) == 3


def test_unilm_refuses_families_directly(para: Paraphraser) -> None:
    class Fake:
        checkpoint = type(
            "C", (), {"family": "wobert", "model": "x", "has_mlm_head": True, "similarity_trained": False}
        )()

    with pytest.raises(ModelError, match="WoBERT was trained as a masked LM only"):
        UniLM.from_encoder(Fake())
