"""Tables without a header row: .data files, --no-header, the warning when a header row looks like data, and
summary lines where rows read = rows written + rows skipped."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from simcli.errors import BadInput, InputWarning, UsageError
from simcli.index import Index
from simcli.io import ReadStats, count_rows, read_records
from simcli.scale.plan import plan_shards, read_shard
from simcli.store import VectorStore
from tests.cli.test_generate_cli import FLAGS
from tests.invoke import simcli as run

CHARS = "花呗借还款额度怎么提升如何我喜欢北京今天天气很好你是谁在哪里可以用信用卡开通"


def sentence(i: int) -> str:
    """A distinct short Chinese sentence for every i (base-len(CHARS) digits)."""
    out = ""
    while True:
        i, r = divmod(i, len(CHARS))
        out += CHARS[r]
        if i == 0:
            return out + "吗"
        i -= 1


def pairs(n: int) -> list[tuple[str, str, str]]:
    # labels "1" then "0", "1", ...: the first row holds no cell named "0", so --column 0 is an index
    return [(sentence(2 * i), sentence(2 * i + 1), str((i + 1) % 2)) for i in range(n)]


def write_pairs(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- the silent first-row loss -------------------------------------------------------------------------


def test_headerless_tsv_keeps_its_first_row_with_no_header_and_warns_without(
    tmp_path: Path, roformer_sim_dir: Path
) -> None:
    rows = pairs(2000)
    src = write_pairs(tmp_path / "lcqmc.tsv", rows)
    base = ["encode", str(src), "--column", "0", "-m", str(roformer_sim_dir), "--dtype", "float32"]

    whole = run(*base, "--no-header", "--out", str(tmp_path / "all.vec"))
    assert whole.exit_code == 0, whole.output
    assert VectorStore.open(tmp_path / "all.vec").texts() == [r[0] for r in rows]
    assert "warning" not in whole.stderr
    assert whole.stderr.splitlines()[-1] == (
        f"simcli: read 2,000 rows: wrote 2,000 vectors (dim 48, float32) in 1 shard to {tmp_path / 'all.vec'}"
    )

    # Without --no-header the first row is still the header (behaviour unchanged), but not silently.
    lost = run(*base, "--out", str(tmp_path / "lost.vec"))
    assert lost.exit_code == 0, lost.output
    said = lost.stderr.splitlines()
    assert (
        said[0]
        == f"simcli: warning: {src}:1 looks like data, not a header; pass --no-header to read it as a row"
    )
    assert said[-1] == (
        f"simcli: read 1,999 rows: wrote 1,999 vectors (dim 48, float32) in 1 shard to {tmp_path / 'lost.vec'}"
    )
    assert VectorStore.open(tmp_path / "lost.vec").texts() == [r[0] for r in rows[1:]]


def test_the_warning_needs_a_first_row_shaped_like_the_rows_after_it(tmp_path: Path) -> None:
    def warned(text: str, column: str | int | None, header: bool | None = None) -> list[str]:
        path = tmp_path / "t.tsv"
        path.write_text(text, encoding="utf-8")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            list(read_records([path], column=column, header=header))
        return [str(w.message) for w in caught if issubclass(w.category, InputWarning)]

    data = "你好\t您好\t2\n谢谢\t多谢\t0\n再见\t拜拜\t1\n"
    message = f"{tmp_path / 't.tsv'}:1 looks like data, not a header; pass --no-header to read it as a row"
    assert warned(data, "1") == [message]
    assert warned(data, 1) == [message]
    assert warned(data, "1", header=True) == []  # an explicit --header is taken at its word
    assert warned("sentence1\tsentence2\tlabel\n" + data, "0") == []  # ASCII column names
    assert warned("句子\t问题\t标签\n" + data, "0") == []  # a Chinese header word in the chosen column
    assert warned("你好\t您好\t标签\n" + data, "0") == []  # "标签" where the rows have numbers
    assert warned("你好\t您好\n" + data, "0") == []  # fewer fields than the rows after it
    assert warned(data.split("\n")[0] + "\n", "0") == []  # nothing after the first row to compare with
    # A digit that names a cell of the data row picks that field (a header named "0" wins): said so.
    first_zero = "你好\t您好\t0\n谢谢\t多谢\t1\n"
    assert warned(first_zero, "0") == [message + " (--column 0 is the name of its field 2)"]


def test_a_column_name_without_a_header_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "x.data", pairs(3))
    tsv = write_pairs(tmp_path / "x.tsv", pairs(3))
    for args in ([str(data), "--column", "question"], [str(tsv), "--no-header", "--column", "text"]):
        r = run("encode", *args, "-m", str(tmp_path / "no-model"), "--json")
        assert r.exit_code == 2
        name = args[-1]
        assert (
            r.stderr
            == f"simcli: error: --column {name!r}: a file without a header takes a 0-based column index\n"
        )
        assert r.stdout == ""
    # Several fields and no --column: the first row is named; a column past the row's end too.
    with pytest.raises(BadInput) as e:
        list(read_records([data]))
    assert str(e.value) == f"{data}:1: 3 fields and no header: choose one with --column (0-based)"
    with pytest.raises(BadInput) as e:
        list(read_records([data], column="3"))
    assert str(e.value) == f"{data}:1: row has 3 fields, no column 3"
    with pytest.raises(UsageError):
        read_records([tsv], column="label", header=False)


# -- .data files everywhere ------------------------------------------------------------------------------


def test_data_files_are_read_by_encode_index_build_and_query(tmp_path: Path, roformer_sim_dir: Path) -> None:
    rows = pairs(7)
    data = write_pairs(tmp_path / "dev.data", rows)
    assert count_rows([data]) == 7  # no header line to take off

    enc = run("encode", str(data), "--column", "1", "-m", str(roformer_sim_dir), "--dtype", "float32",
              "--out", str(tmp_path / "s2.vec"))  # fmt: skip
    assert enc.exit_code == 0, enc.output
    store = VectorStore.open(tmp_path / "s2.vec")
    assert store.texts() == [r[1] for r in rows]
    assert [r.line for r in store.iter_records()] == list(range(1, 8))
    assert "warning" not in enc.stderr

    out = tmp_path / "s1.idx"
    build = run("index", "build", str(data), "--column", "0", "-m", str(roformer_sim_dir), "--dtype", "float32",
                "--out", str(out))  # fmt: skip
    assert build.exit_code == 0, build.output
    assert Index.load(out).texts() == [r[0] for r in rows]
    assert build.stdout.startswith(f"wrote {out}: 7 vectors,")

    queries = write_pairs(tmp_path / "q.data", rows[:2])
    q = run("query", str(out), "--file", str(queries), "--column", "0", "-k", "1")
    assert q.exit_code == 0, q.output
    assert q.stdout.split("\n\n")[0].splitlines()[0] == rows[0][0]  # the first row is a query, not a header
    assert q.stdout.count("\n\n") == 1  # two queries


def test_ray_plans_read_data_files_as_a_single_process_does(tmp_path: Path) -> None:
    rows = pairs(9)
    data = write_pairs(tmp_path / "p.data", rows)
    tsv = write_pairs(tmp_path / "p.tsv", rows)
    for path, header in ((data, None), (tsv, False)):
        stats = ReadStats()
        plans = plan_shards([str(path)], shard_size=4, column="1", header=header, stats=stats)
        assert [p.count for p in plans] == [4, 4, 1] and stats.rows == 9
        options = {"column": "1", "field": None, "errors": "strict", "skip_empty": False}
        got = [r for p in plans for r in read_shard(p, options)]
        assert [(r.text, r.line) for r in got] == [(r[1], i + 1) for i, r in enumerate(rows)]


# -- rows read = rows written + rows skipped --------------------------------------------------------------


def test_summaries_count_rows_read_written_and_skipped(tmp_path: Path, roformer_sim_dir: Path) -> None:
    src = tmp_path / "q.tsv"
    body = [sentence(i) for i in range(6)]
    src.write_text("text\n" + "\n".join([body[0], "", body[1], body[2], "", body[3], body[4], "", body[5]]) + "\n",
                   encoding="utf-8")  # fmt: skip
    common = ["-m", str(roformer_sim_dir), "--dtype", "float32", "--skip-empty"]
    enc = run("encode", str(src), *common, "--out", str(tmp_path / "e.vec"))
    assert enc.exit_code == 0, enc.output
    assert enc.stderr.splitlines()[-1] == (
        f"simcli: read 9 rows: wrote 6 vectors (dim 48, float32) in 1 shard to {tmp_path / 'e.vec'}, skipped 3 empty"
    )
    js = run("encode", str(src), *common, "--json")
    assert js.stderr.splitlines()[-1] == "simcli: read 9 rows: encoded 6 sentences (dim 48), skipped 3 empty"
    assert len(js.stdout.splitlines()) == 6

    parts = []
    for i in range(2):
        r = run("encode", str(src), *common, "--shard-size", "2", "--shard", f"{i}/2",
                "--out", str(tmp_path / f"p{i}"))  # fmt: skip
        assert r.exit_code == 0, r.output
        parts.append(r.stderr.splitlines()[-1])
    assert parts[1] == (
        f"simcli: read 9 rows: wrote 2 vectors (dim 48, float32) in 1 shard to {tmp_path / 'p1'}, skipped 3 empty, "
        "left 4 to the other --shard workers"
    )

    build = run("index", "build", str(src), *common, "--out", str(tmp_path / "i.idx"))
    assert build.exit_code == 0, build.output
    assert re.search(
        r"^simcli: read 9 rows: encoded 6 sentences in \d+\.\ds, skipped 3 empty$", build.stderr, re.MULTILINE
    )

    fit = run("whiten", "fit", str(src), "-m", str(roformer_sim_dir), "--dtype", "float32", "--dim", "4",
              "--out", str(tmp_path / "w.whiten"))  # fmt: skip
    assert fit.exit_code == 0, fit.output
    assert fit.stderr.splitlines()[-1] == "simcli: read 9 rows: fitted on 6 sentences, skipped 3 empty"


def test_generate_augments_a_data_file_without_inventing_a_header(
    tmp_path: Path, roformer_sim_dir: Path
) -> None:
    rows = [("花呗怎么还款", "花呗如何还款", "1"), ("借呗额度怎么提升", "我喜欢北京", "0")]
    src = write_pairs(tmp_path / "train.data", rows)
    out = tmp_path / "augmented.data"
    r = run(
        "generate",
        "--input",
        str(src),
        "--column",
        "0",
        "--out",
        str(out),
        "-m",
        str(roformer_sim_dir),
        *FLAGS,
    )
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines()[-1] == f"simcli: read 2 rows: wrote 6 paraphrases of 2 sentences to {out}"
    written = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    # no header row: every row is a paraphrase of column 0, the other columns copied, then source_row and score
    assert [w[1:4] for w in written] == [[*rows[0][1:], "1"]] * 3 + [[*rows[1][1:], "2"]] * 3
    assert all(len(w) == 5 and -1 <= float(w[4]) <= 1 for w in written)
