"""The vector store on disk: numbered shards of vectors and texts plus a manifest; resumable and splittable.

A store is a folder::

    manifest.json       kind "store": model spec, store dtype, dim, count, options, inputs, and the list of
                        finished shards (ids, counts, byte sizes and sha256 of both files)
    shard-00000.npy     (n, dim) float32 or float16 vectors, rows in id order
    shard-00000.jsonl   one {"id", "text", "source", "line"} per row

A shard is finished only once the manifest lists it, and the manifest is rewritten (atomically) only after
both shard files are written (atomically): an interrupted run leaves finished shards listed and nothing
half-written; `resume=True` skips them and rewrites whatever came after.

Splitting with `shard=(i, N)`: rows are numbered over the whole input (the ids), cut into blocks of
`shard_size` rows, and block b belongs to worker b % N. Each worker writes whole shards of contiguous ids,
so the N folders hold every id exactly once and `VectorStore.open_many` reads them as one store in id order.

numpy is imported inside the functions that need it: the CLI imports this module for its defaults and
`simcli --help` must stay fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from simcli.errors import CorruptArtifact, ManifestMismatch, OutputExists, SimcliError, UsageError
from simcli.io import (
    STDIN,
    ReadOptions,
    ReadStats,
    Record,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_with,
    sha256_file,
    with_first_row,
)
from simcli.manifest import check_same_model, computed_with, new_manifest, read_manifest
from simcli.types import EncodeStats, ModelSpec, ProgressFn, SentenceEncoder, StoreDType
from simcli.vectors import encode_blocks

if TYPE_CHECKING:
    import numpy as np

MANIFEST = "manifest.json"
KIND = "store"
DEFAULT_SHARD_SIZE = 10_000
DEFAULT_STORE_DTYPE: StoreDType = "float32"
STORE_DTYPES = ("float32", "float16")
# --overwrite is the way out of a failed --resume; the two flags exclude each other, so the hint says swap
RESTART = "replace --resume with --overwrite to start again"


@dataclass
class StoreSummary:
    """What `encode_to_store` did."""

    out: Path
    count: int  # rows in the store
    dim: int
    shards: int  # shards in the store
    shards_written: int  # encoded by this call
    shards_skipped: int  # finished by an earlier run (resume)
    empty_kept: int
    empty_skipped: int
    truncated: int  # sentences cut at the model's max_length
    tokens: int = 0  # tokens encoded by this call
    seconds: float = 0.0  # encoder time of this call
    rows_read: int = 0  # input rows read (stored, skipped empty, or another --shard worker's)


@dataclass(frozen=True)
class StoredRecord:
    """One row of a store: its id and where its text came from."""

    id: int
    text: str
    source: str
    line: int


def parse_shard(value: str) -> tuple[int, int]:
    """Parse "i/N" (0 <= i < N) into (i, N); ValueError with a one-line reason otherwise."""
    left, sep, right = value.partition("/")
    if not sep or not left.strip().isdigit() or not right.strip().isdigit():
        raise ValueError(f"expected i/N with 0 <= i < N (e.g. 0/4), got {value!r}")
    i, n = int(left), int(right)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"expected i/N with 0 <= i < N (e.g. 0/4), got {value!r}")
    return i, n


# -- writing ---------------------------------------------------------------------------------------------


def _blocks(
    records: Iterable[Record], size: int, shard: tuple[int, int] | None
) -> Iterator[tuple[int, list[Record]]]:
    """(first id, rows) of each block of `size` consecutive rows that belongs to worker `shard`."""
    i, n = shard if shard is not None else (0, 1)
    block: list[Record] = []
    first = 0
    for rid, rec in enumerate(records):
        if rid % size == 0:
            first = rid
        if (rid // size) % n == i:
            block.append(rec)
            if len(block) == size:
                yield first, block
                block = []
    if block:
        yield first, block


def encode_records(
    records: Iterable[Record],
    encoder: SentenceEncoder,
    *,
    chunk_size: int = DEFAULT_SHARD_SIZE,
    normalize: bool = False,
    shard: tuple[int, int] | None = None,
    stats: EncodeStats | None = None,
    progress: ProgressFn | None = None,
) -> Iterator[tuple[int, Record, np.ndarray]]:
    """Stream (id, record, float32 vector) in input order, encoding `chunk_size` sentences at a time.

    Args:
        records: the input rows (e.g. from `simcli.io.read_records`).
        encoder: a `simcli.types.SentenceEncoder`.
        chunk_size: sentences per `encoder.encode` call; bounds memory.
        normalize: L2-normalise the vectors.
        shard: (i, N): only the rows of worker i (blocks of `chunk_size` rows, block b to worker b % N).
        stats: an EncodeStats the encoder adds its counts to.
        progress: called with (sentences, tokens) as batches finish.
    """
    _check_options(chunk_size, DEFAULT_STORE_DTYPE, shard)
    firsts: list[int] = []

    def blocks() -> Iterator[list[Record]]:
        for first, block in _blocks(records, chunk_size, shard):
            firsts.append(first)
            yield block

    stream = encode_blocks(encoder, blocks(), text=_text, normalize=normalize, stats=stats, progress=progress)
    for block, vectors in stream:
        first = firsts.pop(0)
        for k, rec in enumerate(block):
            yield first + k, rec, vectors[k]


def _text(record: Record) -> str:
    return record.text


def _check_options(shard_size: int, store_dtype: str, shard: tuple[int, int] | None) -> None:
    if shard_size < 1:
        raise UsageError(f"--shard-size must be at least 1, got {shard_size}")
    if store_dtype not in STORE_DTYPES:
        raise UsageError(f"--store-dtype must be one of {', '.join(STORE_DTYPES)}, got {store_dtype!r}")
    if shard is not None and (shard[1] < 1 or not 0 <= shard[0] < shard[1]):
        raise UsageError(f"--shard must be i/N with 0 <= i < N, got {shard[0]}/{shard[1]}")


def _describe_inputs(inputs: Sequence[str | Path]) -> list[dict[str, Any]]:
    described: list[dict[str, Any]] = []
    for p in inputs:
        entry: dict[str, Any] = {"path": str(p)}
        if str(p) != STDIN:
            try:
                entry["bytes"] = os.stat(p).st_size
            except OSError:
                pass  # the reader reports a missing input with its own message
        described.append(entry)
    return described


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _is_store_file(name: str) -> bool:
    # manifest, shard files, and the temporary files of an interrupted atomic write
    return (
        name == MANIFEST
        or (name.startswith("shard-") and name.endswith((".npy", ".jsonl")))
        or (name.startswith((".shard-", f".{MANIFEST}.")) and name.endswith(".tmp"))
    )


# The C string encoder of the json module: the same bytes as json.dumps(..., ensure_ascii=False) with default
# separators, at a fraction of the cost of one dumps() call a row (measured: 2.8 s -> 0.5 s for 200k rows).
_json_str: Callable[[str], str] = (
    getattr(json.encoder, "c_encode_basestring", None) or json.encoder.encode_basestring
)


def _jsonl_row(rid: int, r: Record) -> str:
    return (
        f'{{"id": {rid}, "text": {_json_str(r.text)}, "source": {_json_str(r.source)}, "line": {r.line}}}\n'
    )


def write_shard(
    out: Path, k: int, first: int, block: Sequence[Record], vectors: np.ndarray
) -> dict[str, Any]:
    """Write both files of shard k (rows `first`.. of `block`) atomically; return its manifest entry.

    The caller adds the entry's "truncated" count and "computed_with" before `StoreWriter.add`."""
    import numpy as np

    name = _shard_name(k)
    buf = io.BytesIO()
    np.save(buf, vectors, allow_pickle=False)
    npy = buf.getbuffer()
    rows = "".join(map(_jsonl_row, range(first, first + len(block)), block)).encode("utf-8")

    def write_npy(f: IO[bytes]) -> None:
        f.write(npy)  # the buffer as is, no copy

    atomic_write_with(out / f"{name}.npy", write_npy)
    atomic_write_bytes(out / f"{name}.jsonl", rows)
    return {
        "name": name,
        "first_id": first,
        "count": len(block),
        "empty": sum(1 for r in block if not r.text),
        "npy_bytes": len(npy),
        "npy_sha256": hashlib.sha256(npy).hexdigest(),
        "jsonl_bytes": len(rows),
        "jsonl_sha256": hashlib.sha256(rows).hexdigest(),
    }


# Suffixes of single-file formats, refused for a new store folder (an existing folder of any name is used as is)
FILE_SUFFIXES = (".npy", ".npz", ".json", ".jsonl", ".txt", ".csv", ".tsv", ".parquet", ".pkl", ".pt")


def check_output_folder(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Raise OutputExists (UsageError for flags or a name that cannot work) unless `encode_to_store` may write
    to `out` with these flags (changes nothing).

    A missing folder (unless named like a single file: `FILE_SUFFIXES`) or an empty one is fine; a non-empty one
    needs `resume` (continue the store in it) or `overwrite` (replace it), and is never cleared when it holds
    files that are not part of a store.
    """
    out = Path(out)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if not out.exists() and out.suffix.lower() in FILE_SUFFIXES:
        # `--out vectors.npy` asks for one file; a folder of that name would surprise whoever reads it next
        raise UsageError(
            f"--out {out}: names a file, but encode writes a folder (its shard-NNNNN.npy files hold the vectors "
            f"in input order); choose a folder name such as {out.with_suffix('.vec').name}"
        )
    if out.exists() and not out.is_dir():
        raise OutputExists(f"{out}: exists and is not a folder; choose another --out")
    contents = sorted(out.iterdir()) if out.exists() else []
    if not contents:
        return
    if not resume and not overwrite:
        raise OutputExists(
            f"{out}: folder is not empty "
            "(use --resume to continue an interrupted run or --overwrite to replace it)"
        )
    if resume and (out / MANIFEST).exists():
        return
    foreign = [p.name for p in contents if not _is_store_file(p.name)]
    if foreign:
        raise OutputExists(
            f"{out}: holds {foreign[0]!r}, which is not part of a simcli store; choose another --out"
        )


def kept_shards(out: Path) -> list[dict[str, Any]]:
    """The finished shards a store folder lists (none when it holds no readable manifest)."""
    try:
        shards = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("shards", [])
    except (OSError, ValueError, AttributeError):
        return []
    return list(shards) if isinstance(shards, list) else []


def remove_unfinished(out: Path, created: Path | None) -> None:
    """Remove the store files of a run that finished no shard, and the folders it made (`created`, the
    outermost, from `first_missing` before the run; None: `out` was there): a failed or interrupted first
    try must not turn the next one into "folder is not empty", and nothing the user had is touched."""
    if out.is_dir():
        for p in out.iterdir():
            if _is_store_file(p.name):
                p.unlink(missing_ok=True)
    if created is None:
        return
    for folder in (out, *out.parents):
        try:
            folder.rmdir()  # only when empty: never anything the user put there meanwhile
        except OSError:
            return
        if folder == created:
            return


def _prepare_folder(out: Path, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Check the output folder; clear it for a fresh run; return the old manifest when resuming."""
    check_output_folder(out, resume=resume, overwrite=overwrite)
    contents = sorted(out.iterdir()) if out.exists() else []
    if not contents:
        return None
    if resume and (out / MANIFEST).exists():
        return read_manifest(out / MANIFEST, KIND)
    # The manifest goes first: from then on the folder is no store, never a store with missing shards.
    for p in sorted(contents, key=lambda p: p.name != MANIFEST):
        p.unlink()
    return None


def first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet (None when `path` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_temporaries(out: Path) -> None:
    for p in out.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp") and _is_store_file(p.name):
            p.unlink()


def _check_resumable(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    """ManifestMismatch naming what differs between the interrupted run and this one."""
    hint = RESTART
    try:
        check_same_model(ModelSpec.from_dict(old["model"]), ModelSpec.from_dict(new["model"]), "this model")
    except ManifestMismatch as e:
        raise ManifestMismatch(f"{out}: cannot resume: {e} ({hint})") from None
    except (KeyError, TypeError) as e:
        raise CorruptArtifact(f"{out / MANIFEST}: malformed store manifest ({e})") from None

    # `errors` may change: a run that stopped on invalid UTF-8 resumes with errors="replace"; the lines it
    # finished were valid, so they read the same (and _check_finished compares every finished row anyway).
    def reading(manifest: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (manifest.get("read") or {}).items() if k != "errors"}

    for key in ("store_dtype", "normalized", "dim", "shard_size", "shard_of", "read", "inputs"):
        was, now = (reading(old), reading(new)) if key == "read" else (old.get(key), new.get(key))
        if was != now:
            raise ManifestMismatch(f"{out}: cannot resume: {key} was {was!r}, now {now!r} ({hint})")


def check_same_dtype(done: list[dict[str, Any]], dtype: str, out: Path) -> None:
    # The dtype changes every vector (bf16 rounds to 3 significant digits): a silently mixed store is not the
    # store an uninterrupted run would have made, so it is refused like any other option change.
    was = next((s["computed_with"]["dtype"] for s in done if "computed_with" in s), None)
    if was is not None and was != dtype:
        raise ManifestMismatch(
            f"{out}: cannot resume: the interrupted run computed in {was}, this run in {dtype} "
            f"(pass --dtype {was}, or --allow-mixed to keep both in one store)"
        )


def _check_finished(out: Path, entry: dict[str, Any], first: int, block: list[Record]) -> None:
    """A finished shard must hold exactly the rows the input gives now (else the input changed)."""
    check_finished_files(out, entry, first, len(block))
    name = entry["name"]
    with open(out / f"{name}.jsonl", encoding="utf-8") as f:
        for line, rec in zip(f, block, strict=True):
            row = json.loads(line)
            if (row["text"], row["source"], row["line"]) != (rec.text, rec.source, rec.line):
                raise ManifestMismatch(
                    f"{out}: cannot resume: {rec.source}:{rec.line} is not the text of id {row['id']} in "
                    f"{name}.jsonl (input changed; {RESTART})"
                )


def check_finished_files(out: Path, entry: dict[str, Any], first: int, count: int) -> None:
    """A finished shard's files are whole (sizes, sha256) and hold the ids `first`..+`count`."""
    name = entry["name"]
    for ext in ("npy", "jsonl"):
        _check_file(out / f"{name}.{ext}", entry[f"{ext}_bytes"], entry[f"{ext}_sha256"])
    if entry["first_id"] != first or entry["count"] != count:
        raise ManifestMismatch(
            f"{out}: cannot resume: {name} holds ids {entry['first_id']}..+{entry['count']}, the input now "
            f"gives {first}..+{count} (input changed; {RESTART})"
        )


def _check_file(path: Path, size: int, sha256: str | None = None) -> None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise CorruptArtifact(f"{path}: missing") from None
    if actual != size:
        raise CorruptArtifact(f"{path}: truncated or altered ({actual} bytes, the manifest says {size})")
    if sha256 is not None and sha256_file(path) != sha256:
        raise CorruptArtifact(f"{path}: altered (sha256 differs from the manifest)")


def store_header(
    spec: ModelSpec,
    store_dtype: str,
    normalize: bool,
    shard_size: int,
    shard: tuple[int, int] | None,
    inputs: Sequence[str | Path],
    read_options: ReadOptions | Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The manifest fields a store's writer fixes before the first shard (compared on --resume); the
    read options are recorded as given (a dict as it is, ReadOptions in its manifest form)."""
    return new_manifest(
        KIND,
        model=spec.to_dict(),
        store_dtype=store_dtype,
        normalized=normalize,
        dim=spec.dim,
        shard_size=shard_size,
        shard_of=list(shard) if shard is not None else None,
        inputs=_describe_inputs(inputs),
        read=read_options.as_dict() if isinstance(read_options, ReadOptions) else dict(read_options or {}),
    )


class StoreWriter:
    """The manifest side of writing a store folder, shared by every engine that writes shards.

    Opening prepares the folder (cleared for a fresh run, checked and kept for `resume`) and writes the
    first, empty manifest; `add` lists a shard whose files have landed (shards are listed in id order, as
    a contiguous run from shard 0, so any engine can resume any other's run); `save(complete=True)` ends it.
    """

    def __init__(self, out: Path, header: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
        self.out, self.header = out, header
        self.created = first_missing(out)  # the folders this writer makes, to remove on `discard`
        old = _prepare_folder(out, resume, overwrite)
        self.resumed = old is not None
        self.done: list[dict[str, Any]] = []
        if old is not None:
            _check_resumable(old, header, out)
            _remove_temporaries(out)
            self.done = list(old.get("shards", []))
        else:
            self.save(complete=False)

    def add(self, entry: dict[str, Any]) -> None:
        """List the next shard (its files written) and save the manifest."""
        self.done.append(entry)
        self.save(complete=False)

    @contextmanager
    def discarded_on_error(self) -> Iterator[None]:
        """On an error before the first shard is listed, remove what this run wrote (see `discard`)."""
        try:
            yield
        except Exception:  # not KeyboardInterrupt: an interrupted run keeps its folder for --resume
            if not self.done and not self.resumed:
                self.discard()
            raise

    def discard(self) -> None:
        """Remove what a run that finished no shard wrote, and the folders it created (`remove_unfinished`)."""
        remove_unfinished(self.out, self.created)

    def finish(
        self,
        dim: int,
        *,
        written: int,
        skipped: int,
        empty_skipped: int,
        tokens: int,
        seconds: float,
        rows_read: int,
    ) -> StoreSummary:
        """Mark the store complete; what it holds and what this run did."""
        self.save(complete=True, empty_skipped=empty_skipped)
        done = self.done
        return StoreSummary(
            out=self.out,
            count=sum(s["count"] for s in done),
            dim=dim,
            shards=len(done),
            shards_written=written,
            shards_skipped=skipped,
            empty_kept=sum(s["empty"] for s in done),
            empty_skipped=empty_skipped,
            truncated=sum(s["truncated"] for s in done),
            tokens=tokens,
            seconds=seconds,
            rows_read=rows_read,
        )

    def save(self, complete: bool, empty_skipped: int = 0) -> None:
        done = self.done
        atomic_write_json(
            self.out / MANIFEST,
            {
                **self.header,
                "count": sum(s["count"] for s in done),
                "empty_lines_kept": sum(s["empty"] for s in done),
                "empty_lines_skipped": empty_skipped,
                "truncated": sum(s["truncated"] for s in done),
                "complete": complete,
                "shards": done,
            },
        )


def encode_to_store(
    records: Iterable[Record],
    encoder: SentenceEncoder,
    out: str | Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    store_dtype: StoreDType = DEFAULT_STORE_DTYPE,
    normalize: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    inputs: Sequence[str | Path] = (),
    read_options: ReadOptions | Mapping[str, Any] | None = None,
    read_stats: ReadStats | None = None,
    progress: ProgressFn | None = None,
    allow_mixed: bool = False,
) -> StoreSummary:
    """Encode `records` into a store folder, one shard at a time (memory stays flat).

    Args:
        records: the input rows, e.g. `read_records(paths, ...)`.
        encoder: a `simcli.types.SentenceEncoder` (its `.spec` is recorded, its device and dtype when it has them).
        out: the store folder.
        shard_size: rows per shard (and per `encoder.encode` call).
        store_dtype: "float32" or "float16" on disk (readers always get float32).
        normalize: L2-normalise the vectors (raw pooled vectors otherwise; whitening wants them raw).
        resume: continue an interrupted run in `out`: finished shards are checked and skipped, not encoded.
        overwrite: replace an existing store in `out`.
        shard: (i, N): encode only worker i's blocks of `shard_size` rows (block b goes to worker b % N).
        inputs: the input paths, recorded in the manifest and compared on resume.
        read_options: the reader's options (a ReadOptions, or a dict of its fields), recorded and compared.
        read_stats: the ReadStats the reader fills, for the empty-line counts in the manifest.
        progress: called with (sentences, tokens); finished shards skipped on resume report (count, 0).
        allow_mixed: let `resume` continue with another device dtype than the finished shards' (a store of
            mixed precision; each shard records its own).

    Returns:
        A StoreSummary.

    Raises:
        OutputExists: `out` is not empty and neither resume nor overwrite is set, or holds other files.
        ManifestMismatch: resuming with another model, options or input than the interrupted run.
        CorruptArtifact: a finished shard of the interrupted run is missing or altered.
        BadInput: the input gives no row (nothing is written).
    """
    _check_options(shard_size, store_dtype, shard)
    out = Path(out)
    records = with_first_row(records, inputs or [out], read_stats, "encode")  # then no store is left behind
    header = store_header(encoder.spec, store_dtype, normalize, shard_size, shard, inputs, read_options)
    writer = StoreWriter(out, header, resume=resume, overwrite=overwrite)
    if writer.resumed and not allow_mixed:
        check_same_dtype(writer.done, computed_with(encoder)["dtype"], out)
    counts = EncodeStats()
    todo = _Todo(out, writer.done, progress)
    blocks = todo(_blocks(records, shard_size, shard))
    stream = encode_blocks(encoder, blocks, text=_text, normalize=normalize, stats=counts, progress=progress)
    written = _write_shards(writer, encoder, stream, todo, store_dtype, counts)
    check_input_end(out, todo.blocks, len(writer.done))
    return writer.finish(
        encoder.spec.dim,
        written=written,
        skipped=todo.skipped,
        empty_skipped=read_stats.empty_skipped if read_stats is not None else 0,
        tokens=counts.tokens,
        seconds=counts.seconds,
        rows_read=read_stats.rows if read_stats is not None else 0,
    )


@dataclass
class _Todo:
    """The blocks still to encode: the finished shards of an interrupted run are checked and passed over."""

    out: Path
    done: list[dict[str, Any]]
    progress: ProgressFn | None
    blocks: int = 0  # blocks the input gave
    skipped: int = 0  # of them finished earlier
    shards: list[tuple[int, int]] = field(default_factory=list)  # (k, first id) of each block handed on

    def __call__(self, blocks: Iterable[tuple[int, list[Record]]]) -> Iterator[list[Record]]:
        earlier = len(self.done)  # fixed before the first new shard is listed
        for k, (first, block) in enumerate(blocks):
            self.blocks = k + 1
            if k < earlier:
                _check_finished(self.out, self.done[k], first, block)
                self.skipped += 1
                if self.progress is not None:
                    self.progress(len(block), 0)
                continue
            self.shards.append((k, first))
            yield block


def _write_shards(
    writer: StoreWriter,
    encoder: SentenceEncoder,
    stream: Iterable[tuple[Sequence[Record], np.ndarray]],
    todo: _Todo,
    store_dtype: str,
    counts: EncodeStats,
) -> int:
    """Write each encoded block as a shard and list it; the number of shards written."""
    import numpy as np

    dim = encoder.spec.dim
    written = truncated_before = 0
    with writer.discarded_on_error():
        for block, vectors in stream:
            k, first = todo.shards.pop(0)
            check_shape(vectors, len(block), dim)
            entry = write_shard(
                writer.out, k, first, list(block), np.ascontiguousarray(vectors, dtype=store_dtype)
            )
            entry["truncated"] = counts.truncated - truncated_before
            truncated_before = counts.truncated
            # informational (not checked on --resume): which device and dtype computed this shard's vectors
            entry["computed_with"] = computed_with(encoder)
            writer.add(entry)
            written += 1
    return written


def check_shape(vectors: np.ndarray, rows: int, dim: int) -> None:
    """SimcliError unless the encoder gave one `dim` vector a row."""
    if vectors.shape != (rows, dim):
        raise SimcliError(f"encoder returned shape {vectors.shape}, expected ({rows}, {dim})")


def check_input_end(out: Path, shards: int, earlier: int) -> None:
    """ManifestMismatch when the input now gives fewer shards than the interrupted run finished."""
    if shards < earlier:
        raise ManifestMismatch(
            f"{out}: cannot resume: the input now ends in shard {shards}, the interrupted run wrote "
            f"{earlier} shards (input changed; {RESTART})"
        )


# -- reading ---------------------------------------------------------------------------------------------


def load_shard_vectors(folder: Path, entry: dict[str, Any], dim: int, store_dtype: str) -> np.ndarray:
    """One shard's vectors as float32 (count, dim), checked against its manifest entry."""
    import numpy as np

    npy = folder / f"{entry['name']}.npy"
    try:
        v = np.load(npy, allow_pickle=False)
    except FileNotFoundError:
        raise CorruptArtifact(f"{npy}: missing") from None
    except (OSError, ValueError) as e:
        raise CorruptArtifact(f"{npy}: unreadable ({e})") from None
    want = (int(entry["count"]), dim)
    if v.shape != want or v.dtype != np.dtype(store_dtype):
        raise CorruptArtifact(f"{npy}: holds {v.dtype} {v.shape}, the manifest says {store_dtype} {want}")
    return v.astype(np.float32, copy=False)


@dataclass
class _Shard:
    folder: Path
    entry: dict[str, Any]

    @property
    def npy(self) -> Path:
        return self.folder / f"{self.entry['name']}.npy"

    @property
    def jsonl(self) -> Path:
        return self.folder / f"{self.entry['name']}.jsonl"


@dataclass
class VectorStore:
    """A store folder (or the N worker folders of one split) opened for reading. Create with `open`."""

    path: Path
    manifest: dict[str, Any]
    spec: ModelSpec
    _shards: list[_Shard] = field(repr=False)

    # -- opening -----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> VectorStore:
        """Open a store folder, or a folder whose subfolders are the worker stores of one `--shard` split.

        Checks the manifest and that every shard file exists with the recorded size (CorruptArtifact
        naming the file otherwise); `verify()` also checks the sha256 of every file.
        """
        path = Path(path)
        if not (path / MANIFEST).exists() and path.is_dir():
            parts = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
            if parts:
                return cls.open_many(parts, path=path)
        if not path.is_dir():
            raise CorruptArtifact(f"{path}: no such store folder")
        manifest = read_manifest(path / MANIFEST, KIND)
        try:
            spec = ModelSpec.from_dict(manifest["model"])
            shards = [_Shard(path, s) for s in manifest["shards"]]
            complete = bool(manifest["complete"])
            for s in shards:
                _check_file(s.npy, s.entry["npy_bytes"])
                _check_file(s.jsonl, s.entry["jsonl_bytes"])
        except (KeyError, TypeError) as e:
            raise CorruptArtifact(f"{path / MANIFEST}: malformed store manifest (missing {e})") from None
        if not complete:
            raise CorruptArtifact(
                f"{path}: incomplete store (an interrupted run: finish it with `simcli encode ... --resume`)"
            )
        return cls(path, manifest, spec, shards)

    @classmethod
    def open_many(cls, paths: Sequence[str | Path], *, path: str | Path | None = None) -> VectorStore:
        """Read the worker folders of one `--shard i/N` split as one store, in id order.

        Raises:
            ManifestMismatch: the folders come from different models, options or splits, or a worker is
                missing.
        """
        stores = [cls.open(p) for p in paths]
        if not stores:
            raise CorruptArtifact(f"{path}: no store folders")
        first = stores[0]
        for s in stores[1:]:
            check_same_model(first.spec, s.spec, f"store {s.path}")
            for key in ("store_dtype", "normalized", "dim", "shard_size", "inputs", "read"):
                if s.manifest.get(key) != first.manifest.get(key):
                    raise ManifestMismatch(
                        f"store {s.path} does not fit {first.path}: {key} {s.manifest.get(key)!r} "
                        f"!= {first.manifest.get(key)!r}"
                    )
        splits = [s.manifest.get("shard_of") for s in stores]
        n = splits[0][1] if splits[0] else None
        workers = sorted(sp[0] for sp in splits if sp and sp[1] == n)
        if n is None or workers != list(range(n)):
            found = ", ".join(f"{sp[0]}/{sp[1]}" if sp else "unsplit" for sp in splits)
            raise ManifestMismatch(
                f"{path or first.path}: the folders must be the workers 0..N-1 of one --shard i/N split "
                f"(found {found})"
            )
        shards = sorted((sh for s in stores for sh in s._shards), key=lambda sh: sh.entry["first_id"])
        manifest = {**first.manifest, "count": sum(s.count for s in stores), "shard_of": None, "shards": []}
        for key in ("empty_lines_kept", "truncated"):
            manifest[key] = sum(s.manifest.get(key, 0) for s in stores)
        return cls(Path(path) if path is not None else first.path, manifest, first.spec, shards)

    # -- facts -------------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return sum(int(s.entry["count"]) for s in self._shards)

    def __len__(self) -> int:
        return self.count

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def normalized(self) -> bool:
        return bool(self.manifest["normalized"])

    @property
    def store_dtype(self) -> str:
        return str(self.manifest["store_dtype"])

    @property
    def shard_of(self) -> tuple[int, int] | None:
        s = self.manifest.get("shard_of")
        return (int(s[0]), int(s[1])) if s else None

    # -- data --------------------------------------------------------------------------------------------
    def _load_vectors(self, shard: _Shard) -> np.ndarray:
        return load_shard_vectors(shard.folder, shard.entry, self.dim, self.store_dtype)

    def _load_records(self, shard: _Shard) -> list[StoredRecord]:
        try:
            with open(shard.jsonl, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f]
            records = [StoredRecord(int(r["id"]), r["text"], r["source"], int(r["line"])) for r in rows]
        except FileNotFoundError:
            raise CorruptArtifact(f"{shard.jsonl}: missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CorruptArtifact(f"{shard.jsonl}: unreadable ({e})") from None
        first, count = int(shard.entry["first_id"]), int(shard.entry["count"])
        if [r.id for r in records] != list(range(first, first + count)):
            raise CorruptArtifact(f"{shard.jsonl}: rows do not match the manifest (ids {first}..+{count})")
        return records

    def shard_files(self) -> list[tuple[Path, dict[str, Any]]]:
        """(folder, manifest entry) of every shard, in id order: what a worker needs to read one shard
        (`load_shard_vectors`) without opening the whole store."""
        return [(s.folder, dict(s.entry)) for s in self._shards]

    def iter_vectors(self) -> Iterator[np.ndarray]:
        """float32 arrays (n, dim), shard by shard, in id order."""
        for s in self._shards:
            yield self._load_vectors(s)

    def iter_records(self) -> Iterator[StoredRecord]:
        """Every row's id, text, source file and line, in id order."""
        for s in self._shards:
            yield from self._load_records(s)

    def vectors(self) -> np.ndarray:
        """All vectors in memory: float32 (count, dim), in id order."""
        import numpy as np

        out = np.empty((self.count, self.dim), dtype=np.float32)  # filled in place: no second copy
        start = 0
        for v in self.iter_vectors():
            out[start : start + len(v)] = v
            start += len(v)
        return out

    def texts(self) -> list[str]:
        """All texts, in id order."""
        return [r.text for r in self.iter_records()]

    def ids(self) -> list[int]:
        """All ids, in order (0..count-1 for a whole store)."""
        return [r.id for r in self.iter_records()]

    def verify(self) -> None:
        """Check the sha256 of every shard file against the manifest (CorruptArtifact naming the file)."""
        for s in self._shards:
            _check_file(s.npy, s.entry["npy_bytes"], s.entry["npy_sha256"])
            _check_file(s.jsonl, s.entry["jsonl_bytes"], s.entry["jsonl_sha256"])


__all__ = [
    "DEFAULT_SHARD_SIZE",
    "DEFAULT_STORE_DTYPE",
    "StoreSummary",
    "StoreWriter",
    "StoredRecord",
    "VectorStore",
    "check_finished_files",
    "check_output_folder",
    "encode_records",
    "encode_to_store",
    "load_shard_vectors",
    "parse_shard",
    "store_header",
    "write_shard",
]
