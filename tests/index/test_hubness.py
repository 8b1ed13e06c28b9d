"""Hubness math against brute-force numpy / scipy: k-NN, N_k, skewness, anti-hubs, radii, CSLS re-ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from simcli.index import hubness as hb
from tests.invoke import simcli

N, D = 600, 24


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_data(seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((N, D)))


def clustered_data(seed: int = 1, n: int = N) -> np.ndarray:
    """A few dense clusters plus an offset: the data hubness is made of (points near the mean of each).
    The clusters are the same for every seed; the seed draws the points."""
    centres = np.random.default_rng(1).standard_normal((6, D)) * 2.0
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 6, n)] + rng.standard_normal((n, D)) + 1.5
    return unit(x)


DATA = {"random": random_data, "clustered": clustered_data}


def brute_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full float64 cosine matrix, own row excluded, argsort: the independent computation."""
    s = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(s, -np.inf)
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(s, ids, axis=1)


@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("k", [1, 10])
def test_exact_knn_nk_skewness_anti_hubs_equal_brute_force(kind: str, k: int) -> None:
    x = DATA[kind]()
    ids, sims = brute_knn(x, k)
    nb = hb.exact_knn(x, x, k, self_ids=np.arange(N), chunk=97)  # chunks that do not divide N
    np.testing.assert_array_equal(nb.ids, ids)
    np.testing.assert_allclose(nb.sims, sims, atol=1e-5)

    nk = hb.k_occurrence(nb.ids, N)
    expected = np.array([(ids == j).sum() for j in range(N)])
    np.testing.assert_array_equal(nk, expected)
    assert nk.sum() == N * k  # the mean of N_k is k
    assert hb.skewness(nk) == pytest.approx(scipy.stats.skew(expected), abs=1e-12)
    assert hb.anti_hub_share(nk) == pytest.approx(np.mean(expected == 0))
    np.testing.assert_allclose(hb.radii(nb.sims), sims.mean(axis=1), atol=1e-6)

    stats, nk2 = hb.hubness_stats(nb, N, top=5)
    np.testing.assert_array_equal(nk2, expected)
    assert stats.top[0] == (int(np.argmax(expected)), int(expected.max()))
    assert [c for _, c in stats.top] == sorted(expected, reverse=True)[:5]
    assert stats.mean_knn_cosine == pytest.approx(sims.mean(), abs=1e-6)


def test_clustered_data_is_hubbier_than_random() -> None:
    """Not an identity check: the statistic separates the two kinds of data the way the literature says."""
    skews = {}
    for kind, make in DATA.items():
        x = make()
        skews[kind] = hb.skewness(hb.k_occurrence(hb.exact_knn(x, x, 10, self_ids=np.arange(N)).ids, N))
    assert skews["clustered"] > skews["random"]


def test_skewness_edge_cases() -> None:
    assert hb.skewness(np.full(7, 10)) == 0.0  # every point equally often a neighbour (scipy says nan)
    assert np.isnan(hb.skewness(np.array([])))
    x = np.array([0, 0, 1, 5, 30], dtype=float)
    assert hb.skewness(x) == pytest.approx(scipy.stats.skew(x))


def test_drop_self_keeps_first_k_and_duplicates() -> None:
    ids = np.array([[0, 3, 2], [5, 1, 4], [7, 2, -1]])
    sims = np.array([[1.0, 0.9, 0.8], [1.0, 0.99, 0.5], [0.7, 0.6, np.nan]], dtype=np.float32)
    nb = hb.drop_self(ids, sims, np.array([0, 1, 2]), 2)
    # row 0: self first; row 1: a duplicate (id 5) before self is a genuine neighbour; row 2: self second, pad
    np.testing.assert_array_equal(nb.ids, [[3, 2], [5, 4], [7, -1]])
    np.testing.assert_allclose(nb.sims, [[0.9, 0.8], [1.0, 0.5], [0.7, np.nan]])


def test_radii_and_kth_with_padding() -> None:
    sims = np.array([[0.9, 0.5], [0.4, np.nan]], dtype=np.float32)
    np.testing.assert_allclose(hb.radii(sims), [0.7, 0.4])
    np.testing.assert_array_equal(hb.kth_similarity(sims), [0.5, -np.inf])


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_csls_rerank_over_all_candidates_equals_numpy_csls(kind: str) -> None:
    """With M covering the corpus, re-ranking cosine candidates equals CSLS over the whole corpus."""
    x = DATA[kind]()
    queries = unit(np.random.default_rng(9).standard_normal((50, D)) + (1.5 if kind == "clustered" else 0.0))
    _, sims10 = brute_knn(x, hb.CSLS_K)
    r = sims10.mean(axis=1)
    full = 2 * (queries.astype(np.float64) @ x.astype(np.float64).T) - r[None, :]
    want = np.argsort(-full, axis=1, kind="stable")[:, :10]

    nb = hb.exact_knn(queries, x, N)  # M = N: every corpus entry is a candidate
    ids, cos, csls = hb.csls_rerank(
        nb.ids, nb.sims, hb.radii(hb.exact_knn(x, x, 10, self_ids=np.arange(N)).sims), 10
    )
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(csls, np.take_along_axis(full, want, axis=1), atol=1e-5)
    np.testing.assert_allclose(cos, np.take_along_axis(queries @ x.T, want, axis=1), atol=1e-5)
    # and the re-rank changes something: CSLS is not cosine order here
    assert (ids != nb.ids[:, :10]).any()


def test_csls_rerank_ties_padding_and_short_rows() -> None:
    r = np.array([0.1, 0.1, 0.5, 0.0])
    ids = np.array([[1, 0, 2, -1], [3, -1, -1, -1]])
    cos = np.array([[0.8, 0.8, 0.9, np.nan], [0.2, np.nan, np.nan, np.nan]], dtype=np.float32)
    out_ids, out_cos, out_csls = hb.csls_rerank(ids, cos, r, 5)
    # row 0: ids 0 and 1 tie at 2*0.8-0.1 = 1.5 (lower id first); id 2 scores 1.3; then padding
    np.testing.assert_array_equal(out_ids, [[0, 1, 2, -1, -1], [3, -1, -1, -1, -1]])
    np.testing.assert_allclose(out_csls[0, :3], [1.5, 1.5, 1.3], atol=1e-6)
    np.testing.assert_allclose(out_cos[1, :1], [0.2])
    assert np.isnan(out_csls[1, 1:]).all()


def test_default_candidates() -> None:
    assert hb.default_candidates(10) == 50
    assert hb.default_candidates(20) == 80
    assert hb.default_candidates(1) == 50


# -- neighbourhoods of an index's own vectors ----------------------------------------------------------
def flat_search(x: np.ndarray):  # type: ignore[no-untyped-def]
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index, lambda q, k: index.search(q, k)


def chunked(x: np.ndarray, size: int = 128):  # type: ignore[no-untyped-def]
    return lambda: iter([x[i : i + size] for i in range(0, len(x), size)])


def test_neighbourhood_stats_through_a_flat_index_equal_brute_force() -> None:
    from simcli.index.neighbourhood import neighbourhood_stats

    x = clustered_data()
    _, search = flat_search(x)
    rep = neighbourhood_stats(search, chunked(x), N, D, k=10, sample=N, exact=True, how="flat")
    ids, sims = brute_knn(x, 10)
    expected = np.array([(ids == j).sum() for j in range(N)])
    np.testing.assert_array_equal(rep.nk, expected)
    assert rep.stats.skewness == pytest.approx(scipy.stats.skew(expected), abs=1e-9)
    assert rep.stats.anti_hubs == pytest.approx(np.mean(expected == 0))
    assert rep.stats.mean_knn_cosine == pytest.approx(sims.mean(), abs=1e-5)
    assert rep.sample is None and rep.exact and "every vector" in rep.method


def test_neighbourhood_stats_on_a_sample_equal_brute_force_within_it() -> None:
    from simcli.index.neighbourhood import neighbourhood_stats

    x = clustered_data()
    _, search = flat_search(x)
    rep = neighbourhood_stats(search, chunked(x), N, D, k=5, sample=200, exact=True, how="flat", seed=4)
    assert len(rep.point_ids) == 200 and rep.sample == 200
    assert "random sample of 200 of the 600 vectors" in rep.method
    sub = x[rep.point_ids]
    ids, _ = brute_knn(sub, 5)
    expected = np.array([(ids == j).sum() for j in range(200)])
    np.testing.assert_array_equal(rep.nk, expected)
    hub, count = rep.stats.top[0]
    assert (
        count == expected.max() and hub == rep.point_ids[int(np.argmax(expected))]
    )  # index ids, not sample rows


@pytest.mark.parametrize("added", [5, 40, 400])
def test_radii_after_add_equal_a_fresh_computation(added: int) -> None:
    """Few new vectors: only the old ones they enter are re-searched; many: all. Either way == fresh."""
    from simcli.index.neighbourhood import compute_radii, refresh_radii

    x = clustered_data()
    rng = np.random.default_rng(7)
    extra = unit(x[rng.choice(N, added)] + 0.03 * rng.standard_normal((added, D)).astype(np.float32))
    index, search = flat_search(x)
    before = compute_radii(search, chunked(x)())
    _, sims = brute_knn(x, 10)
    np.testing.assert_allclose(before.r, sims.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(before.kth, sims[:, -1], atol=1e-5)

    index.add(extra)
    after, researched = refresh_radii(before, search, chunked(x), extra, N)
    both = np.concatenate([x, extra])
    _, fresh = flat_search(both)
    want = compute_radii(fresh, chunked(both)())
    np.testing.assert_allclose(after.r, want.r, atol=1e-6)
    np.testing.assert_allclose(after.kth, want.kth, atol=1e-6)
    _, all_sims = brute_knn(both, 10)
    np.testing.assert_allclose(after.r, all_sims.mean(axis=1), atol=1e-5)
    if added == 400:
        assert researched == N  # more than a quarter of the index: every r recomputed
    else:
        changed = np.flatnonzero(np.abs(all_sims[:N].mean(axis=1) - sims.mean(axis=1)) > 1e-7)
        assert 0 < len(changed) <= researched < N  # the rule re-searched the changed ones, not everyone


# -- simcli index stats ---------------------------------------------------------------------------------
def raw_clustered(n: int = N, seed: int = 1) -> np.ndarray:
    """Unnormalised vectors (norms vary), as an encoder gives them: the index normalises them."""
    rng = np.random.default_rng(seed)
    return (clustered_data(seed, n) * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def flat_and_hnsw(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from simcli.index import Index

    root = tmp_path_factory.mktemp("hub-idx")
    x = raw_clustered()
    texts = [f"句子{i}" for i in range(N)]
    return x, {
        kind: Index.build(x, out=root / kind, index=kind, whiten="none", texts=texts)
        for kind in ("flat", "hnsw")
    }


def test_cli_index_stats_flat_equals_brute_force(flat_and_hnsw, tmp_path) -> None:  # type: ignore[no-untyped-def]

    x, idx = flat_and_hnsw
    ids, sims = brute_knn(unit(x), 10)
    expected = np.array([(ids == j).sum() for j in range(N)])
    png = tmp_path / "nk.png"
    r = simcli("index", "stats", str(idx["flat"].path), "--json", "--top", "3", "--plot", str(png))
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["exact"] is True and got["sample"] is None and got["points"] == N and got["k"] == 10
    assert "exact (Flat)" in got["method"]
    assert got["skewness"] == pytest.approx(scipy.stats.skew(expected), abs=1e-5)
    assert got["anti_hubs"] == pytest.approx(np.mean(expected == 0), abs=1e-6)
    assert got["anti_hub_count"] == int((expected == 0).sum())
    assert got["mean_knn_cosine"] == pytest.approx(sims.mean(), abs=1e-5)
    hubs = np.lexsort((np.arange(N), -expected))[:3]
    assert [(h["id"], h["nk"], h["text"]) for h in got["top_hubs"]] == [
        (int(i), int(expected[i]), f"句子{i}") for i in hubs
    ]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    text = simcli("index", "stats", str(idx["flat"].path), "-k", "5", "--sample", "100")
    assert text.exit_code == 0, text.output
    assert "100 sampled of 600 vectors, k = 5; exact k-NN within a random sample of 100" in text.stdout
    assert "N_5 skewness" in text.stdout and "top hubs:" in text.stdout


def test_cli_index_stats_hnsw_says_approximate(flat_and_hnsw) -> None:  # type: ignore[no-untyped-def]

    x, idx = flat_and_hnsw
    r = simcli("index", "stats", str(idx["hnsw"].path), "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["exact"] is False and "approximate (HNSW32, efSearch" in got["method"]
    ids, _ = brute_knn(unit(x), 10)
    expected = np.array([(ids == j).sum() for j in range(N)])
    assert got["skewness"] == pytest.approx(scipy.stats.skew(expected), abs=0.15)  # near, through the graph


# -- CSLS in the index: radii file, re-ranked search, add ------------------------------------------------
def test_build_csls_stores_radii_with_hash_and_they_equal_brute_force(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from simcli.errors import CorruptArtifact
    from simcli.index import Index

    x = raw_clustered()
    idx = Index.build(
        x, out=tmp_path / "i", index="flat", whiten="none", texts=[str(i) for i in range(N)], csls=True
    )
    entry = idx.manifest.files["radii"]
    assert entry.name.startswith("radii-") and len(entry.sha256) == 64
    assert idx.manifest.csls is not None and vars(idx.manifest.csls) == {"k": 10, "search": "exact"}
    saved = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert saved["csls"] == {"k": 10, "search": "exact"} and saved["files"]["radii"]["sha256"] == entry.sha256
    _, sims = brute_knn(unit(x), 10)
    again = Index.load(tmp_path / "i")  # verifies every hash, the radii file's too
    np.testing.assert_allclose(again.radii().r, sims.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(again.radii().kth, sims[:, -1], atol=1e-5)
    assert again.info()["csls"] == {"k": 10, "search": "exact"}
    path = tmp_path / "i" / entry.name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifact, match="radii-.*sha256 does not match"):
        Index.load(tmp_path / "i")


def test_csls_search_over_the_whole_corpus_equals_numpy_csls(flat_and_hnsw, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from simcli.index import Index

    x, _ = flat_and_hnsw
    idx = Index.build(
        x, out=tmp_path / "i", index="flat", whiten="none", texts=[f"t{i}" for i in range(N)], csls=True
    )
    q = raw_clustered(40, seed=5)
    _, sims10 = brute_knn(unit(x), 10)
    r = sims10.mean(axis=1)
    cos = unit(q).astype(np.float64) @ unit(x).astype(np.float64).T
    full = 2 * cos - r[None, :]
    want = np.argsort(-full, axis=1, kind="stable")[:, :10]
    got = idx.search(q, k=10, rerank=idx.csls(N))  # M covers the corpus
    np.testing.assert_array_equal([[h.id for h in hits] for hits in got], want)
    np.testing.assert_allclose(
        [[h.score for h in hits] for hits in got], np.take_along_axis(full, want, axis=1), atol=1e-5
    )
    np.testing.assert_allclose(
        [[h.cosine for h in hits] for hits in got], np.take_along_axis(cos, want, axis=1), atol=1e-5
    )
    assert got[0][0].text == f"t{want[0, 0]}" and [h.rank for h in got[0]] == list(range(1, 11))
    # the default M = 50 re-ranks the 50 best by cosine: same as numpy CSLS restricted to those
    top50 = np.argsort(-cos, axis=1, kind="stable")[:, :50]
    sub = np.take_along_axis(full, top50, axis=1)
    want50 = np.take_along_axis(top50, np.argsort(-sub, axis=1, kind="stable")[:, :10], axis=1)
    np.testing.assert_array_equal(
        [[h.id for h in hits] for hits in idx.search(q, k=10, rerank="csls")], want50
    )
    plain = idx.search(q, k=10)
    assert (
        all(h.cosine is None for h in plain[0]) and (want != [[h.id for h in hits] for hits in plain]).any()
    )


def test_csls_without_radii_is_a_one_line_error_naming_the_command(flat_and_hnsw) -> None:  # type: ignore[no-untyped-def]

    from simcli.errors import UsageError

    _, idx = flat_and_hnsw
    folder = idx["flat"].path
    with pytest.raises(UsageError, match=f"run `simcli index hubness {folder}`"):
        idx["flat"].search(raw_clustered(2, seed=3), rerank="csls")
    r = simcli("query", str(folder), "x", "--rerank", "csls")
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and f"simcli index hubness {folder}" in lines[0]


@pytest.mark.parametrize("added", [15, 300])
def test_add_keeps_radii_equal_to_a_fresh_build(tmp_path, added: int) -> None:  # type: ignore[no-untyped-def]
    from simcli.index import Index

    x = raw_clustered()
    rng = np.random.default_rng(11)
    extra = (x[rng.choice(N, added)] + 0.05 * rng.standard_normal((added, D))).astype(np.float32)
    texts = [f"t{i}" for i in range(N + added)]
    idx = Index.build(x, out=tmp_path / "grown", index="flat", whiten="none", texts=texts[:N], csls=True)
    notes: list[str] = []
    idx.add(extra, texts=texts[N:], log=notes.append)
    fresh = Index.build(
        np.concatenate([x, extra]),
        out=tmp_path / "fresh",
        index="flat",
        whiten="none",
        texts=texts,
        csls=True,
    )
    grown = Index.load(tmp_path / "grown")
    np.testing.assert_allclose(grown.radii().r, fresh.radii().r, atol=1e-6)
    np.testing.assert_allclose(grown.radii().kth, fresh.radii().kth, atol=1e-6)
    researched = next(n for n in notes if n.startswith("CSLS radii"))
    assert (f"of {N} old vectors re-searched" in researched) and (researched.split()[4] == str(N)) == (
        added == 300
    )
    q = raw_clustered(5, seed=8)
    assert [[h.id for h in hits] for hits in grown.search(q, rerank="csls")] == [
        [h.id for h in hits] for hits in fresh.search(q, rerank="csls")
    ]


def test_cli_hubness_then_query_rerank_csls_json(flat_and_hnsw, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    x, idx = flat_and_hnsw
    folder = tmp_path / "copy"
    shutil.copytree(idx["flat"].path, folder)
    r = simcli("index", "hubness", str(folder), "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    _, sims = brute_knn(unit(x), 10)
    assert (
        got["k"] == 10 and got["search"] == "exact" and got["mean_r"] == pytest.approx(sims.mean(), abs=1e-5)
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"]["radii"]["sha256"] == got["sha256"]
    # query with a stored vector's text: the folder was built from arrays, so query with --json through the API
    from simcli.index import Index

    hits = Index.load(folder).search(x[:1], k=3, rerank="csls")[0]
    assert all(h.score == pytest.approx(2 * h.cosine - sims[h.id].mean(), abs=1e-5) for h in hits)


def test_cli_build_csls_and_query_rerank_with_a_tiny_model(tmp_path, wobert_dir) -> None:  # type: ignore[no-untyped-def]
    """Text end to end: `index build --csls`, `query --rerank csls --json` reports the CSLS score and the
    cosine, csls = 2 cos - r(y) with r from the stored radii, hits ordered by it; --candidates checked."""

    from simcli.index import Index

    faq = tmp_path / "faq.txt"
    lines = [
        "花呗怎么还款",
        "借呗额度怎么提升",
        "花呗逾期了怎么办",
        "怎么开通花呗",
        "今天天气不错",
        "我喜欢北京",
        "北京天气怎么样",
    ]
    faq.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "faq.idx"
    r = simcli(
        "index", "build", str(faq), "-m", str(wobert_dir), "--out", str(out), "--whiten", "none", "--csls"
    )
    assert r.exit_code == 0, r.output
    idx = Index.load(out)
    radii = idx.radii()
    assert radii.k == 10 and len(radii.r) == len(lines)
    v = idx.stored_vectors()
    x = np.concatenate(list(v))
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_allclose(
        radii.r, np.sort(s, axis=1)[:, ::-1][:, : len(lines) - 1].mean(axis=1), atol=1e-5
    )

    q = simcli("query", str(out), "花呗如何还款", "-k", "3", "--rerank", "csls", "--json")
    assert q.exit_code == 0, q.output
    hits = json.loads(q.stdout)["results"]
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    for h in hits:
        assert h["csls"] == h["score"] == pytest.approx(2 * h["cosine"] - radii.r[h["id"]], abs=1e-5)
        assert h["text"] == lines[h["id"]]
    assert [h["csls"] for h in hits] == sorted((h["csls"] for h in hits), reverse=True)
    plain = simcli("query", str(out), "花呗如何还款", "-k", "3", "--json")
    assert all("csls" not in h and "cosine" not in h for h in json.loads(plain.stdout)["results"])
    bad = simcli("query", str(out), "x", "--candidates", "5")
    assert bad.exit_code == 2 and "--candidates is for --rerank csls" in bad.output
    text = simcli("query", str(out), "花呗如何还款", "-k", "2", "--rerank", "csls", "--candidates", "4")
    assert text.exit_code == 0 and text.stdout.splitlines()[0] == "花呗如何还款"
    rank, csls, cos, hit = text.stdout.splitlines()[1].split()
    assert rank == "1" and float(csls) == pytest.approx(2 * float(cos) - radii.r[lines.index(hit)], abs=2e-4)
