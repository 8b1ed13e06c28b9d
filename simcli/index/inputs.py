"""Where the vectors of an index come from: an array, a vector store folder, or text through an encoder.

A Source gives the raw (un-whitened, un-normalised) vectors chunk by chunk, as many times as asked (whitening
fit, training sample, adding), and the text rows in id order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simcli.errors import BadInput, UsageError
from simcli.io import ReadOptions, ReadStats, no_sentences
from simcli.manifest import computed_with
from simcli.types import EncodeStats, ModelSpec, ProgressFn, SentenceEncoder
from simcli.vectors import BLOCK_SENTENCES as CHUNK  # sentences encoded (and vectors handled) at a time


@dataclass
class Source:
    """Raw vectors and their texts.

    Attributes:
        spec: the ModelSpec of the vectors (None for plain arrays).
        dim: vector dimension.
        count: number of vectors.
        normalized: the vectors are already L2-normalised (a store encoded with --normalize).
        chunks: a function returning an iterator over float32 (m, dim) chunks, in id order; callable again.
        rows: a function returning the {"text", "source", "line"} rows, in id order.
        describe: where the vectors came from, for the manifest.
        empty: empty texts kept (counted for a warning).
        truncated: texts cut at the model's max_length.
        computed_with: the distinct {"device", "dtype"} that encoded the vectors (empty when unknown).
        rows_read: text rows read (text sources: the vectors plus the empty rows skipped).
        empty_skipped: empty text rows skipped.
        encode_seconds: wall time spent reading and encoding text (0 for other sources).
    """

    spec: ModelSpec | None
    dim: int
    count: int
    normalized: bool
    chunks: Callable[[], Iterator[np.ndarray]]
    rows: Callable[[], Iterator[dict[str, Any]]]
    describe: str
    empty: int = 0
    truncated: int = 0
    computed_with: list[dict[str, str]] = field(default_factory=list)
    rows_read: int = 0
    empty_skipped: int = 0
    encode_seconds: float = 0.0


def from_array(
    vectors: np.ndarray, texts: Sequence[str] | None = None, spec: ModelSpec | None = None
) -> Source:
    """A Source over an in-memory (n, d) array of raw vectors, with optional texts."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise BadInput(f"vectors must be a non-empty (n, dim) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise BadInput("vectors contain NaN or Inf")
    if texts is not None and len(texts) != len(x):
        raise BadInput(f"{len(texts)} texts for {len(x)} vectors")
    labels = list(texts) if texts is not None else [""] * len(x)

    def chunks() -> Iterator[np.ndarray]:
        for i in range(0, len(x), CHUNK):
            yield x[i : i + CHUNK]

    def rows() -> Iterator[dict[str, Any]]:
        for i, t in enumerate(labels):
            yield {"text": t, "source": "<array>", "line": i + 1}

    return Source(spec, x.shape[1], len(x), False, chunks, rows, "<array>")


def is_store(path: str | Path) -> bool:
    """Whether a path is a vector store folder (or a folder of the worker stores of one split)."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / "manifest.json").is_file():
        return True
    return any((q / "manifest.json").is_file() for q in p.iterdir() if q.is_dir())


def check_store_flags(
    path: str | Path,
    *,
    model: str | None = None,
    pooling: str = "auto",
    tokenizer: str | None = None,
    max_length: int | None = None,
) -> None:
    """UsageError when an encoder flag given with a vector store contradicts what the store's vectors were
    made with (the store decides: its vectors are computed). Flags equal to the store's are fine."""
    from simcli.store import VectorStore

    spec = VectorStore.open(path).spec
    fix = "a store's vectors are already computed: drop the flag, or encode the text again"
    if model is not None and not _same_model(model, spec):
        raise UsageError(
            f"{path}: a vector store of model {spec.model}; --model {model} contradicts it ({fix})"
        )
    for flag, given, recorded in (
        ("--pooling", None if pooling == "auto" else pooling, spec.pooling),
        ("--tokenizer", tokenizer, spec.tokenizer),
        ("--max-length", max_length, spec.max_length),
    ):
        if given is not None and given != recorded:
            raise UsageError(
                f"{path}: a vector store made with {flag} {recorded}; {flag} {given} contradicts it ({fix})"
            )


def _same_model(model: str, spec: ModelSpec) -> bool:
    """`model` names the store's model: the same name as recorded, or a local folder with the same weights."""
    from simcli.models.loading import open_checkpoint, recorded_name

    if recorded_name(model) == spec.model:
        return True
    if not Path(model).expanduser().is_dir():
        return False  # a hub id or short name under another name: never fetched just to compare
    return open_checkpoint(model).weights_sha256 == spec.weights_sha256


def from_store(path: str | Path) -> Source:
    """A Source over a vector store folder (`simcli encode --out`), read shard by shard."""
    from simcli.store import VectorStore

    store = VectorStore.open(path)
    if store.count == 0:
        raise BadInput(f"{path}: the store is empty")

    def rows() -> Iterator[dict[str, Any]]:
        for r in store.iter_records():
            yield {"text": r.text, "source": r.source, "line": r.line}

    return Source(
        store.spec,
        store.dim,
        store.count,
        store.normalized,
        store.iter_vectors,
        rows,
        str(path),
        empty=int(store.manifest.get("empty_lines_kept", 0)),
        truncated=int(store.manifest.get("truncated", 0)),
        computed_with=distinct(
            s["computed_with"] for s in store.manifest.get("shards", []) if "computed_with" in s
        ),
    )


def from_texts(
    records: Iterator[Any],
    encoder: SentenceEncoder,
    *,
    describe: str,
    progress: ProgressFn | None = None,
    read_stats: ReadStats | None = None,
) -> Source:
    """Encode text records (simcli.io.Record) with `encoder`, CHUNK at a time, keeping the raw vectors in memory.

    `read_stats`: the reader's counts, for the rows read and skipped."""
    from simcli.vectors import chunked, encode_blocks

    started = time.perf_counter()
    stats = EncodeStats()
    parts: list[np.ndarray] = []
    meta: list[dict[str, Any]] = []
    blocks = chunked(records, CHUNK)
    for block, vectors in encode_blocks(
        encoder, blocks, text=lambda r: r.text, stats=stats, progress=progress
    ):
        meta.extend({"text": r.text, "source": r.source, "line": r.line} for r in block)
        parts.append(vectors)
    if not meta:
        raise no_sentences([describe], read_stats, "index")
    return Source(
        encoder.spec,
        encoder.spec.dim,
        len(meta),
        False,
        lambda: iter(parts),
        lambda: iter(meta),
        describe,
        empty=sum(not m["text"] for m in meta),
        truncated=stats.truncated,
        computed_with=[computed_with(encoder)],
        rows_read=read_stats.rows if read_stats is not None else len(meta),
        empty_skipped=read_stats.empty_skipped if read_stats is not None else 0,
        encode_seconds=time.perf_counter() - started,
    )


def distinct(entries: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """The distinct {"device", "dtype"} entries, in first-seen order."""
    out: list[dict[str, str]] = []
    for e in entries:
        if e not in out:
            out.append(dict(e))
    return out


def open_source(
    source: Any,
    *,
    texts: Sequence[str] | None = None,
    spec: ModelSpec | None = None,
    encoder: Callable[[], Any] | None = None,
    read_options: ReadOptions | Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> Source:
    """Resolve what `Index.build` / `Index.add` was given.

    Args:
        source: an (n, d) array of raw vectors; a store folder; or text file paths (a path or a list).
        texts: the texts of an array's rows.
        spec: the ModelSpec of an array's vectors.
        encoder: a function returning the Encoder for text sources (called only for text).
        read_options: a ReadOptions (or a dict of its fields) for the text readers.
    """
    if isinstance(source, np.ndarray):
        return from_array(source, texts, spec)
    paths = [source] if isinstance(source, str | Path) else list(source)
    if not paths:
        raise UsageError("give at least one input (text files or a store folder)")
    stores = [p for p in paths if is_store(p)]
    if stores:
        if len(paths) > 1:
            raise UsageError(f"a store folder ({stores[0]}) must be the only input")
        return from_store(stores[0])
    for p in paths:
        if Path(p).is_dir():
            raise BadInput(f"{p}: a folder that is not a vector store (no manifest.json)")
    stats = ReadStats()
    records = ReadOptions.of(read_options).records([str(p) for p in paths], stats=stats)
    if encoder is None:
        raise UsageError("text inputs need --model (or give a vector store folder)")
    return from_texts(
        iter(records),
        encoder(),
        describe=", ".join(map(str, paths)),
        progress=progress,
        read_stats=stats,
    )
