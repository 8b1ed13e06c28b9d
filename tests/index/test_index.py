"""Index: recall against numpy brute force, round trips, add == fresh build, refusals, GPU selection, text."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

import simcli.index.choose as choose_mod
from simcli.errors import CorruptArtifact, ManifestMismatch, OutputExists, UsageError
from simcli.index import Index
from simcli.index.search import recall_at_k
from tests.invoke import simcli

N, D, CLUSTERS = 8000, 32, 80


def clustered(n: int, seed: int, centers: np.ndarray) -> np.ndarray:
    """Raw (unnormalised) vectors around seeded centres: near neighbours are not trivial to find."""
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.standard_normal((n, centers.shape[1]))
    return (x * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)  # norms vary: cosine != dot product


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    centers = np.random.default_rng(0).standard_normal((CLUSTERS, D)).astype(np.float32)
    return clustered(N, 1, centers), clustered(300, 2, centers)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(corpus: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k by numpy: the independent computation every index is held to."""
    sims = unit(queries.astype(np.float64)) @ unit(corpus.astype(np.float64)).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def hit_ids(results: list, k: int | None = None) -> np.ndarray:
    """Hit ids as an array, rows padded with -1 (an IVF probing few lists may find fewer than k)."""
    width = k or max(len(hits) for hits in results)
    return np.array([[h.id for h in hits] + [-1] * (width - len(hits)) for hits in results])


TEXTS = [f"t{i}" for i in range(N)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray]) -> dict[str, Index]:
    """One build per index type (shared by the tests of this module: building is the slow part)."""
    corpus, _ = data
    root = tmp_path_factory.mktemp("indexes")
    out = {}
    for kind in ("flat", "hnsw", "ivf"):
        out[kind] = Index.build(corpus, out=root / kind, index=kind, texts=TEXTS)
    return out


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_recall_at_10_against_numpy_brute_force(built: dict[str, Index], data, kind: str) -> None:
    """Unseen queries: recall@10 of the approximate index against exact numpy cosine is >= 0.95."""
    corpus, queries = data
    idx = built[kind]
    assert (
        idx.manifest.index.factory == {"hnsw": "HNSW32", "ivf": "IVF128,Flat"}[kind]
    )  # 4 sqrt(8000) -> 256, halved to keep >= 39 a list
    params = idx.search_params
    assert (
        params
        == {"hnsw": {"efSearch": params.get("efSearch")}, "ivf": {"nprobe": params.get("nprobe")}}[kind]
    )
    assert params.get("nprobe", 8) >= 8  # never nprobe 1 (the faiss wiki)
    found = hit_ids(idx.search(queries, k=10))
    _, truth = brute_force(corpus, queries, 10)
    assert recall_at_k(found, truth, 10) >= 0.95
    # premise: the lowest parameter loses neighbours, so the tuning did something
    low = hit_ids(idx.search(queries, k=10, params={"nprobe": 1} if kind == "ivf" else {"efSearch": 1}))
    assert recall_at_k(low, truth, 10) < recall_at_k(found, truth, 10)


def test_auto_recall_when_it_chooses_hnsw_and_ivf(
    tmp_path: Path, data, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto past the exact-search threshold: HNSW with memory to spare, IVF under a tight budget."""
    corpus, queries = data
    monkeypatch.setattr(choose_mod, "FLAT_MAX_N", 1000)
    _, truth = brute_force(corpus, queries, 10)
    hnsw = Index.build(corpus, out=tmp_path / "a", texts=TEXTS)
    budget = choose_mod.ivf_bytes(N, D, 128) + 10_000
    assert budget < choose_mod.hnsw_bytes(N, D)
    ivf = Index.build(corpus, out=tmp_path / "b", memory=budget, texts=TEXTS)
    assert (hnsw.manifest.index.factory, ivf.manifest.index.factory) == ("HNSW32", "IVF128,Flat")
    for idx in (hnsw, ivf):
        assert recall_at_k(hit_ids(idx.search(queries, k=10)), truth, 10) >= 0.95


def test_flat_equals_numpy_cosine_exactly(built: dict[str, Index], data) -> None:
    """Flat: the same ids in the same order and the same scores as numpy cosine."""
    corpus, queries = data
    results = built["flat"].search(queries, k=10)
    scores, ids = brute_force(corpus, queries, 10)
    np.testing.assert_array_equal(hit_ids(results), ids)
    np.testing.assert_allclose([[h.score for h in hits] for hits in results], scores, atol=1e-5)
    assert [h.text for h in results[0]] == [TEXTS[i] for i in ids[0]]
    assert [h.rank for h in results[0]] == list(range(1, 11))


def test_save_load_search_round_trip(built: dict[str, Index], data) -> None:
    """A loaded index answers exactly as the built one; the manifest records what decides the answers."""
    _, queries = data
    for idx in built.values():
        again = Index.load(idx.path)
        assert again.search(queries[:20], k=5) == idx.search(queries[:20], k=5)
        assert again.count == N and again.dim == D and again.texts() == TEXTS
    m = json.loads((built["ivf"].path / "manifest.json").read_text())
    assert m["kind"] == "index" and m["index"]["metric"] == "inner_product" and m["index"]["nlist"] == 128
    assert m["search"]["params"] == built["ivf"].search_params and m["whitening"] is None
    assert sorted(m["files"]) == ["index", "offsets", "texts"]


def test_search_options(built: dict[str, Index], data) -> None:
    _, queries = data
    idx = built["flat"]
    full = idx.search(queries[:3], k=8)
    cut = idx.search(queries[:3], k=8, min_score=full[0][3].score)
    assert [h.id for h in cut[0]] == [h.id for h in full[0][:4]]
    assert idx.search(queries[0], k=2)[0] == full[0][:2]  # one vector (d,)
    with pytest.raises(UsageError, match="nprobe does not apply to Flat"):
        idx.search(queries[:1], params={"nprobe": 4})
    with pytest.raises(UsageError, match="-k must be at least 1"):
        idx.search(queries[:1], k=0)
    # an override is for that call only
    ivf = built["ivf"]
    before = ivf.search(queries[:5], k=10)
    ivf.search(queries[:5], k=10, params={"nprobe": 1})
    assert ivf.search(queries[:5], k=10) == before


def test_check_reports_recall_and_latency(built: dict[str, Index]) -> None:
    flat = built["flat"].check(sample=100)
    assert flat["recall"] == 1.0 and flat["queries"] == 100 and flat["ms_per_query"] > 0
    ivf = built["ivf"].check(sample=200)
    assert 0.95 <= ivf["recall"] <= 1.0
    assert built["ivf"].check(sample=200, params={"nprobe": 1})["recall"] < ivf["recall"]


def test_add_equals_a_fresh_build_flat(tmp_path: Path, data) -> None:
    """index add: same vectors, texts, ids and answers as building on everything at once."""
    corpus, queries = data
    part = Index.build(corpus[:5000], out=tmp_path / "part", index="flat", texts=TEXTS[:5000])
    assert part.add(corpus[5000:], texts=TEXTS[5000:]) == N - 5000
    whole = Index.build(corpus, out=tmp_path / "whole", index="flat", texts=TEXTS)
    reloaded = Index.load(tmp_path / "part")
    assert reloaded.count == N and reloaded.texts() == TEXTS
    assert reloaded.search(queries, k=10) == whole.search(queries, k=10)
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == [
        "index-2.faiss", "manifest.json", "offsets-2.npy", "texts-2.jsonl",
    ]  # fmt: skip


def test_add_to_ivf_equals_faiss_with_the_same_training(tmp_path: Path, data) -> None:
    """IVF grows without retraining: the result equals faiss adding everything to the same trained lists."""
    corpus, queries = data
    idx = Index.build(corpus[:5000], out=tmp_path / "ivf", index="ivf", texts=TEXTS[:5000])
    reference = faiss.clone_index(faiss.read_index(str(idx.path / idx.manifest.files["index"].name)))
    idx.add(corpus[5000:], texts=TEXTS[5000:])
    reference.add(unit(corpus[5000:]))
    reference.nprobe = idx.search_params["nprobe"]
    _, ref_ids = reference.search(unit(queries), 10)
    assert np.array_equal(hit_ids(Index.load(idx.path).search(queries, k=10)), ref_ids)


def test_add_refused_where_the_index_cannot_grow(tmp_path: Path, data) -> None:
    corpus, _ = data
    idx = Index.build(corpus[:2000], out=tmp_path / "nsg", index="NSG16,Flat")
    before = sorted(p.name for p in idx.path.iterdir())
    with pytest.raises(UsageError, match="cannot grow .*rebuild the index"):
        idx.add(corpus[2000:2100])
    assert sorted(p.name for p in idx.path.iterdir()) == before
    assert Index.load(idx.path).count == 2000


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        ("flip", CorruptArtifact, r"index-1\.faiss: sha256 does not match"),
        ("truncate", CorruptArtifact, r"index-1\.faiss: \d+ bytes, the manifest says"),
        ("delete_texts", CorruptArtifact, r"texts-1\.jsonl: missing"),
        ("manifest", CorruptArtifact, r"manifest\.json: unreadable manifest"),
        ("count", CorruptArtifact, r"holds 500 vectors of dim 32, the manifest says 499"),
    ],
)
def test_corrupted_index_refused(tmp_path: Path, data, damage: str, error: type, message: str) -> None:
    corpus, _ = data
    idx = Index.build(corpus[:500], out=tmp_path / "i", index="flat")
    path = idx.path / "index-1.faiss"
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-4])
    elif damage == "delete_texts":
        (idx.path / "texts-1.jsonl").unlink()
    elif damage == "manifest":
        (idx.path / "manifest.json").write_text("{not json")
    else:
        m = json.loads((idx.path / "manifest.json").read_text())
        m["count"] = 499
        (idx.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(error, match=message):
        Index.load(idx.path)


def test_out_folder_rules(tmp_path: Path, data) -> None:
    corpus, _queries = data
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExists, match="not empty"):
        Index.build(corpus[:100], out=tmp_path / "busy")
    with pytest.raises(OutputExists, match="not an index folder"):
        Index.build(corpus[:100], out=tmp_path / "busy", overwrite=True)
    Index.build(corpus[:100], out=tmp_path / "i", index="flat")
    with pytest.raises(OutputExists, match="use --overwrite"):
        Index.build(corpus[:200], out=tmp_path / "i")
    again = Index.build(corpus[:200], out=tmp_path / "i", overwrite=True, index="flat")
    assert again.count == 200 and Index.load(tmp_path / "i").count == 200
    assert min(p.name for p in (tmp_path / "i").iterdir()) == "index-2.faiss"  # old generation gone


def test_bad_factory_string_is_a_usage_error(tmp_path: Path, data) -> None:
    with pytest.raises(UsageError, match="--index 'IVF64,Bogus': faiss cannot build it for dimension 32"):
        Index.build(data[0][:100], out=tmp_path / "x", index="IVF64,Bogus")


def test_lossy_index_keeps_vectors_for_check(tmp_path: Path, data) -> None:
    corpus, _queries = data
    idx = Index.build(corpus[:4000], out=tmp_path / "sq", index="IVF64,SQ4")
    assert idx.manifest.index.lossless is False and "vectors" in idx.manifest.files
    stored = np.load(idx.path / idx.manifest.files["vectors"].name)
    np.testing.assert_allclose(stored, unit(corpus[:4000]), atol=1e-6)
    assert 0.0 < idx.check(sample=100)["recall"] <= 1.0
    idx.add(corpus[4000:4100])
    assert np.load(Index.load(idx.path).path / idx.manifest.files["vectors"].name).shape == (4100, D)


def test_gpu_selection(tmp_path: Path, data, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a GPU, IVF builds there and the CPU form is saved; HNSW (no GPU form) stays on the CPU."""
    from simcli.index import gpu as gpu_mod
    from tests import fake_gpu

    fake = fake_gpu.install(monkeypatch, gpus=1)  # a GPU index type faiss's CPU helpers do not reach
    corpus = data[0][:3000]
    ivf = Index.build(corpus, out=tmp_path / "ivf", index="ivf")
    assert ivf.manifest.index.built_on == "gpu" and ivf.on_gpu and fake.back == 1
    assert ivf.manifest.search.params["nprobe"] >= 8
    moves = len(fake.moves)
    hnsw = Index.build(corpus, out=tmp_path / "hnsw", index="hnsw")
    assert hnsw.manifest.index.built_on == "cpu" and len(fake.moves) == moves and not hnsw.on_gpu
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert gpu_mod.to_gpu(faiss.IndexFlatIP(4)) is None
    gpu_mod.resources.cache_clear()


# -- whitening and text ------------------------------------------------------------------------------

SENTENCES = [
    "花呗怎么还款", "借呗额度怎么提升", "花呗如何还款", "我喜欢北京", "今天天气很好", "花呗怎么还款",
    "北京的天气怎么样", "明天会下雨吗", "我想去北京旅游", "借呗可以提前还吗", "花呗账单在哪里看",
    "上海是个大城市", "周末去爬山吧", "这个手机多少钱", "我不喜欢下雨天", "怎么开通花呗",
]  # fmt: skip


def test_end_to_end_from_text_roformer_sim(tmp_path: Path, roformer_sim_dir: Path) -> None:
    """RoFormer-Sim: no whitening (auto); queries hit what numpy cosine of the encoder's vectors gives."""
    from simcli.models.encoder import load_encoder

    corpus = tmp_path / "faq.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    idx = Index.build([corpus], model=str(roformer_sim_dir), out=tmp_path / "faq.idx")
    assert idx.manifest.whitening is None and idx.spec.family == "roformer-sim"
    assert idx.manifest.computed_with == [{"device": "cpu", "dtype": "float32"}]
    assert idx.info()["computed_with"] == "cpu float32"
    enc = load_encoder(str(roformer_sim_dir), dtype="float32")
    queries = ["花呗还款", "北京天气"]
    _, ids = brute_force(enc.encode(SENTENCES), enc.encode(queries), 5)
    loaded = Index.load(tmp_path / "faq.idx", dtype="float32")
    results = loaded.search(queries, k=5)
    assert [h.id for h in results[1]] == ids[1].tolist()
    # ids 0 and 5 are the same sentence: duplicates kept, lower id first
    top = loaded.search(["花呗怎么还款"], k=2)[0]
    assert [(h.id, h.text) for h in top] == [(0, "花呗怎么还款"), (5, "花呗怎么还款")]
    row = json.loads((tmp_path / "faq.idx" / "texts-1.jsonl").read_text(encoding="utf-8").splitlines()[3])
    assert row == {"id": 3, "text": "我喜欢北京", "source": str(corpus), "line": 4}


def test_end_to_end_wobert_whitening_auto_and_add(tmp_path: Path, wobert_dir: Path) -> None:
    """WoBERT: auto fits whitening on the corpus (k capped below the rank), stored and used for queries."""
    from simcli.models.encoder import load_encoder
    from simcli.whitening import Whitening

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES[:12]) + "\n", encoding="utf-8")
    idx = Index.build(
        [corpus], model=str(wobert_dir), out=tmp_path / "w.idx", encoder_options={"dtype": "float32"}
    )
    w_entry = idx.manifest.whitening
    assert w_entry is not None and w_entry.dim_out < 48 and idx.dim == w_entry.dim_out
    enc = load_encoder(str(wobert_dir), dtype="float32")
    raw = enc.encode(SENTENCES[:12])
    w = Whitening.fit(raw, dim=w_entry.dim_out, spec=enc.spec)
    queries = ["北京天气", "花呗"]
    expected = brute_force(w.transform(raw), w.transform(enc.encode(queries)), 4)[1]
    got = Index.load(idx.path, dtype="float32").search(queries, k=4)
    assert hit_ids(got).tolist() == expected.tolist()
    more = tmp_path / "more.txt"
    more.write_text("\n".join(SENTENCES[12:]) + "\n", encoding="utf-8")
    loaded = Index.load(idx.path, dtype="float32")
    loaded.add([more])
    assert loaded.count == 16 and loaded.texts() == SENTENCES
    assert loaded.manifest.whitening.sha256 == w_entry.sha256  # same whitening after add


def test_whiten_options(tmp_path: Path, wobert_dir: Path, roformer_sim_dir: Path, data) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    sim = str(roformer_sim_dir)
    none = Index.build([corpus], model=str(wobert_dir), out=tmp_path / "n", whiten="none")
    assert none.manifest.whitening is None and none.dim == 48
    k4 = Index.build([corpus], model=sim, out=tmp_path / "k", whiten="4")
    assert k4.manifest.whitening.dim_out == 4 and k4.dim == 4
    # arrays: auto means no whitening (no model family to judge by); K fits one
    assert Index.build(data[0][:500], out=tmp_path / "a").manifest.whitening is None
    assert Index.build(data[0][:500], out=tmp_path / "b", whiten=16).dim == 16
    with pytest.raises(UsageError, match="--whiten must be auto, none, full or a number"):
        Index.build(data[0][:500], out=tmp_path / "c", whiten="half")


def test_whitening_file_and_mismatches(tmp_path: Path, wobert_dir: Path, roformer_sim_dir: Path) -> None:
    from simcli.models.encoder import load_encoder
    from simcli.whitening import Whitening

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    wob = load_encoder(str(wobert_dir), dtype="float32")
    Whitening.fit(wob.encode(SENTENCES), dim=8, spec=wob.spec).save(tmp_path / "wob.whiten")
    idx = Index.build([corpus], model=str(wobert_dir), out=tmp_path / "i", whitening=tmp_path / "wob.whiten")
    assert idx.dim == 8 and idx.manifest.whitening.source == str(tmp_path / "wob.whiten")
    with pytest.raises(ManifestMismatch, match="does not fit"):
        Index.build(
            [corpus], model=str(roformer_sim_dir), out=tmp_path / "j", whitening=tmp_path / "wob.whiten"
        )
    with pytest.raises(UsageError, match="not both"):
        Index.build(
            [corpus], model=str(wobert_dir), out=tmp_path / "k", whiten="8", whitening=tmp_path / "wob.whiten"
        )
    # a query with another model than the recorded one is refused
    with pytest.raises(ManifestMismatch, match="weights_sha256"):
        Index.load(idx.path, model=str(roformer_sim_dir)).search(["北京"])


def test_auto_whitening_cut_follows_the_model_size() -> None:
    """kexue.fm/archives/8069: usual cuts 128 for small/tiny, 256 for base, 384 for large."""
    from simcli.index.space import whiten_auto_dim

    assert [whiten_auto_dim(d) for d in (48, 312, 384, 768, 1024)] == [48, 128, 128, 256, 384]


def test_simbert_is_not_whitened_by_auto(tmp_path: Path) -> None:
    """SimBERT's linear pooler was trained for cosine like RoFormer-Sim's: `--whiten auto` leaves it alone."""
    from tests.checkpoints import build_simbert

    corpus = tmp_path / "faq.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    model = build_simbert(tmp_path / "simbert")
    idx = Index.build([corpus], model=str(model), out=tmp_path / "s.idx")
    assert (idx.spec.family, idx.spec.pooling, idx.manifest.whitening) == ("bert", "pooler", None)


def test_build_from_a_store(tmp_path: Path, wobert_dir: Path, roformer_sim_dir: Path) -> None:
    """A vector store carries its model: the index records it and queries encode with it."""

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    for name, model in (("wob.vec", wobert_dir), ("sim.vec", roformer_sim_dir)):
        r = simcli("encode", str(corpus), "-m", str(model), "--out", str(tmp_path / name))
        assert r.exit_code == 0, r.output
    idx = Index.build(tmp_path / "wob.vec", out=tmp_path / "i", whiten="none", index="flat")
    assert idx.spec.family == "wobert" and idx.texts() == SENTENCES
    assert idx.manifest.computed_with == [{"device": "cpu", "dtype": "float32"}]  # from the store's shards
    hits = Index.load(idx.path).search(["花呗怎么还款"], k=1)[0]
    assert hits[0].text == "花呗怎么还款" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ManifestMismatch, match="does not fit"):
        idx.add(tmp_path / "sim.vec")
    with pytest.raises(UsageError, match="--model is for text inputs"):
        Index.build(tmp_path / "wob.vec", model=str(wobert_dir), out=tmp_path / "j")
