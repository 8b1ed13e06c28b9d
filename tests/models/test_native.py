"""simcli's native encoder (simcli/models/native.py) against transformers' RoFormerModel / BertModel, as
`build_backbone(engine="transformers")` builds them from the same checkpoint: every layer's output on a padded
batch of real sentences, for every family and the config variants the native code reads."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from simcli.errors import ModelError, UsageError
from simcli.models import native
from simcli.models.encoder import CALIBRATION_SENTENCES, load_encoder
from simcli.models.loading import Checkpoint, build_backbone, open_checkpoint
from simcli.models.tokenizers import load_tokenizer
from tests import checkpoints

FAMILIES = [
    "roformer_sim_dir",
    "wobert_dir",
    "roformer_word_dir",
    "roformer_char_dir",
    "simbert_dir",
    "bert_dir",
]
POOLINGS = ("cls", "last-avg", "first-last-avg")

# Config variants, each a checkpoint built with config.json overrides (transformers builds the same model).
VARIANTS: dict[str, Callable[[Path], Path]] = {
    "rotary_value": lambda p: checkpoints.build_roformer_sim(p, config={"rotary_value": True}),
    "embedding_size": lambda p: checkpoints.build_roformer_mlm(p, word=False, config={"embedding_size": 32}),
    "sim_embedding_size": lambda p: checkpoints.build_roformer_sim(p, config={"embedding_size": 24}),
    "gelu_new": lambda p: checkpoints.build_roformer_mlm(p, word=False, config={"hidden_act": "gelu_new"}),
    "gelu_pytorch_tanh": lambda p: checkpoints.build_roformer_mlm(
        p, word=False, config={"hidden_act": "gelu_pytorch_tanh"}
    ),
    "relu": lambda p: checkpoints.build_wobert(p, config={"hidden_act": "relu"}),
    "silu": lambda p: checkpoints.build_simbert(p, config={"hidden_act": "silu"}),
    "swish": lambda p: checkpoints.build_roformer_sim(p, config={"hidden_act": "swish"}),
    "layer_norm_eps": lambda p: checkpoints.build_roformer_sim(p, config={"layer_norm_eps": 0.5}),
    "bert_layer_norm_eps": lambda p: checkpoints.build_wobert(p, config={"layer_norm_eps": 0.5}),
    "short_positions": lambda p: checkpoints.build_simbert(p, config={"max_position_embeddings": 64}),
}


@pytest.fixture(scope="module")
def simbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SimBERT layout: char BERT with a trained pooler (family "bert")."""
    return checkpoints.build_simbert(tmp_path_factory.mktemp("native") / "simbert")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain char BERT (no pooler)."""
    return checkpoints.build_simbert(tmp_path_factory.mktemp("native") / "bert", seed=7, with_pooler=False)


@pytest.fixture(scope="module")
def variant_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    return {name: build(root / name) for name, build in VARIANTS.items()}


def padded_batch(ck: Checkpoint, texts: list[str] = CALIBRATION_SENTENCES) -> dict[str, torch.Tensor]:
    """Right-padded ids, the padding mask and segment ids (0 for the first half of each row, then 1)."""
    tok = load_tokenizer(ck.vocab_path, ck.tokenizer_kind)
    rows = tok.encode_batch(texts, 64).ids
    longest = max(map(len, rows))
    ids = torch.full((len(rows), longest), tok.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        types[i, len(r) // 2 : len(r)] = 1
    assert len({len(r) for r in rows}) > 3 and not bool(mask.all()), "premise: a padded batch"
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def all_layers(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return tuple(model(**batch, output_hidden_states=True).hidden_states)


def assert_same_layers(ck: Checkpoint, segments: bool = True) -> None:
    sd = ck.state_dict()
    mine, _ = build_backbone(ck, sd, engine="native")
    ref, _ = build_backbone(ck, sd, engine="transformers")
    assert isinstance(mine, native.NativeBackbone) and not isinstance(ref, native.NativeBackbone)
    batch = padded_batch(ck)
    if not segments:
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    got, want = all_layers(mine, batch), all_layers(ref, batch)
    assert len(got) == len(want) == ck.config["num_hidden_layers"] + 1
    real = batch["attention_mask"].bool()
    for layer, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g[real], w[real], atol=1e-5, rtol=0, msg=f"hidden_states[{layer}]")
    assert not torch.allclose(got[1][real], got[2][real], atol=1e-2), "premise: the layers change the states"


@pytest.mark.parametrize("segments", [False, True], ids=["type0", "segments"])
@pytest.mark.parametrize("fixture", FAMILIES)
def test_every_layer_equals_transformers(
    fixture: str, segments: bool, request: pytest.FixtureRequest
) -> None:
    """hidden_states (embeddings, then each block) equal transformers' at every real token to 1e-5."""
    assert_same_layers(open_checkpoint(str(request.getfixturevalue(fixture))), segments)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_variants_equal_transformers(variant: str, variant_dirs: dict[str, Path]) -> None:
    """rotary_value, embedding_size != hidden_size (embeddings_project), each hidden_act, layer_norm_eps and
    max_position_embeddings are read from config.json as transformers reads them."""
    ck = open_checkpoint(str(variant_dirs[variant]))
    mine, _ = build_backbone(ck, engine="native")
    if variant.endswith("embedding_size"):
        assert hasattr(mine, "embeddings_project"), "premise: a projected embedding"
    assert_same_layers(ck)


@pytest.mark.parametrize("fixture", FAMILIES)
def test_weight_names_and_shapes_are_transformers(fixture: str, request: pytest.FixtureRequest) -> None:
    """The native module reads exactly the state dict keys (and shapes) transformers' model holds."""
    ck = open_checkpoint(str(request.getfixturevalue(fixture)))
    mine = native.NativeBackbone.from_config(ck.config)
    ref, _ = build_backbone(ck, engine="transformers")
    assert mine.expected_shapes() == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_rows_do_not_see_padding(roformer_sim_dir: Path, wobert_dir: Path) -> None:
    """Each row of a padded batch equals the row encoded alone (the key mask hides padding)."""
    for d in (roformer_sim_dir, wobert_dir):
        ck = open_checkpoint(str(d))
        model, _ = build_backbone(ck, engine="native")
        batch = padded_batch(ck)
        padded = all_layers(model, batch)[-1]
        unmasked = all_layers(model, {**batch, "attention_mask": torch.ones_like(batch["input_ids"])})[-1]
        for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
            alone = all_layers(model, {k: v[i : i + 1, :n] for k, v in batch.items()})[-1][0]
            torch.testing.assert_close(padded[i, :n], alone, atol=1e-5, rtol=0)
            if n < batch["input_ids"].shape[1]:
                assert not torch.allclose(unmasked[i, :n], alone, atol=1e-3), "premise: padding would show"


def test_rotary_table_is_transformers(roformer_char_dir: Path) -> None:
    """The computed sinusoidal table equals the one transformers initialises (sin half, then cos half)."""
    ck = open_checkpoint(str(roformer_char_dir))
    ref, _ = build_backbone(ck, engine="transformers")
    table = ref.encoder.embed_positions.weight
    assert "roformer.encoder.embed_positions.weight" not in ck.keys, "premise: the hub files omit it"
    torch.testing.assert_close(native.sinusoidal_table(*table.shape), table.detach(), atol=0, rtol=0)


def test_rotary_table_from_the_checkpoint_is_used(roformer_sim_dir: Path, model_copy) -> None:  # type: ignore[no-untyped-def]
    """A file that carries `encoder.embed_positions.weight` is read, not recomputed (as transformers does)."""
    d = model_copy(roformer_sim_dir)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    cfg = json.loads((d / "config.json").read_text())
    head = cfg["hidden_size"] // cfg["num_attention_heads"]
    table = native.sinusoidal_table(cfg["max_position_embeddings"], head)
    sd["roformer.encoder.embed_positions.weight"] = table.roll(1, dims=1)  # not the computed table
    torch.save(sd, d / "pytorch_model.bin")
    ck = open_checkpoint(str(d))
    mine, _ = build_backbone(ck, engine="native")
    torch.testing.assert_close(mine.encoder.embed_positions.weight, table.roll(1, dims=1), atol=0, rtol=0)
    assert_same_layers(ck)


@pytest.mark.parametrize("fixture", ["roformer_sim_dir", "wobert_dir"])
def test_encoder_vectors_agree_across_engines(fixture: str, request: pytest.FixtureRequest) -> None:
    """load_encoder picks the native engine by default; its vectors equal the transformers engine's."""
    d = str(request.getfixturevalue(fixture))
    auto = load_encoder(d, dtype="float32")
    forced = load_encoder(d, dtype="float32", engine="transformers")
    assert (auto.engine, forced.engine) == ("native", "transformers")
    assert auto.info()["engine"] == "native"
    modes = [*POOLINGS, *(["pooler"] if auto.checkpoint.has_pooler else [])]
    a = auto.encode_poolings(CALIBRATION_SENTENCES, modes)
    b = forced.encode_poolings(CALIBRATION_SENTENCES, modes)
    for m in modes:
        np.testing.assert_allclose(a[m], b[m], atol=1e-5, rtol=0, err_msg=m)


def test_unsupported_activation_falls_back_to_transformers(tmp_path: Path) -> None:
    """A hidden_act the native code lacks (quick_gelu) runs on transformers under auto; forcing native is
    an error that names it."""
    d = checkpoints.build_roformer_mlm(tmp_path / "quick", word=False, config={"hidden_act": "quick_gelu"})
    assert native.unsupported(json.loads((d / "config.json").read_text())) is not None
    enc = load_encoder(str(d), dtype="float32")
    assert enc.engine == "transformers" and not isinstance(enc.backbone, native.NativeBackbone)
    ref = load_encoder(str(d), dtype="float32", engine="transformers")
    np.testing.assert_array_equal(enc.encode(CALIBRATION_SENTENCES), ref.encode(CALIBRATION_SENTENCES))
    with pytest.raises(ModelError, match="native engine does not implement .*hidden_act 'quick_gelu'"):
        load_encoder(str(d), engine="native")


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"hidden_act": "gelu_fast"}, "hidden_act 'gelu_fast'"),
        ({"hidden_size": 50}, "not a multiple of num_attention_heads"),
        ({"hidden_size": 36, "num_attention_heads": 12}, "even head size"),
        ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ],
)
def test_unsupported_configs_are_named(override: dict[str, Any], reason: str) -> None:
    config = {"model_type": "roformer", "hidden_size": 48, "num_attention_heads": 4, **override}
    assert reason in (native.unsupported(config) or "")
    assert native.unsupported({"model_type": "bert", "position_embedding_type": "relative_key"})
    assert native.unsupported({"model_type": "bert"}) is None  # transformers' defaults fill the rest


def test_bad_engine_name(roformer_sim_dir: Path) -> None:
    with pytest.raises(UsageError, match="engine must be one of auto, native, transformers, got 'onnx'"):
        load_encoder(str(roformer_sim_dir), engine="onnx")


@pytest.mark.parametrize("engine", ["native", "transformers"])
def test_weight_errors_are_the_same_for_both_engines(roformer_sim_dir: Path, model_copy, engine: str) -> None:  # type: ignore[no-untyped-def]
    d = model_copy(roformer_sim_dir)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    for k in ("roformer.encoder.layer.1.output.dense.weight", "roformer.embeddings.LayerNorm.bias"):
        del sd[k]
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(ModelError) as missing:
        load_encoder(str(d), engine=engine)
    weights = d / "pytorch_model.bin"
    assert str(missing.value) == (
        f"{weights}: weights missing for embeddings.LayerNorm.bias, encoder.layer.1.output.dense.weight"
    )
    cfg = json.loads((roformer_sim_dir / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 40}))
    torch.save(torch.load(roformer_sim_dir / "pytorch_model.bin", weights_only=True), weights)
    with pytest.raises(ModelError) as shape:
        load_encoder(str(d), engine=engine)
    assert str(shape.value) == (
        f"{weights}: encoder.layer.0.intermediate.dense.weight has shape (37, 48), config.json implies (40, 48)"
    )


def test_cast_copy_eval_and_parameters(roformer_sim_dir: Path) -> None:
    """What the encoder does with a backbone: `.to(device, dtype)`, deepcopy, `.eval()`, `.parameters()`."""
    ck = open_checkpoint(str(roformer_sim_dir))
    model, _ = build_backbone(ck, engine="native")
    batch = padded_batch(ck)
    ref = all_layers(model, batch)[-1]
    low = copy.deepcopy(model).to(device="cpu", dtype=torch.bfloat16).eval()
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    assert low.encoder.embed_positions.weight.dtype == torch.bfloat16  # cast like transformers' table
    assert {p.dtype for p in model.parameters()} == {torch.float32}, "the copy was cast, not the original"
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(v.numel() for k, v in model.state_dict().items() if "embed_positions" not in k)
    got = all_layers(low, batch)[-1].float()
    real = batch["attention_mask"].bool()
    cos = torch.nn.functional.cosine_similarity(got[real], ref[real], dim=-1)
    assert float(cos.min()) > 0.98


def test_generation_runs_on_the_native_backbone(roformer_sim_dir: Path) -> None:
    """The paraphraser's UniLM decoder shares the encoder's native backbone (one copy of the weights); an
    encoder on transformers' modules handed to UniLM gets a native backbone with the same weights, so the
    logits are the same bits."""
    from simcli.models.unilm import UniLM
    from simcli.paraphrase import load_paraphraser

    para = load_paraphraser(str(roformer_sim_dir), device="cpu", dtype="float32")
    assert para.encoder.engine == "native" and para.unilm.backbone is para.encoder.backbone
    enc = load_encoder(str(roformer_sim_dir), pooling="pooler", dtype="float32", engine="transformers")
    assert enc.engine == "transformers"
    unilm = UniLM.from_encoder(enc)
    assert isinstance(unilm.backbone, native.NativeBackbone)
    ids = torch.tensor([enc.tokenizer.encode("花呗怎么还款", 64)])
    lengths = torch.tensor([ids.shape[1]])
    _, a = unilm.prefill(ids, lengths)
    _, b = para.unilm.prefill(ids, lengths)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def padding_bias(mask: torch.Tensor) -> torch.Tensor:
    """The additive key mask the padded pass uses, given as `attention_bias` (which turns packing off)."""
    bias = torch.zeros(mask.shape).masked_fill_(mask == 0, torch.finfo(torch.float32).min)
    return bias[:, None, None, :]


@pytest.mark.parametrize("fixture", ["roformer_sim_dir", "wobert_dir", "simbert_dir"])
def test_packed_pass_equals_the_padded_pass(fixture: str, request: pytest.FixtureRequest) -> None:
    """A padded batch runs its position-wise layers on the real tokens only (native.Packing): every layer's
    real-token states and the weights' gradients of a masked-mean loss equal the padded pass's, and the
    padding positions come out zero."""
    ck = open_checkpoint(str(request.getfixturevalue(fixture)))
    batch = padded_batch(ck)
    mask = batch["attention_mask"]
    real = mask.bool()
    runs = []
    for bias in (None, padding_bias(mask)):  # packed (the default for a padded batch), then padded
        model, _ = build_backbone(ck, engine="native")
        out = model(**batch, output_hidden_states=True, attention_bias=bias)
        loss = sum((h * mask[..., None]).sum() / mask.sum() for h in out.hidden_states[1:])
        loss.backward()  # type: ignore[union-attr]
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        runs.append((out.hidden_states, grads))
    (packed, packed_grads), (padded, padded_grads) = runs
    for layer, (a, b) in enumerate(zip(packed, padded, strict=True)):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=0, msg=f"hidden_states[{layer}]")
        if layer:
            assert not bool(a[~real].any()), "padding positions are zero"
            assert bool(b[~real].any()), "premise: the padded pass computes them"
    assert packed_grads.keys() == padded_grads.keys() and len(packed_grads) > 10
    for name, g in packed_grads.items():
        torch.testing.assert_close(g, padded_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def _attention_float64(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v in float64, written out: the reference for every attention kernel."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if bias is not None:
        scores = scores + bias.double().clamp(min=-1e30)  # dtype min stays a mask, not -inf arithmetic
    weights = scores.exp() * (scores > -1e29)
    return (weights / weights.sum(-1, keepdim=True)) @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("keys", [1, 7, 12, 15, 16, 31, 32, 40, 64])
@pytest.mark.parametrize("mask", ["keys", "per-query", "none"])
def test_attention_at_every_length_equals_the_formula(dtype: torch.dtype, keys: int, mask: str) -> None:
    """`native.attention` at inference (keys first up to its length limit, SDPA / eager above) equals the
    float64 formula: float32 to 1e-5, bf16 no further than transformers' eager bf16 attention is from it
    (64 keys: bf16 through SDPA)."""
    torch.manual_seed(keys)
    b, heads, queries, hd = 5, 3, (1 if keys == 40 else keys), 16  # 40: one decoding step over 40 keys
    q, k, v = (torch.randn(b, heads, n, hd).to(dtype) for n in (queries, keys, keys))
    bias: torch.Tensor | None = None
    if mask != "none":
        bias = torch.zeros(b, 1, queries if mask == "per-query" else 1, keys, dtype=dtype)
        bias[1, ..., keys // 2 + 1 :] = torch.finfo(dtype).min  # row 1 ends early
        if mask == "per-query":
            bias[2] = torch.full((queries, keys), torch.finfo(dtype).min).triu(1)  # causal
    with torch.inference_mode():
        got = native.attention(q, k, v, bias)
        eager = (q @ k.transpose(-1, -2) / hd**0.5 + (0 if bias is None else bias)).softmax(-1) @ v
    want = _attention_float64(q, k, v, bias)
    assert got.dtype == dtype and got.shape == want.shape
    error = (got.double() - want).abs().max().item()
    if dtype == torch.float32:
        assert error <= 1e-5, error
    else:
        assert error <= max((eager.double() - want).abs().max().item(), 2**-8), error
    kernel = native.attention_kernel("cpu", dtype, keys, grad=False)
    assert (kernel == "keys-first") == (keys <= (15 if dtype == torch.float32 else 31)), kernel
    assert native.attention_kernel("cpu", dtype, keys, grad=True) != "keys-first"  # training: autograd


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("parts", [2, 3])
def test_rotating_fused_projections_equals_rotating_each(dtype: torch.dtype, parts: int) -> None:
    """`_rotate_heads` on fused query/key/value projections gives exactly `_rotate` of each, laid out
    (batch, heads, seq, head_dim) and contiguous; a float32 input is left as it was."""
    b, t, heads, hd = 3, 9, 4, 8
    x = torch.randn(b, t, 3 * heads * hd).to(dtype)
    before = x.clone()
    cos, sin = native._interleave(native.sinusoidal_table(t, hd))
    rotated = native._rotate_heads(x, cos, sin, parts, heads)
    split = x.view(b, t, 3, heads, hd).permute(2, 0, 3, 1, 4)
    assert len(rotated) == parts
    for got, part in zip(rotated, split, strict=False):
        assert got.is_contiguous() and got.dtype == dtype
        assert torch.equal(got, native._rotate(part, cos, sin))
    assert torch.equal(x, before)


def test_spread_puts_real_tokens_in_place_and_copies_at_the_padding() -> None:
    """`Packing.spread` (the padded layout attention reads) equals `unpack` at every real position, and a
    padding position holds its row's last real token; from the mask and from the lengths alike."""
    lengths, seq = [4, 1, 3, 4], 4
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    x = torch.arange(sum(lengths) * 2, dtype=torch.float32).view(-1, 2) + 1
    for packing in (native.Packing.of(mask), native.Packing.of_lengths(lengths, seq, torch.device("cpu"))):
        spread, zeros = packing.spread(x), packing.unpack(x)
        real = mask.bool()
        assert torch.equal(spread[real], zeros[real]) and not zeros[~real].any()
        for row, n in enumerate(lengths):
            assert torch.equal(spread[row, n:], zeros[row, n - 1].expand(seq - n, 2))
