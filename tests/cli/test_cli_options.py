"""Options declared once: the typed read options, serve's and train's options built on EncoderConfig, the
renamed token budgets with their old spellings, and `simcli train distill` as a sub-command of its own."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from simcli.errors import UsageError
from simcli.io import ReadOptions
from simcli.serve.options import ServeOptions
from simcli.training.options import TrainOptions
from simcli.types import EncoderConfig
from tests.invoke import simcli as run


# -- ReadOptions -----------------------------------------------------------------------------------------------
def test_read_options_manifest_form_and_dicts() -> None:
    # the form a store manifest records: header only when given (older stores resume unchanged)
    assert ReadOptions(column="q").as_dict() == {
        "column": "q",
        "field": None,
        "errors": "strict",
        "skip_empty": False,
    }
    assert ReadOptions(header=False, skip_empty=True).as_dict()["header"] is False
    # the Python API still takes a dict (and a manifest's own dict round-trips)
    opts = ReadOptions(column="1", field="t", header=False, errors="replace", skip_empty=True)
    assert ReadOptions.of(opts.as_dict()) == opts
    assert ReadOptions.of({"errors": None, "skip_empty": None}) == ReadOptions()
    assert ReadOptions.of(None) == ReadOptions()
    with pytest.raises(UsageError, match="^unknown read option\\(s\\): colum$"):
        ReadOptions.of({"colum": "q"})


def test_read_options_records(tmp_path: Path) -> None:
    tsv = tmp_path / "q.tsv"
    tsv.write_text("id\tquestion\n1\t花呗怎么还款\n2\t\n3\t借呗额度\n", encoding="utf-8")
    rows = list(ReadOptions(column="question", skip_empty=True).records([tsv]))
    assert [(r.text, r.line) for r in rows] == [("花呗怎么还款", 2), ("借呗额度", 4)]


def test_store_records_the_same_read_options_from_a_dict_or_a_readoptions() -> None:
    from simcli.store import store_header
    from simcli.types import ModelSpec

    spec = ModelSpec("m", "0" * 64, "bert", "char", "cls", 64, 4)
    opts = ReadOptions(column="q", header=True)
    typed = store_header(spec, "float32", False, 10, None, ["a.tsv"], opts)
    plain = store_header(spec, "float32", False, 10, None, ["a.tsv"], opts.as_dict())
    assert (
        typed["read"]
        == plain["read"]
        == {
            "column": "q",
            "field": None,
            "errors": "strict",
            "skip_empty": False,
            "header": True,
        }
    )


# -- ServeOptions / TrainOptions on EncoderConfig --------------------------------------------------------------
def test_serve_options_hold_an_encoder_config() -> None:
    o = ServeOptions(model="m", dtype="float32", max_length=32, max_batch_tokens=512, port=9000)
    assert o.encoder == EncoderConfig("m", dtype="float32", max_length=32, batch_tokens=512)
    assert (o.model, o.port, o.indexes) == ("m", 9000, [])
    assert ServeOptions().model is None and ServeOptions().encoder == EncoderConfig("")
    # the worker processes get their options through JSON
    assert ServeOptions(**json.loads(json.dumps(o.to_dict()))) == o
    assert "api_key" not in ServeOptions(api_key="k").public()
    with pytest.raises(TypeError, match="ServeOptions got unexpected keyword\\(s\\): colour"):
        ServeOptions(colour="red")


def test_train_options_record_the_encoder_settings_flat() -> None:
    o = TrainOptions(steps=3, max_length=32, dtype="float32", batch_tokens=99, eval_files=[Path("dev.tsv")])
    assert o.encoder == EncoderConfig("", max_length=32, dtype="float32", batch_tokens=99)
    d = o.to_dict()
    assert (d["max_length"], d["dtype"], d["batch_tokens"], d["eval_files"]) == (
        32,
        "float32",
        99,
        ("dev.tsv",),
    )
    assert "encoder" not in d and list(d)[-2:] == ["save_every", "log_every"]
    assert dataclasses.replace(o, loss="cosent").encoder.max_length == 32
    with pytest.raises(UsageError, match="^--pass-tokens must be at least 1, got 0$"):
        TrainOptions(batch_tokens=0).check()


def test_default_batch_tokens_by_device() -> None:
    from simcli.models.encoder import CPU_BATCH_TOKENS, CUDA_BATCH_TOKENS, default_batch_tokens

    assert (default_batch_tokens("cpu"), default_batch_tokens("cuda")) == (
        CPU_BATCH_TOKENS,
        CUDA_BATCH_TOKENS,
    )
    assert (CPU_BATCH_TOKENS, CUDA_BATCH_TOKENS) == (1024, 16384)
    # on CPU the dtype's kernels decide: bf16 products want more rows, int8's quantisation passes fewer
    cpu = [
        default_batch_tokens("cpu", d) for d in (torch.float32, torch.bfloat16, torch.qint8, torch.float16)
    ]
    assert cpu == [1024, 2048, 512, 1024]
    assert default_batch_tokens("cuda", torch.float16) == default_batch_tokens("cuda", torch.qint8) == 16384


def test_batch_tokens_follow_the_dtype_in_use(roformer_sim_dir: Path) -> None:
    """The budget is decided by the dtype the encoder ends up with, not the one loading started in."""
    from simcli.models.encoder import load_encoder
    from simcli.serve.batcher import default_budget

    assert load_encoder(str(roformer_sim_dir), dtype="int8").batch_tokens == 512
    bf16 = load_encoder(str(roformer_sim_dir), dtype="bfloat16")
    assert bf16.batch_tokens == 2048
    assert default_budget(bf16) == (2048, "bfloat16 on cpu")  # a server's batches: the encoder's budget
    assert load_encoder(str(roformer_sim_dir), dtype="bfloat16", batch_tokens=300).batch_tokens == 300


# -- serve --batch-tokens (old: --max-batch-tokens) -------------------------------------------------------------
@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ServeOptions]:
    pytest.importorskip("fastapi")
    import simcli.serve.server

    seen: list[ServeOptions] = []
    monkeypatch.setattr(simcli.serve.server, "serve", lambda options, log: seen.append(options))
    return seen


@pytest.mark.parametrize("flag", ["--batch-tokens", "--max-batch-tokens"])
def test_serve_batch_tokens_and_its_old_spelling(served: list[ServeOptions], flag: str) -> None:
    r = run("serve", "--model", "m", flag, "4096", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    assert served[0].encoder == EncoderConfig("m", dtype="float32", batch_tokens=4096)


def test_serve_batch_tokens_checks(served: list[ServeOptions]) -> None:
    r = run("serve", "--model", "m", "--batch-tokens", "8")
    assert (r.exit_code, r.stderr) == (2, "simcli: error: --batch-tokens must be at least 16, got 8\n")
    r = run("serve", "--model", "m", "--batch-tokens", "64", "--max-batch-tokens", "32")
    assert r.exit_code == 2
    assert (
        r.stderr == "simcli: error: --max-batch-tokens is the old name of --batch-tokens: give one of them\n"
    )
    assert served == []
    help_text = run("serve", "--help").stdout
    assert "--batch-tokens" in help_text and "--max-batch-tokens" not in help_text


# -- train and train distill -------------------------------------------------------------------------------------
@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    import simcli.training

    seen: list[tuple[Any, ...]] = []

    def fake(*args: Any, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
        seen.append(args)
        return Path(args[-2]), {"steps": 1, "pairs": 8}

    monkeypatch.setattr(simcli.training, "train", fake)
    monkeypatch.setattr(simcli.training, "distill", fake)
    return seen


@pytest.mark.parametrize("flag", ["--pass-tokens", "--batch-tokens"])
def test_train_runs_as_before_and_pass_tokens_has_its_old_spelling(
    trained: list[tuple[Any, ...]], flag: str
) -> None:
    r = run(
        "train",
        "a.tsv",
        "b.tsv",
        "--model",
        "m",
        "--out",
        "o",
        "--steps",
        "3",
        flag,
        "256",
        "--max-length",
        "32",
    )
    assert r.exit_code == 0, r.output
    assert r.stderr == "simcli: wrote o (1 steps, 8 pairs)\n"
    files, model, out, options = trained[0]
    assert (files, model, out) == (["a.tsv", "b.tsv"], "m", Path("o"))
    assert options == TrainOptions(steps=3, batch_tokens=256, max_length=32)


def test_train_distill_is_a_sub_command(trained: list[tuple[Any, ...]]) -> None:
    r = run("train", "distill", "a.tsv", "--teacher", "t", "--student", "s", "--out", "o", "--lr", "0.001")
    assert r.exit_code == 0, r.output
    files, teacher, student, out, options = trained[0]
    assert (files, teacher, student, out, options) == (["a.tsv"], "t", "s", Path("o"), TrainOptions(lr=0.001))
    # its own options only: no --model, --loss or --pooling; train's no --teacher
    r = run("train", "distill", "a.tsv", "--teacher", "t", "--student", "s", "--out", "o", "--model", "m")
    assert r.exit_code == 2
    assert r.stderr.startswith("simcli: error: No such option: --model")
    assert r.stderr.endswith(" (see simcli train distill --help)\n") and len(r.stderr.splitlines()) == 1
    r = run("train", "distill", "a.tsv", "--student", "s", "--out", "o")
    assert (r.exit_code, r.stderr) == (
        2,
        "simcli: error: Missing option '--teacher' (see simcli train distill --help)\n",
    )
    r = run("train", "a.tsv", "--model", "m", "--out", "o", "--teacher", "t")
    assert r.exit_code == 2 and r.stderr.startswith("simcli: error: No such option: --teacher")
    assert r.stderr.endswith(" (see simcli train --help)\n")
    distill_help, train_help = run("train", "distill", "--help").stdout, run("train", "--help").stdout
    assert (
        "Usage: simcli train distill [OPTIONS]" in distill_help
        and "Usage: simcli train [OPTIONS]" in train_help
    )
    assert "--teacher" in distill_help and "--loss" not in distill_help and "--model" not in distill_help
    assert "--teacher" not in train_help and "--loss" in train_help and "--pass-tokens" in train_help
    assert "--batch-tokens" not in train_help + distill_help
    assert trained[1:] == []


def test_train_alone_lists_distill() -> None:
    r = run("train")
    assert "distill" in r.output and "Usage: simcli train [OPTIONS] COMMAND" in r.output
