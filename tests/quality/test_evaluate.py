"""STS evaluation against independent computations: scipy's Spearman, numpy whitening, the encoder alone."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from simcli.errors import BadInput, MissingDependency, UsageError
from simcli.evaluate import (
    WhitenSetting,
    average_ranks,
    dataset_names,
    evaluate_sts,
    parse_columns,
    parse_whiten,
    plot_scores,
    published_max_length,
    read_pairs,
    read_sentences,
    spearman,
    summary_rows,
)
from simcli.models.encoder import load_encoder

SUBJECTS = ["我", "你", "他们", "老师", "小明", "我们"]
VERBS = ["喜欢", "不喜欢", "想去", "讨厌", "看见", "问了"]
OBJECTS = ["北京", "上海", "花呗", "借呗", "天气", "手机", "电脑", "公园"]


def make_pairs(n: int, seed: int) -> list[tuple[str, str, int]]:
    """Seeded pairs of short sentences; the label counts shared parts (0..3), so labels tie a lot."""
    rng = np.random.default_rng(seed)
    parts = list(itertools.product(SUBJECTS, VERBS, OBJECTS))
    out = []
    for _ in range(n):
        a, b = parts[rng.integers(len(parts))], parts[rng.integers(len(parts))]
        out.append(("".join(a), "".join(b), sum(x == y for x, y in zip(a, b, strict=True))))
    return out


def write_data(path: Path, pairs: list[tuple[str, str, int]]) -> Path:
    path.write_text("".join(f"{a}\t{b}\t{y}\n" for a, b, y in pairs), encoding="utf-8")
    return path


def scipy_spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y).statistic)


# -- Spearman ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_spearman_equals_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    labels = rng.integers(0, 1 + seed % 5 + 1, n).astype(float)  # binary .. 0-5 labels: heavy ties
    scores = rng.normal(size=n) + 0.3 * labels
    scores[: n // 4] = np.round(scores[: n // 4], 1)  # ties on the score side too
    assert len(np.unique(labels)) < n and len(np.unique(scores)) < n, "premise: both sides have ties"
    np.testing.assert_allclose(spearman(scores, labels), scipy_spearman(scores, labels), rtol=1e-12)
    np.testing.assert_array_equal(average_ranks(scores), stats.rankdata(scores, method="average"))


def test_spearman_edge_cases() -> None:
    assert spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == -1.0
    assert np.isnan(spearman(np.array([1.0, 2, 3]), np.array([1.0, 1, 1])))  # scipy: nan as well
    np.testing.assert_array_equal(average_ranks(np.array([2.0, 2, 2, 1])), [3, 3, 3, 1])


# -- reading -----------------------------------------------------------------------------------------------
def test_read_pairs_formats(tmp_path: Path) -> None:
    data = write_data(tmp_path / "LCQMC.test.data", [("一", "二", 1), ('说"好', "三", 0)])
    p = read_pairs(data)
    assert (p.name, p.s1, p.s2, p.labels.tolist()) == ("LCQMC", ["一", '说"好'], ["二", "三"], [1.0, 0.0])
    tsv = tmp_path / "test_2k.tsv"
    tsv.write_text("id\tsentence1\tsentence2\tlabel\n1\t甲\t乙\t0\n2\t丙\t丁\t1\n", encoding="utf-8")
    p = read_pairs(tsv)
    assert (p.name, p.s1, p.s2, p.labels.tolist()) == ("test_2k", ["甲", "丙"], ["乙", "丁"], [0.0, 1.0])
    csv_file = tmp_path / "x.csv"
    csv_file.write_text('a,b,score\n"甲,乙",丙,4.5\n', encoding="utf-8")
    p = read_pairs(csv_file, columns=("a", "b", "score"))
    assert (p.s1, p.s2, p.labels.tolist()) == (["甲,乙"], ["丙"], [4.5])
    jsonl = tmp_path / "q.json"
    jsonl.write_text(
        json.dumps({"query": "甲", "title": "乙", "label": "2"}, ensure_ascii=False) + "\n\n",
        encoding="utf-8",
    )
    p = read_pairs(jsonl, columns=parse_columns("query,title,label"))
    assert (p.s1, p.s2, p.labels.tolist()) == (["甲"], ["乙"], [2.0])
    five = tmp_path / "sts.txt"  # ChineseSTS layout: id1, s1, id2, s2, score
    five.write_text("1\t甲\t5\t乙\t5.0\n2\t丙\t6\t丁\t0.0\n3\t戊\t7\t己\t1.0\n", encoding="utf-8")
    p = read_pairs(five, columns=parse_columns("1,3,4"), limit=2)
    assert (p.s1, p.s2, p.labels.tolist()) == (["甲", "丙"], ["乙", "丁"], [5.0, 0.0])


def test_read_pairs_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.data"
    bad.write_text("一\t二\t1\n三\t四\tentailment\n", encoding="utf-8")
    with pytest.raises(BadInput, match=r"bad.data:2: label 'entailment' is not a number"):
        read_pairs(bad)
    short = tmp_path / "short.data"
    short.write_text("一\t二\t1\n三\t四\n", encoding="utf-8")
    with pytest.raises(BadInput, match=r"short.data:2: 2 fields, expected at least 3"):
        read_pairs(short)
    with pytest.raises(BadInput, match=r"no column 'x' in the header \(一, 二, 1\)"):
        read_pairs(short, columns=("x", "二", "1"))
    with pytest.raises(BadInput, match="no such file"):
        read_pairs(tmp_path / "missing.data")
    with pytest.raises(BadInput, match=r"unknown pair file format '.parquet'"):
        read_pairs(tmp_path / "x.parquet")
    js = tmp_path / "x.jsonl"
    js.write_text('{"sentence1": "a", "label": 1}\n', encoding="utf-8")
    with pytest.raises(BadInput, match=r"x.jsonl:1: no field 'sentence2'"):
        read_pairs(js)
    with pytest.raises(UsageError, match="--columns 'a,b'"):
        parse_columns("a,b")
    with pytest.raises(UsageError, match="--limit must be at least 1"):
        read_pairs(short, limit=0)


def test_read_sentences(tmp_path: Path) -> None:
    txt = tmp_path / "corpus.txt"
    txt.write_text("甲\n\n 乙 \n", encoding="utf-8")
    assert read_sentences(txt) == ["甲", "乙"]
    data = write_data(tmp_path / "pairs.data", [("一", "二", 1), ("三", "四", 0)])
    assert read_sentences(data) == ["一", "三", "二", "四"]
    afqmc = write_data(tmp_path / "dev.txt", [("一", "二", 1)])  # a .txt pair file
    assert read_sentences(afqmc) == ["一", "二"]


def test_parse_whiten_and_names() -> None:
    assert parse_whiten("none, full,256,full") == [
        WhitenSetting("none", None, enabled=False),
        WhitenSetting("full", None),
        WhitenSetting("256", 256),
    ]
    for bad in ("abc", "0", "-3", ""):
        with pytest.raises(UsageError, match="--whiten"):
            parse_whiten(bad)
    assert dataset_names([Path("a/LCQMC.test.data"), Path("AFQMC/dev.txt"), Path("OCNLI/dev.txt")]) == [
        "LCQMC",
        "AFQMC/dev",
        "OCNLI/dev",
    ]


# -- the evaluation against an independent computation ----------------------------------------------------
def reference_scores(
    model_dir: Path,
    pairs: list[tuple[str, str, int]],
    pooling: str,
    k: int | None,
    fit: list[str] | None = None,
    max_length: int = 64,
) -> float:
    """Encode each column on its own, whiten with np.cov + svd (published recipe), scipy Spearman x100."""
    enc = load_encoder(str(model_dir), pooling=pooling, dtype="float32", max_length=max_length)
    a = enc.encode([p[0] for p in pairs]).astype(np.float64)
    b = enc.encode([p[1] for p in pairs]).astype(np.float64)
    labels = np.array([p[2] for p in pairs], dtype=float)
    if k is not None:
        x = np.vstack([a, b]) if fit is None else enc.encode(fit).astype(np.float64)
        mu = x.mean(0)
        u, s, _ = np.linalg.svd(np.cov(x, rowvar=False, bias=True))
        w = (u / np.sqrt(s))[:, :k]
        a, b = (a - mu) @ w, (b - mu) @ w
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return 100 * scipy_spearman(cos, labels)


def test_evaluate_sts_matches_independent_computation(roformer_sim_dir: Path, tmp_path: Path) -> None:
    pairs_a, pairs_b = make_pairs(120, seed=1), make_pairs(90, seed=2)
    files = [write_data(tmp_path / "A.test.data", pairs_a), write_data(tmp_path / "B.test.data", pairs_b)]
    seen: list[tuple[str, int]] = []
    loaded: list[object] = []

    def progress(name: str, total: int):  # type: ignore[no-untyped-def]
        seen.append((name, total))
        return lambda n, t: None

    results = evaluate_sts(
        files,
        str(roformer_sim_dir),
        poolings="pooler,first-last-avg",
        whiten="none,full,16",
        dtype="float32",
        progress=progress,
        on_encoder=loaded.append,
    )
    assert len(loaded) == 1
    unique_a = len({s for p in pairs_a for s in p[:2]})
    assert seen == [("A", unique_a), ("B", len({s for p in pairs_b for s in p[:2]}))], "one pass per data set"
    got = {(r.dataset, r.pooling, r.whiten): r for r in results}
    assert [(r.dataset, r.pooling, r.whiten) for r in results] == [
        (ds, pool, w) for ds in "AB" for pool in ("pooler", "first-last-avg") for w in ("none", "full", "16")
    ]
    # The tiny checkpoints' LayerNorm weights are uniform, so the [CLS]-based pooler vectors lie in a
    # hyperplane: rank 47 of 48; full whitening is clamped to it (and reported). first-last-avg has full rank.
    rank = {"pooler": 47, "first-last-avg": 48}
    for ds, pairs in (("A", pairs_a), ("B", pairs_b)):
        for pool in ("pooler", "first-last-avg"):
            for w, k in (("none", None), ("full", rank[pool]), ("16", 16)):
                r = got[(ds, pool, w)]
                assert r.pairs == len(pairs)
                assert r.clamped_from == (48 if w == "full" and rank[pool] < 48 else None)
                assert r.dim == (k or 48)
                assert r.fit_n == (2 * len(pairs) if k else 0)
                assert r.spearman == pytest.approx(
                    reference_scores(roformer_sim_dir, pairs, pool, k), abs=1e-2
                )
            assert abs(got[(ds, pool, "full")].spearman - got[(ds, pool, "none")].spearman) > 0.1, (
                "premise: whitening changes the score by 10x the tolerance"
            )
    datasets, rows = summary_rows(results)
    assert datasets == ["A", "B"]
    pooler_full = rows[1]
    assert pooler_full[:2] == ("pooler", "full")
    mean = (got[("A", "pooler", "full")].spearman + got[("B", "pooler", "full")].spearman) / 2
    assert pooler_full[3] == pytest.approx(mean)


def test_pawsx_is_cut_at_128_tokens_like_the_published_tables(roformer_sim_dir: Path, tmp_path: Path) -> None:
    """kexue.fm/archives/8321 and 8454: 64 tokens, PAWSX 128. Sentences of ~70 characters, whose endings differ, score as
    an encoder cut at 128 scores them for PAWSX, and as one cut at 64 for the other data sets."""
    # 50 shared characters, then the short sentence three times: a cut at 64 keeps one whole copy (so cut
    # sentences stay as distinct as the pairs: no new ties), a cut at 128 keeps all three.
    filler = "今天天气很好我们一起去公园散步然后去吃饭" * 2 + "明天也是好天气吗"[:8] + "的"
    pairs = [(filler + a * 3, filler + b * 3, y) for a, b, y in make_pairs(60, seed=3)]
    files = [write_data(tmp_path / "PAWSX.test.data", pairs), write_data(tmp_path / "LCQMC.test.data", pairs)]
    got = {
        r.dataset: r.spearman
        for r in evaluate_sts(files, str(roformer_sim_dir), whiten="none", dtype="float32")
    }
    assert got["PAWSX"] == pytest.approx(
        reference_scores(roformer_sim_dir, pairs, "pooler", None, max_length=128), abs=1e-2
    )
    assert got["LCQMC"] == pytest.approx(
        reference_scores(roformer_sim_dir, pairs, "pooler", None, max_length=64), abs=1e-2
    )
    assert abs(got["PAWSX"] - got["LCQMC"]) > 0.1, "premise: the cut changes the score"
    (forced,) = evaluate_sts(files[:1], str(roformer_sim_dir), whiten="none", dtype="float32", max_length=64)
    assert forced.spearman == pytest.approx(
        got["LCQMC"], abs=1e-2
    )  # an explicit length applies to every file


def test_evaluate_sts_fit_on_file(roformer_sim_dir: Path, tmp_path: Path) -> None:
    pairs = make_pairs(60, seed=3)
    fit = [a for a, _, _ in make_pairs(200, seed=4)]
    (tmp_path / "fit.txt").write_text("\n".join(fit) + "\n", encoding="utf-8")
    results = evaluate_sts(
        [write_data(tmp_path / "C.data", pairs)],
        str(roformer_sim_dir),
        poolings="first-last-avg",
        whiten="full",
        fit_on=tmp_path / "fit.txt",
        dtype="float32",
    )
    (r,) = results
    assert (r.fit_on, r.fit_n) == (str(tmp_path / "fit.txt"), 200)
    assert r.spearman == pytest.approx(
        reference_scores(roformer_sim_dir, pairs, "first-last-avg", 48, fit), abs=1e-2
    )


def test_evaluate_sts_clamps_to_rank_with_few_pairs(roformer_sim_dir: Path, tmp_path: Path) -> None:
    """20 pairs = at most 40 sentences < d = 48: full whitening is cut to the rank, reported, finite.

    (The score itself is not compared: whitening N points in N-1 dimensions maps them to a near-regular
    simplex, so their cosines are all about -1/(N-1) and their order is float noise.)"""
    pairs = make_pairs(200, seed=5)
    (r,) = evaluate_sts(
        [write_data(tmp_path / "D.data", pairs)],
        str(roformer_sim_dir),
        poolings="first-last-avg",
        whiten="full",
        limit=20,
        dtype="float32",
    )
    n_unique = len({s for p in pairs[:20] for s in p[:2]})
    assert r.pairs == 20 and r.clamped_from == 48 and r.dim == n_unique - 1
    assert np.isfinite(r.spearman) and -100 <= r.spearman <= 100


def test_evaluate_sts_refusals(roformer_sim_dir: Path, tmp_path: Path) -> None:
    data = write_data(tmp_path / "E.data", make_pairs(10, seed=6))
    with pytest.raises(UsageError, match="--whiten 256 is above the model's dimension 48"):
        evaluate_sts([data], str(roformer_sim_dir), whiten="none,256", dtype="float32")
    with pytest.raises(BadInput, match="no such file"):
        evaluate_sts([tmp_path / "nope.data"], "/no/model/needed/yet")


def test_plot_scores_writes_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simcli.evaluate import StsResult

    results = [
        StsResult("A", "cls", w, d, 1.0, 1.0, s, 10, "task", 20)
        for w, d, s in (("none", 48, 20.0), ("full", 48, 30.0), ("16", 16, 25.0))
    ]
    out = tmp_path / "plot.png"
    plot_scores(results, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(MissingDependency, match=r"pip install -e '\.\[plot\]'"):
        plot_scores(results, tmp_path / "again.png")
    assert not (tmp_path / "again.png").exists()


def test_published_max_length_follows_the_file_name(tmp_path: Path) -> None:
    """128 for PAWSX, also when a folder prefixes the name (two files of one name), 64 for the others."""
    names = dataset_names([tmp_path / "a" / "PAWSX.test.data", tmp_path / "b" / "PAWSX.test.data"])
    assert names == ["a/PAWSX", "b/PAWSX"]
    assert [published_max_length(n) for n in [*names, "pawsx", "LCQMC", "a/LCQMC"]] == [128, 128, 128, 64, 64]
