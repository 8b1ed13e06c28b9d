"""`--dtype int8`: the int8 linear layer against integer arithmetic done by hand, int8 vectors against float32
ones, the accuracy gate of `--dtype auto`, auto's rule as a function of its two probes, and the refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.errors import UsageError
from simcli.models import device as device_mod
from simcli.models import encoder as encoder_mod
from simcli.models.encoder import CALIBRATION_SENTENCES, load_encoder
from simcli.models.int8 import Int8Linear, is_quantized, quantize_linear_layers
from simcli.models.native import SelfAttention
from simcli.training.options import TrainOptions
from tests.models.test_encoder import SENTENCES, reference_vectors


def _has_vnni() -> bool:
    """This CPU's own answer (the autouse fixture hides the flags from `--dtype auto`)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device_mod, "cpu_flags", REAL_CPU_FLAGS)
        return device_mod.cpu_has_int8_dot()


REAL_CPU_FLAGS = device_mod.cpu_flags  # taken at import, before the fixtures patch it


@pytest.mark.parametrize("kernel", ["int_mm", "fbgemm"])
def test_int8_linear_is_integer_arithmetic(kernel: str) -> None:
    """Int8Linear = each input row quantised with its own scale, weights per output channel (symmetric), exact
    integer products, then the two scales and the bias: computed here in numpy, float64; 3-D input gives the same
    rows, and a row's result does not depend on the rows beside it. "int_mm": rows symmetric 8-bit (largest
    magnitude / 127), weights 8-bit. "fbgemm": rows divided by their largest magnitude, then 8-bit with scale
    1 / 127 and zero point 128 (the same grid), weights 7-bit (largest / 63): no pair of products saturates 16 bits."""
    if kernel == "int_mm" and not _has_vnni():
        pytest.skip(
            "no VNNI here: torch._int_mm sums int8 pairs in saturating 16 bits (the fbgemm kernel's case)"
        )
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((13, 37)) * 2 + 0.3).astype(np.float32)
    x[3] *= 50  # one row with large activations: with a scale per row it does not coarsen the others
    w = (rng.standard_normal((29, 37)) * 0.2).astype(np.float32)
    b = rng.standard_normal(29).astype(np.float32)
    layer = Int8Linear(torch.from_numpy(w), torch.from_numpy(b), kernel)
    assert layer.kernel == kernel and kernel in repr(layer)
    got = layer(torch.from_numpy(x)).numpy()
    wd, peak = w.astype(np.float64), np.abs(x).max(1, keepdims=True)
    if kernel == "int_mm":
        sx = peak.astype(np.float64) / 127
        xq, zero, step = np.round(x / sx.astype(np.float32)), 0, sx
        sw = np.abs(wd).max(1) / 127
        wq = np.clip(np.round(w / sw[:, None].astype(np.float32)), -127, 127)
    else:
        xq = np.clip(np.round((x / peak) * 127) + 128, 0, 255)
        zero, step = 128, peak.astype(np.float64) / 127
        sw = np.abs(wd).max(1) / 63
        wq = np.clip(np.round(w / sw[:, None].astype(np.float32)), -63, 63)
    want = ((xq - zero) @ wq.T) * step * sw[None, :] + b
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(got - (x @ w.T + b)).max() > 1e-2, "the premise: int8 rounds visibly against float32"
    rows = layer(torch.from_numpy(x).reshape(1, 13, 37).expand(2, 13, 37)).numpy()
    np.testing.assert_array_equal(rows[0], got)
    np.testing.assert_array_equal(rows[1], got)
    alone = layer(torch.from_numpy(x[:1])).numpy()  # a row's result does not depend on the rows beside it
    np.testing.assert_array_equal(alone[0], got[0])


@pytest.mark.parametrize("kernel", ["int_mm", "fbgemm"])
def test_fused_query_key_value_is_the_three_layers_side_by_side(kernel: str) -> None:
    """A native attention's query, key and value become one int8 product over one quantised input: the same
    numbers as the three layers apart (scales are per token and per output channel)."""
    if kernel == "int_mm" and not _has_vnni():
        pytest.skip("no VNNI here: torch._int_mm saturates (the fbgemm kernel's case)")
    torch.manual_seed(0)
    att = SelfAttention(48)
    layers = [att.query, att.key, att.value]
    for lin in layers:  # native layers skip initialisation (weights come from a checkpoint)
        lin.weight.data, lin.bias.data = torch.randn(48, 48) * 0.1, torch.randn(48)
    x = torch.randn(2, 9, 48)
    apart = torch.cat([Int8Linear.from_linear(lin, kernel)(x) for lin in layers], -1)
    assert quantize_linear_layers(att, kernel) == 1
    assert isinstance(att.qkv, Int8Linear) and not hasattr(att, "query")
    torch.testing.assert_close(att.qkv(x), apart, rtol=0, atol=0)


def test_fbgemm_kernel_packs_for_fbgemm_whatever_the_engine() -> None:
    """The packed weights follow torch's quantized engine of the moment; built while another engine is set
    (onednn's packed weights lack the product the kernel calls), the layer still works, and the engine is
    left as it was."""
    if "onednn" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no oneDNN quantized engine")
    before = torch.backends.quantized.engine
    w, x = torch.randn(16, 32), torch.randn(5, 32)
    want = Int8Linear(w, None, "fbgemm")(x)
    try:
        torch.backends.quantized.engine = "onednn"
        layer = Int8Linear(w, None, "fbgemm")
        assert torch.backends.quantized.engine == "onednn"
    finally:
        torch.backends.quantized.engine = before
    torch.testing.assert_close(layer(x), want, rtol=0, atol=0)


def test_the_int8_kernel_follows_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    """`torch._int_mm` where oneDNN may use VNNI (AVX512-VNNI, AVX-VNNI, AMX-INT8), the fbgemm kernel elsewhere:
    flags and instruction-set caps alike (AVX-VNNI is not under the AVX-512 levels)."""

    cases = [
        ({"avx2", "avx512f", "avx512_vnni"}, None, True),
        ({"avx2", "avx512f", "avx512_vnni"}, "AVX512_CORE", False),
        ({"avx2", "avx512f", "avx512_vnni"}, "AVX2", False),
        ({"avx2", "avx_vnni"}, None, True),
        ({"avx2", "avx_vnni"}, "AVX2_VNNI", True),
        ({"avx2", "avx_vnni"}, "AVX512_CORE", False),
        ({"avx2", "avx512f", "amx_int8", "avx512_vnni"}, "AVX512_CORE_VNNI", True),
        ({"avx2", "avx512f"}, None, False),
        ({"avx2"}, None, False),
    ]
    # the cap's old name would still cap the cases that unset ONEDNN_MAX_CPU_ISA
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    for flags, cap, vnni in cases:
        monkeypatch.setattr(device_mod, "cpu_flags", lambda f=frozenset(flags): f)
        if cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert device_mod.cpu_has_int8_dot() is vnni, (flags, cap)
        assert device_mod.int8_kernel() == ("int_mm" if vnni else "fbgemm"), (flags, cap)
    with pytest.raises(ValueError, match="int8 kernel 'vnni' is not one of int_mm, fbgemm"):
        Int8Linear(torch.ones(2, 2), None, "vnni")


def test_without_vnni_int_mm_saturates_and_the_fbgemm_kernel_does_not(tmp_path: Path) -> None:
    """Why the fbgemm kernel exists: with oneDNN capped below VNNI (as on an AVX2-only CPU), `torch._int_mm` of
    large int8 values is wrong (pairs of products saturate 16 bits), while the fbgemm kernel's output for the
    same extreme input stays within its rounding of float32."""
    script = tmp_path / "saturate.py"
    script.write_text(
        "import torch\n"
        "from simcli.models.int8 import Int8Linear\n"
        "x = torch.full((32, 64), 127, dtype=torch.int8)\n"
        "print(torch._int_mm(x, x.t().contiguous())[0, 0].item())\n"
        "w, v = torch.full((32, 64), 0.5), torch.full((32, 64), 3.0)\n"
        "y = Int8Linear(w, None, 'fbgemm')(v)\n"
        "print(((y - v @ w.t()).abs().max() / (v @ w.t()).abs().max()).item())\n"
    )
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
    int_mm, fbgemm_error = out.stdout.split()
    assert int(int_mm) != 64 * 127 * 127, "oneDNN's int8 product under the AVX2 cap no longer saturates"
    assert float(fbgemm_error) < 1e-3


@pytest.mark.parametrize("engine", ["native", "transformers"])
def test_int8_vectors_within_the_gate_of_float32(roformer_sim_dir: Path, engine: str) -> None:
    """Every linear layer of the backbone becomes int8 (the pooler stays float32), and the vectors stay within
    INT8_MIN_COSINE of float32 computed independently (transformers + numpy, one sentence at a time)."""
    enc = load_encoder(str(roformer_sim_dir), dtype="int8", engine=engine, pooling="cls")
    assert enc.dtype == torch.qint8 and enc.info()["dtype"] == "int8" and enc.dtype_reason == "asked for"
    linear = [m for m in enc.backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert linear == [] and is_quantized(enc.backbone)
    assert isinstance(enc.pooler, torch.nn.Linear)
    got = enc.encode(SENTENCES, normalize=True)
    ref = reference_vectors(roformer_sim_dir, "RoFormerForCausalLM", SENTENCES, enc.tokenizer)["cls"]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (got * ref).sum(1)
    assert cos.min() >= encoder_mod.INT8_MIN_COSINE
    assert cos.min() < 0.99999, "the premise: int8 vectors differ from float32"


def test_auto_rule_from_the_probes() -> None:
    """bf16 where it is fast; else int8 where it is fast; else float32, each with the numbers as the reason."""
    rule = device_mod.choose_cpu_dtype
    assert rule(4.0, None) == (torch.bfloat16, "auto: bf16 matmul 4.0x float32 on this CPU")
    assert rule(4.0, 3.0)[0] == torch.bfloat16  # fast bf16 wins whatever int8 does
    assert rule(0.0, 2.5) == (
        torch.qint8,
        "auto: CPU has no native bf16; int8 linear layers 2.5x float32",
    )
    assert rule(1.2, 1.5) == (
        torch.qint8,
        "auto: bf16 matmul only 1.2x float32 on this CPU; int8 linear layers 1.5x float32",
    )
    assert rule(0.0, 1.29) == (
        torch.float32,
        "auto: CPU has no native bf16, int8 linear layers only 1.3x float32",
    )
    assert rule(1.49, 0.0)[0] == torch.float32
    assert rule(0.0, None) == (torch.float32, "auto: CPU has no native bf16")


def test_auto_measures_int8_only_where_bf16_is_not_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """dtype_candidates feeds the rule its probes: the int8 probe runs only when bf16 is not chosen, and never
    for training (int8=False)."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_mod, "cpu_int8_speedup", lambda: 2.0)
    assert device_mod.dtype_candidates("auto", cpu)[0] == torch.qint8  # conftest: no native bf16
    assert device_mod.dtype_candidates("auto", cpu, int8=False) == (
        torch.float32,
        "auto: CPU has no native bf16",
    )
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(device_mod, "cpu_bf16_speedup", lambda: 6.0)
    monkeypatch.setattr(device_mod, "cpu_int8_speedup", lambda: pytest.fail("int8 probed where bf16 is fast"))
    assert device_mod.dtype_candidates("auto", cpu)[0] == torch.bfloat16


def test_int8_probe_is_a_real_ratio() -> None:
    """The probe times one int8 linear layer against float32 on this CPU: a positive, finite ratio."""
    ratio = device_mod.int8_linear_speedup(rows=8, n_in=64, n_out=96)
    assert 0 < ratio < float("inf")


def test_auto_keeps_int8_only_within_the_gate(
    roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where int8 is measured faster, auto tries it and keeps it only if the calibration sentences' vectors stay
    within INT8_MIN_COSINE of float32; refused, the weights are float32 as if int8 was never tried."""
    monkeypatch.setattr(device_mod, "cpu_int8_speedup", lambda: 2.0)
    kept = load_encoder(str(roformer_sim_dir))
    assert kept.dtype == torch.qint8 and is_quantized(kept.backbone)
    assert kept.dtype_reason.startswith("auto: CPU has no native bf16; int8 linear layers 2.0x float32; ")
    assert "min cosine to float32 0.9" in kept.dtype_reason
    monkeypatch.setattr(encoder_mod, "INT8_MIN_COSINE", 1.01)
    refused = load_encoder(str(roformer_sim_dir))
    assert refused.dtype == torch.float32 and not is_quantized(refused.backbone)
    assert refused.dtype_reason.startswith("auto: int8 min cosine to float32 was 0.9")
    # the cosine measured by the first load is remembered, and judged against the new floor
    assert refused.dtype_reason.endswith(" < 1.01, using float32 (remembered)")
    ref = load_encoder(str(roformer_sim_dir), dtype="float32").encode(SENTENCES)
    np.testing.assert_array_equal(refused.encode(SENTENCES), ref)


def test_auto_refuses_int8_for_a_model_with_outlier_features(
    roformer_sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose hidden states carry one channel 1000x the others (the LayerNorm gains, as the outlier
    features of large transformers, exaggerated): 8 bits a token over that range lose the other channels, so the gate
    at its real threshold falls back to float32."""
    bad = tmp_path / "outliers"
    shutil.copytree(roformer_sim_dir, bad)
    sd = torch.load(bad / "pytorch_model.bin", weights_only=True)
    for k, v in sd.items():
        if k.endswith("LayerNorm.weight"):
            v[0] *= 1000
    torch.save(sd, bad / "pytorch_model.bin")
    a = load_encoder(str(bad), dtype="float32").encode(CALIBRATION_SENTENCES, normalize=True)
    b = load_encoder(str(bad), dtype="int8").encode(CALIBRATION_SENTENCES, normalize=True)
    assert (a * b).sum(1).min() < 0.9, "the premise: int8 is bad on this model"
    monkeypatch.setattr(device_mod, "cpu_int8_speedup", lambda: 2.0)
    enc = load_encoder(str(bad))
    assert enc.dtype == torch.float32 and not is_quantized(enc.backbone)
    assert enc.dtype_reason.startswith("auto: int8 min cosine to float32 was ")
    assert enc.dtype_reason.endswith(f" < {encoder_mod.INT8_MIN_COSINE}, using float32")


def test_int8_is_cpu_only(roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA --dtype int8 is a usage error before anything is loaded; auto there stays float16."""
    with pytest.raises(
        UsageError, match=r"^--dtype int8 runs on the CPU only .* not on cuda:0: use --device cpu"
    ):
        device_mod.dtype_candidates("int8", torch.device("cuda:0"))
    monkeypatch.setattr(device_mod, "cpu_int8_speedup", lambda: pytest.fail("int8 probed for CUDA"))
    assert device_mod.dtype_candidates("auto", torch.device("cuda:0"))[0] == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match="--dtype int8 runs on the CPU only"):
        load_encoder(str(roformer_sim_dir), device="cuda", dtype="int8")


def test_training_refuses_int8() -> None:
    """Training keeps float32 weights; its --dtype is the autocast dtype, which int8 is not."""
    with pytest.raises(UsageError, match=r"^--dtype int8 cannot train: training keeps float32 weights"):
        TrainOptions(dtype="int8").check()


def test_generation_runs_on_int8_layers(roformer_sim_dir: Path) -> None:
    """The UniLM decoder shares the int8 encoder's layers: sampling and re-ranking run on them."""
    from simcli.paraphrase import load_paraphraser

    para = load_paraphraser(str(roformer_sim_dir), dtype="int8")
    assert para.encoder.dtype == torch.qint8 and is_quantized(para.encoder.backbone)
    (out,) = para.generate(["我喜欢北京"], n=4, k=2, seed=1)
    assert 1 <= len(out) <= 2 and all(isinstance(p.text, str) for p in out)


def test_decoder_of_a_transformers_engine_encoder_gets_int8_layers(roformer_sim_dir: Path) -> None:
    """An encoder on transformers' modules gets a native UniLM decoder built beside it: in the encoder's int8."""
    from simcli.models.unilm import UniLM

    enc = load_encoder(str(roformer_sim_dir), dtype="int8", engine="transformers")
    unilm = UniLM.from_encoder(enc)
    assert unilm.backbone is not enc.backbone and is_quantized(unilm.backbone)
    assert not [m for m in unilm.backbone.modules() if isinstance(m, torch.nn.Linear)]
