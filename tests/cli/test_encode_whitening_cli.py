"""`simcli encode --whitening FILE`: whitened, L2-normalised vectors, checked against numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simcli.models.encoder import load_encoder
from simcli.store import VectorStore
from simcli.whitening import Whitening
from tests.invoke import simcli

SENTENCES = [
    f"{a}{b}怎么办"
    for a in ("花呗", "借呗", "信用卡", "银行卡", "余额宝", "支付宝")
    for b in ("还款", "冻结", "提额", "注销", "开通", "转账", "退款", "逾期", "利息", "分期")
]


def _fit(tmp_path: Path, model: Path, pooling: str, dim: int) -> tuple[Path, Whitening, np.ndarray]:
    raw = load_encoder(str(model), pooling=pooling, dtype="float32").encode(SENTENCES)
    spec = load_encoder(str(model), pooling=pooling, dtype="float32").spec
    w = Whitening.fit(raw, dim=dim, spec=spec)
    path = tmp_path / "w.whiten"
    w.save(path)
    return path, w, raw


def test_encode_json_with_whitening_equals_numpy(tmp_path: Path, roformer_sim_dir: Path) -> None:
    path, w, raw = _fit(tmp_path, roformer_sim_dir, "cls", dim=8)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    result = simcli(
        "encode",
        str(corpus),
        "--model",
        str(roformer_sim_dir),
        "--pooling",
        "cls",
        "--dtype",
        "float32",
        "--whitening",
        str(path),
        "--json",
    )
    assert result.exit_code == 0, result.output
    got = np.array([json.loads(line)["vector"] for line in result.stdout.splitlines()])
    expected = (
        raw.astype(np.float64) - w.beta * w.mu
    ) @ w.W  # kexue.fm/archives/8069: y = (x - beta mu) W[:, :k]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert got.shape == (len(SENTENCES), 8)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got[:, :8], raw[:, :8] / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-2)


def test_store_with_whitening_records_it(tmp_path: Path, roformer_sim_dir: Path) -> None:
    path, w, _ = _fit(tmp_path, roformer_sim_dir, "pooler", dim=6)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "store"
    result = simcli(
        "encode",
        str(corpus),
        "--model",
        str(roformer_sim_dir),
        "--dtype",
        "float32",
        "--whitening",
        str(path),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    store = VectorStore.open(out)
    assert store.dim == 6 and store.normalized and store.count == len(SENTENCES)
    assert store.spec.extra["whitening_sha256"] == w.sha256
    np.testing.assert_allclose(np.linalg.norm(store.vectors(), axis=1), 1.0, rtol=1e-5)


def test_whitening_of_another_pooling_is_refused(tmp_path: Path, roformer_sim_dir: Path) -> None:
    path, _, _ = _fit(tmp_path, roformer_sim_dir, "cls", dim=8)
    corpus = tmp_path / "c.txt"
    corpus.write_text("花呗\n", encoding="utf-8")
    result = simcli(
        "encode", str(corpus), "--model", str(roformer_sim_dir), "--whitening", str(path), "--json"
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"simcli: error: whitening {path} (fitted for model {roformer_sim_dir}) does not fit model {roformer_sim_dir}"
    )
    assert result.stderr.rstrip().endswith("pooling 'cls' != 'pooler'")


def test_store_with_whitening_records_device_and_dtype(tmp_path: Path, roformer_sim_dir: Path) -> None:
    """`computed_with` names the device and dtype under the whitening (it used to say "unknown")."""
    path, _, _ = _fit(tmp_path, roformer_sim_dir, "pooler", dim=6)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "store"
    args = [
        "encode",
        str(corpus),
        "--model",
        str(roformer_sim_dir),
        "--whitening",
        str(path),
        "--out",
        str(out),
    ]
    for dtype in ("float32", "bfloat16", "int8"):
        result = simcli(*args, "--dtype", dtype, "--device", "cpu", "--overwrite")
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        assert [s["computed_with"] for s in manifest["shards"]] == [{"device": "cpu", "dtype": dtype}]
