"""`simcli whiten fit` / `simcli whiten info`: exit codes, exact output, files checked against numpy."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from simcli.models.encoder import load_encoder
from simcli.whitening import Whitening
from tests.invoke import simcli as run

SENTENCES = [
    "".join(p)
    for p in itertools.product(
        ["我", "你", "老师"], ["喜欢", "想去", "不喜欢"], ["北京", "花呗", "公园", "手机"]
    )
]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """36 distinct sentences, 12 of them twice (48 lines), and an empty line that is skipped."""
    lines = SENTENCES + SENTENCES[:12] + [""]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_fit_from_text_matches_numpy(roformer_sim_dir: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.whiten"
    r = run("whiten", "fit", corpus, "--model", roformer_sim_dir, "--pooling", "first-last-avg",
            "--dim", 16, "--dtype", "float32", "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"wrote {out}: 48 vectors, 48 -> 16 dimensions, beta 1, gamma 1, rank 35\n"
    w = Whitening.load(out)
    enc = load_encoder(str(roformer_sim_dir), pooling="first-last-avg", dtype="float32")
    assert w.spec == enc.spec
    x = enc.encode(SENTENCES + SENTENCES[:12]).astype(np.float64)
    u, s, _ = np.linalg.svd(np.cov(x, rowvar=False, bias=True))
    assert int((s > s[0] * 1e-9).sum()) == 35, "premise: 36 distinct sentences span 35 directions"
    ref = (u / np.sqrt(s))[:, :16]
    signs = np.sign((w.W * ref).sum(0))
    np.testing.assert_allclose(w.W * signs, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    np.testing.assert_allclose(w.mu, x.mean(0), rtol=1e-5, atol=1e-6)


def test_fit_from_store_equals_library_fit(roformer_sim_dir: Path, tmp_path: Path) -> None:
    from simcli.io import Record
    from simcli.store import VectorStore, encode_to_store

    enc = load_encoder(str(roformer_sim_dir), pooling="first-last-avg", dtype="float32")
    records = [Record(t, "in.txt", i + 1) for i, t in enumerate(SENTENCES * 2)]
    encode_to_store(records, enc, tmp_path / "s.vec", shard_size=25)
    out = tmp_path / "s.whiten"
    r = run(
        "whiten", "fit", tmp_path / "s.vec", "--dim", 8, "--beta", 0.5, "--gamma", 0.5, "--out", out, "--json"
    )
    assert r.exit_code == 0, r.stderr
    meta = json.loads(r.stdout)
    w = Whitening.load(out)
    assert meta == {"out": str(out), **w.metadata()}
    ref = Whitening.fit(
        VectorStore.open(tmp_path / "s.vec").vectors(), dim=8, beta=0.5, gamma=0.5, spec=enc.spec
    )
    np.testing.assert_allclose(w.mu, ref.mu, rtol=1e-13)
    np.testing.assert_allclose(w.W, ref.W, rtol=1e-9, atol=1e-12 * np.abs(ref.W).max())
    assert (meta["n"], meta["dim_out"], meta["beta"], meta["gamma"], meta["source"]) == (
        72,
        8,
        0.5,
        0.5,
        str(tmp_path / "s.vec"),
    )
    # a store of normalised vectors is refused (kexue.fm/archives/8069)
    encode_to_store(records, enc, tmp_path / "n.vec", normalize=True)
    r = run("whiten", "fit", tmp_path / "n.vec", "--out", tmp_path / "n.whiten")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == (
        f"simcli: error: {tmp_path / 'n.vec'}: the store holds L2-normalised vectors; whitening must be fitted "
        "on raw vectors (re-encode without --normalize)\n"
    )
    r = run("whiten", "fit", tmp_path / "s.vec", "--model", roformer_sim_dir, "--out", tmp_path / "x.whiten")
    assert (r.exit_code, r.stderr) == (
        2,
        "simcli: error: --model is for text sources: a store records its model\n",
    )


def test_fit_refusals_and_clamp(roformer_sim_dir: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.whiten"
    model = ("--model", str(roformer_sim_dir), "--pooling", "first-last-avg", "--dtype", "float32")
    r = run("whiten", "fit", corpus, "--out", out)
    assert (r.exit_code, r.stderr) == (
        2,
        "simcli: error: text sources need --model (or give a store folder)\n",
    )
    r = run("whiten", "fit", corpus, *model, "--out", out)  # 36 distinct sentences < d = 48
    assert r.exit_code == 1 and not out.exists() and r.stdout == ""
    assert r.stderr.startswith(
        f"simcli: {roformer_sim_dir} (roformer-sim, first-last-avg, dim 48) on cpu float32\n"
    )
    assert r.stderr.splitlines()[-1] + "\n" == (
        "simcli: error: whitening: covariance of 48 vectors of dimension 48 has rank 35 < --dim 48 "
        "(need N well above d); use --dim 35 or less, more vectors, or --clamp\n"
    )
    r = run("whiten", "fit", corpus, *model, "--out", out, "--clamp")
    assert r.exit_code == 0
    assert r.stderr.endswith(
        "simcli: warning: --dim 48 lowered to the covariance rank 35 (48 vectors of dimension 48)\n"
    )
    assert r.stdout == f"wrote {out}: 48 vectors, 48 -> 35 dimensions, beta 1, gamma 1, rank 35\n"
    assert np.isfinite(Whitening.load(out).W).all()
    r = run("whiten", "fit", corpus, *model, "--out", out, "--dim", 4)
    assert (r.exit_code, r.stderr) == (
        1,
        f"simcli: error: --out {out} exists (use --overwrite to replace it)\n",
    )
    r = run("whiten", "fit", corpus, *model, "--out", out, "--dim", 4, "--overwrite")
    assert r.exit_code == 0 and Whitening.load(out).dim_out == 4
    r = run("whiten", "fit", corpus, *model, "--out", tmp_path / "big.whiten", "--dim", 100)
    assert r.exit_code == 2
    assert (
        r.stderr.splitlines()[-1]
        == "simcli: error: --dim must be between 1 and 48 (the vector dimension), got 100"
    )
    r = run("whiten", "fit", tmp_path / "missing.txt", *model, "--out", tmp_path / "m.whiten")
    assert (r.exit_code, r.stderr) == (1, f"simcli: error: {tmp_path / 'missing.txt'}: no such file\n")


def test_info(tmp_path: Path) -> None:
    from simcli.types import ModelSpec

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.array([4.0, 3, 2, 1, 0.5, 0.25])
    spec = ModelSpec("tiny", "ab" * 32, "wobert", "word", "cls", 64, 6)
    w = Whitening.fit(x, dim=2, spec=spec, source="corpus.vec")
    path = tmp_path / "w.whiten"
    w.save(path)
    kept = w.eigenvalues[:2].sum() / w.eigenvalues.sum()
    r = run("whiten", "info", path)
    assert r.exit_code == 0
    # aligned columns, as `simcli info` and `simcli index info` print them
    assert r.stdout == (
        f"file            {path}\n"
        "vectors         200\n"
        "dimensions      6 -> 2\n"
        "beta            1\n"
        "gamma           1\n"
        "rank            6\n"
        f"kept_variance   {100 * kept:.2f}%\n"
        "model           tiny\n"
        "pooling         cls\n"
        "max_length      64\n"
        f"weights_sha256  {'ab' * 32}\n"
        "source          corpus.vec\n"
        f"sha256          {w.sha256}\n"
    )
    r = run("whiten", "info", path, "--json")
    assert json.loads(r.stdout) == {"file": str(path), **w.metadata(), "kept_variance": pytest.approx(kept)}
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    r = run("whiten", "info", path)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == f"simcli: error: {path}: content hash mismatch (file altered or truncated)\n"
