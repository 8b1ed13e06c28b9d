"""`simcli train generator` on the command line, and the positive pairs it reads: counts per file, groups,
triplets, and one clear line for each kind of bad input, with nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from simcli.errors import UsageError
from simcli.training.generator import cut_long
from simcli.training.generator_data import POSITIVE, parse_generator_columns, read_generator_data
from simcli.training.loop import state_folder
from tests.invoke import simcli
from tests.train_data import write_pairs


def _lines(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not state_folder(out).exists()


# -- data -------------------------------------------------------------------------------------------------------
def test_positive_pairs_of_pairs_scores_groups_and_triplets(tmp_path: Path) -> None:
    """Label-1 rows and scores above the threshold are kept; duplicates in either order (across files) and
    pairs of one sentence twice are dropped and counted where they occur; a group gives all its pairs."""
    binary = write_pairs(
        tmp_path / "b.tsv",
        [("花呗", "蚂蚁花呗", "1"), ("借呗", "天气", "0"), ("蚂蚁花呗", "花呗", "1"), ("余额", "余额", "1")],
    )
    scores = write_pairs(tmp_path / "s.tsv", [("还款", "怎么还钱", "4.0"), ("还款", "下雨", "1.0")])
    groups = _lines(tmp_path / "g.jsonl", [["额度", "提额", "额度提升"], ["花呗", "蚂蚁花呗"]])
    triplets = _lines(tmp_path / "t.json", [{"query": "转账", "title": "怎么转账", "neg_title": "开户"}])
    data, summaries = read_generator_data([binary, scores, groups, triplets], threshold=2.5)
    got = list(zip(data[POSITIVE].s1, data[POSITIVE].s2, strict=True))
    assert got == [
        ("花呗", "蚂蚁花呗"),
        ("还款", "怎么还钱"),
        ("额度", "提额"),
        ("额度", "额度提升"),
        ("提额", "额度提升"),
        ("转账", "怎么转账"),
    ]
    assert [s.describe() for s in summaries] == [
        "b.tsv: 4 rows (binary), 1 positive pairs; dropped 1 negative, 1 duplicate, 1 of identical sentences",
        "s.tsv: 2 rows (scores), 1 positive pairs; dropped 1 negative, 0 duplicate, 0 of identical sentences",
        "g.jsonl: 2 groups (groups), 3 positive pairs; dropped 0 negative, 1 duplicate, 0 of identical sentences",
        "t.json: 1 rows (triplets), 1 positive pairs; dropped 0 negative, 0 duplicate, 0 of identical sentences",
    ]
    assert summaries[1].to_dict()["threshold"] == 2.5 and len(summaries[0].to_dict()["sha256"]) == 64


def test_triplet_columns_of_a_table(tmp_path: Path) -> None:
    table = tmp_path / "t.tsv"
    table.write_text(
        "id\tquery\ttitle\tneg\n1\t转账\t怎么转账\t开户\n2\t挂失\t银行卡挂失\t开户\n", encoding="utf-8"
    )
    columns = parse_generator_columns("query,title")
    data, summaries = read_generator_data([table], columns=columns)
    assert data[POSITIVE].s2 == ["怎么转账", "银行卡挂失"] and summaries[0].kind == "triplets"
    with pytest.raises(UsageError, match="expected 'first,second,label'"):
        parse_generator_columns("query")


def test_scores_need_a_threshold(tmp_path: Path) -> None:
    scores = write_pairs(tmp_path / "s.tsv", [("还款", "怎么还钱", "4.0"), ("还款", "下雨", "1.0")])
    with pytest.raises(UsageError, match=r"s\.tsv: labels are scores: give --threshold"):
        read_generator_data([scores])


def test_long_texts_are_cut_at_sentence_punctuation() -> None:
    text = "花呗怎么还款，" * 3 + "借呗呢？" + "余额宝" * 20
    assert cut_long(text, 16) == "花呗怎么还款，花呗怎么还款，"  # 1.2 x 16 = 19 characters at most
    assert cut_long("短句", 16) == "短句"
    assert cut_long("没有标点" * 10, 16) == "没有标点" * 10  # kept whole: the tokenizer truncates it


# -- command line: bad input, one line each, nothing written -------------------------------------------------------
def test_a_file_without_positive_pairs(roformer_sim_dir: Path, tmp_path: Path) -> None:
    neg = write_pairs(tmp_path / "neg.tsv", [("借呗", "天气", "0"), ("还款", "下雨", "0")])
    out = tmp_path / "out"
    result = simcli("train", "generator", neg, "--model", roformer_sim_dir, "--out", out)
    assert result.exit_code == 1
    assert result.stderr == (
        f"simcli: error: {neg}: no positive pairs (2 rows: 2 negative, 0 duplicate, 0 of identical sentences)\n"
    )
    assert result.stdout == "" and _nothing_written(out)


def test_a_group_of_one_sentence(roformer_sim_dir: Path, tmp_path: Path) -> None:
    groups = _lines(tmp_path / "g.jsonl", [["花呗", "蚂蚁花呗"], ["只有一句"]])
    out = tmp_path / "out"
    result = simcli("train", "generator", groups, "--model", roformer_sim_dir, "--out", out)
    assert result.exit_code == 1
    assert (
        result.stderr == f"simcli: error: {groups}:2: a group needs at least 2 similar sentences, found 1\n"
    )
    assert _nothing_written(out)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--noise", "1.5", "--noise must be in [0, 1], got 1.5"),
        ("--scale", "0", "--scale must be positive, got 0.0"),
        ("--columns", "a", "--columns 'a': expected 'first,second,label' (pairs) or 'query,positive'"),
    ],
)
def test_bad_settings(flag: str, value: str, message: str, roformer_sim_dir: Path, tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "p.tsv", [("花呗", "蚂蚁花呗", "1")])
    out = tmp_path / "out"
    result = simcli("train", "generator", data, "--model", roformer_sim_dir, "--out", out, flag, value)
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"simcli: error: {message}")
    assert _nothing_written(out)


def test_long_pairs_are_cut_and_counted_and_out_is_not_replaced(
    roformer_sim_dir: Path, tmp_path: Path
) -> None:
    data = write_pairs(
        tmp_path / "p.tsv",
        [
            ("花呗怎么还款", "花呗如何还钱", "1"),
            ("借呗额度" * 5, "借呗怎么提额", "1"),
            ("余额", "余额宝", "1"),
        ],
    )
    out = tmp_path / "out"
    args = ["train", "generator", data, "--model", roformer_sim_dir, "--out", out, "--max-length", "8"]
    result = simcli(*args, "--steps", "2", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "--max-length 8: cut 1 of 3 pairs (a sentence was longer)\n" in result.stderr
    assert "p.tsv: 3 rows (binary), 3 positive pairs; dropped 0 negative" in result.stderr
    assert "pooler: checkpoint; MLM head: checkpoint\n" in result.stderr
    # not a terminal: no progress bar, but a plain line at the last step (and one a minute before it)
    assert re.search(
        r"^simcli: training generator: step 2/2, loss \d+\.\d{4}, [\d.]+ pairs/s$",
        result.stderr,
        re.MULTILINE,
    )
    record = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert record["task"] == "generator" and record["cut_pairs"] == 1 and record["positive_pairs"] == 3
    assert record["hyperparameters"]["scale"] == 20.0 and record["hyperparameters"]["noise"] == 0.5
    assert record["hyperparameters"]["group_by_length"] is False
    assert record["hyperparameters"]["lr"] == 1e-5 and record["hyperparameters"]["batch_size"] == 2
    assert [h["step"] for h in record["loss_history"]] == [2]

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = simcli(*args, "--steps", "1")
    assert again.exit_code == 1
    assert again.stderr == (
        f"simcli: error: --out {out} is not empty (use --overwrite to replace a trained model there)\n"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    replaced = simcli(*args, "--steps", "1", "--batch-size", "2", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "training.json").read_text(encoding="utf-8"))["steps"] == 1


def test_generator_options_keep_the_stage_one_defaults_under_given_settings() -> None:
    from simcli.training import TrainOptions

    o = TrainOptions.generator(steps=3, noise=0.0)
    assert (o.lr, o.batch_size, o.weight_decay, o.encoder.max_length) == (1e-5, 48, 0.01, 64)
    assert (o.steps, o.noise, o.scale) == (3, 0.0, 20.0)
    assert TrainOptions.generator(lr=1e-4).lr == 1e-4
