"""The query side of an index: concurrent search from threads, the re-rank step, the typed manifest and its
file roles, preparing the corpus once, and queries encoded with the dtype the index was computed with."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from simcli.errors import CorruptArtifact
from simcli.index import FILE_ROLES, Candidates, FileRole, Index, IndexManifest, persist, pipeline
from simcli.index.manifest import file_name
from simcli.models.device import recorded_dtype
from tests.invoke import simcli

N, D = 6000, 24


def clustered(n: int, seed: int, centers: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.standard_normal((n, centers.shape[1]))
    return (x * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    centers = np.random.default_rng(5).standard_normal((60, D)).astype(np.float32)
    return clustered(N, 6, centers), clustered(400, 7, centers)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data) -> dict[str, Index]:
    root = tmp_path_factory.mktemp("q")
    texts = [f"t{i}" for i in range(N)]
    return {
        kind: Index.build(data[0], out=root / kind, index=kind, texts=texts)
        for kind in ("flat", "ivf", "hnsw")
    }


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def as_tuples(results: list) -> list:
    return [[(h.rank, h.id, h.score, h.text) for h in hits] for hits in results]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_concurrent_searches_equal_sequential_ones(built: dict[str, Index], data, kind: str) -> None:
    """Many threads, each call with its own queries, k and search parameters, on one Index: every answer is
    the one the same call gives alone. Per-call parameters that leaked into other calls would change them."""
    idx = Index.load(built[kind].path)
    _, queries = data
    low = {"flat": None, "ivf": {"nprobe": 1}, "hnsw": {"efSearch": 4}}[kind]
    calls = [
        (queries[(7 * i) % 380 : (7 * i) % 380 + 1 + i % 20], 1 + i % 13, low if i % 2 else None)
        for i in range(160)
    ]
    sequential = [as_tuples(idx.search(q, k=k, params=p)) for q, k, p in calls]
    if low is not None:  # premise: the low parameter gives other answers than the tuned one
        assert as_tuples(idx.search(queries, k=10, params=low)) != as_tuples(idx.search(queries, k=10))
    start = threading.Barrier(8)

    def run(i_call: tuple) -> list:
        i, (q, k, p) = i_call
        if i < 8:
            start.wait()  # the first eight calls (both parameter settings) start together
        return as_tuples(idx.search(q, k=k, params=p))

    for _ in range(3):
        with ThreadPoolExecutor(max_workers=8) as pool:
            concurrent = list(pool.map(run, enumerate(calls[:2] * 4 + calls)))
        assert concurrent[8:] == sequential
        assert concurrent[:8] == [sequential[0], sequential[1]] * 4


def test_concurrent_text_queries_load_the_encoder_once(
    tmp_path: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads racing on a fresh Index's first text query: the encoder loads once, answers match sequential."""
    import simcli.models.encoder as encoder_module

    sentences = [f"第{i}个问题：花呗怎么还款" for i in range(40)] + ["北京天气", "借呗额度", "我喜欢北京"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    Index.build([corpus], model=str(roformer_sim_dir), out=tmp_path / "i")
    queries = [[s] for s in sentences[::3]] + [["花呗还款", "北京"]]
    expected = [as_tuples(Index.load(tmp_path / "i").search(q, k=4)) for q in queries]
    loads = []
    real = encoder_module.load_encoder

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(encoder_module, "load_encoder", counting)
    idx = Index.load(tmp_path / "i")
    start = threading.Barrier(6)

    def first(q: list[str]) -> list:
        start.wait()  # all six ask for the encoder at the same moment
        return as_tuples(idx.search(q, k=4))

    with ThreadPoolExecutor(max_workers=6) as pool:
        racing = list(pool.map(first, queries[:6]))
        rest = list(pool.map(lambda q: as_tuples(idx.search(q, k=4)), queries))
    assert racing == expected[:6] and rest == expected
    assert len(loads) == 1


class Farthest:
    """A re-rank that wants 3k candidates and scores them by negative cosine (the worst of them first)."""

    def depth(self, k: int) -> int:
        return 3 * k

    def __call__(self, c: Candidates) -> Candidates:
        assert c.scores.shape[1] == 3 * c.k
        return Candidates(c.queries, -c.scores, c.ids, c.k)


def test_rerank_step_sees_its_depth_and_hits_follow_its_scores(built: dict[str, Index], data) -> None:
    corpus, queries = data
    idx = built["flat"]
    sims = unit(queries[:5].astype(np.float64)) @ unit(corpus.astype(np.float64)).T
    top15 = np.argsort(-sims, axis=1, kind="stable")[:, :15]
    got = idx.search(queries[:5], k=5, rerank=Farthest())
    for row, hits, q in zip(top15, got, sims, strict=True):
        worst = sorted(row.tolist(), key=lambda i: (q[i], i))[:5]  # the 5 lowest cosines among the 15 nearest
        assert [h.id for h in hits] == worst
        assert [h.score for h in hits] == pytest.approx([-q[i] for i in worst], abs=1e-5)
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and hits[0].text == f"t{worst[0]}"
    # min_score applies to the re-ranked score; the index's own rerank is used when none is passed
    cut = idx.search(queries[:5], k=5, rerank=Farthest(), min_score=got[0][2].score)
    assert [h.id for h in cut[0]] == [h.id for h in got[0][:3]]
    again = Index.load(idx.path, rerank=Farthest())
    assert again.search(queries[:5], k=5) == got
    assert Index.load(idx.path).search(queries[:5], k=5) == idx.search(queries[:5], k=5)


def test_typed_manifest_round_trips_manifest_json(built: dict[str, Index]) -> None:
    idx = built["ivf"]
    raw = json.loads((idx.path / "manifest.json").read_text())
    m = IndexManifest.from_json(raw, "x")
    assert m == idx.manifest and m.to_json() == raw
    assert (m.index.factory, m.index.nlist, m.search.params, m.generation) == (
        "IVF128,Flat", 128, idx.search_params, 1,
    )  # fmt: skip
    assert sorted(m.files) == ["index", "offsets", "texts"] and m.files["index"].name == "index-1.faiss"
    del raw["search"]["tuned_recall"]
    with pytest.raises(CorruptArtifact, match=r"x: malformed index manifest \(missing 'tuned_recall'\)"):
        IndexManifest.from_json(raw, "x")


@pytest.mark.parametrize("carried", [False, True])
def test_a_declared_file_role_is_hashed_verified_and_follows_add(
    tmp_path: Path, data, monkeypatch: pytest.MonkeyPatch, carried: bool
) -> None:
    """A new per-index file (a made-up "notes" role): declared in FILE_ROLES, written with its hash, checked on load;
    `index add` keeps it when carried, else drops it with its generation (it no longer fits the index)."""
    from dataclasses import replace

    corpus, _ = data
    monkeypatch.setitem(FILE_ROLES, "notes", FileRole("notes", "npy", "per-vector notes", carried=carried))
    idx = Index.build(corpus[:300], out=tmp_path / "i", index="flat")
    radii = np.arange(300, dtype=np.float32)
    entry = persist.write_npy(tmp_path / "i" / file_name("notes", 1), [radii], (300,), np.float32)
    persist.commit(idx.path, replace(idx.manifest, files={**idx.manifest.files, "notes": entry}))
    loaded = Index.load(idx.path)
    assert loaded.manifest.files["notes"] == entry and entry.name == "notes-1.npy"
    np.testing.assert_array_equal(np.load(idx.path / entry.name), radii)
    loaded.add(corpus[300:310])
    names = sorted(p.name for p in idx.path.iterdir())
    assert ("notes-1.npy" in names) is carried and ("notes" in loaded.manifest.files) is carried
    if carried:
        raw = bytearray((idx.path / "notes-1.npy").read_bytes())
        raw[-1] ^= 0xFF
        (idx.path / "notes-1.npy").write_bytes(bytes(raw))
        with pytest.raises(CorruptArtifact, match=r"notes-1\.npy: sha256 does not match"):
            Index.load(idx.path)


def test_build_whitens_and_normalises_each_vector_once(
    tmp_path: Path, data, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An IVF build with whitening (train sample, add, tuning ground truth, lossless check) and an add
    transform each vector once, and the index holds exactly the whitened, normalised corpus."""
    corpus, _ = data
    rows: list[int] = []
    real = pipeline.to_index_space
    monkeypatch.setattr(pipeline, "to_index_space", lambda x, w: rows.append(len(x)) or real(x, w))
    idx = Index.build(corpus[:5000], out=tmp_path / "i", index="IVF32,Flat", whiten=12)
    assert sum(rows) == 5000
    w = idx.whitening
    stored = idx.faiss_index.reconstruct_n(0, 10)
    np.testing.assert_allclose(stored, w.transform(corpus[:10], normalize=True), atol=1e-5)
    rows.clear()
    idx.add(corpus[5000:5100])
    assert sum(rows) == 100 and idx.count == 5100


def test_recorded_dtype_rule() -> None:
    cpu_bf16 = [{"device": "cpu", "dtype": "bfloat16"}]
    assert recorded_dtype(cpu_bf16, "cpu") == "bfloat16"
    assert (
        recorded_dtype([{"device": "cuda:0", "dtype": "float16"}], "cpu") == "auto"
    )  # another kind of device
    assert recorded_dtype([*cpu_bf16, {"device": "cpu", "dtype": "float32"}], "cpu") == "auto"  # ambiguous
    assert recorded_dtype([{"device": "unknown", "dtype": "unknown"}], "cpu") == "auto"
    assert recorded_dtype([], "cpu") == "auto"


def test_query_and_add_encode_with_the_index_dtype_unless_dtype_is_given(
    tmp_path: Path, roformer_sim_dir: Path
) -> None:
    """An index computed in bfloat16: `query` without --dtype encodes in bfloat16 (auto would be float32 in
    tests), --dtype float32 overrides it; `index add` follows it too, so computed_with stays one entry."""
    from simcli.models.encoder import load_encoder

    sentences = [
        "花呗怎么还款",
        "借呗额度怎么提升",
        "花呗如何还款",
        "我喜欢北京",
        "今天天气很好",
        "北京的天气怎么样",
    ]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    out = tmp_path / "bf.idx"
    r = simcli("index", "build", str(corpus), "-m", str(roformer_sim_dir), "--out", str(out), "--dtype", "bfloat16")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert Index.load(out).manifest.computed_with == [{"device": "cpu", "dtype": "bfloat16"}]

    corpus_vectors = load_encoder(str(roformer_sim_dir), dtype="bfloat16").encode(sentences, normalize=True)

    def cosines(query_dtype: str) -> list[float]:
        """Sorted cosines of the query, encoded in `query_dtype`, with the corpus as indexed (bfloat16)."""
        q = load_encoder(str(roformer_sim_dir), dtype=query_dtype).encode(["北京天气"], normalize=True)
        return sorted((q.astype(np.float64) @ corpus_vectors.astype(np.float64).T)[0].tolist(), reverse=True)

    bf16, fp32 = cosines("bfloat16"), cosines("float32")
    assert max(abs(a - b) for a, b in zip(bf16, fp32, strict=True)) > 1e-3  # premise: the dtypes differ

    def scores(*extra: str) -> list[float]:
        r = simcli("query", str(out), "北京天气", "-k", "6", "--json", *extra)
        assert r.exit_code == 0, r.output
        return [h["score"] for h in json.loads(r.stdout)["results"]]

    assert scores() == pytest.approx(bf16, abs=2e-6)
    assert scores("--dtype", "float32") == pytest.approx(fp32, abs=2e-6)
    assert scores("--dtype", "auto") == pytest.approx(fp32, abs=2e-6)  # auto is float32 in tests
    assert str(Index.load(out).encoder().dtype) == "torch.bfloat16"
    assert str(Index.load(out, dtype="float32").encoder().dtype) == "torch.float32"
    more = tmp_path / "more.txt"
    more.write_text("上海是个大城市\n", encoding="utf-8")
    r = simcli("index", "add", str(out), str(more))
    assert r.exit_code == 0, r.output
    assert Index.load(out).manifest.computed_with == [{"device": "cpu", "dtype": "bfloat16"}]
