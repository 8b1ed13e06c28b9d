"""`simcli encode` and `simcli info` on the tiny RoFormer-Sim checkpoint: exact output, exit codes, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simcli.errors import CorruptArtifact
from simcli.store import VectorStore
from tests.invoke import simcli as run

SENTENCES = ["花呗怎么还款", "花呗可以提前还款吗", "借呗的额度怎么提升", "余额宝的钱怎么转出来", "你好"]


@pytest.fixture(scope="module")
def reference(roformer_sim_dir: Path):  # type: ignore[no-untyped-def]
    """The library encoder the CLI must agree with."""
    from simcli.models.encoder import load_encoder

    return load_encoder(str(roformer_sim_dir), dtype="float32")


def header(model: Path) -> str:
    dim = json.loads((model / "config.json").read_text())["hidden_size"]
    return (
        f"simcli: model {model} (roformer-sim, char tokenizer), pooling pooler, dim {dim}, max length 64, "
        "device cpu, dtype float32\n"
    )


def test_encode_txt_to_a_store(tmp_path: Path, roformer_sim_dir: Path, reference) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "out.vec"
    r = run("encode", str(src), "--model", str(roformer_sim_dir), "--dtype", "float32", "--out", str(out),
            "--shard-size", "2")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    dim = reference.dim
    assert (
        r.stderr
        == header(roformer_sim_dir)
        + f"simcli: read 5 rows: wrote 5 vectors (dim {dim}, float32) in 3 shards to {out}\n"
    )
    store = VectorStore.open(out)
    assert store.texts() == SENTENCES
    assert [(x.source, x.line) for x in store.iter_records()] == [(str(src), i + 1) for i in range(5)]
    np.testing.assert_allclose(store.vectors(), reference.encode(SENTENCES), rtol=1e-5, atol=1e-5)
    assert store.spec == reference.spec

    again = run("encode", str(src), "--model", str(roformer_sim_dir), "--out", str(out))
    assert again.exit_code == 1
    assert again.stderr == (
        f"simcli: error: {out}: folder is not empty "
        "(use --resume to continue an interrupted run or --overwrite to replace it)\n"
    )
    resumed = run("encode", str(src), "--model", str(roformer_sim_dir), "--dtype", "float32", "--out", str(out),
                  "--shard-size", "2", "--resume")  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stderr.endswith(f"in 3 shards to {out}, 3 finished earlier\n")


def test_json_lines_from_stdin(roformer_sim_dir: Path, reference) -> None:  # type: ignore[no-untyped-def]
    r = run("encode", "-", "--model", str(roformer_sim_dir), "--dtype", "float32", "--json", "--normalize",
            stdin="\n".join(SENTENCES) + "\n")  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["id"], x["text"]) for x in rows] == list(enumerate(SENTENCES))
    got = np.array([x["vector"] for x in rows], dtype=np.float32)
    np.testing.assert_allclose(got, reference.encode(SENTENCES, normalize=True), rtol=1e-5, atol=1e-5)
    assert (
        r.stderr
        == header(roformer_sim_dir) + f"simcli: read 5 rows: encoded 5 sentences (dim {reference.dim})\n"
    )


def test_tsv_column_and_float16_and_shards(tmp_path: Path, roformer_sim_dir: Path, reference) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "q.tsv"
    src.write_text(
        "id\tquestion\n" + "".join(f"{i}\t{s}\n" for i, s in enumerate(SENTENCES)), encoding="utf-8"
    )
    common = [
        "--model",
        str(roformer_sim_dir),
        "--dtype",
        "float32",
        "--column",
        "question",
        "--shard-size",
        "2",
    ]
    for i in range(2):
        r = run("encode", str(src), *common, "--store-dtype", "float16", "--shard", f"{i}/2",
                "--out", str(tmp_path / "parts" / f"p{i}"))  # fmt: skip
        assert r.exit_code == 0, r.output
    store = VectorStore.open(tmp_path / "parts")
    assert store.texts() == SENTENCES and store.store_dtype == "float16"
    assert VectorStore.open(tmp_path / "parts" / "p1").texts() == SENTENCES[2:4]
    expected = reference.encode(SENTENCES).astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(store.vectors(), expected, rtol=2e-3, atol=2e-3)

    missing = run("encode", str(src), "--model", str(roformer_sim_dir), "--column", "text", "--json")
    assert missing.exit_code == 1
    assert missing.stderr == f"simcli: error: {src}: no column 'text' (header: id, question)\n"
    assert missing.stdout == ""


def test_empty_lines_and_truncation_are_reported(tmp_path: Path, roformer_sim_dir: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("花呗怎么还款\n\n你好\n\n", encoding="utf-8")
    base = ["encode", str(src), "--model", str(roformer_sim_dir), "--dtype", "float32", "--max-length", "5"]
    kept = run(*base, "--out", str(tmp_path / "a"))
    assert kept.exit_code == 0, kept.output
    # Char tokenizer: one token per Chinese character plus [CLS] and [SEP]; only the first line exceeds 5.
    too_long = sum(len(s) + 2 > 5 for s in ["花呗怎么还款", "", "你好", ""])
    assert too_long == 1
    assert kept.stderr.splitlines()[1:] == [
        "simcli: warning: 2 empty lines kept (use --skip-empty)",
        "simcli: warning: 1 line truncated at --max-length 5",  # singular for one line
        f"simcli: read 4 rows: wrote 4 vectors (dim 48, float32) in 1 shard to {tmp_path / 'a'}",
    ]
    skipped = run(*base, "--skip-empty", "--out", str(tmp_path / "b"))
    assert skipped.exit_code == 0, skipped.output
    assert skipped.stderr.splitlines()[1:] == [
        "simcli: warning: 1 line truncated at --max-length 5",
        f"simcli: read 4 rows: wrote 2 vectors (dim 48, float32) in 1 shard to {tmp_path / 'b'}, skipped 2 empty",
    ]
    assert VectorStore.open(tmp_path / "b").texts() == ["花呗怎么还款", "你好"]


def test_invalid_utf8_fails_with_file_and_line_then_resumes_with_replace(
    tmp_path: Path, roformer_sim_dir: Path
) -> None:
    src = tmp_path / "bad.txt"
    src.write_bytes("好\n".encode() + b"\xe5\xa5\n" + "你好\n".encode())
    out = tmp_path / "out"
    base = ["encode", str(src), "--model", str(roformer_sim_dir), "--dtype", "float32", "--out", str(out)]
    r = run(*base, "--shard-size", "1")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1] == f"simcli: error: {src}:2: invalid UTF-8 (use --errors replace)"
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    with pytest.raises(CorruptArtifact, match="incomplete store"):
        VectorStore.open(out)
    ok = run(*base, "--shard-size", "1", "--errors", "replace", "--resume")
    assert ok.exit_code == 0, ok.output
    assert (
        ok.stderr.splitlines()[-1]
        == f"simcli: read 3 rows: wrote 3 vectors (dim 48, float32) in 3 shards to {out}, 1 finished earlier"
    )
    assert VectorStore.open(out).texts() == ["好", "\ufffd", "你好"]


def test_json_counts_skipped_empty_lines(roformer_sim_dir: Path) -> None:
    r = run("encode", "-", "--model", str(roformer_sim_dir), "--dtype", "float32", "--json", "--skip-empty",
            stdin="一\n\n二\n\n\n")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["text"] for x in r.stdout.splitlines()] == ["一", "二"]
    assert r.stderr.splitlines()[1:] == ["simcli: read 5 rows: encoded 2 sentences (dim 48), skipped 3 empty"]


@pytest.mark.parametrize("bad", ["2/2", "x", "1/0"])
def test_bad_shard_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    r = run("encode", "in.txt", "--model", str(tmp_path), "--json", "--shard", bad)
    assert r.exit_code == 2
    assert "Invalid value for '--shard'" in r.stderr
    assert f"expected i/N with 0 <= i < N (e.g. 0/4), got '{bad}'" in " ".join(r.stderr.split()).replace(
        "│ ", ""
    )


def test_out_or_json_is_required_and_checked_before_loading(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("你好\n", encoding="utf-8")
    # The model folder does not exist: these errors must come before any model is loaded.
    missing_model = str(tmp_path / "no-model")
    r = run("encode", str(src), "--model", missing_model)
    assert (r.exit_code, r.stderr) == (
        2,
        "simcli: error: give --out DIR to write a store, or --json for JSON lines on stdout\n",
    )
    r = run("encode", str(src), "--model", missing_model, "--json", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    r = run("encode", str(tmp_path / "nope.txt"), "--model", missing_model, "--json")
    assert (r.exit_code, r.stderr) == (1, f"simcli: error: {tmp_path / 'nope.txt'}: no such file\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = run("encode", str(src), "--model", missing_model, "--out", str(tmp_path / "full"))
    assert r.exit_code == 1 and "folder is not empty" in r.stderr
    r = run("encode", str(src), "--model", missing_model, "--json")
    assert (r.exit_code, r.stderr) == (1, f"simcli: error: {missing_model}: no such model folder\n")


def test_info_text_and_json(roformer_sim_dir: Path) -> None:
    config = json.loads((roformer_sim_dir / "config.json").read_text())
    vocab = (roformer_sim_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    r = run("info", str(roformer_sim_dir), "--json", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert (data["family"], data["tokenizer"], data["pooling"]) == ("roformer-sim", "char", "pooler")
    assert data["dim"] == config["hidden_size"] and data["max_positions"] == config["max_position_embeddings"]
    assert data["vocab_size"] == len(vocab) and (data["device"], data["dtype"]) == ("cpu", "float32")
    assert len(data["weights_sha256"]) == 64
    text = run("info", str(roformer_sim_dir), "--pooling", "cls", "--dtype", "float32")
    assert text.exit_code == 0, text.output
    rows = {line.split()[0]: line.split()[1:] for line in text.stdout.splitlines()}  # key, value, (source)
    assert rows["pooling"] == ["cls", "(--pooling)"] and rows["family"][0] == "roformer-sim"
    assert rows["dim"] == [str(config["hidden_size"]), "(config)"] and rows["revision"] == ["-"]


def test_info_on_a_missing_model(tmp_path: Path) -> None:
    r = run("info", str(tmp_path / "none"))
    assert (r.exit_code, r.stdout, r.stderr) == (
        1,
        "",
        f"simcli: error: {tmp_path / 'none'}: no such model folder\n",
    )


def test_progress_bar_on_a_terminal(tmp_path: Path, roformer_sim_dir: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES * 3) + "\n", encoding="utf-8")
    r = run(
        "encode", src, "--model", roformer_sim_dir, "--dtype", "float32", "--out", tmp_path / "o",
        env={"FORCE_COLOR": "1", "COLUMNS": "200"},  # rich draws its bar only on a terminal
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (
        "encoding" in r.stderr and "15/" in r.stderr and "sentences/s" in r.stderr and "tokens/s" in r.stderr
    )


@pytest.mark.parametrize(
    ("shard", "trailing_newline"), [(None, True), (None, False), ((1, 2), True), ((0, 3), False)]
)
def test_expected_rows_for_the_eta(
    tmp_path: Path, shard: tuple[int, int] | None, trailing_newline: bool
) -> None:
    from simcli.cli.encode import _expected_rows
    from simcli.io import read_records
    from simcli.store import encode_records

    txt, tsv = tmp_path / "a.txt", tmp_path / "b.tsv"
    txt.write_text(
        "\n".join(f"句{i}" for i in range(11)) + ("\n" if trailing_newline else ""), encoding="utf-8"
    )
    tsv.write_text("id\ttext\n" + "".join(f"{i}\t行{i}\n" for i in range(6)), encoding="utf-8")

    class Zero:
        def encode(self, texts: list[str], **kw: object) -> np.ndarray:
            return np.zeros((len(texts), 1), np.float32)

    actual = sum(1 for _ in encode_records(read_records([txt, tsv]), Zero(), chunk_size=4, shard=shard))
    assert _expected_rows([str(txt), str(tsv)], None, shard, 4) == actual
    assert _expected_rows(["-"], None, None, 4) is None
