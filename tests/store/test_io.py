"""Input readers: every format from a file and from stdin, exact file:line errors, empty-line counts."""

from __future__ import annotations

import csv
import io
import itertools
import json
import sys
from pathlib import Path

import pytest

from simcli.errors import BadInput, UsageError
from simcli.io import ReadStats, Record, read_records

SENTENCES = ["花呗怎么还款", '"引号"开头', 'He said "hi", twice', "借呗额度\t提升?", "  前后有空格  "]


class _Stdin:
    """sys.stdin stand-in with the binary `.buffer` the reader uses."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def _write(path: Path, fmt: str, texts: list[str]) -> None:
    """Write `texts` with the standard library's own writers, independent of the reader under test."""
    if fmt == "txt":
        path.write_text("".join(t.replace("\t", " ") + "\n" for t in texts), encoding="utf-8")
    elif fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text"])
            w.writerows([[str(i), t] for i, t in enumerate(texts)])
    elif fmt == "tsv":
        # TSV has no quoting: tabs inside a sentence cannot be written, so they are replaced.
        rows = [f"{i}\t{t.replace(chr(9), ' ')}\n" for i, t in enumerate(texts)]
        path.write_text("id\ttext\n" + "".join(rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)), "utf-8")


def _expected(fmt: str) -> list[str]:
    return [t.replace("\t", " ").strip() if fmt in ("txt", "tsv") else t.strip() for t in SENTENCES]


@pytest.mark.parametrize("fmt", ["txt", "tsv", "csv", "jsonl"])
def test_every_format_from_a_file(tmp_path: Path, fmt: str) -> None:
    """Texts come back stripped, with the 1-based physical line and the whole parsed row."""
    path = tmp_path / f"in.{fmt}"
    _write(path, fmt, SENTENCES)
    records = list(read_records([path]))
    assert [r.text for r in records] == _expected(fmt)
    assert {r.source for r in records} == {str(path)}
    header = 1 if fmt in ("tsv", "csv") else 0
    assert [r.line for r in records] == [i + 1 + header for i in range(len(SENTENCES))]
    if fmt == "txt":
        assert all(r.row is None for r in records)
    elif fmt == "jsonl":
        assert records[2].row == {"text": SENTENCES[2], "n": 2}
    else:
        assert records[2].row == ["2", SENTENCES[2]]  # quotes are text in tsv, quoting in csv


@pytest.mark.parametrize("fmt", ["txt", "tsv"])
def test_stdin_reads_txt_or_tsv_with_column(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / f"in.{fmt}"
    _write(path, fmt, SENTENCES)
    monkeypatch.setattr(sys, "stdin", _Stdin(path.read_bytes()))
    records = list(read_records(["-"], column="text" if fmt == "tsv" else None))
    assert [r.text for r in records] == _expected(fmt)
    assert {r.source for r in records} == {"<stdin>"}
    assert records[0].line == (2 if fmt == "tsv" else 1)


def test_several_files_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
    a.write_text("一\n二\n", encoding="utf-8")
    b.write_text('{"q": "三"}\n', encoding="utf-8")
    records = list(read_records([a, b], field="q"))
    assert records == [
        Record("一", str(a), 1),
        Record("二", str(a), 2),
        Record("三", str(b), 1, {"q": "三"}),
    ]


def test_columns_by_name_index_default_and_digit_names(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_text("id\tquestion\tlabel\n7\t花呗\t1\n8\t借呗\t0\n", encoding="utf-8")
    assert [r.text for r in read_records([path], column="question")] == ["花呗", "借呗"]
    assert [r.text for r in read_records([path], column="1")] == ["花呗", "借呗"]
    assert [r.text for r in read_records([path], column=2)] == ["1", "0"]
    only = tmp_path / "only.csv"
    only.write_text("sentence\n你好\n", encoding="utf-8")
    assert [r.text for r in read_records([only])] == ["你好"]
    digits = tmp_path / "digits.csv"
    digits.write_text("1,0\na,b\n", encoding="utf-8")  # a header named "0" wins over index 0
    assert [r.text for r in read_records([digits], column="0")] == ["b"]


def test_csv_multiline_field_keeps_its_starting_line(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('id,text\n1,"两\n行"\n2,下一行\n', encoding="utf-8")
    records = list(read_records([path]))
    assert [(r.text, r.line) for r in records] == [("两\n行", 2), ("下一行", 4)]


def test_missing_column_names_file_and_header(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_text("id\tquestion\n1\t花呗\n", encoding="utf-8")
    with pytest.raises(BadInput) as e:
        read_records([path], column="text")  # the header is checked before iteration starts
    assert str(e.value) == f"{path}: no column 'text' (header: id, question)"
    with pytest.raises(BadInput) as e:
        list(read_records([path], column=5))
    assert str(e.value) == f"{path}: no column 5 (header: id, question)"
    with pytest.raises(BadInput) as e:
        list(read_records([path]))
    assert str(e.value) == f"{path}: several columns, choose one with --column (header: id, question)"


def test_short_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_text("id\tquestion\n1\t花呗\n2\n", encoding="utf-8")
    with pytest.raises(BadInput) as e:
        list(read_records([path], column="question"))
    assert str(e.value) == f"{path}:3: row has 1 fields, no column 1 ('question')"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not a JSON object (Expecting value)"),
        ("[1, 2]", "not a JSON object (found list)"),
        ('{"q": "x"}', "no field 'text' (fields: q)"),
        ('{"text": 3}', "field 'text' is a int, not a string"),
        ("", "not a JSON object (Expecting value)"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "好"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(BadInput) as e:
        list(read_records([path]))
    assert str(e.value) == f"{path}:2: {message}"


@pytest.mark.parametrize("fmt", ["txt", "tsv", "csv", "jsonl"])
def test_invalid_utf8_names_file_and_line_or_is_replaced(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"bad.{fmt}"
    good = "好".encode()
    bad = "坏".encode()[:2]  # a truncated 3-byte sequence
    if fmt == "jsonl":
        lines = [b'{"text": "' + good + b'"}', b'{"text": "' + bad + b'"}']
    else:
        lines = ([b"text"] if fmt in ("tsv", "csv") else []) + [good, bad + b"x"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(BadInput) as e:
        list(read_records([path]))
    assert str(e.value) == f"{path}:{len(lines)}: invalid UTF-8 (use --errors replace)"
    texts = [r.text for r in read_records([path], errors="replace")]
    assert texts[0] == "好" and "\ufffd" in texts[1]


def test_reading_streams_line_by_line(tmp_path: Path) -> None:
    """The first rows arrive before a bad line further down is read: nothing reads the whole file."""
    path = tmp_path / "big.txt"
    path.write_bytes(b"a\nb\n\xff\n")
    assert [r.text for r in itertools.islice(read_records([path]), 2)] == ["a", "b"]


def test_empty_lines_kept_or_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "e.txt"
    path.write_text("一\n\n   \n二\n", encoding="utf-8")
    kept = ReadStats()
    assert [(r.text, r.line) for r in read_records([path], stats=kept)] == [
        ("一", 1),
        ("", 2),
        ("", 3),
        ("二", 4),
    ]
    assert (kept.records, kept.empty_kept, kept.empty_skipped) == (4, 2, 0)
    skipped = ReadStats()
    assert [r.line for r in read_records([path], skip_empty=True, stats=skipped)] == [1, 4]
    assert (skipped.records, skipped.empty_kept, skipped.empty_skipped) == (2, 0, 2)


def test_bom_and_crlf_are_not_text(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext\r\n你好\r\n".encode())
    assert [r.text for r in read_records([path])] == ["你好"]


def test_bad_paths_fail_before_iteration(tmp_path: Path) -> None:
    """Unknown formats and missing files are reported when read_records is called, not later."""
    with pytest.raises(BadInput) as e:
        read_records([tmp_path / "x.docx"])
    assert (
        str(e.value)
        == f"{tmp_path / 'x.docx'}: unknown input format '.docx' (.txt, .tsv, .csv, .jsonl, .data)"
    )
    with pytest.raises(BadInput) as e:
        read_records([tmp_path / "missing.txt"])
    assert str(e.value) == f"{tmp_path / 'missing.txt'}: no such file"
    with pytest.raises(UsageError):
        read_records([], errors="ignore")  # type: ignore[arg-type]
