"""The driver's one reading pass: the input rows cut into shards, each shard located by file offsets.

Rows are read by the same parsers as a single-process run (`simcli.io.positioned_records`), so ids, texts,
sources, lines and the counts of empty rows are the same by construction; the rows themselves are not kept.
A shard's plan names, for each input file it spans, where its first row starts (byte offset and line, or
row number in a parquet file) and how many rows follow: the worker encoding the shard reads those rows
itself, from any filesystem pyarrow knows (s3://, gs://, hdfs://) or a local path.

Ray Data's own readers (read_text, read_json, read_parquet) are not used for the rows: they give no line
numbers nor ids in input order, and parse tsv/csv/jsonl differently from simcli (BOM, TSV without quoting,
one-line errors naming file:line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from simcli.errors import BadInput, UsageError
from simcli.io import (
    STDIN,
    ReadOptions,
    ReadStats,
    Record,
    check_input,
    column_index,
    input_format,
    is_uri,
    open_input,
    parse_positions,
    positioned_records,
    table_headers,
)

PARQUET = ".parquet"


@dataclass(frozen=True)
class Piece:
    """A run of consecutive rows of one input file."""

    path: str  # where workers open it: absolute, or a URI
    source: str  # the path as given: the rows' `source`
    fmt: str  # txt | tsv | csv | jsonl | parquet
    offset: int  # byte offset of the first row's start (parquet: its row number, 0-based)
    line: int  # physical lines before the first row (parquet: unused)
    count: int  # rows (after --skip-empty)
    header: list[str] | None = None  # tsv/csv header row


@dataclass(frozen=True)
class ShardPlan:
    """Shard k: rows first..first+count-1, read from its pieces."""

    k: int
    first: int
    count: int
    pieces: list[Piece] = field(default_factory=list)
    source: str = ""  # where the first row comes from (checked on --resume)
    line: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ShardPlan:
        d = json.loads(text)
        return cls(**{**d, "pieces": [Piece(**p) for p in d["pieces"]]})


def fmt_of(path: str, column: str | None) -> str:
    """The input format of a path, parquet included."""
    if path.lower().endswith(PARQUET):
        return "parquet"
    return input_format(path, column)


def check_inputs(
    paths: Sequence[str], column: str | None, errors: str, header: bool | None = None
) -> tuple[list[str], list[list[str] | None]]:
    """The inputs' formats and tsv/csv headers ([] for a table without one); a one-line error for stdin, a
    missing file, an unknown format or a missing column, before anything is loaded."""
    if any(p == STDIN for p in paths):
        raise UsageError("--ray reads files (workers read their own rows), not stdin")
    if errors not in ("strict", "replace"):
        raise UsageError(f"--errors must be strict or replace, got {errors!r}")
    formats = [fmt_of(p, column) for p in paths]
    for p in paths:
        check_input(p)
    return formats, table_headers(paths, formats, column, errors, header)


def plan_shards(
    paths: Sequence[str],
    *,
    shard_size: int,
    column: str | None = None,
    field: str | None = None,
    errors: str = "strict",
    skip_empty: bool = False,
    stats: ReadStats | None = None,
    header: bool | None = None,
) -> list[ShardPlan]:
    """Read the inputs once and cut their rows into shards of `shard_size` (BadInput as `read_records`)."""
    formats, headers = check_inputs(paths, column, errors, header)
    stats = stats if stats is not None else ReadStats()
    plans: list[ShardPlan] = []
    pieces: list[Piece] = []
    first = count = 0
    where: tuple[str, int] = ("", 0)
    last_input = -1
    for i, offset, rec in _positioned(
        paths, formats, column, field or "text", errors, skip_empty, stats, headers
    ):
        if count == 0:
            where = (rec.source, rec.line)
        if count == 0 or i != last_input:
            line = rec.line - 1 if formats[i] != "parquet" else 0
            pieces.append(Piece(absolute(paths[i]), paths[i], formats[i], offset, line, 0, headers[i]))
            last_input = i
        last = pieces[-1]
        pieces[-1] = replace(last, count=last.count + 1)
        count += 1
        if count == shard_size:
            plans.append(ShardPlan(len(plans), first, count, pieces, *where))
            first, count, pieces = first + count, 0, []
    if count:
        plans.append(ShardPlan(len(plans), first, count, pieces, *where))
    return plans


def _positioned(
    paths: Sequence[str],
    formats: list[str],
    column: str | None,
    field: str,
    errors: str,
    skip_empty: bool,
    stats: ReadStats,
    headers: list[list[str] | None],
) -> Iterator[tuple[int, int, Record]]:
    """(input index, offset, Record) of every row; text files through simcli.io, parquet files here."""
    start = 0
    while start < len(paths):
        if formats[start] == "parquet":
            stats.files += 1
            for row, rec in _parquet_rows(paths[start], paths[start], column, 0):
                if _kept(rec, skip_empty, stats):
                    yield start, row, rec
            start += 1
            continue
        end = start
        while end < len(paths) and formats[end] != "parquet":
            end += 1
        for i, offset, rec in positioned_records(
            paths[start:end], formats[start:end], column, field, errors, skip_empty, stats, headers[start:end]
        ):
            yield start + i, offset, rec
        start = end


def _kept(rec: Record, skip_empty: bool, stats: ReadStats) -> bool:
    if not rec.text:
        if skip_empty:
            stats.empty_skipped += 1
            return False
        stats.empty_kept += 1
    stats.records += 1
    return True


def _parquet_rows(path: str, source: str, column: str | None, start: int) -> Iterator[tuple[int, Record]]:
    """(row number, Record) of a parquet file's text column from row `start` on; line = row number + 1."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInput(f"{path}: reading parquet needs pyarrow (pip install -e '.[ray]')") from None
    with open_input(path) as f:
        try:
            pf = pq.ParquetFile(f)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise BadInput(f"{path}: not a parquet file ({' '.join(str(e).split())})") from None
        names = pf.schema_arrow.names
        name = names[column_index(names, column, path)]
        groups: list[int] = []
        row = 0
        meta = pf.metadata
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if groups or row + n > start:  # from the group holding row `start` on
                groups.append(g)
            else:
                row += n
        for batch in pf.iter_batches(columns=[name], row_groups=groups):
            for value in batch.column(0).to_pylist():
                if row >= start:
                    if value is not None and not isinstance(value, str):
                        raise BadInput(
                            f"{path}: row {row + 1}: column {name!r} holds a {type(value).__name__}"
                        )
                    yield row, Record((value or "").strip(), source, row + 1)
                row += 1


def read_piece(
    piece: Piece, *, column: str | None, field: str | None, errors: str, skip_empty: bool
) -> list[Record]:
    """The rows of a piece, read as the planning pass read them (a worker's share of a file)."""
    out: list[Record] = []
    if piece.count == 0:
        return out
    if piece.fmt == "parquet":
        rows: Iterator[Any] = _parquet_rows(piece.path, piece.source, column, piece.offset)
        for _, rec in rows:
            if rec.text or not skip_empty:
                out.append(rec)
                if len(out) == piece.count:
                    break
    else:
        with open_input(piece.path) as f:
            f.seek(piece.offset)
            positioned = parse_positions(
                f, piece.source, piece.fmt, column, field or "text", errors,
                line=piece.line, offset=piece.offset, header=piece.header,
            )  # fmt: skip
            for _, rec in positioned:
                if rec.text or not skip_empty:
                    out.append(rec)
                    if len(out) == piece.count:
                        break
    if len(out) != piece.count:
        raise BadInput(f"{piece.source}: changed while being read ({len(out)} rows, {piece.count} planned)")
    return out


def read_shard(plan: ShardPlan, read_options: ReadOptions | Mapping[str, Any]) -> list[Record]:
    """All the rows of a shard, in id order (the read options as ReadOptions or a dict of its fields)."""
    opts = ReadOptions.of(read_options)
    column = None if opts.column is None else str(opts.column)  # the planner's readers take names or digits
    rows: list[Record] = []
    for piece in plan.pieces:
        rows.extend(
            read_piece(piece, column=column, field=opts.field, errors=opts.errors, skip_empty=opts.skip_empty)
        )
    return rows


def absolute(path: str) -> str:
    """A local input path made absolute (workers may run elsewhere); URIs as they are."""
    return path if is_uri(path) else str(Path(path).absolute())
