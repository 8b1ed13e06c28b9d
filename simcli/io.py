"""Reading input text and tables (sentences, labelled pairs) and writing files atomically.

Every file simcli writes goes through `atomic_write*`: a temporary file in the same folder, fsync,
then rename, so an interrupted run never leaves a half-written artefact.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from simcli.errors import BadInput, InputWarning, UsageError

if TYPE_CHECKING:
    import numpy as np


@contextmanager
def atomic_open(path: Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; the result must get the mode open() gives a new file (0644 under
        # umask 022), or an index or store cannot be shared between users and cluster workers
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    # Read, not set-and-restore, where the OS allows: os.umask(0) would briefly change it for every thread.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported on every platform, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out`, renamed to `out` when the block ends without error (an existing `out`
    is moved aside first and removed after); removed on error. The caller decides whether `out` may go."""
    import shutil

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(stage, out)
        _fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def atomic_write_with(path: Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Write `path` atomically with a function that writes to a binary file object (np.save, ...)."""
    with atomic_open(path, "wb") as f:
        writer(f)


# -- table writers: what they write, read_records reads back to the same rows -----------------------------


def tsv_cell(value: Any) -> str:
    """A TSV cell as the reader reads it: TSV has no quoting, so a tab or line break inside a value (which
    no TSV can hold) becomes a space; quotes stay as they are."""
    return str(value).translate(_TSV_BREAKS)


_TSV_BREAKS = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


def write_table(f: IO[str], fmt: str, header: Sequence[Any] | None, rows: Iterable[Sequence[Any]]) -> int:
    """Write a header (None: none) and rows as .tsv (no quoting, as `read_records` reads it) or .csv (RFC 4180
    quoting); returns the number of rows (header excluded). `f` is a text file opened with encoding utf-8."""
    count = 0
    if fmt == "tsv":
        if header is not None:
            f.write("\t".join(map(tsv_cell, header)) + "\n")
        for row in rows:
            f.write("\t".join(map(tsv_cell, row)) + "\n")
            count += 1
        return count
    if fmt != "csv":
        raise ValueError(f"write_table writes tsv or csv, not {fmt!r}")
    writer = csv.writer(f, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    for row in rows:
        writer.writerow(row)
        count += 1
    return count


def write_jsonl(f: IO[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object a line (UTF-8 kept readable); returns the number of rows."""
    count = 0
    for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# -- readers -------------------------------------------------------------------------------------------

#: Input formats by file extension; `-` (stdin) reads as txt, or as tsv when a column is given. A .data
#: file (the evaluation and training pairs, `s1<TAB>s2<TAB>label`) is tab-separated text without a header.
FORMATS: dict[str, str] = {".txt": "txt", ".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".data": "tsv"}
HEADERLESS = frozenset({".data"})
STDIN = "-"
Errors = Literal["strict", "replace"]


@dataclass(frozen=True)
class Record:
    """One input sentence and where it came from.

    Attributes:
        text: the sentence, surrounding whitespace stripped.
        source: the file name as given, or "<stdin>".
        line: 1-based physical line where the row starts.
        row: the whole parsed row (list for tsv/csv, dict for jsonl, None for txt), so later stages can
            copy the other columns.
    """

    text: str
    source: str
    line: int
    row: list[str] | dict[str, Any] | None = None


@dataclass
class ReadStats:
    """Counts `read_records` fills in while it is iterated."""

    records: int = 0  # records yielded, empty ones included when kept
    empty_kept: int = 0
    empty_skipped: int = 0
    files: int = 0  # inputs opened so far

    @property
    def rows(self) -> int:
        """Rows read: the records yielded plus the empty ones skipped."""
        return self.records + self.empty_skipped


@dataclass(frozen=True)
class ReadOptions:
    """How the text readers take sentences out of input files (see `read_records` for each field); built
    once per command and handed down to every reader, store and shard planner."""

    column: str | int | None = None
    field: str | None = None
    header: bool | None = None
    errors: Errors = "strict"
    skip_empty: bool = False

    @classmethod
    def of(cls, options: ReadOptions | Mapping[str, Any] | None) -> ReadOptions:
        """`options` as ReadOptions: the Python API also takes a dict of these fields (None: the defaults)."""
        if options is None:
            return cls()
        if isinstance(options, ReadOptions):
            return options
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise UsageError(f"unknown read option(s): {', '.join(sorted(unknown))}")
        given = {k: v for k, v in options.items() if v is not None or k in ("column", "field", "header")}
        return cls(**given)

    def as_dict(self) -> dict[str, Any]:
        """The form a store manifest records (and --resume compares): `header` only when given, so stores
        written before that flag existed still resume."""
        d: dict[str, Any] = {
            "column": self.column,
            "field": self.field,
            "errors": self.errors,
            "skip_empty": self.skip_empty,
        }
        if self.header is not None:
            d["header"] = self.header
        return d

    def records(self, paths: Sequence[str | Path], stats: ReadStats | None = None) -> Iterator[Record]:
        """`read_records(paths)` with these options."""
        return read_records(
            paths,
            column=self.column,
            field=self.field,
            errors=self.errors,
            skip_empty=self.skip_empty,
            stats=stats,
            header=self.header,
        )


def has_header(path: str | Path, header: bool | None = None) -> bool:
    """Whether the first row of a tsv/csv input is its header: `header` when given, else yes, except for
    .data files (headerless `s1<TAB>s2<TAB>label`)."""
    if header is not None:
        return header
    return str(path) == STDIN or Path(path).suffix.lower() not in HEADERLESS


def headerless_column(column: str | int | None) -> int | None:
    """The 0-based index `column` names in a file without a header (None: the only column); UsageError for
    a name, which only a header could resolve."""
    if column is None or isinstance(column, int):
        return column
    if not column.isdigit():
        raise UsageError(f"--column {column!r}: a file without a header takes a 0-based column index")
    return int(column)


def no_sentences(paths: Sequence[str | Path], stats: ReadStats | None, verb: str) -> BadInput:
    """The error for an input that gave nothing to `verb` (encode, index), naming the inputs and the empty
    rows skipped."""
    skipped = f" ({stats.empty_skipped:,} empty skipped)" if stats is not None and stats.empty_skipped else ""
    return BadInput(f"{', '.join(map(str, paths))}: no sentences to {verb}{skipped}")


def with_first_row(
    records: Iterable[Record], paths: Sequence[str | Path], stats: ReadStats | None, verb: str
) -> Iterator[Record]:
    """`records` again once a first row is known to come, else the `no_sentences` error: an empty input fails
    before a model loads or a folder is touched."""
    rows = iter(records)
    head = next(rows, None)
    if head is None:
        raise no_sentences(paths, stats, verb)
    return itertools.chain([head], rows)


def input_format(path: str | Path, column: str | int | None = None) -> str:
    """The format of an input path: txt, tsv, csv or jsonl (BadInput for an unknown extension)."""
    if str(path) == STDIN:
        return "tsv" if column is not None else "txt"
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        choices = ", ".join(FORMATS)
        raise BadInput(f"{path}: unknown input format {Path(path).suffix or '(no extension)'!r} ({choices})")
    return fmt


def read_records(
    paths: Sequence[str | Path],
    *,
    column: str | int | None = None,
    field: str | None = None,
    errors: Errors = "strict",
    skip_empty: bool = False,
    stats: ReadStats | None = None,
    header: bool | None = None,
) -> Iterator[Record]:
    """Stream the sentences of several input files, in order, line by line.

    Args:
        paths: .txt (one sentence a line), .tsv / .csv (header row, then rows), .data (tab-separated, no
            header), .jsonl (one JSON object a line), or "-" for stdin (txt, or tsv when `column` is given).
        column: tsv/csv column, by header name or 0-based index (a digit string is an index unless a header
            has that name). Default: the column named "text", else the only column. Without a header, an
            index only.
        field: jsonl field holding the text (default "text").
        errors: "strict" raises BadInput naming file:line on invalid UTF-8; "replace" substitutes U+FFFD.
        skip_empty: drop empty sentences instead of yielding them (counted either way in `stats`).
        stats: a ReadStats to fill in (empty lines kept / skipped, records).
        header: whether tsv/csv inputs start with a header row (default: yes, except .data files).

    Yields:
        Record per sentence.

    Raises:
        BadInput: missing file, unknown format, invalid UTF-8, missing column or field, malformed JSON line.
        UsageError: a column name for a file without a header.
    """
    if errors not in ("strict", "replace"):
        raise UsageError(f"--errors must be strict or replace, got {errors!r}")
    # Checked now, not when iteration starts: a typo in a file name fails before a model is loaded.
    formats = [input_format(path, column) for path in paths]
    for path in paths:
        if str(path) != STDIN:
            check_input(str(path))
    headers = table_headers(paths, formats, column, errors, header)
    rows = positioned_records(
        paths, formats, column, field or "text", errors, skip_empty, stats or ReadStats(), headers
    )
    return (rec for _, _, rec in rows)


def table_headers(
    paths: Sequence[str | Path],
    formats: Sequence[str],
    column: str | int | None,
    errors: str,
    header: bool | None,
) -> list[list[str] | None]:
    """For each input, what `parse_positions` takes as `header`: [] for a table without a header, None for
    other formats and stdin (read from the stream); a local table's header row, read and checked against
    `column` now (a wrong --column fails before a model loads), with a warning when it looks like data."""
    out: list[list[str] | None] = []
    for path, fmt in zip(paths, formats, strict=True):
        if fmt not in ("tsv", "csv"):
            out.append(None)
        elif not has_header(path, header):
            headerless_column(column)
            out.append([])
        elif str(path) == STDIN:
            out.append(None)
        else:
            # an explicit --header is taken at its word: no warning that the row looks like data
            first = _check_header(str(path), fmt, column, errors, warn=header is None)
            out.append(first or None)
    return out


def positioned_records(
    paths: Sequence[str | Path],
    formats: list[str],
    column: str | int | None,
    field: str,
    errors: str,
    skip_empty: bool,
    stats: ReadStats,
    headers: Sequence[list[str] | None] | None = None,
) -> Iterator[tuple[int, int, Record]]:
    """(index of the input in `paths`, byte offset where the row starts, Record) of the rows `read_records`
    gives, counting empty rows in `stats` the same way; the offsets let workers continue a file from a row.
    `headers`: as `table_headers` gives them (default: every table has a header row)."""
    for i, (path, fmt) in enumerate(zip(paths, formats, strict=True)):
        stats.files += 1
        # only "no header" is passed on: a header row is read again with the rows that follow it
        header: list[str] | None = [] if headers is not None and headers[i] == [] else None
        for offset, rec in _read_one(str(path), fmt, column, field, errors, header):
            if not rec.text:
                if skip_empty:
                    stats.empty_skipped += 1
                    continue
                stats.empty_kept += 1
            stats.records += 1
            yield i, offset, rec


def is_uri(path: str | Path) -> bool:
    """Whether an input is a URI (s3://, gs://, hdfs://, file://...), read through pyarrow's filesystems."""
    return "://" in str(path)


def _filesystem(uri: str) -> tuple[Any, str]:
    try:
        from pyarrow import fs
    except ImportError:
        raise BadInput(f"{uri}: reading URIs needs pyarrow (pip install -e '.[ray]')") from None
    try:
        return fs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as e:
        raise BadInput(f"{uri}: {' '.join(str(e).split())}") from None


GLOB_CHARS = frozenset("*?[")


def expand_uri_globs(paths: Sequence[str]) -> list[str]:
    """The inputs with each URI pattern (s3://bucket/corpus/*.jsonl: the shell cannot expand it) replaced by
    the files it matches on that filesystem, sorted; local paths and plain URIs are kept as given.

    Raises:
        BadInput: a pattern that matches no file.
    """
    out: list[str] = []
    for path in paths:
        # in a URI "?" starts the query (?endpoint_override=...): only the part before it can be a pattern
        if not is_uri(path) or not GLOB_CHARS & set(path.split("://", 1)[1].split("?", 1)[0]):
            out.append(path)
            continue
        out.extend(_uri_matches(path))
    return out


def _uri_matches(pattern: str) -> list[str]:
    import fnmatch

    from pyarrow import fs

    scheme, rest = pattern.split("://", 1)
    path, query = (
        rest.split("?", 1) if "?" in rest else (rest, "")
    )  # ?endpoint_override=... stays on each file
    suffix = f"?{query}" if query else ""
    # pyarrow's paths are the URI's without "scheme://" (s3: bucket/key; file: /abs/path); the folder above
    # the first wildcard is listed, recursively when a folder name below it holds a wildcard too
    folder = path[: min(path.index(c) for c in GLOB_CHARS if c in path)].rsplit("/", 1)[0]
    filesystem, root = _filesystem(f"{scheme}://{folder}{suffix}")
    wanted = root.rstrip("/") + path[len(folder) :]
    try:
        infos = filesystem.get_file_info(
            fs.FileSelector(root, recursive="/" in path[len(folder) + 1 :], allow_not_found=True)
        )
    except OSError as e:
        raise BadInput(f"{pattern}: cannot list ({' '.join(str(e).split())})") from None
    found = sorted(
        i.path for i in infos if i.type == fs.FileType.File and fnmatch.fnmatchcase(i.path, wanted)
    )
    if not found:
        raise BadInput(f"{pattern}: no file matches")
    return [f"{scheme}://{p}{suffix}" for p in found]


def check_input(path: str) -> None:
    """BadInput naming the input unless it is a readable file (a local path or a URI)."""
    if not is_uri(path):
        if not Path(path).is_file():
            raise BadInput(f"{path}: {'not a file' if Path(path).exists() else 'no such file'}")
        return
    from pyarrow import fs

    filesystem, inner = _filesystem(path)
    try:
        kind = filesystem.get_file_info(inner).type
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({' '.join(str(e).split())})") from None
    if kind != fs.FileType.File:
        raise BadInput(f"{path}: {'no such file' if kind == fs.FileType.NotFound else 'not a file'}")


def open_input(path: str) -> IO[bytes]:
    """Open an input file for reading bytes: a local path, or a URI through pyarrow's filesystems (seekable
    either way). BadInput naming the file when it cannot be opened."""
    try:
        if not is_uri(path):
            return open(path, "rb")
        filesystem, inner = _filesystem(path)
        return io.BufferedReader(filesystem.open_input_file(inner))
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({e.strerror or ' '.join(str(e).split())})") from e


def _read_one(
    path: str, fmt: str, column: str | int | None, field: str, errors: str, header: list[str] | None = None
) -> Iterator[tuple[int, Record]]:
    if path == STDIN:
        yield from parse_positions(sys.stdin.buffer, "<stdin>", fmt, column, field, errors, header=header)
        return
    with open_input(path) as f:
        yield from parse_positions(f, path, fmt, column, field, errors, header=header)


class _Lines:
    """Decoded lines of a binary stream with the physical line number of the last line read, and its byte
    offsets (`start`, `end`) in the file, so a reader can later continue from a row (`parse_from`)."""

    def __init__(self, stream: IO[bytes], source: str, errors: str, number: int = 0, offset: int = 0) -> None:
        self.stream, self.source, self.errors = stream, source, errors
        self.number = number
        self.start = self.end = offset

    def __iter__(self) -> Iterator[str]:
        for raw in self.stream:
            self.number += 1
            self.start = self.end
            self.end += len(raw)
            if self.number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM (Excel's csv)
                raw = raw[3:]
            try:
                yield raw.decode("utf-8", errors=self.errors)
            except UnicodeDecodeError:
                raise BadInput(f"{self.source}:{self.number}: invalid UTF-8 (use --errors replace)") from None


def parse_positions(
    stream: IO[bytes],
    source: str,
    fmt: str,
    column: str | int | None,
    field: str,
    errors: str,
    *,
    line: int = 0,
    offset: int = 0,
    header: list[str] | None = None,
) -> Iterator[tuple[int, Record]]:
    """(byte offset where the row starts, Record) of each row of a stream, as `read_records` parses them.

    To continue a file from a row (a worker reading its share of a file): seek the stream to the row's
    offset and pass `offset`, `line` (the physical lines before it) and, for tsv/csv, the file's `header`
    ([] for a file without a header: every row is data and the column is an index).
    """
    lines = _Lines(stream, source, errors, line, offset)
    if fmt == "txt":
        for text in lines:
            yield lines.start, Record(text.strip(), source, lines.number)
    elif fmt == "jsonl":
        for text in lines:
            yield lines.start, _jsonl_record(text, f"{source}:{lines.number}", source, lines.number, field)
    else:
        yield from _parse_table(lines, source, fmt, column, header)


def _json_object(line: str, where: str) -> dict[str, Any]:
    """One JSON-lines row; BadInput naming file:line unless it is a JSON object."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(f"{where}: not a JSON object ({e.msg})") from None
    if not isinstance(obj, dict):
        raise BadInput(f"{where}: not a JSON object (found {type(obj).__name__})")
    return obj


def _jsonl_record(text: str, where: str, source: str, line: int, field: str) -> Record:
    obj = _json_object(text, where)
    if field not in obj:
        raise BadInput(f"{where}: no field {field!r} (fields: {', '.join(map(str, obj)) or 'none'})")
    value = obj[field]
    if not isinstance(value, str):
        raise BadInput(f"{where}: field {field!r} is a {type(value).__name__}, not a string")
    return Record(value.strip(), source, line, obj)


def _parse_table(
    lines: _Lines, source: str, fmt: str, column: str | int | None, header: list[str] | None = None
) -> Iterator[tuple[int, Record]]:
    reader = _table_reader(lines, fmt)
    if header is None:
        try:
            header = next(reader)
        except StopIteration:
            return  # an empty file has no rows
        except csv.Error as e:
            raise BadInput(f"{source}:{lines.number}: malformed {fmt} ({e})") from None
    col = column_index(header, column, source) if header else headerless_column(column)
    start, offset = lines.number + 1, lines.end
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise BadInput(f"{source}:{lines.number}: malformed {fmt} ({e})") from None
        if not row:  # a blank physical line: an empty sentence
            yield offset, Record("", source, start, row)
        else:
            yield offset, Record(_cell(row, col, header, f"{source}:{start}"), source, start, row)
        start, offset = lines.number + 1, lines.end


def _cell(row: list[str], col: int | None, header: list[str], where: str) -> str:
    """The chosen cell of a row, stripped; `col` None (no header, no --column): the row's only cell."""
    if col is None:
        if len(row) > 1:
            raise BadInput(f"{where}: {len(row)} fields and no header: choose one with --column (0-based)")
        col = 0
    if col >= len(row):
        named = f" ({header[col]!r})" if col < len(header) else ""
        raise BadInput(f"{where}: row has {len(row)} fields, no column {col}{named}")
    return row[col].strip()


def _check_header(
    path: str, fmt: str, column: str | int | None, errors: str, *, warn: bool = True
) -> list[str]:
    # Only the first rows are read: a wrong --column fails at once, not after the model has loaded.
    first = _first_rows(path, fmt, errors, 3)
    if first:
        col = column_index(first[0], column, str(path))
        index = column if isinstance(column, int) else int(column) if column and column.isdigit() else None
        if warn and index is not None and looks_like_data(first[0], first[1:], col):
            # a digit that names a cell of that row picks the cell's field (a header named "0" wins), so
            # the warning says which field a data row made it
            named = f" (--column {column} is the name of its field {col})" if col != index else ""
            warnings.warn(
                f"{path}:1 looks like data, not a header; pass --no-header to read it as a row{named}",
                InputWarning,
                stacklevel=3,
            )
    return first[0] if first else []


#: Chinese column names; an ASCII name (text, sentence1, question_text) is recognised by its shape.
HEADER_WORDS = frozenset({"文本", "句子", "句子1", "句子2", "问题", "查询", "答案", "标题", "内容", "标签"})


def looks_like_data(first: list[str], following: list[list[str]], col: int) -> bool:
    """Whether a table's first row reads as one more row of data: the same number of fields as the rows
    after it, a number exactly where they have numbers, and no header word in the chosen column."""
    if not following or any(len(row) != len(first) for row in following):
        return False
    for row in following:
        if any(_is_number(a) != _is_number(b) for a, b in zip(first, row, strict=True)):
            return False
    cell = first[col].strip()
    return bool(cell) and cell.lower() not in HEADER_WORDS and not _IDENTIFIER.fullmatch(cell)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # a column name (question_text), not a sentence


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _first_rows(path: str | Path, fmt: str, errors: Errors | str, n: int) -> list[list[str]]:
    """Up to `n` first non-blank rows of a tsv/csv file, parsed as `read_records` parses them."""
    out: list[list[str]] = []
    with open_input(str(path)) as f:
        lines = _Lines(f, str(path), errors)
        try:
            for row in _table_reader(lines, fmt):
                if row:
                    out.append(row)
                if len(out) == n:
                    break
        except csv.Error as e:
            raise BadInput(f"{path}:{lines.number}: malformed {fmt} ({e})") from None
    return out


def read_header(path: str | Path, fmt: str, errors: Errors | str = "strict") -> list[str]:
    """The header row of a tsv/csv file, parsed as `read_records` parses it ([] for an empty file)."""
    with open_input(str(path)) as f:
        lines = _Lines(f, str(path), errors)
        try:
            return next(_table_reader(lines, fmt))
        except StopIteration:
            return []
        except csv.Error as e:
            raise BadInput(f"{path}:{lines.number}: malformed {fmt} ({e})") from None


def count_rows(
    paths: Sequence[str | Path], column: str | int | None = None, header: bool | None = None
) -> int | None:
    """Rows `read_records` will give (lines, minus the header of tsv/csv), counted fast for a progress bar's
    total; None when reading stdin. A quoted csv cell spanning lines counts once per line."""
    if any(str(p) == STDIN for p in paths):
        return None
    total = 0
    for p in paths:
        lines, last = 0, b"\n"
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                lines += block.count(b"\n")
                last = block[-1:]
        lines += last != b"\n"  # a last line without its newline
        table = input_format(p, column) in ("tsv", "csv")
        total += max(lines - (table and has_header(p, header)), 0)
    return total


def _table_reader(lines: Iterable[str], fmt: str) -> Iterator[list[str]]:
    # TSV (IANA text/tab-separated-values) has no quoting: a stray '"' in a sentence is text, as in LCQMC.
    if fmt == "tsv":
        return csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    return csv.reader(lines)


def column_index(header: list[str], column: str | int | None, source: str) -> int:
    """The 0-based index of `column` (header name, or index; default "text", else the only column);
    BadInput naming `source` and listing the header otherwise."""
    listing = f"header: {', '.join(header)}"
    if column is None:
        if "text" in header:
            return header.index("text")
        if len(header) == 1:
            return 0
        raise BadInput(f"{source}: several columns, choose one with --column ({listing})")
    if isinstance(column, str) and column in header:
        return header.index(column)
    index = column if isinstance(column, int) else int(column) if column.isdigit() else None
    if index is None or not 0 <= index < len(header):
        raise BadInput(f"{source}: no column {column!r} ({listing})")
    return index


# -- labelled sentence pairs (`simcli eval sts`) -------------------------------------------------------------

#: The sentence columns and label column by default: headerless `s1<TAB>s2<TAB>label` (the .data files),
#: a header naming sentence1/sentence2/label (PAWS-X tsv), or those keys in jsonl.
DEFAULT_COLUMNS = ("sentence1", "sentence2", "label")
PAIR_FORMATS = {
    ".data": "tsv",
    ".txt": "tsv",
    ".tsv": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}


@dataclass(frozen=True)
class PairSet:
    """Labelled sentence pairs of one file."""

    name: str
    path: Path
    s1: list[str]
    s2: list[str]
    labels: np.ndarray  # (n,) float64

    def __len__(self) -> int:
        return len(self.labels)


def _pair_format(path: Path) -> str:
    fmt = PAIR_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadInput(
            f"{path}: unknown pair file format {path.suffix or '(no extension)'!r} ({', '.join(PAIR_FORMATS)})"
        )
    return fmt


def read_text(path: Path) -> str:
    """A whole UTF-8 text file (a BOM dropped); BadInput in one line when it is missing, unreadable or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({e.strerror})") from e


def read_rows(path: Path, fmt: str) -> list[tuple[int, list[str] | dict[str, Any]]]:
    """(line number, fields) of every non-blank line."""
    text = read_text(path)
    lines = text.splitlines()
    out: list[tuple[int, list[str] | dict[str, Any]]] = []
    if fmt == "csv":
        reader = csv.reader(lines)
        try:
            for row in reader:
                if row:
                    out.append((reader.line_num, row))
        except csv.Error as e:
            raise BadInput(f"{path}:{reader.line_num}: malformed csv ({e})") from None
        return out
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if fmt == "jsonl":
            out.append((i, _json_object(line, f"{path}:{i}")))
        else:
            # TSV without quoting: a stray '"' inside a sentence is text (LCQMC, PAWSX).
            out.append((i, line.split("\t")))
    return out


def _pair_columns(columns: tuple[str, str, str] | None, first: list[str]) -> tuple[list[int], bool]:
    """Column indexes for a delimited file, and whether the first row is a header."""
    if columns is None:
        if all(c in first for c in DEFAULT_COLUMNS):
            return [first.index(c) for c in DEFAULT_COLUMNS], True
        return [0, 1, 2], False
    if all(c.isdigit() for c in columns):
        return [int(c) for c in columns], False
    missing = [c for c in columns if c not in first]
    if missing:
        raise BadInput(f"no column {missing[0]!r} in the header ({', '.join(first)})")
    return [first.index(c) for c in columns], True


@dataclass(frozen=True)
class RawPair:
    """One labelled pair as written in its file: the label still text (NLI names, scores, 0/1)."""

    line: int
    s1: str
    s2: str
    label: Any


def read_pair_rows(
    path: str | Path,
    *,
    columns: tuple[str, str, str] | None = None,
    limit: int | None = None,
    labels: bool = True,
) -> list[RawPair]:
    """The pairs of a file with their line numbers and unparsed labels (see `read_pairs` for the formats).

    Raises:
        BadInput: unreadable file, missing column or field, no pairs.
    """
    path = Path(path)
    fmt = _pair_format(path)
    rows = read_rows(path, fmt)
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    if fmt == "jsonl":
        keys = list(columns or DEFAULT_COLUMNS)
        picked = []
        for line, obj in rows:
            assert isinstance(obj, dict)
            for k in keys[: 3 if labels else 2]:
                if k not in obj:
                    raise BadInput(f"{path}:{line}: no field {k!r} (fields: {', '.join(map(str, obj))})")
            picked.append((line, [obj.get(k, "") for k in keys]))
    else:
        if not rows:
            raise BadInput(f"{path}: no pairs")
        first = rows[0][1]
        assert isinstance(first, list)
        try:
            idx, header = _pair_columns(columns, first)
        except BadInput as e:
            raise BadInput(f"{path}: {e}") from None
        picked = []
        need = max(idx[:3] if labels else idx[:2]) + 1
        for line, row in rows[1:] if header else rows:
            assert isinstance(row, list)
            if len(row) < need:
                raise BadInput(f"{path}:{line}: {len(row)} fields, expected at least {need} (--columns)")
            picked.append((line, [row[i] if i < len(row) else "" for i in idx]))
    if limit is not None:
        picked = picked[:limit]
    out = []
    for line, (a, b, y) in picked:
        if not isinstance(a, str) or not isinstance(b, str):
            raise BadInput(f"{path}:{line}: the sentence fields must be text")
        out.append(RawPair(line, a.strip(), b.strip(), y))
    if not out:
        raise BadInput(f"{path}: no pairs")
    return out


def parse_score(path: str | Path, line: int, label: Any) -> float:
    """A numeric label; BadInput naming file:line when it is not a finite number."""
    try:
        value = float(label)
    except (TypeError, ValueError):
        raise BadInput(f"{path}:{line}: label {label!r} is not a number") from None
    if not math.isfinite(value):
        raise BadInput(f"{path}:{line}: label {label!r} is not a finite number")
    return value


def read_pairs(
    path: str | Path,
    *,
    columns: tuple[str, str, str] | None = None,
    limit: int | None = None,
    name: str | None = None,
    labels: bool = True,
) -> PairSet:
    """Read labelled sentence pairs.

    Args:
        path: `.data` / `.txt` / `.tsv` (tab-separated, no quoting), `.csv`, or `.jsonl` / `.json` (JSON lines).
        columns: (first, second, label) as 0-based indexes (no header) or header names / jsonl keys.
            Default: columns 0,1,2 without header, or the header / keys sentence1, sentence2, label.
        limit: keep only the first `limit` pairs.
        name: the data set name (default: the file name up to its first dot).
        labels: parse the label column (False: sentences only, labels all 0).

    Raises:
        BadInput: unreadable file, missing column or field, a label that is not a number (file:line).
    """
    path = Path(path)
    rows = read_pair_rows(path, columns=columns, limit=limit, labels=labels)
    ys = [parse_score(path, r.line, r.label) if labels else 0.0 for r in rows]
    import numpy as np

    return PairSet(
        name or path.name.split(".")[0],
        path,
        [r.s1 for r in rows],
        [r.s2 for r in rows],
        np.asarray(ys, dtype=np.float64),
    )


def read_sentences(path: str | Path, *, columns: tuple[str, str, str] | None = None) -> list[str]:
    """Sentences to fit whitening on (`--fit-on`): both sentences of a pair file, or one sentence a line.

    A `.txt` file without a tab on its first line is read as one sentence a line; any other file is read as
    pairs (`read_pairs`) and both sentence columns are used, labels ignored.
    """
    path = Path(path)
    if path.suffix.lower() == ".txt":
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except FileNotFoundError:
            raise BadInput(f"{path}: no such file") from None
        except UnicodeDecodeError as e:
            raise BadInput(f"{path}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
        if lines and "\t" not in lines[0]:
            out = [s.strip() for s in lines if s.strip()]
            if not out:
                raise BadInput(f"{path}: no sentences")
            return out
    pairs = read_pairs(path, columns=columns, labels=False)
    return pairs.s1 + pairs.s2
