"""BERT-whitening against independent numpy computations (np.cov + np.linalg.svd), kexue.fm/archives/8069."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from simcli.errors import BadInput, CorruptArtifact, ManifestMismatch, UsageError
from simcli.types import ModelSpec
from simcli.whitening import MomentAccumulator, Whitening, whitening_for

D = 24

SPEC = ModelSpec(
    model="tiny",
    weights_sha256="ab" * 32,
    family="wobert",
    tokenizer="word",
    pooling="first-last-avg",
    max_length=64,
    dim=D,
)


def anisotropic(n: int, d: int = D, seed: int = 0, offset: float = 5.0) -> np.ndarray:
    """Seeded float32 vectors with a far-from-zero mean and variances spanning four orders of magnitude."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # a random rotation: principal axes not the coordinate axes
    scales = np.logspace(1, -1, d)  # standard deviations 10 .. 0.1
    z = rng.normal(size=(n, d)) * scales
    return (z @ q.T + offset + rng.normal(size=d)).astype(np.float32)


def reference(
    x: np.ndarray, beta: float = 1.0, gamma: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mu, singular values and W = U S^(-gamma/2) from np.cov + svd, as the published code does."""
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=0)
    c = x64 - beta * mu
    cov = c.T @ c / len(x64)
    if beta == 1.0:
        np.testing.assert_allclose(cov, np.cov(x64, rowvar=False, bias=True), rtol=1e-10, atol=1e-12)
    u, s, _ = np.linalg.svd(cov)
    return mu, s, u * s ** (-gamma / 2)


def same_columns_up_to_sign(a: np.ndarray, b: np.ndarray, rtol: float) -> None:
    signs = np.sign((a * b).sum(axis=0))
    np.testing.assert_allclose(a * signs, b, rtol=rtol, atol=rtol * np.abs(b).max())


def cosines(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def test_whitened_covariance_is_identity() -> None:
    """y = (x - mu) W has identity covariance (float64), and W matches np.cov + svd."""
    x = anisotropic(4000)
    cov_x = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    assert np.abs(cov_x - np.eye(D)).max() > 10, "premise: the data are far from white"
    w = Whitening.fit(x)
    assert (w.n, w.dim_in, w.dim_out, w.rank, w.beta, w.gamma) == (4000, D, D, D, 1.0, 1.0)
    y = (x.astype(np.float64) - w.mu) @ w.W
    np.testing.assert_allclose(np.cov(y, rowvar=False, bias=True), np.eye(D), atol=1e-10)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-10)
    mu, s, w_ref = reference(x)
    np.testing.assert_allclose(w.mu, mu, rtol=1e-12)
    np.testing.assert_allclose(w.eigenvalues, s, rtol=1e-9)
    same_columns_up_to_sign(w.W, w_ref, rtol=1e-7)
    # transform: the same numbers in float32, L2-normalised
    t = w.transform(x, normalize=False)
    assert t.dtype == np.float32 and t.shape == (4000, D)
    np.testing.assert_allclose(t, y, rtol=1e-5, atol=1e-5)
    tn = w.transform(x)
    np.testing.assert_allclose(np.linalg.norm(tn, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(tn, y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-6)


def test_streaming_over_shards_equals_in_memory_fit() -> None:
    """Shards of uneven sizes, single vectors and a generator give the in-memory fit."""
    x = anisotropic(3001, seed=1, offset=300.0)  # big offset: naive sum-x-x^T would lose digits
    whole = Whitening.fit(x)
    cuts = [0, 1, 7, 500, 1999, 2000, 3001]
    shards = [x[a:b] for a, b in itertools.pairwise(cuts)]
    streamed = Whitening.fit(iter(shards))
    singles = Whitening.fit(list(x[:300]) + [x[300:]])
    for other in (streamed, singles):
        assert other.n == whole.n
        np.testing.assert_allclose(other.mu, whole.mu, rtol=1e-13)
        np.testing.assert_allclose(other.eigenvalues, whole.eigenvalues, rtol=1e-10)
        same_columns_up_to_sign(other.W, whole.W, rtol=1e-8)
    mu, s, _ = reference(x)
    np.testing.assert_allclose(streamed.eigenvalues, s, rtol=1e-9)
    np.testing.assert_allclose(streamed.mu, mu, rtol=1e-13)


def test_moment_accumulator_matches_numpy() -> None:
    x = anisotropic(1000, seed=2)
    acc = MomentAccumulator()
    for part in np.array_split(x, 9):
        acc.add(part)
    mu, cov = acc.finish()
    assert acc.n == 1000
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-13)
    np.testing.assert_allclose(cov, np.cov(x.astype(np.float64), rowvar=False, bias=True), rtol=1e-11)
    _, cov0 = acc.finish(beta=0.0)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(cov0, x64.T @ x64 / 1000, rtol=1e-11)


def test_rotation_beta_gamma_zero_keeps_all_cosines() -> None:
    x = anisotropic(500, seed=3)
    rot = Whitening.fit(x, beta=0.0, gamma=0.0)
    np.testing.assert_allclose(cosines(rot.transform(x)), cosines(x), atol=1e-5)
    np.testing.assert_allclose(rot.W.T @ rot.W, np.eye(D), atol=1e-12)  # orthogonal
    white = Whitening.fit(x)
    assert not np.allclose(cosines(white.transform(x)), cosines(x), atol=1e-2), (
        "premise: whitening changes cosines"
    )


@pytest.mark.parametrize("beta,gamma", [(0.5, 0.5), (0.0, 1.0), (1.0, 0.0)])
def test_beta_gamma_variants_match_reference(beta: float, gamma: float) -> None:
    """W = U Lambda^(-gamma/2) with the covariance taken around beta*mu (kexue.fm/archives/8069)."""
    x = anisotropic(2000, seed=4)
    w = Whitening.fit(x, beta=beta, gamma=gamma, dim=10)
    mu, s, w_ref = reference(x, beta, gamma)
    np.testing.assert_allclose(w.eigenvalues, s, rtol=1e-9)
    same_columns_up_to_sign(w.W, w_ref[:, :10], rtol=1e-7)
    y = (x.astype(np.float64) - beta * mu) @ w.W
    np.testing.assert_allclose(w.transform(x, normalize=False), y, rtol=1e-5, atol=1e-4)


def test_dimension_cut_keeps_the_top_components() -> None:
    """fit(dim=k) keeps the k largest-variance directions: the first k columns of the full fit."""
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    k = 6
    # a gap after the k-th variance, and the big axes are not the first coordinates
    variances = rng.permutation(np.concatenate([np.linspace(100, 30, k), np.logspace(0.5, -2, D - k)]))
    x = (rng.normal(size=(5000, D)) * np.sqrt(variances)) @ q.T
    cut = Whitening.fit(x.astype(np.float32), dim=k)
    full = Whitening.fit(x.astype(np.float32))
    assert cut.dim_out == k
    np.testing.assert_allclose(cut.W, full.W[:, :k], rtol=1e-12)
    top_axes = q[:, np.argsort(variances)[::-1][:k]]  # (D, k)
    # the span of the kept columns is the span of the top-k true axes (projection residual ~ sampling noise)
    basis, _ = np.linalg.qr(cut.W)
    residual = top_axes - basis @ (basis.T @ top_axes)
    assert np.abs(residual).max() < 0.02
    for j in np.argsort(variances)[::-1][k:]:
        assert np.linalg.norm(basis.T @ q[:, j]) < 0.02, "no smaller axis is kept"
    # whitened outputs of the cut are the first k outputs of the full transform
    np.testing.assert_allclose(
        cut.transform(x[:50], normalize=False), full.transform(x[:50], normalize=False)[:, :k], rtol=1e-5
    )


def test_too_few_vectors_is_refused_or_clamped_never_nan() -> None:
    """N <= d: the covariance is singular; refused with the rank, or clamped to it on request."""
    x = anisotropic(D, seed=6)  # N == d: rank d - 1
    with pytest.raises(BadInput, match=rf"rank {D - 1} < --dim {D}.*--clamp"):
        Whitening.fit(x)
    with pytest.raises(BadInput, match=r"rank 9 < --dim 12"):
        Whitening.fit(x[:10], dim=12)
    ok = Whitening.fit(x[:10], dim=9)
    assert ok.dim_out == 9 and ok.clamped_from is None
    clamped = Whitening.fit(x, clamp=True)
    assert (clamped.rank, clamped.dim_out, clamped.clamped_from) == (D - 1, D - 1, D)
    probe = anisotropic(100, seed=7)
    for w in (ok, clamped, Whitening.fit(x[:5], beta=0.0, gamma=0.0)):  # rotation: no division, full k
        out = w.transform(probe)
        assert np.isfinite(out).all() and np.isfinite(w.W).all()
    assert Whitening.fit(x[:5], beta=0.0, gamma=0.0).dim_out == D
    with pytest.raises(BadInput, match="at least 2 vectors, got 1"):
        Whitening.fit(x[:1])
    with pytest.raises(BadInput, match="all identical"):
        Whitening.fit(np.ones((50, D), dtype=np.float32))
    with pytest.raises(BadInput, match="at least 2 vectors, got 0"):
        Whitening.fit(iter([]))


def test_bad_arguments_are_refused() -> None:
    x = anisotropic(200, seed=8)
    with pytest.raises(
        UsageError, match=rf"--dim must be between 1 and {D} \(the vector dimension\), got {D + 1}"
    ):
        Whitening.fit(x, dim=D + 1)
    with pytest.raises(UsageError, match="--dim must be between 1 and"):
        Whitening.fit(x, dim=0)
    with pytest.raises(UsageError, match="--gamma"):
        Whitening.fit(x, gamma=-1)
    bad = x.copy()
    bad[3, 4] = np.nan
    with pytest.raises(BadInput, match="NaN or Inf"):
        Whitening.fit(bad)
    bad[3, 4] = np.inf
    with pytest.raises(BadInput, match="NaN or Inf"):
        Whitening.fit([x, bad])
    with pytest.raises(BadInput, match="dimension 5 after vectors of dimension 24"):
        Whitening.fit([x, x[:, :5]])


def test_transform_checks_dimension_and_keeps_zero_vector_finite() -> None:
    x = anisotropic(300, seed=9)
    w = Whitening.fit(x)
    with pytest.raises(ManifestMismatch, match=f"dimension {D}, got an array of shape"):
        w.transform(x[:, :10])
    one = w.transform(w.mu.astype(np.float32))  # exactly beta*mu (float32 round-off aside)
    assert one.shape == (D,) and np.isfinite(one).all()
    exact = Whitening.fit(x.astype(np.float64))
    assert np.array_equal(exact.transform(exact.mu), np.zeros(D, dtype=np.float32))


def test_save_load_round_trip(tmp_path: Path) -> None:
    x = anisotropic(500, seed=10)
    w = Whitening.fit(x, dim=8, beta=0.5, gamma=0.75, spec=SPEC, source="corpus.vec")
    path = tmp_path / "c.whiten"
    w.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.whiten"], "no temporary file left behind"
    back = Whitening.load(path)
    assert back.path == path
    for name in ("mu", "W", "eigenvalues"):
        assert np.array_equal(getattr(back, name), getattr(w, name))
        assert getattr(back, name).dtype == np.float64
    for name in (
        "n",
        "beta",
        "gamma",
        "rank",
        "spec",
        "clamped_from",
        "source",
        "sha256",
        "dim_in",
        "dim_out",
    ):
        assert getattr(back, name) == getattr(w, name), name
    assert np.array_equal(back.transform(x), w.transform(x))
    # a plain safetensors file: tensors and JSON metadata readable without simcli, no pickle
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert sorted(f.keys()) == ["W", "eigenvalues", "mu"]
        meta = json.loads(f.metadata()["simcli"])
    assert meta["kind"] == "whitening" and meta["n"] == 500 and meta["dim_out"] == 8
    assert meta["spec"]["pooling"] == "first-last-avg" and meta["sha256"] == w.sha256
    assert len(w.sha256) == 64
    other = Whitening.fit(x, dim=8, beta=0.5, gamma=0.75, spec=replace(SPEC, pooling="cls"))
    assert other.sha256 != w.sha256, "the hash covers the spec"


def test_load_refuses_altered_truncated_or_foreign_files(tmp_path: Path) -> None:
    w = Whitening.fit(anisotropic(200, seed=11), spec=SPEC)
    good = tmp_path / "w.whiten"
    w.save(good)
    raw = bytearray(good.read_bytes())
    altered = tmp_path / "altered.whiten"
    raw[-5] ^= 0xFF  # flip bits inside the last tensor
    altered.write_bytes(bytes(raw))
    with pytest.raises(CorruptArtifact, match="content hash mismatch"):
        Whitening.load(altered)
    truncated = tmp_path / "truncated.whiten"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CorruptArtifact, match="truncated.whiten: not a simcli whitening file"):
        Whitening.load(truncated)
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3)}, str(foreign))
    with pytest.raises(CorruptArtifact, match="no whitening metadata"):
        Whitening.load(foreign)
    with pytest.raises(CorruptArtifact, match="whitening file not found"):
        Whitening.load(tmp_path / "missing.whiten")
    text = tmp_path / "text.whiten"
    text.write_text("hello")
    with pytest.raises(CorruptArtifact, match="not a simcli whitening file"):
        Whitening.load(text)


@pytest.mark.parametrize(
    "change,named",
    [
        ({"pooling": "cls"}, "pooling 'first-last-avg' != 'cls'"),
        ({"weights_sha256": "cd" * 32}, "weights_sha256"),
        ({"max_length": 128}, "max_length 64 != 128"),
        ({"dim": 32}, "dim 24 != 32"),
    ],
)
def test_check_fits_names_what_differs(tmp_path: Path, change: dict, named: str) -> None:
    w = Whitening.fit(anisotropic(200, seed=12), spec=SPEC)
    w.save(tmp_path / "w.whiten")
    w.check_fits(SPEC, "model tiny")  # the same spec fits
    w.check_fits(replace(SPEC, model="/elsewhere/tiny"), "model copy")  # same weights elsewhere fit
    with pytest.raises(ManifestMismatch) as e:
        whitening_for(tmp_path / "w.whiten", replace(SPEC, **change), "model other")
    assert named in str(e.value)
    assert (
        f"whitening {tmp_path / 'w.whiten'} (fitted for model {SPEC.model}) does not fit model other: "
        in str(e.value)
    )


def test_check_fits_without_recorded_spec_checks_dimension() -> None:
    w = Whitening.fit(anisotropic(200, seed=13))
    w.check_fits(SPEC, "model tiny")
    with pytest.raises(ManifestMismatch, match="dim 24 != 32"):
        w.check_fits(replace(SPEC, dim=32), "model big")


def test_float32_rounding_noise_is_not_a_direction() -> None:
    """LayerNorm-like vectors (each row sums to a constant) span d-1 directions; in float32 the missing one
    holds only rounding noise, which must count as empty (not be scaled up by Lambda^(-1/2))."""
    rng = np.random.default_rng(14)
    z = rng.normal(size=(3000, D)) * np.logspace(0.5, -1, D)
    z -= z.mean(axis=1, keepdims=True)
    offset = rng.normal(size=D)
    x = (z + 30 * (offset - offset.mean())).astype(np.float32)
    acc = MomentAccumulator()
    acc.add(x)
    lam = np.linalg.eigvalsh(acc.finish()[1])[::-1]
    assert lam[-1] / lam[0] > D * np.finfo(np.float64).eps, "premise: float64 round-off alone would keep it"
    assert lam[-1] < acc.noise_floor() < lam[-2]
    with pytest.raises(BadInput, match=rf"rank {D - 1} < --dim {D}"):
        Whitening.fit(x)
    w = Whitening.fit(x, clamp=True)
    assert w.dim_out == D - 1
    y = (x.astype(np.float64) - w.mu) @ w.W
    np.testing.assert_allclose(np.cov(y, rowvar=False, bias=True), np.eye(D - 1), atol=1e-8)
    exact = Whitening.fit(z + 30 * (offset - offset.mean()), clamp=True)  # float64 input: lower floor
    assert exact.rank == D - 1


# -- sources: a vector store, or text through an encoder ----------------------------------------------------
class TableEncoder:
    """Stand-in with the SentenceEncoder interface (`spec`, `encode`): text "s<i>" -> row i of a fixed array."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.spec = SPEC
        self.calls: list[int] = []

    def encode(self, texts, *, normalize=False, stats=None, progress=None, batch_tokens=None):  # type: ignore[no-untyped-def]
        self.calls.append(len(texts))
        v = self.table[[int(t[1:]) for t in texts]]
        return v / np.linalg.norm(v, axis=1, keepdims=True) if normalize else v


def make_store(tmp_path: Path, x: np.ndarray, name: str, **options) -> Path:  # type: ignore[no-untyped-def]
    from simcli.io import Record
    from simcli.store import encode_to_store

    records = [Record(f"s{i}", "in.txt", i + 1) for i in range(len(x))]
    encode_to_store(records, TableEncoder(x), tmp_path / name, shard_size=64, **options)
    return tmp_path / name


def test_fit_store_streams_shards_and_records_the_model(tmp_path: Path) -> None:
    from simcli.whitening import fit_store

    x = anisotropic(300, seed=15)
    store = make_store(tmp_path, x, "s.vec")
    w = fit_store(store, dim=10)
    ref = Whitening.fit(x, dim=10, spec=SPEC)
    np.testing.assert_allclose(w.mu, ref.mu, rtol=1e-13)
    np.testing.assert_allclose(w.W, ref.W, rtol=1e-9)
    assert (w.n, w.spec, w.source) == (300, SPEC, str(store))
    half = fit_store(make_store(tmp_path, x, "h.vec", store_dtype="float16"), dim=10)
    assert half.n == 300 and np.isfinite(half.W).all()
    with pytest.raises(BadInput, match=r"n.vec: the store holds L2-normalised vectors"):
        fit_store(make_store(tmp_path, x, "n.vec", normalize=True))


def test_fit_texts_encodes_in_chunks_and_equals_in_memory_fit() -> None:
    from simcli.whitening import fit_texts

    x = anisotropic(230, seed=16)
    enc = TableEncoder(x)
    w = fit_texts((f"s{i}" for i in range(230)), enc, dim=12, chunk=100)
    assert enc.calls == [100, 100, 30]
    ref = Whitening.fit(x, dim=12)
    np.testing.assert_allclose(w.W, ref.W, rtol=1e-9)
    assert w.spec == SPEC
