"""Retrieval evaluation: tasks from pair files, MRR / recall / nDCG by hand, and `simcli eval retrieval`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats

from simcli.errors import BadInput, UsageError
from simcli.index import hubness as hb
from simcli.retrieval import (
    evaluate_retrieval,
    ndcg,
    rank_corpus,
    recall,
    reciprocal_rank,
    retrieval_task,
    score_rankings,
)
from tests.invoke import simcli

PAIRS = "A\tB\t1\nA\tC\t1\nD\tE\t1\nC\tF\t0\nG\tA\t0\n"
# corpus in order of first appearance, first column then second: A D C G B E F
ANGLES = {"A": 0, "D": 90, "C": 40, "G": 10, "B": 20, "E": 100, "F": 30}  # degrees on a circle


def test_task_from_pairs(tmp_path: Path) -> None:
    lines = [line.split("\t") for line in PAIRS.splitlines()]
    task = retrieval_task(
        "t", [r[0] for r in lines], [r[1] for r in lines], np.array([float(r[2]) for r in lines])
    )
    assert task.corpus == ["A", "D", "C", "G", "B", "E", "F"]
    assert task.queries == ["A", "D"]  # first sentences of positive pairs, each once
    assert task.relevant == [{4, 2}, {5}]  # A: B and C; D: E
    assert task.threshold == 0.5 and task.dropped == 0 and task.distractors == 0

    # STS-B-like scores: the middle of the range (2.5) by default; distractors join the corpus once
    t2 = retrieval_task(
        "s", ["x", "y", "x"], ["y", "x", "x"], np.array([5.0, 3.0, 0.0]), distractors=["z", "x", "z"]
    )
    assert t2.threshold == 2.5
    assert t2.corpus == ["x", "y", "z"] and t2.distractors == 1
    assert t2.queries == ["x", "y"] and t2.relevant == [{1}, {0}]
    # a query whose only positive is itself has nothing to find: dropped and counted
    t3 = retrieval_task("d", ["p", "q"], ["p", "r"], np.array([1.0, 1.0]))
    assert t3.queries == ["q"] and t3.dropped == 1
    with pytest.raises(BadInput, match=r"f.tsv: no positive pairs \(label > 0.5"):
        retrieval_task("n", ["a"], ["b"], np.array([0.0]), source="f.tsv", threshold=0.5)


def test_metrics_by_hand() -> None:
    ranked = [9, 4, 7, 2, -1]
    rel = {2, 4}
    assert reciprocal_rank(ranked, rel) == 0.5
    assert reciprocal_rank(ranked, rel, k=1) == 0.0
    assert recall(ranked, rel, 1) == 0.0
    assert recall(ranked, rel, 2) == 0.5
    assert recall(ranked, rel, 10) == 1.0
    assert ndcg(ranked, rel) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert ndcg([2, 4], rel) == pytest.approx(1.0)
    assert ndcg([], {1}) == 0.0
    # a relevant document beyond the cut counts nowhere
    long = list(range(100, 110)) + [2]
    assert reciprocal_rank(long, {2}) == 0.0 and recall(long, {2}, 10) == 0.0 and ndcg(long, {2}) == 0.0
    s = score_rankings(np.array([ranked, [5, 1, 2, 3, 4]]), [rel, {5}])
    assert (s.mrr_at_10, s.recall_at_1, s.recall_at_10, s.queries) == (0.75, 0.5, 1.0, 2)


class CircleEncoder:
    """Known vectors: each sentence a point on a circle (angles above), scaled so norms differ.

    Not a model: the hand computation below needs vectors whose rankings are known in advance.
    """

    def __init__(self) -> None:
        self.spec = SimpleNamespace(dim=2, model="circle")

    def spec_for(self, pooling: str) -> SimpleNamespace:
        return SimpleNamespace(pooling="cls", dim=2)

    def encode_poolings(self, texts, modes, **_):  # type: ignore[no-untyped-def]
        rad = np.deg2rad([ANGLES[t] for t in texts])
        v = np.stack([np.cos(rad), np.sin(rad)], axis=1) * (1.0 + np.arange(len(texts)))[:, None]
        return {m: v.astype(np.float32) for m in modes}


def test_evaluate_retrieval_equals_hand_computation(tmp_path: Path) -> None:
    f = tmp_path / "hand.tsv"
    f.write_text(PAIRS, encoding="utf-8")
    (res,) = evaluate_retrieval([f], CircleEncoder(), whiten="none", rerank="none")
    # query A ranks G(10) B(20) F(30) C(40) D E: relevant B, C at ranks 2 and 4
    # query D ranks E(10) C(50) F(60) B(70) G(80) A: relevant E at rank 1
    ndcg_a = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert res.mrr_at_10 == pytest.approx((0.5 + 1.0) / 2)
    assert res.recall_at_1 == pytest.approx((0.0 + 1.0) / 2)
    assert res.recall_at_10 == pytest.approx(1.0)
    assert res.ndcg_at_10 == pytest.approx((ndcg_a + 1.0) / 2)
    assert (res.queries, res.corpus, res.dataset, res.rerank) == (2, 7, "hand", "none")
    assert res.skewness == 0.0  # 7 entries, k = 10: everyone is in everyone's list (N_10 = 6 for all)


@pytest.mark.parametrize("candidates", [50, 12])
def test_rank_corpus_against_brute_force(candidates: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 16)) + 0.8
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    r = np.take_along_axis(s, order[:, :10], axis=1).mean(axis=1)
    ranked = rank_corpus(x, ["none", "csls"], candidates)
    np.testing.assert_array_equal(ranked["none"], order[:, :10])
    # CSLS over the top `candidates` by cosine, by numpy
    cand = order[:, :candidates]
    score = 2 * np.take_along_axis(s, cand, axis=1) - r[cand]
    want = np.take_along_axis(cand, np.argsort(-score, axis=1, kind="stable")[:, :10], axis=1)
    np.testing.assert_array_equal(ranked["csls"], want)
    nk_none = hb.k_occurrence(ranked["none"], 300)
    nk_csls = hb.k_occurrence(ranked["csls"], 300)
    assert hb.skewness(nk_csls) < hb.skewness(nk_none)  # the point of the re-rank
    assert hb.skewness(nk_none) == pytest.approx(scipy.stats.skew(nk_none))


def test_bad_rerank_and_candidates(tmp_path: Path) -> None:
    f = tmp_path / "hand.tsv"
    f.write_text(PAIRS, encoding="utf-8")
    with pytest.raises(UsageError, match="--rerank 'mmr'"):
        evaluate_retrieval([f], CircleEncoder(), whiten="none", rerank="none,mmr")
    with pytest.raises(UsageError, match="--candidates must be at least 10"):
        evaluate_retrieval([f], CircleEncoder(), whiten="none", candidates=5)


def test_cli_eval_retrieval_with_a_tiny_model(tmp_path: Path, wobert_dir: Path) -> None:
    """The command end to end: its JSON equals numpy brute force on the encoder's own vectors."""
    from simcli.models.encoder import load_encoder

    rows = [
        "今天天气很好\t今天天气不错\t1",
        "我喜欢北京\t我爱北京\t1",
        "我喜欢北京\t今天天气不错\t0",
        "明天下雨\t明天会下雨吗\t1",
    ]
    f = tmp_path / "tiny.tsv"
    f.write_text("\n".join(rows) + "\n", encoding="utf-8")
    distract = tmp_path / "more.txt"
    distract.write_text("北京的天气\n上海下雨了\n", encoding="utf-8")
    r = simcli(
        "eval",
        "retrieval",
        str(f),
        "--corpus",
        str(distract),
        "--model",
        str(wobert_dir),
        "--whiten",
        "none",
        "--rerank",
        "none,csls",
        "--json",
    )
    assert r.exit_code == 0, r.output
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [g["rerank"] for g in got] == ["none", "csls"]

    enc = load_encoder(str(wobert_dir))
    corpus = [
        "今天天气很好",
        "我喜欢北京",
        "明天下雨",
        "今天天气不错",
        "我爱北京",
        "明天会下雨吗",
        "北京的天气",
        "上海下雨了",
    ]
    v = enc.encode(corpus, normalize=True).astype(np.float64)
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    rel = {0: 3, 1: 4, 2: 5}
    ranks = [1 + int(np.sum(s[q] > s[q, d])) for q, d in rel.items()]
    assert got[0]["mrr_at_10"] == pytest.approx(np.mean([1 / k for k in ranks]), abs=1e-6)
    assert got[0]["recall_at_1"] == pytest.approx(np.mean([k == 1 for k in ranks]), abs=1e-6)
    assert got[0]["queries"] == 3 and got[0]["corpus"] == 8 and got[1]["candidates"] == 50


def test_cli_eval_retrieval_table(tmp_path: Path, wobert_dir: Path) -> None:
    f = tmp_path / "tiny.tsv"
    f.write_text("今天天气很好\t今天天气不错\t1\n我喜欢北京\t我爱北京\t0\n", encoding="utf-8")
    r = simcli("eval", "retrieval", str(f), "--model", str(wobert_dir), "--whiten", "none")
    assert r.exit_code == 0, r.output
    assert "MRR@10" in r.stdout and "N10 skew" in r.stdout and "tiny" in r.stdout
    bad = simcli("eval", "retrieval", str(f), "--model", str(wobert_dir), "--rerank", "x")
    assert bad.exit_code != 0 and "--rerank 'x'" in bad.output
