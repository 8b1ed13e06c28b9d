"""The encoder against independent computations: transformers' own loader + numpy pooling, one sentence at a time."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.errors import ModelError, UsageError
from simcli.models import device as device_mod
from simcli.models import encoder as encoder_mod
from simcli.models.batching import batches
from simcli.models.encoder import EncodeStats, load_encoder
from simcli.models.loading import open_checkpoint

SENTENCES = [
    "我喜欢北京",
    "我不喜欢北京",
    "花呗怎么还款？",
    "用iPhone12拍照的效果好不好，有没有人试过",
    "借呗额度",
    "今天天气很好，我们去公园散步吧，顺便买点水果回家",
    "ok",
]


def reference_vectors(model_dir: Path, arch: str, texts: list[str], tokenizer) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Every pooling computed by hand (numpy) on transformers' own model, unpadded, one sentence at a time."""
    import transformers

    cls = getattr(transformers, arch)
    model = cls.from_pretrained(str(model_dir), is_decoder=False).eval()
    base = model.roformer if hasattr(model, "roformer") else model.bert
    assert base.config.is_decoder is False
    sd = torch.load(model_dir / "pytorch_model.bin", weights_only=True)
    out: dict[str, list[np.ndarray]] = {"cls": [], "last-avg": [], "first-last-avg": [], "pooler": []}
    for text in texts:
        ids = torch.tensor([tokenizer.encode(text, 64)])
        with torch.no_grad():
            hs = [h[0].numpy().astype(np.float64) for h in base(ids, output_hidden_states=True).hidden_states]
        out["cls"].append(hs[-1][0])
        out["last-avg"].append(hs[-1].mean(0))
        out["first-last-avg"].append((hs[1].mean(0) + hs[-1].mean(0)) / 2)
        key = "roformer.pooler.dense.weight"
        if key in sd:
            w, b = (
                sd[key].numpy().astype(np.float64),
                sd["roformer.pooler.dense.bias"].numpy().astype(np.float64),
            )
            out["pooler"].append(w @ hs[-1][0] + b)  # linear: no tanh (kexue.fm/archives/8321 and 8454)
    return {k: np.stack(v) for k, v in out.items() if v}


@pytest.mark.parametrize("pooling", ["pooler", "cls", "last-avg", "first-last-avg"])
def test_roformer_sim_vectors_match_independent_computation(roformer_sim_dir: Path, pooling: str) -> None:
    """Batched, padded, length-sorted encoding equals transformers + numpy on each sentence alone."""
    enc = load_encoder(str(roformer_sim_dir), pooling=pooling, dtype="float32")
    ref = reference_vectors(roformer_sim_dir, "RoFormerForCausalLM", SENTENCES, enc.tokenizer)[pooling]
    got = enc.encode(SENTENCES, batch_tokens=40)  # small budget: several batches with padding
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got[0], got[1], atol=1e-3), "different sentences must give different vectors"


@pytest.mark.parametrize("pooling", ["cls", "last-avg", "first-last-avg"])
def test_wobert_vectors_match_independent_computation(wobert_dir: Path, pooling: str) -> None:
    enc = load_encoder(str(wobert_dir), pooling=pooling, dtype="float32")
    assert enc.tokenizer.kind == "word"
    ref = reference_vectors(wobert_dir, "BertForMaskedLM", SENTENCES, enc.tokenizer)[pooling]
    np.testing.assert_allclose(enc.encode(SENTENCES, batch_tokens=40), ref, rtol=1e-4, atol=1e-4)


def test_poolings_differ_and_first_last_uses_block0_not_embeddings(roformer_sim_dir: Path) -> None:
    """Premise of the pooling tests: each pooling gives its own numbers; block 0 is hidden_states[1]."""
    enc = load_encoder(str(roformer_sim_dir), dtype="float32")
    got = enc.encode_poolings(SENTENCES, ["pooler", "cls", "last-avg", "first-last-avg"])
    names = list(got)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(got[a], got[b], atol=1e-3), (a, b)
    base = enc.backbone
    ids = torch.tensor([enc.tokenizer.encode(SENTENCES[0], 64)])
    with torch.no_grad():
        hs = base(ids, output_hidden_states=True).hidden_states
    wrong = ((hs[0][0].mean(0) + hs[-1][0].mean(0)) / 2).numpy()
    assert not np.allclose(got["first-last-avg"][0], wrong, atol=1e-3)


@pytest.mark.parametrize("engine", ["native", "transformers"])
def test_full_attention_despite_is_decoder_in_hub_config(roformer_sim_dir: Path, engine: str) -> None:
    """The hub config says is_decoder: true; loaded as-is it would mask causally and give other vectors."""
    from transformers import RoFormerForCausalLM

    assert json.loads((roformer_sim_dir / "config.json").read_text())["is_decoder"] is True
    enc = load_encoder(str(roformer_sim_dir), pooling="cls", dtype="float32", engine=engine)
    assert enc.engine == engine
    if engine == "transformers":
        assert enc.backbone.config.is_decoder is False
    causal = RoFormerForCausalLM.from_pretrained(str(roformer_sim_dir)).eval()
    assert causal.config.is_decoder is True
    ids = torch.tensor([enc.tokenizer.encode(SENTENCES[3], 64)])
    with torch.no_grad():
        causal_cls = causal.roformer(ids).last_hidden_state[0, 0].numpy()
    got = enc.encode([SENTENCES[3]])[0]
    assert not np.allclose(got, causal_cls, atol=1e-3)


def test_pooler_refused_without_trained_weights(wobert_dir: Path, roformer_word_dir: Path) -> None:
    for d in (wobert_dir, roformer_word_dir):
        with pytest.raises(ModelError, match="no(ne)? pooler|has none"):
            load_encoder(str(d), pooling="pooler")


@pytest.mark.parametrize(
    ("fixture", "family", "kind", "auto_pooling"),
    [
        ("roformer_sim_dir", "roformer-sim", "char", "pooler"),
        ("wobert_dir", "wobert", "word", "first-last-avg"),
        ("roformer_word_dir", "roformer-word", "word", "first-last-avg"),
        ("roformer_char_dir", "roformer-char", "char", "first-last-avg"),
    ],
)
def test_family_detection_and_auto_pooling(
    request: pytest.FixtureRequest, fixture: str, family: str, kind: str, auto_pooling: str
) -> None:
    path = request.getfixturevalue(fixture)
    enc = load_encoder(str(path))
    assert (enc.spec.family, enc.spec.tokenizer, enc.spec.pooling) == (family, kind, auto_pooling)
    assert enc.spec.dim == 48 and enc.spec.max_length == 64
    assert enc.info()["can_generate"] is (family == "roformer-sim")


def test_tokenizer_override(wobert_dir: Path) -> None:
    enc = load_encoder(str(wobert_dir), tokenizer="char")
    assert enc.tokenizer.kind == "char" and enc.spec.tokenizer == "char"
    assert enc.tokenizer.tokenize("北京") == ["北", "京"]


def test_input_order_restored_and_stats(roformer_sim_dir: Path) -> None:
    enc = load_encoder(str(roformer_sim_dir), dtype="float32")
    texts = SENTENCES * 3
    stats = EncodeStats()
    together = enc.encode(texts, batch_tokens=50, stats=stats)
    alone = np.concatenate([enc.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
    lengths = [len(enc.tokenizer.encode(t, 64)) for t in texts]
    assert stats.sentences == len(texts) and stats.tokens == sum(lengths)
    assert stats.padded_tokens >= sum(lengths[: len(SENTENCES)]) and stats.truncated == 0
    assert stats.duplicates == 2 * len(SENTENCES)  # each sentence ran once, its two copies were copied


def test_duplicates_encoded_once_with_identical_vectors(roformer_sim_dir: Path) -> None:
    """Equal token rows (also equal after truncation) give bit-identical vectors, so they tie exactly."""
    enc = load_encoder(str(roformer_sim_dir), dtype="float32", max_length=6)
    texts = [
        "花呗怎么还款",
        "借呗额度",
        "花呗怎么还款",
        "花呗怎么还钱",
        "借呗额度",
    ]  # 3 and 0 agree after 4 chars
    seen: list[int] = []
    forward = enc.forward
    enc.forward = lambda ids, modes: (seen.extend(len(x) for x in ids), forward(ids, modes))[1]  # type: ignore[method-assign]
    stats = EncodeStats()
    got = enc.encode(texts, stats=stats)
    assert len(seen) == 2 and stats.duplicates == 3 and stats.sentences == 5
    assert (got[0] == got[2]).all() and (got[0] == got[3]).all() and (got[1] == got[4]).all()
    np.testing.assert_allclose(got[1], enc.encode(["借呗额度"])[0], rtol=1e-5, atol=1e-6)


def test_truncation_counted_and_equal_to_truncated_text(roformer_sim_dir: Path) -> None:
    enc = load_encoder(str(roformer_sim_dir), dtype="float32", max_length=8)
    long, short = "我喜欢北京的秋天和冬天", "我喜欢北京的"  # 11 chars cut to 6 + [CLS] + [SEP]
    stats = EncodeStats()
    got = enc.encode([long, short], stats=stats)
    assert stats.truncated == 1
    assert enc.tokenizer.encode(long, 8)[-1] == enc.tokenizer.sep_id
    np.testing.assert_allclose(got[0], got[1], rtol=1e-5, atol=1e-5)


def test_normalize_gives_unit_vectors(roformer_sim_dir: Path) -> None:
    enc = load_encoder(str(roformer_sim_dir))
    raw = enc.encode(SENTENCES)
    unit = enc.encode(SENTENCES, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_safetensors_checkpoint_gives_same_vectors(tmp_path: Path, roformer_sim_dir: Path) -> None:
    from tests.checkpoints import build_roformer_sim

    st_dir = build_roformer_sim(tmp_path / "st", fmt="safetensors")  # same seed as the fixture
    a = load_encoder(str(roformer_sim_dir), dtype="float32").encode(SENTENCES)
    b = load_encoder(str(st_dir), dtype="float32").encode(SENTENCES)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_spec_identifies_weights(roformer_sim_dir: Path, model_copy) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    enc = load_encoder(str(roformer_sim_dir))
    assert (
        enc.spec.weights_sha256
        == hashlib.sha256((roformer_sim_dir / "pytorch_model.bin").read_bytes()).hexdigest()
    )
    moved = model_copy(roformer_sim_dir)
    assert load_encoder(str(moved)).spec.weights_sha256 == enc.spec.weights_sha256


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "config.json").unlink(), "config.json missing"),
        (lambda d: (d / "vocab.txt").unlink(), r"vocab.txt \(or a WordPiece tokenizer.json\) missing"),
        (lambda d: (d / "pytorch_model.bin").unlink(), "no weights"),
        (lambda d: (d / "pytorch_model.bin").write_bytes(b"not a checkpoint"), "unreadable weights"),
        (lambda d: (d / "config.json").write_text("{"), "unreadable config"),
        (
            lambda d: (d / "config.json").write_text(json.dumps({"model_type": "gpt2"})),
            "model_type 'gpt2' is not supported",
        ),
    ],
)
def test_broken_checkpoints_are_named(roformer_sim_dir: Path, model_copy, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    d = model_copy(roformer_sim_dir)
    damage(d)
    with pytest.raises(ModelError, match=message):
        load_encoder(str(d))


def _with_config(d: Path, **fields: object) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **fields}))


def test_roformer_sim_pooler_is_linear_even_if_the_config_says_tanh(
    roformer_sim_dir: Path, model_copy
) -> None:  # type: ignore[no-untyped-def]
    """the JunnYu/RoFormer_pytorch hub port; kexue.fm/archives/8321 and 8454: the port's default is tanh, RoFormer-Sim's pooler is linear."""
    d = model_copy(roformer_sim_dir)
    _with_config(d, pooler_activation="tanh")
    enc = load_encoder(str(d), dtype="float32")
    assert enc.info()["pooler_activation"] == "linear"
    ref = load_encoder(str(roformer_sim_dir), dtype="float32").encode(SENTENCES[:3])
    np.testing.assert_array_equal(enc.encode(SENTENCES[:3]), ref)


@pytest.mark.parametrize("fields", [{"use_bias": False}, {"norm_type": "rms_norm"}])
def test_roformer_v2_style_configs_are_refused(roformer_sim_dir: Path, model_copy, fields) -> None:  # type: ignore[no-untyped-def]
    d = model_copy(roformer_sim_dir)
    _with_config(d, **fields)
    with pytest.raises(ModelError, match="is not supported .*biases and LayerNorm"):
        load_encoder(str(d))


def test_missing_and_misshapen_weights_are_named(roformer_sim_dir: Path, model_copy) -> None:  # type: ignore[no-untyped-def]
    d = model_copy(roformer_sim_dir)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    del sd["roformer.encoder.layer.1.output.dense.weight"]
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"weights missing for encoder\.layer\.1\.output\.dense\.weight"):
        load_encoder(str(d))
    cfg = json.loads((roformer_sim_dir / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (d / "config.json").write_text(json.dumps(cfg))
    torch.save(torch.load(roformer_sim_dir / "pytorch_model.bin", weights_only=True), d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="has shape .* config.json implies"):
        load_encoder(str(d))


def test_unknown_local_path_and_offline_hub_id() -> None:
    with pytest.raises(ModelError, match="no such model folder"):
        load_encoder("./does/not/exist")
    with pytest.raises(ModelError, match="hub download failed"):
        load_encoder("junnyu/roformer_chinese_sim_char_ft_small")  # HF_HUB_OFFLINE=1: nothing is fetched


def test_usage_errors(roformer_sim_dir: Path) -> None:
    with pytest.raises(UsageError, match="--pooling 'mean'"):
        load_encoder(str(roformer_sim_dir), pooling="mean")
    with pytest.raises(UsageError, match="--max-length must be between 3 and 512"):
        load_encoder(str(roformer_sim_dir), max_length=513)
    with pytest.raises(UsageError, match="--dtype 'int4'"):
        load_encoder(str(roformer_sim_dir), dtype="int4")
    with pytest.raises(UsageError, match="--device 'tpu'"):
        load_encoder(str(roformer_sim_dir), device="tpu")
    with pytest.raises(UsageError, match="--tokenizer must be char or word"):
        load_encoder(str(roformer_sim_dir), tokenizer="bpe")


def test_device_auto_and_cuda_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_mod.resolve_device("auto").type == "cpu"
    with pytest.raises(UsageError, match="CUDA is not available"):
        device_mod.resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_mod.resolve_device("auto") == torch.device("cuda:0")
    assert device_mod.dtype_candidates("auto", torch.device("cuda:0"))[0] == torch.float16
    with pytest.raises(UsageError, match="only 1 CUDA device"):
        device_mod.resolve_device("cuda:1")


def test_auto_dtype_on_cpu_checks_bf16_accuracy(
    roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where bf16 is measured faster, auto tries it and keeps it only if cosine to float32 stays above the
    threshold."""
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(device_mod, "cpu_bf16_speedup", lambda: 4.0)
    monkeypatch.setattr(encoder_mod, "BF16_MIN_COSINE", 0.0)
    kept = load_encoder(str(roformer_sim_dir))
    assert kept.dtype == torch.bfloat16 and "min cosine to float32" in kept.dtype_reason
    assert next(kept.backbone.parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(encoder_mod, "BF16_MIN_COSINE", 1.01)
    refused = load_encoder(str(roformer_sim_dir))
    assert refused.dtype == torch.float32 and "using float32" in refused.dtype_reason
    ref = load_encoder(str(roformer_sim_dir), dtype="float32").encode(SENTENCES)
    np.testing.assert_array_equal(refused.encode(SENTENCES), ref)  # weights were not rounded through bf16
    monkeypatch.setattr(device_mod, "cpu_bf16_speedup", lambda: 0.5)  # native bf16, but slower (no AMX)
    slow = load_encoder(str(roformer_sim_dir))
    assert slow.dtype == torch.float32 and "only 0.5x" in slow.dtype_reason
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset({"avx2"}))
    assert device_mod.dtype_candidates("auto", torch.device("cpu")) == (  # conftest: int8 probe 1.0x
        torch.float32,
        "auto: CPU has no native bf16, int8 linear layers only 1.0x float32",
    )


def test_bf16_speedup_is_measured_only_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """No timing without native bf16 (emulated bf16 is always slower); with it, float32 against bf16 products of
    the BERT-base feed-forward shape."""
    device_mod.cpu_bf16_speedup.cache_clear()
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(device_mod, "speedup", lambda *a, **k: pytest.fail("timed without bf16"))
    assert device_mod.cpu_bf16_speedup() == 0.0
    device_mod.cpu_bf16_speedup.cache_clear()
    calls = []

    def fake_speedup(baseline, candidate) -> float:  # type: ignore[no-untyped-def]
        calls.extend((out.dtype, tuple(out.shape)) for out in (baseline(), candidate()))
        return 4.0

    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(device_mod, "speedup", fake_speedup)
    assert device_mod.cpu_bf16_speedup() == 4.0
    assert calls == [(torch.float32, (256, 3072)), (torch.bfloat16, (256, 3072))]
    device_mod.cpu_bf16_speedup.cache_clear()


@pytest.mark.parametrize(
    ("cap", "bf16", "amx"),
    [
        (None, True, True),
        ("ALL", True, True),
        ("avx512_core_amx", True, True),
        ("AVX512_CORE_BF16", True, False),
        ("AVX512_CORE_VNNI", False, False),
        ("AVX2", False, False),
    ],
)
def test_an_instruction_set_cap_turns_native_bf16_off(
    monkeypatch: pytest.MonkeyPatch, cap: str | None, bf16: bool, amx: bool
) -> None:
    """ONEDNN_MAX_CPU_ISA below bf16 leaves torch's bf16 products emulated on any CPU: auto must not time them
    (measured: 4 s at every start of a capped AMX machine, for a 0.0x reading)."""
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16", "amx_bf16"}))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert (device_mod.cpu_has_bf16(), device_mod.cpu_has_amx()) == (bf16, amx)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # the old name
    assert not device_mod.cpu_has_bf16()


def test_speedup_is_timed_in_turn_so_a_burst_of_load_slows_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fake clock (ms): baseline 4, candidate 1, and every call that starts from 24 to 100 runs 10x slower
    (another process took the cores). Timed in turn, both still get quiet calls: 4.0x. Timed one block after
    the other, the burst covers the candidate's whole block: 0.4x, the wrong choice of dtype. On one thread."""
    now = [0.0]
    monkeypatch.setattr(device_mod.time, "perf_counter", lambda: now[0])

    threads = []

    def costing(ms: float) -> Callable[[], None]:
        def call() -> None:
            threads.append(torch.get_num_threads())
            now[0] += ms * (10 if 24 <= now[0] < 100 else 1)

        return call

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the probe runs on one thread, and gives the caller its threads back
    try:
        assert device_mod.speedup(costing(4), costing(1), rounds=5) == 4.0
        assert threads == [1] * 12 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

    def best_of_block(fn: Callable[[], None]) -> float:
        fn()
        times = []
        for _ in range(5):
            start = now[0]
            fn()
            times.append(now[0] - start)
        return min(times)

    now[0] = 0.0
    assert best_of_block(costing(4)) / best_of_block(costing(1)) == 0.4


def test_explicit_bf16_close_to_float32(roformer_sim_dir: Path) -> None:
    a = load_encoder(str(roformer_sim_dir), dtype="float32").encode(SENTENCES, normalize=True)
    b = load_encoder(str(roformer_sim_dir), dtype="bfloat16").encode(SENTENCES, normalize=True)
    assert b.dtype == np.float32
    assert (a * b).sum(1).min() > 0.95


def test_batches_respect_budget_and_cover_all() -> None:
    lengths = [5, 30, 7, 30, 12, 3, 64, 9, 9, 9]
    got = batches(lengths, batch_tokens=64, max_batch=4)
    flat = [i for b in got for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in got:
        assert len(b) <= 4
        assert max(lengths[i] for i in b) * len(b) <= 64 or len(b) == 1
    assert got[0] == [6]  # longest first, alone: 64 tokens fill the budget
    assert got[-1][-1] == 5  # shortest last
    assert [i for b in got for i in b if lengths[i] == 9] == [7, 8, 9]  # stable among equals


def test_module_level_encode(roformer_sim_dir: Path) -> None:
    from simcli import encode

    v = encode(SENTENCES[:2], str(roformer_sim_dir), normalize=True)
    assert v.shape == (2, 48) and v.dtype == np.float32


def test_open_checkpoint_reports_keys(roformer_sim_dir: Path) -> None:
    ck = open_checkpoint(str(roformer_sim_dir))
    assert ck.has_pooler and ck.has_mlm_head and ck.pooler_activation == "linear"
    assert "roformer.encoder.embed_positions.weight" not in ck.keys


def test_auto_fp16_has_the_same_calibration_gate(
    roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--dtype auto` picking float16 (CUDA's choice, played here on the CPU) keeps it only where the vectors of
    the calibration sentences stay within the cosine threshold of float32, like bf16 on the CPU."""
    monkeypatch.setattr(
        encoder_mod, "dtype_candidates", lambda name, dev: (torch.float16, "auto: float16 on CUDA")
    )
    monkeypatch.setattr(encoder_mod, "BF16_MIN_COSINE", 0.0)
    kept = load_encoder(str(roformer_sim_dir))
    assert kept.dtype == torch.float16 and kept.dtype_reason.startswith(
        "auto: float16 on CUDA; min cosine to float32 "
    )
    monkeypatch.setattr(encoder_mod, "BF16_MIN_COSINE", 1.01)
    refused = load_encoder(str(roformer_sim_dir))
    assert refused.dtype == torch.float32 and next(refused.backbone.parameters()).dtype == torch.float32
    assert refused.dtype_reason.startswith("auto: fp16 min cosine to float32 was ")
    # the cosine measured by the first load is remembered, and judged against the new floor
    assert refused.dtype_reason.endswith(" < 1.01, using float32 (remembered)")
