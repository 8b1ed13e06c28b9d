"""CLI: `--dtype int8` and `--dtype auto` choosing it: `simcli info` shows the choice and its reason, an index
built in int8 is queried in int8, training refuses int8 in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from simcli.index import Index
from simcli.models import device, encoder
from tests.invoke import simcli


def rows(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines()}


def test_info_shows_int8_and_why(roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto on a CPU without native bf16 whose int8 probe reads 2.0x: int8, with both measurements."""
    monkeypatch.setattr(device, "cpu_int8_speedup", lambda: 2.0)
    res = simcli("info", roformer_sim_dir)
    assert res.exit_code == 0, res.output
    info = rows(res.stdout)
    assert info["dtype"].split() == ["dtype", "int8", "(simcli", "default", "(auto))"]
    reason = info["dtype_reason"].split(None, 1)[1]
    assert reason.startswith(
        "auto: CPU has no native bf16; int8 linear layers 2.0x float32; min cosine to float32 0.9"
    )
    assert reason.endswith(" on calibration sentences")


def test_info_says_why_int8_was_refused(roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_int8_speedup", lambda: 2.0)
    monkeypatch.setattr(encoder, "INT8_MIN_COSINE", 1.01)
    res = simcli("info", roformer_sim_dir, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["dtype"] == "float32"
    assert data["dtype_reason"].startswith("auto: int8 min cosine to float32 was 0.9")
    assert data["dtype_reason"].endswith(" < 1.01, using float32")
    monkeypatch.setattr(device, "cpu_int8_speedup", lambda: 1.2)
    data = json.loads(simcli("info", roformer_sim_dir, "--json").stdout)
    assert (data["dtype"], data["dtype_reason"]) == (
        "float32",
        "auto: CPU has no native bf16, int8 linear layers only 1.2x float32",
    )


def test_index_built_in_int8_is_queried_in_int8(roformer_sim_dir: Path, tmp_path: Path) -> None:
    """The manifest records int8 as the dtype that computed the vectors; queries follow it."""
    corpus = tmp_path / "faq.txt"
    corpus.write_text("花呗怎么还款\n借呗额度怎么提升\n我喜欢北京\n", encoding="utf-8")
    out = tmp_path / "faq.idx"
    res = simcli("index", "build", corpus, "--model", roformer_sim_dir, "--out", out, "--dtype", "int8")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["computed_with"] == [{"device": "cpu", "dtype": "int8"}]
    res = simcli("query", out, "花呗怎么还款", "-k", "1", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["results"][0]["text"] == "花呗怎么还款"
    assert Index.load(out).encoder().dtype == torch.qint8


def test_train_refuses_int8_in_one_line(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("text_a\ttext_b\tlabel\n花呗\t借呗\t0\n", encoding="utf-8")
    res = simcli("train", pairs, "--model", "unused", "--out", tmp_path / "o", "--dtype", "int8")
    assert res.exit_code == 2
    assert res.stdout == ""
    assert res.stderr == (
        "simcli: error: --dtype int8 cannot train: training keeps float32 weights and --dtype here is the "
        "autocast dtype (auto, float32, bfloat16 or float16 on CUDA); encode with --dtype int8 afterwards\n"
    )
