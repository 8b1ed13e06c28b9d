"""Batch mode of generation: tsv/csv/jsonl in, the same format out, other columns copied, resumable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import simcli.paraphrase as gen
from simcli.errors import BadInput, ManifestMismatch, OutputExists, UsageError
from simcli.paraphrase import Paraphraser, generate_file, load_paraphraser

ROWS = [
    ("花呗怎么还款", "1", "pay"),
    ("借呗额度怎么提升", "0", "loan"),
    ("", "1", "empty"),
    ("今天天气怎么样", "1", "weather"),
    ("北京到上海的高铁", "0", "train"),
]
OPTS = {"n": 12, "k": 3, "seed": 7, "max_new_tokens": 5}


@pytest.fixture(scope="module")
def para(roformer_sim_dir: Path) -> Paraphraser:
    return load_paraphraser(str(roformer_sim_dir), device="cpu", dtype="float32")


class Interrupted(Exception):
    """Stands for Ctrl-C in the middle of a run."""


def _write_table(path: Path, delimiter: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(["label", "question", "tag"])
        for text, label, tag in ROWS:
            w.writerow([label, text, tag])


def _read_table(path: Path, delimiter: str) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter=delimiter))


@pytest.mark.parametrize(("suffix", "delimiter"), [(".tsv", "\t"), (".csv", ",")])
def test_table_round_trip_keeps_other_columns(
    para: Paraphraser, tmp_path: Path, suffix: str, delimiter: str
) -> None:
    """One row per paraphrase with the label and tag of its source, its line and score; the same
    paraphrases as the library returns for those texts (seeded by row index)."""
    src, out = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    _write_table(src, delimiter)
    summary = generate_file(para, src, out, column="question", **OPTS)
    rows = _read_table(out, delimiter)
    assert rows[0] == ["label", "question", "tag", "source_row", "score"]
    texts = [r[0] for r in ROWS]
    keys = [i for i, t in enumerate(texts) if t]
    want = para.generate([texts[i] for i in keys], keys=keys, **OPTS)
    expected = []
    for i, found in zip(keys, want):
        for p in found:
            expected.append([ROWS[i][1], p.text, ROWS[i][2], str(i + 2), f"{p.score:.4f}"])
    assert rows[1:] == expected
    assert len(expected) == 4 * 3
    assert summary.sources == 5 and summary.empty == 1 and summary.paraphrases == 12
    assert not (tmp_path / f".out{suffix}.parts").exists()


def test_jsonl_round_trip(para: Paraphraser, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        "".join(
            json.dumps({"q": t, "label": int(lab), "meta": {"tag": tag}}, ensure_ascii=False) + "\n"
            for t, lab, tag in ROWS
        ),
        encoding="utf-8",
    )
    generate_file(para, src, out, column="q", **OPTS)
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 12
    first = para.generate([ROWS[0][0]], keys=[0], **OPTS)[0]
    # Scores agree to float32 rounding only: the file run batches several sources, so the re-ranking
    # encoder sees other batch shapes (CPU kernels block their sums differently).
    scores = [x.pop("score") for x in lines[:3]]
    assert lines[:3] == [{"q": p.text, "label": 1, "meta": {"tag": "pay"}, "source_row": 1} for p in first]
    assert scores == pytest.approx([p.score for p in first], abs=1e-5)
    assert {x["source_row"] for x in lines} == {1, 2, 4, 5}


def test_resume_continues_after_finished_parts(
    para: Paraphraser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupted run leaves finished part files; --resume redoes only the rest and writes exactly
    what an uninterrupted run writes; nothing is written at --out before the end."""
    src = tmp_path / "in.tsv"
    _write_table(src, "\t")
    small = Paraphraser(para.encoder, max_rows=6)  # part files of 4 * 6 // 12 = 2 sources
    full = tmp_path / "full.tsv"
    generate_file(small, src, full, column="question", **OPTS)
    out = tmp_path / "out.tsv"
    real = Paraphraser.generate
    calls: list[list[str]] = []
    resumed = False

    def crash_on_second(self: Paraphraser, texts: list[str], **kw: object) -> object:
        calls.append(list(texts))
        if len(calls) == 2 and not resumed:
            raise Interrupted
        return real(self, texts, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Paraphraser, "generate", crash_on_second)
    with pytest.raises(Interrupted):
        generate_file(small, src, out, column="question", **OPTS)
    assert not out.exists()
    parts = tmp_path / ".out.tsv.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["part-000000000.jsonl", "settings.json"]

    with pytest.raises(OutputExists, match="pass --resume to continue it"):
        generate_file(small, src, out, column="question", **OPTS)
    with pytest.raises(ManifestMismatch, match=r"different settings .*\(k\)"):
        generate_file(small, src, out, column="question", resume=True, **{**OPTS, "k": 2})

    calls.clear()
    resumed = True
    summary = generate_file(small, src, out, column="question", resume=True, **OPTS)
    assert calls == [[ROWS[3][0]], [ROWS[4][0]]]  # rows 0-1 were finished; row 2 is empty
    assert summary.resumed == 2 and summary.generated == 3
    assert out.read_text(encoding="utf-8") == full.read_text(encoding="utf-8")
    assert not parts.exists()


def test_resume_without_seed_reuses_the_first_runs_seed(para: Paraphraser, tmp_path: Path) -> None:
    src, out = tmp_path / "in.tsv", tmp_path / "out.tsv"
    _write_table(src, "\t")
    opts = {**OPTS, "seed": None}
    parts = tmp_path / ".out.tsv.parts"
    parts.mkdir()
    (parts / "settings.json").write_text("{}")  # a stale, foreign settings file
    with pytest.raises(ManifestMismatch):
        generate_file(para, src, out, column="question", resume=True, **opts)
    generate_file(para, src, out, column="question", overwrite=True, **opts)
    assert out.exists() and not parts.exists()


def test_existing_output_needs_overwrite(para: Paraphraser, tmp_path: Path) -> None:
    src, out = tmp_path / "in.tsv", tmp_path / "out.tsv"
    _write_table(src, "\t")
    out.write_text("keep me\n")
    with pytest.raises(OutputExists, match=r"out.tsv: exists \(pass --overwrite"):
        generate_file(para, src, out, column="question", **OPTS)
    assert out.read_text() == "keep me\n"
    generate_file(para, src, out, column="question", overwrite=True, **OPTS)
    assert out.read_text(encoding="utf-8").startswith("label\tquestion\ttag\tsource_row\tscore\n")


@pytest.mark.parametrize(
    ("name_in", "name_out", "error", "message"),
    [
        ("in.txt", "out.txt", UsageError, "batch mode reads .tsv, .csv or .jsonl"),
        ("in.tsv", "out.csv", UsageError, r"--out .*out.csv: must be a .tsv file like --input"),
        ("missing.tsv", "out.tsv", BadInput, "missing.tsv: no such file"),
    ],
)
def test_bad_paths(
    para: Paraphraser, tmp_path: Path, name_in: str, name_out: str, error: type, message: str
) -> None:
    if name_in != "missing.tsv":
        (tmp_path / name_in).write_text("text\n花呗\n", encoding="utf-8")
    with pytest.raises(error, match=message):
        generate_file(para, tmp_path / name_in, tmp_path / name_out, **OPTS)


def test_column_clash_and_missing_column(para: Paraphraser, tmp_path: Path) -> None:
    src = tmp_path / "in.tsv"
    src.write_text("text\tscore\n花呗\t1\n", encoding="utf-8")
    with pytest.raises(BadInput, match="already has a 'score' column"):
        generate_file(para, src, tmp_path / "out.tsv", **OPTS)
    src.write_text("text\n花呗\n", encoding="utf-8")
    with pytest.raises(BadInput, match="no column 'question'"):
        generate_file(para, src, tmp_path / "out.tsv", column="question", **OPTS)


def test_default_column_is_text(para: Paraphraser, tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("id,text\n7,花呗怎么还款\n", encoding="utf-8")
    generate_file(para, src, out, **OPTS)
    rows = _read_table(out, ",")
    assert rows[0] == ["id", "text", "source_row", "score"]
    assert [r[0] for r in rows[1:]] == ["7"] * 3
    assert [r[1] for r in rows[1:]] == [p.text for p in gen.generate("花呗怎么还款", model=para, **OPTS)]
