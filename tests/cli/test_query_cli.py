"""CLI: `simcli index build/add/info/check`, `simcli query` and `simcli similar`: exact output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simcli.index import Index
from tests.invoke import simcli as run

SENTENCES = ["花呗怎么还款", "借呗额度怎么提升", "花呗如何还款", "我喜欢北京", "今天天气很好", "花呗怎么还款"]


@pytest.fixture
def faq(tmp_path: Path, roformer_sim_dir: Path) -> Path:
    """A small index built through the CLI from a txt file with the tiny RoFormer-Sim."""
    corpus = tmp_path / "faq.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "faq.idx"
    r = run(
        "index",
        "build",
        str(corpus),
        "--model",
        str(roformer_sim_dir),
        "--out",
        str(out),
        "--dtype",
        "float32",
    )
    assert r.exit_code == 0, r.output
    assert r.stdout == f"wrote {out}: 6 vectors, dim 48, Flat, search exact, recall@10 1.000\n"
    return out


def expected_hits(model: Path, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
    """(id, cosine) by numpy over the encoder's vectors, ties by lower id: what the CLI must print."""
    from simcli.models.encoder import load_encoder

    enc = load_encoder(str(model), dtype="float32")
    c, q = enc.encode(SENTENCES, normalize=True), enc.encode(queries, normalize=True)
    sims = q.astype(np.float64) @ c.astype(np.float64).T
    out = []
    for row in sims:
        order = sorted(range(len(SENTENCES)), key=lambda i: (-round(row[i], 5), i))[:k]
        out.append([(i, float(row[i])) for i in order])
    return out


def test_query_table(faq: Path, roformer_sim_dir: Path) -> None:
    r = run("query", str(faq), "花呗还款", "北京", "-k", "3", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    lines = []
    for q, hits in zip(
        ["花呗还款", "北京"], expected_hits(roformer_sim_dir, ["花呗还款", "北京"], 3), strict=True
    ):
        lines += [q] + [f"{rank:>4}  {s:.4f}  {SENTENCES[i]}" for rank, (i, s) in enumerate(hits, 1)] + [""]
    assert r.stdout == "\n".join(lines[:-1]) + "\n"


def test_query_json_file_and_stdin_agree(faq: Path, roformer_sim_dir: Path, tmp_path: Path) -> None:
    queries = ["花呗还款", "北京"]
    expected = expected_hits(roformer_sim_dir, queries, 2)
    qfile = tmp_path / "q.txt"
    qfile.write_text("花呗还款\n\n北京\n", encoding="utf-8")  # the empty line is skipped
    outputs = [
        run("query", str(faq), *queries, "-k", "2", "--json", "--dtype", "float32"),
        run("query", str(faq), "--file", str(qfile), "-k", "2", "--json", "--dtype", "float32"),
        run("query", str(faq), "-k", "2", "--json", "--dtype", "float32", stdin="花呗还款\n北京\n"),
    ]
    for r in outputs:
        assert r.exit_code == 0, r.output
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        assert [row["query"] for row in rows] == queries
        for row, hits in zip(rows, expected, strict=True):
            assert [(h["rank"], h["id"], h["text"]) for h in row["results"]] == [
                (rank, i, SENTENCES[i]) for rank, (i, _) in enumerate(hits, 1)
            ]
            assert [h["score"] for h in row["results"]] == pytest.approx([s for _, s in hits], abs=1e-5)
    assert outputs[0].stdout == outputs[1].stdout == outputs[2].stdout


def test_query_min_score_and_duplicates(faq: Path) -> None:
    r = run(
        "query", str(faq), "花呗怎么还款", "-k", "6", "--min-score", "0.99999", "--json", "--dtype", "float32"
    )
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["results"]
    assert [(h["id"], h["text"]) for h in hits] == [(0, "花呗怎么还款"), (5, "花呗怎么还款")]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["query", "{missing}", "x"], 1, "simcli: error: {missing}: no such index folder\n"),
        (["query", "{faq}", "x", "--nprobe", "8"], 2, "simcli: error: nprobe does not apply to Flat (its parameter: none (exact search))\n"),
        (["query", "{faq}", "x", "--file", "{faq}/x.txt"], 2, "simcli: error: give queries as arguments or --file, not both\n"),
        (["index", "build", "{faq}/../faq.txt", "--out", "{faq}/../new.idx"], 2, "simcli: error: text inputs need --model (or give a vector store folder)\n"),
        (["index", "build", "{faq}/../faq.txt", "-m", "m", "--out", "{faq}/../o", "--index", "ivf-flat"], 2,
         "simcli: error: --index must be one of auto, flat, hnsw, ivf, ivfpq or a faiss factory string (e.g. IVF1024,Flat or HNSW32), got 'ivf-flat'\n"),
    ],
)  # fmt: skip
def test_errors_are_one_line_with_exit_codes(
    faq: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    fill = {"faq": str(faq), "missing": str(tmp_path / "nope.idx")}
    r = run(*[a.format(**fill) for a in args])
    assert (r.exit_code, r.stdout, r.stderr) == (code, "", message.format(**fill))


def test_corrupted_index_refused_by_query(faq: Path) -> None:
    texts = faq / "texts-1.jsonl"
    texts.write_text(texts.read_text(encoding="utf-8").replace("北京", "上海"), encoding="utf-8")
    r = run("query", str(faq), "北京")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == f"simcli: error: {texts}: sha256 does not match the manifest (file altered)\n"


def test_index_add_info_check(faq: Path, tmp_path: Path) -> None:
    more = tmp_path / "more.txt"
    more.write_text("上海是个大城市\n周末去爬山吧\n", encoding="utf-8")
    r = run("index", "add", str(faq), str(more), "--dtype", "float32")
    assert (r.exit_code, r.stdout) == (0, f"added 2 vectors to {faq}: 8 in all\n"), r.output
    hit = json.loads(run("query", str(faq), "上海是个大城市", "-k", "1", "--json").stdout)["results"][0]
    assert (hit["id"], hit["text"]) == (6, "上海是个大城市")

    info = json.loads(run("index", "info", str(faq), "--json").stdout)
    assert (info["count"], info["dim"], info["index"], info["family"], info["whitening"]) == (
        8, 48, "Flat", "roformer-sim", None,
    )  # fmt: skip
    table = run("index", "info", str(faq)).stdout.splitlines()
    assert "count               8" in table and "whitening           none" in table
    assert {line.index(value) for line in table for value in line.split()[1:2]} == {20}  # one column

    r = run("index", "check", str(faq), "--sample", "5", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (report["recall"], report["queries"], report["k"], report["count"]) == (1.0, 5, 10, 8)
    text = run("index", "check", str(faq), "--sample", "5").stdout
    assert text.startswith(f"{faq}: 8 vectors, files ok; recall@10 1.0000 on 5 sample queries (exact);")


def test_index_add_says_so_once(faq: Path, tmp_path: Path) -> None:
    """One summary line (stdout), a lone vector in the singular; stderr repeats none of it."""
    one = tmp_path / "one.txt"
    one.write_text("上海是个大城市\n", encoding="utf-8")
    r = run("index", "add", str(faq), str(one), "--dtype", "float32")
    assert (r.exit_code, r.stdout) == (0, f"added 1 vector to {faq}: 7 in all\n"), r.output
    assert "added" not in r.stderr and "vectors" not in r.stderr


def test_build_ivf_with_search_override(tmp_path: Path) -> None:
    """From an array-built IVF index the CLI's --nprobe changes the search; the manifest value is the default."""
    rng = np.random.default_rng(0)
    idx = Index.build(rng.standard_normal((3000, 16)).astype(np.float32), out=tmp_path / "v", index="ivf")
    nprobe = idx.search_params["nprobe"]
    r = run("index", "check", str(tmp_path / "v"), "--sample", "50", "--nprobe", "1", "--json")
    assert json.loads(r.stdout)["params"] == {"nprobe": 1}
    r = run("index", "check", str(tmp_path / "v"), "--sample", "50", "--json")
    assert json.loads(r.stdout)["params"] == {"nprobe": nprobe}
    r = run("query", str(tmp_path / "v"), "x")
    assert r.exit_code == 2
    assert (
        r.stderr
        == f"simcli: error: {tmp_path / 'v'} was built from vectors without a model: query it with vectors\n"
    )


def test_similar_pair_and_matrix(roformer_sim_dir: Path) -> None:
    from simcli.models.encoder import load_encoder

    texts = ["我喜欢北京", "我不喜欢北京", "花呗怎么还款"]
    v = load_encoder(str(roformer_sim_dir), dtype="float32").encode(texts, normalize=True).astype(np.float64)
    m = v @ v.T
    assert not np.allclose(m[0, 1], m[0, 2])  # premise: the pairs differ
    r = run("similar", texts[0], texts[1], "-m", str(roformer_sim_dir), "--dtype", "float32")
    assert (r.exit_code, r.stdout) == (0, f"{m[0, 1]:.4f}\n"), r.output
    r = run("similar", *texts, "-m", str(roformer_sim_dir), "--dtype", "float32", "--json")
    data = json.loads(r.stdout)
    assert data["texts"] == texts and np.allclose(data["cosine"], m, atol=1e-5)
    r = run("similar", *texts, "-m", str(roformer_sim_dir), "--dtype", "float32")
    lines = r.stdout.splitlines()
    assert lines[0] == "         1        2        3  text"
    assert lines[2] == f"2  {m[1, 0]:>7.4f}  {m[1, 1]:>7.4f}  {m[1, 2]:>7.4f}  {texts[1]}"
    r = run("similar", "一句", "-m", str(roformer_sim_dir))
    assert (r.exit_code, r.stderr) == (2, "simcli: error: give at least two sentences, got 1\n")


def test_similar_with_whitening(tmp_path: Path, wobert_dir: Path, roformer_sim_dir: Path) -> None:
    from simcli.models.encoder import load_encoder
    from simcli.whitening import Whitening

    enc = load_encoder(str(wobert_dir), dtype="float32")
    corpus = SENTENCES + ["上海是个大城市", "周末去爬山吧", "这个手机多少钱", "明天会下雨吗"]
    w = Whitening.fit(enc.encode(corpus), dim=6, spec=enc.spec)
    w.save(tmp_path / "w.whiten")
    y = w.transform(enc.encode(["我喜欢北京", "我不喜欢北京"]))
    r = run("similar", "我喜欢北京", "我不喜欢北京", "-m", str(wobert_dir), "--whitening", str(tmp_path / "w.whiten"),
            "--dtype", "float32")  # fmt: skip
    assert (r.exit_code, r.stdout) == (0, f"{float(y[0] @ y[1]):.4f}\n"), r.output
    r = run("similar", "a", "b", "-m", str(roformer_sim_dir), "--whitening", str(tmp_path / "w.whiten"))
    assert r.exit_code == 1 and "does not fit" in r.stderr
