"""bf16 linear layers packed once for oneDNN (simcli/models/packed.py): the product against float64 numpy, the
fused query/key/value product against the three separate ones, and whole encoders against the unpacked bf16
and float32 ones (both engines, the padded and the unpadded paths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.models import encoder as encoder_mod
from simcli.models.encoder import load_encoder
from simcli.models.native import SelfAttention
from simcli.models.packed import PackedLinear, is_packed, packing_available
from tests.models.test_encoder import SENTENCES

pytestmark = pytest.mark.skipif(not packing_available(), reason="this CPU / torch has no oneDNN bf16")


def _bf16(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).to(torch.bfloat16)


def test_packed_linear_is_the_bf16_product_rounded_once() -> None:
    """x W^T + b of the bf16 inputs, summed in float64 by numpy, then rounded to bf16 once: the packed layer
    differs by at most one bf16 rounding step (2^-8 relative) plus float32 accumulation error."""
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((37, 96)), rng.standard_normal((80, 96)) * 0.1, rng.standard_normal(80)
    xb, wb, bb = _bf16(x), _bf16(w), _bf16(b)
    got = PackedLinear(wb, bb)(xb)
    assert got.dtype == torch.bfloat16 and got.shape == (37, 80)
    want = xb.double().numpy() @ wb.double().numpy().T + bb.double().numpy()
    err = np.abs(got.double().numpy() - want)
    assert (err <= np.abs(want) * 2**-8 + 1e-3).all(), err.max()
    # 3-D input and a transposed (strided) one give the same rows
    got3 = PackedLinear(wb, bb)(xb.view(1, 37, 96).expand(2, 37, 96).transpose(0, 1))
    assert torch.equal(got3[:, 0], got) and torch.equal(got3[:, 1], got)


def test_fused_layer_is_the_separate_layers_side_by_side() -> None:
    rng = np.random.default_rng(1)
    x = _bf16(rng.standard_normal((11, 64)))
    att = SelfAttention(64)
    layers = [att.query, att.key, att.value]
    for lin in layers:  # native layers skip initialisation (weights come from a checkpoint)
        lin.weight.data, lin.bias.data = (
            _bf16(rng.standard_normal((64, 64)) * 0.1),
            _bf16(rng.standard_normal(64)),
        )
    apart = torch.cat([PackedLinear(lin.weight, lin.bias)(x) for lin in layers], -1)
    att.fuse(PackedLinear)
    fused = att.qkv(x)  # type: ignore[misc]
    assert fused.shape == (11, 192) and torch.equal(fused, apart)


@pytest.mark.parametrize(("act", "approximate"), [("gelu", "none"), ("gelu_new", "tanh")])
def test_activation_and_residual_fused_into_the_product(act: str, approximate: str) -> None:
    """The post-ops give what the separate passes give, GELU in float64 on the rounded product and the add
    of the residual, up to the one extra bf16 rounding step the separate passes make."""
    rng = np.random.default_rng(2)
    x, w, b = (
        _bf16(rng.standard_normal((29, 64))),
        _bf16(rng.standard_normal((96, 64)) * 0.2),
        _bf16(np.ones(96)),
    )
    plain, fused = PackedLinear(w, b), PackedLinear(w, b, act)
    want = torch.nn.functional.gelu(plain(x).double(), approximate=approximate)
    err = (fused(x).double() - want).abs()
    assert (err <= want.abs() * 2**-7 + 2e-2).all(), err.max()
    assert not torch.equal(
        fused(x), plain(x)
    )  # the activation was applied (GELU moves every negative output)
    residual = _bf16(rng.standard_normal((29, 96)))
    summed = (plain(x).double() + residual.double()).to(torch.bfloat16)
    assert (plain.plus(x, residual).double() - summed.double()).abs().max() <= 2**-6 * summed.abs().max()


def test_rounded_packing_keeps_every_vector(roformer_sim_dir: Path) -> None:
    """Packed rows rounded up to a multiple (extra copies of the last token, never read back): the same
    vectors as without rounding, and the rows each product sees are a multiple."""
    from simcli.models.native import Packing

    lengths, seq = [5, 3, 7, 1], 7
    packing = Packing.of_lengths(lengths, seq, torch.device("cpu"), 8)
    assert packing.gather is None and packing.index.numel() == 16  # 16 tokens: a multiple already
    rounded = Packing.of_lengths(lengths, seq, torch.device("cpu"), 32)
    x = torch.randn(4, seq, 3)
    packed = rounded.pack(x)
    exact = Packing.of_lengths(lengths, seq, x.device)
    assert packed.shape == (32, 3) and torch.equal(packed[:16], exact.pack(x))
    assert torch.equal(rounded.unpack(packed), exact.unpack(exact.pack(x)))
    whole = Packing.whole(3, 5, 32)  # a batch without padding: its rows rounded, zero rows added
    assert whole.pack(x[:3, :5]).shape == (32, 3) and torch.equal(
        whole.unpack(whole.pack(x[:3, :5])), x[:3, :5]
    )
    enc = load_encoder(str(roformer_sim_dir), dtype="float32", pooling="cls")
    texts = SENTENCES * 3 + ["花呗怎么还款"] * 3  # padded batches, and a batch of one length (no padding)
    plain = enc.encode(texts)
    enc.backbone.token_multiple = 32
    packed_rows: list[int] = []  # rows of the packed inputs of the first feed-forward product
    hook = enc.backbone.encoder.layer[0].intermediate.dense.register_forward_hook(
        lambda m, i, o: packed_rows.append(i[0].shape[0]) if i[0].dim() == 2 else None
    )
    np.testing.assert_allclose(enc.encode(texts), plain, atol=1e-5)
    hook.remove()
    assert packed_rows and all(r % 32 == 0 for r in packed_rows)


def _plain_bf16(monkeypatch: pytest.MonkeyPatch, model: Path, engine: str):  # type: ignore[no-untyped-def]
    with monkeypatch.context() as m:
        m.setattr(encoder_mod, "packing_available", lambda: False)
        return load_encoder(str(model), dtype="bfloat16", engine=engine, pooling="cls")


@pytest.mark.parametrize("engine", ["native", "transformers"])
def test_bf16_encoder_packs_its_layers_and_keeps_its_vectors(
    roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    packed = load_encoder(str(roformer_sim_dir), dtype="bfloat16", engine=engine, pooling="cls")
    plain = _plain_bf16(monkeypatch, roformer_sim_dir, engine)
    assert is_packed(packed.backbone) and not is_packed(plain.backbone)
    assert not [m for m in packed.backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert isinstance(packed.pooler, torch.nn.Linear)  # the pooler stays as it was
    if engine == "native":
        attention = [m for m in packed.backbone.modules() if isinstance(m, SelfAttention)]
        assert attention and all(isinstance(a.qkv, PackedLinear) for a in attention)
        assert not any(hasattr(a, "query") for a in attention)
    ref = load_encoder(str(roformer_sim_dir), dtype="float32", engine=engine, pooling="cls")
    texts = SENTENCES * 3  # several lengths a batch: the padded (packing) path
    f32, a, b = (e.encode(texts, normalize=True) for e in (ref, packed, plain))
    # the same bf16 arithmetic up to summation order: as close to the unpacked bf16 as that is to float32
    assert (a * b).sum(1).min() > 0.999
    assert (a * f32).sum(1).min() >= (b * f32).sum(1).min() - 2e-3


def test_packed_unpadded_and_cached_paths_agree(
    roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One sentence (no padding: the fused product on the (batch, seq) layout) and the UniLM decoder's cached
    pass, packed against unpacked bf16."""
    from simcli.models.unilm import UniLM

    packed = load_encoder(str(roformer_sim_dir), dtype="bfloat16", pooling="cls")
    plain = _plain_bf16(monkeypatch, roformer_sim_dir, "native")
    one = SENTENCES[:1]
    assert (packed.encode(one, normalize=True) * plain.encode(one, normalize=True)).sum() > 0.999
    ids = torch.tensor([packed.tokenizer.encode_batch(one, 32).ids[0]])
    lengths = torch.tensor([ids.shape[1]])
    logits = []
    for enc in (packed, plain):
        unilm = UniLM.from_encoder(enc)
        assert unilm.backbone is enc.backbone  # one copy of the weights
        cache, first = unilm.prefill(ids, lengths)
        bias = unilm.key_bias(torch.ones(1, cache.length + 1, dtype=torch.bool))
        cache = cache.select(torch.tensor([0]), capacity=cache.length + 1)
        logits += [first, unilm.step(first.argmax(-1), lengths.clone(), bias, cache)]
    for a, b in zip(logits[:2], logits[2:], strict=True):
        assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.999


def test_decoder_of_a_transformers_engine_encoder_is_packed_too(roformer_sim_dir: Path) -> None:
    """An encoder on transformers' modules gets a native UniLM decoder built beside it, packed like the encoder,
    with the cached path's logits as close to the float32 decoder's as bf16 allows."""
    from simcli.models.unilm import UniLM

    ids = torch.tensor([[2, 100, 200, 300, 3]])
    lengths = torch.tensor([5])
    logits = []
    for dtype in ("bfloat16", "float32"):
        enc = load_encoder(str(roformer_sim_dir), dtype=dtype, engine="transformers")
        unilm = UniLM.from_encoder(enc)
        assert unilm.backbone is not enc.backbone and is_packed(unilm.backbone) == (dtype == "bfloat16")
        logits.append(unilm.prefill(ids, lengths)[1])
    assert torch.nn.functional.cosine_similarity(*logits, dim=-1).min() > 0.99
