"""`simcli generate` on the tiny RoFormer-Sim checkpoint: exact output against the library, exit codes, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simcli.paraphrase import Paraphraser, generate_file, load_paraphraser
from tests.invoke import simcli as run

TEXTS = ["花呗怎么还款", "借呗额度怎么提升"]
OPTS = {"n": 12, "k": 3, "seed": 7, "max_new_tokens": 5}
FLAGS = [
    "-n",
    "12",
    "-k",
    "3",
    "--seed",
    "7",
    "--max-new-tokens",
    "5",
    "--device",
    "cpu",
    "--dtype",
    "float32",
]


@pytest.fixture(scope="module")
def para(roformer_sim_dir: Path) -> Paraphraser:
    """The library the CLI must agree with."""
    return load_paraphraser(str(roformer_sim_dir), device="cpu", dtype="float32")


def note(model: Path) -> str:
    return f"simcli: model {model} (roformer-sim), device cpu, dtype float32\n"


def test_table_output(roformer_sim_dir: Path, para: Paraphraser) -> None:
    r = run("generate", *TEXTS, "--model", str(roformer_sim_dir), *FLAGS)
    assert r.exit_code == 0, r.output
    want = para.generate(TEXTS, **OPTS)
    lines = []
    for text, found in zip(TEXTS, want):
        lines.append(text)
        lines += [f"{i:>4}  {p.score:.4f}  {p.text}" for i, p in enumerate(found, 1)]
    assert r.stdout == "\n".join(lines) + "\n"
    assert r.stderr == note(roformer_sim_dir)
    assert sum(len(f) for f in want) == 6


def test_json_lines(roformer_sim_dir: Path, para: Paraphraser) -> None:
    r = run(
        "generate",
        *TEXTS,
        "-m",
        str(roformer_sim_dir),
        *FLAGS,
        "--json",
        "--top-k",
        "50",
        "--temperature",
        "0.8",
    )
    assert r.exit_code == 0, r.output
    want = para.generate(TEXTS, top_k=50, temperature=0.8, **OPTS)
    assert [json.loads(x) for x in r.stdout.splitlines()] == [
        {"text": t, "paraphrases": [{"text": p.text, "score": round(p.score, 6)} for p in found]}
        for t, found in zip(TEXTS, want)
    ]
    assert want != para.generate(TEXTS, **OPTS), "premise: --top-k/--temperature change the samples"


def test_greedy_and_filters(roformer_sim_dir: Path, para: Paraphraser) -> None:
    r = run(
        "generate", TEXTS[0], "-m", str(roformer_sim_dir), *FLAGS, "--greedy", "--max-score", "0.5", "--json"
    )
    assert r.exit_code == 0, r.output
    best = para.generate(TEXTS[:1], greedy=True, **OPTS)[0]
    assert len(best) == 1 and best[0].score > 0.5, "premise: the greedy paraphrase scores above 0.5"
    assert json.loads(r.stdout) == {"text": TEXTS[0], "paraphrases": []}
    r = run("generate", TEXTS[0], "-m", str(roformer_sim_dir), *FLAGS, "--greedy", "--max-score", "0.5")
    assert r.stdout == f"{TEXTS[0]}\n      (no paraphrase passed the filters)\n"


def test_batch_mode_round_trip(roformer_sim_dir: Path, para: Paraphraser, tmp_path: Path) -> None:
    src = tmp_path / "train.tsv"
    src.write_text("text\tlabel\n" + "".join(f"{t}\t{i}\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    out = tmp_path / "augmented.tsv"
    r = run(
        "generate",
        "--input",
        str(src),
        "--column",
        "text",
        "--out",
        str(out),
        "-m",
        str(roformer_sim_dir),
        *FLAGS,
    )
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert (
        r.stderr
        == note(roformer_sim_dir) + f"simcli: read 2 rows: wrote 6 paraphrases of 2 sentences to {out}\n"
    )
    expected = tmp_path / "expected.tsv"
    generate_file(para, src, expected, column="text", **OPTS)
    assert out.read_text(encoding="utf-8") == expected.read_text(encoding="utf-8")
    rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == ["text", "label", "source_row", "score"]
    assert [r[1:3] for r in rows[1:]] == [["0", "2"]] * 3 + [["1", "3"]] * 3

    again = run("generate", "--input", str(src), "--out", str(out), "-m", str(roformer_sim_dir), *FLAGS)
    assert again.exit_code == 1
    assert again.stderr == f"simcli: error: {out}: exists (pass --overwrite to replace it)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give one or more sentences, or --input FILE --out FILE"),
        (["花呗", "--input", "x.tsv", "--out", "y.tsv"], "give sentences or --input FILE, not both"),
        (["--input", "x.tsv"], "batch mode needs both --input FILE and --out FILE"),
        (
            ["花呗", "--resume"],
            "--resume, --overwrite, --column, --header and --errors apply to batch mode (--input/--out)",
        ),
        (["花呗", "-n", "0"], "-n must be at least 1, got 0"),
        (["花呗", "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["花呗", "--mask-ratio", "1"], "--mask-ratio must be in [0, 1), got 1.0"),
    ],
)
def test_usage_errors_exit_2(roformer_sim_dir: Path, args: list[str], message: str) -> None:
    r = run("generate", *args, "-m", str(roformer_sim_dir))
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr == f"simcli: error: {message}\n"


def test_model_without_unilm_head_exits_1(wobert_dir: Path) -> None:
    r = run("generate", "花呗", "-m", str(wobert_dir))
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr == (
        f"simcli: error: {wobert_dir}: cannot generate: WoBERT was trained as a masked LM only, it has no "
        "UniLM-trained seq2seq head (use a RoFormer-Sim checkpoint, e.g. junnyu/roformer_chinese_sim_char_ft_base)\n"
    )


def test_bad_batch_paths_fail_before_loading(tmp_path: Path) -> None:
    """Path errors come before any model loads (the model folder here does not even exist)."""
    src = tmp_path / "in.txt"
    src.write_text("花呗\n", encoding="utf-8")
    r = run("generate", "--input", str(src), "--out", str(tmp_path / "o.txt"), "-m", str(tmp_path / "nope"))
    assert r.exit_code == 2
    assert (
        r.stderr
        == f"simcli: error: --input {src}: batch mode reads .tsv, .csv or .jsonl (other columns are copied)\n"
    )


def test_help_lists_the_options() -> None:
    r = run("generate", "--help")
    assert r.exit_code == 0
    for flag in ("--top-p", "--top-k", "--temperature", "--greedy", "--seed", "--max-new-tokens", "--mask-ratio",
                 "--min-score", "--max-score", "--input", "--column", "--out", "--resume"):  # fmt: skip
        assert flag in r.stdout
