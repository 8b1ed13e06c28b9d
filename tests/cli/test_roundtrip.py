"""Every file simcli writes reads back through simcli's own readers to the same rows:
the table writers, `generate --out` in tsv/csv/jsonl, store shards, index texts and `encode --json`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from simcli.io import read_records, write_jsonl, write_table
from tests.invoke import simcli as run

# Texts that break naive writers: quotes (csv doubles them, TSV has none), the other format's delimiter,
# backslashes, JSON-looking text, non-BMP characters, a lone quote at the start.
TRICKY = [
    '他说"你好"吗',
    '"引号开头',
    "逗号,分隔,的句子",
    "反斜杠\\n不是换行",
    '{"text": "不是对象"}',
    "表情😀和𠀀",
    "单引号'也在",
]


def _read(path: Path, column: str) -> list[list[str] | dict]:  # type: ignore[type-arg]
    fmt = path.suffix
    recs = read_records([path], field=column) if fmt == ".jsonl" else read_records([path], column=column)
    return [r.row for r in recs]  # type: ignore[misc]


@pytest.mark.parametrize("fmt", ["tsv", "csv"])
def test_write_table_reads_back_to_the_same_rows(tmp_path: Path, fmt: str) -> None:
    header = ["text", "label", 'note"q']
    rows = [[t, str(i), TRICKY[-1 - i]] for i, t in enumerate(TRICKY)]
    path = tmp_path / f"t.{fmt}"
    with open(path, "w", encoding="utf-8", newline="") as f:
        assert write_table(f, fmt, header, rows) == len(rows)
    assert _read(path, "text") == rows
    assert [r.text for r in read_records([path], column="text")] == TRICKY
    if fmt == "tsv":  # no quoting at all: the file holds the texts as they are
        assert path.read_text(encoding="utf-8").splitlines()[1] == f"{TRICKY[0]}\t0\t{TRICKY[-1]}"


def test_tsv_cells_cannot_hold_tabs_or_line_breaks(tmp_path: Path) -> None:
    """TSV has no quoting: a tab or line break inside a value becomes a space instead of a new column/row."""
    path = tmp_path / "t.tsv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        write_table(f, "tsv", ["text", "label"], [["a\tb\nc\r\nd", "1"], ["e", "0"]])
    assert _read(path, "text") == [["a b c  d", "1"], ["e", "0"]]


def test_csv_keeps_line_breaks_and_jsonl_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        write_table(f, "csv", ["text", "label"], [["两行\n文本", "1"], ["制表\t符", "0"]])
    assert _read(path, "text") == [["两行\n文本", "1"], ["制表\t符", "0"]]
    rows = [{"text": t, "n": i, "tab": "a\tb\nc"} for i, t in enumerate(TRICKY)]
    buf = io.StringIO()
    assert write_jsonl(buf, rows) == len(rows)
    path = tmp_path / "t.jsonl"
    path.write_text(buf.getvalue(), encoding="utf-8")
    assert _read(path, "text") == rows


def test_generate_out_reads_back_the_same_in_every_format(tmp_path: Path, roformer_sim_dir: Path) -> None:
    """`generate --input X --out Y` for tsv, csv and jsonl: read back by simcli, the three outputs hold the
    same rows (same seed, same paraphrases), the copied column exactly as in the input (no doubled quotes)."""
    labels = ['标签"一"', "二,二", "三"]
    texts = TRICKY[:3]
    (tmp_path / "in.tsv").write_text(
        "text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in zip(texts, labels)), encoding="utf-8"
    )
    with open(tmp_path / "in.csv", "w", encoding="utf-8", newline="") as f:
        write_table(f, "csv", ["text", "label"], list(map(list, zip(texts, labels))))
    (tmp_path / "in.jsonl").write_text(
        "".join(
            json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n" for t, lab in zip(texts, labels)
        ),
        encoding="utf-8",
    )
    got = {}
    for fmt in ("tsv", "csv", "jsonl"):
        out = tmp_path / f"out.{fmt}"
        r = run(
            "generate", "--input", str(tmp_path / f"in.{fmt}"), "--out", str(out), "-m", str(roformer_sim_dir),
            "-n", "16", "-k", "4", "--seed", "3", "--max-new-tokens", "6", "--dtype", "float32",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        rows = []
        for rec in read_records([out], **({"field": "text"} if fmt == "jsonl" else {"column": "text"})):
            row = rec.row
            if isinstance(row, dict):
                # jsonl has no header line: its source rows are one line earlier than the tables'
                row = [row["text"], row["label"], str(row["source_row"] + 1), f"{row['score']:.4f}"]
            assert rec.text == row[0].strip()
            rows.append(row)
        got[fmt] = rows
    assert got["tsv"], "no paraphrases at all: the comparison would prove nothing"
    assert got["tsv"] == got["csv"] == got["jsonl"]
    lines = {2: labels[0], 3: labels[1], 4: labels[2]}  # source_row is the input line (header is line 1)
    assert all(row[1] == lines[int(row[2])] for row in got["tsv"])


def test_store_and_index_texts_read_back(tmp_path: Path, roformer_sim_dir: Path) -> None:
    """Store shards, index texts and `encode --json` are jsonl files simcli's reader reads back to the rows."""
    corpus = tmp_path / "c.csv"
    with open(corpus, "w", encoding="utf-8", newline="") as f:
        write_table(f, "csv", ["text"], [[t] for t in TRICKY])
    m = str(roformer_sim_dir)
    assert (
        run("encode", str(corpus), "-m", m, "--out", str(tmp_path / "s.vec"), "--dtype", "float32").exit_code
        == 0
    )
    rows = _read(tmp_path / "s.vec" / "shard-00000.jsonl", "text")
    assert rows == [{"id": i, "text": t, "source": str(corpus), "line": i + 2} for i, t in enumerate(TRICKY)]

    r = run("index", "build", str(corpus), "-m", m, "--out", str(tmp_path / "i.idx"), "--dtype", "float32")
    assert r.exit_code == 0, r.output
    (texts,) = (tmp_path / "i.idx").glob("texts-*.jsonl")
    assert _read(texts, "text") == rows

    r = run("encode", str(corpus), "-m", m, "--json", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    (tmp_path / "v.jsonl").write_text(r.stdout, encoding="utf-8")
    assert [row["text"] for row in _read(tmp_path / "v.jsonl", "text")] == TRICKY  # type: ignore[index]
