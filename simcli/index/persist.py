"""The index folder on disk: layout, manifest, atomic writes and the hash check on load.

    manifest.json             kind "index": model spec, whitening, dim, count, index type and parameters,
                              search parameters, and every file below with its byte size and sha256
    index-G.faiss             the FAISS index (CPU form), written through simcli.io (temp file, fsync, rename)
    texts-G.jsonl             one {"id", "text", "source", "line"} a vector, ids 0..count-1 in input order
                              (duplicates kept)
    offsets-G.npy             int64 (count + 1,) byte offsets of the lines: a query reads only its hits
    whitening-G.safetensors   the whitening applied before normalising (when there is one)
    vectors-G.npy             the normalised float32 vectors, kept only for lossy indexes (PQ), for
                              `index check`'s exact search
    radii-G.npy               the CSLS radii (`index hubness`): float32 (count, 2), r(y) and the cosine of
                              each vector's K-th neighbour (`manifest.csls` records K)

The roles and their extensions are declared in `simcli.index.manifest.FILE_ROLES`; the manifest is the typed
`IndexManifest`.

G is a generation number. A build or an `index add` writes the files of a new generation, then the
manifest (atomically) that names them, then removes the old generation: an interrupted run leaves the
previous manifest and its files intact, never a half-written index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from simcli.errors import CorruptArtifact, OutputExists
from simcli.index.manifest import FILE_ROLES, FileEntry, IndexManifest, file_name
from simcli.index.manifest import read as read_manifest
from simcli.io import atomic_open, atomic_write_json

MANIFEST = "manifest.json"
HASH_BLOCK = 1 << 20


class _HashingWriter:
    """A binary file wrapper that hashes and counts what passes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def entry(self, name: str) -> FileEntry:
        return FileEntry(name, self.size, self.sha.hexdigest())


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse an --out that holds anything, unless overwrite (then only an index folder may be replaced)."""
    if out.exists() and not out.is_dir():
        raise OutputExists(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExists(f"--out {out} is not empty (use --overwrite to replace an index there)")
        if not (out / MANIFEST).is_file():
            raise OutputExists(f"--out {out} is not empty and not an index folder: not replacing it")


def write_index(path: Path, index: Any) -> FileEntry:
    """Write a faiss index atomically, hashing it on the way; returns its file entry."""
    import faiss

    with atomic_open(path, "wb") as f:
        w = _HashingWriter(f)
        faiss.write_index(index, faiss.PyCallbackIOWriter(w.write))  # type: ignore[attr-defined]
    return w.entry(path.name)


def write_texts(
    texts_path: Path, offsets_path: Path, rows: Iterable[dict[str, Any]], base: Path | None = None
) -> tuple[FileEntry, FileEntry, int]:
    """Write the texts file (the rows of `base` first, when given) and its offsets; returns both entries and the count."""
    offsets: list[int] = [0]
    with atomic_open(texts_path, "wb") as f:
        w = _HashingWriter(f)
        if base is not None:
            with open(base, "rb") as old:
                for line in old:
                    w.write(line)
                    offsets.append(w.size)
        for row in rows:
            w.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            offsets.append(w.size)
    texts_entry = w.entry(texts_path.name)
    offsets_entry = write_npy(offsets_path, [np.asarray(offsets, dtype=np.int64)], (len(offsets),), np.int64)
    return texts_entry, offsets_entry, len(offsets) - 1


def write_npy(path: Path, chunks: Iterable[np.ndarray], shape: tuple[int, ...], dtype: Any) -> FileEntry:
    """Stream chunks into one .npy file of a known shape, atomically; returns its file entry."""
    dt = np.dtype(dtype)
    with atomic_open(path, "wb") as f:
        w = _HashingWriter(f)
        np.lib.format.write_array_header_2_0(
            w,  # type: ignore[arg-type]  # only .write is used
            {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": shape},
        )
        rows = 0
        for chunk in chunks:
            a = np.ascontiguousarray(chunk, dtype=dt)
            w.write(a.tobytes())
            rows += len(a)
        if rows != shape[0]:
            raise ValueError(f"{path}: wrote {rows} rows, the header says {shape[0]}")
    return w.entry(path.name)


def write_generation(
    folder: Path,
    manifest: IndexManifest,
    index: Any,
    rows: Iterable[dict[str, Any]],
    vectors: Callable[[], Iterator[np.ndarray]],
    *,
    base: IndexManifest | None = None,
    whitening: Any = None,
    extra: dict[str, FileEntry] | None = None,
) -> IndexManifest:
    """Write the files of `manifest.generation`, then switch the manifest to them; returns it with its files.

    Args:
        manifest: the new manifest, its `files` still empty; `count` and `dim` are taken from `index`.
        index: the CPU faiss index holding every vector.
        rows: the {"text", "source", "line"} rows of the new vectors (ids follow on from base's count).
        vectors: all the index's normalised vectors, in id order (written only for lossy indexes).
        base: the manifest of the generation being extended (`index add`): its texts come first and its
            carried files (the whitening) are kept as they are.
        whitening: the Whitening of a new build (saved as this generation's whitening file).
        extra: files of this generation the caller wrote (e.g. the CSLS radii), by role.
    """
    g = manifest.generation
    first = base.count if base is not None else 0
    files: dict[str, FileEntry] = {"index": write_index(folder / file_name("index", g), index)}

    def numbered() -> Iterator[dict[str, Any]]:
        for i, r in enumerate(rows):
            yield {"id": first + i, **r}

    files["texts"], files["offsets"], count = write_texts(
        folder / file_name("texts", g),
        folder / file_name("offsets", g),
        numbered(),
        base=folder / base.files["texts"].name if base is not None else None,
    )
    if count != index.ntotal:
        raise CorruptArtifact(f"{folder}: {count} texts for {index.ntotal} vectors")
    if base is not None:
        files.update({r: e for r, e in base.files.items() if r in FILE_ROLES and FILE_ROLES[r].carried})
    elif whitening is not None:
        wpath = folder / file_name("whitening", g)
        whitening.save(wpath)
        files["whitening"] = hash_entry(wpath)
    if not manifest.index.lossless:
        files["vectors"] = write_npy(
            folder / file_name("vectors", g), vectors(), (index.ntotal, index.d), np.float32
        )
    files.update(extra or {})
    done = replace(manifest, count=int(index.ntotal), dim=int(index.d), files=files)
    commit(folder, done)
    return done


def hash_entry(path: Path) -> FileEntry:
    """The file entry (name, bytes, sha256) of a file written by someone else (e.g. Whitening.save)."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            sha.update(block)
            size += len(block)
    return FileEntry(path.name, size, sha.hexdigest())


def read(folder: Path) -> IndexManifest:
    """Read an index folder's manifest (CorruptArtifact when it is missing, malformed or of another kind)."""
    if not folder.is_dir():
        raise CorruptArtifact(f"{folder}: no such index folder")
    return read_manifest(folder / MANIFEST)


def verify(folder: Path, manifest: IndexManifest, *, hashes: bool = True) -> None:
    """Check that every file the manifest names exists with its size (and sha256 when `hashes`)."""
    for role, entry in manifest.files.items():
        path = folder / entry.name
        if not path.is_file():
            raise CorruptArtifact(f"{path}: missing ({role} file of index {folder})")
        size = path.stat().st_size
        if size != entry.bytes:
            raise CorruptArtifact(
                f"{path}: {size} bytes, the manifest says {entry.bytes} (truncated or altered)"
            )
        if hashes and hash_entry(path).sha256 != entry.sha256:
            raise CorruptArtifact(f"{path}: sha256 does not match the manifest (file altered)")


def commit(folder: Path, manifest: IndexManifest) -> None:
    """Write the manifest (the switch to the new generation), then remove files no manifest names."""
    atomic_write_json(folder / MANIFEST, manifest.to_json())
    keep = {e.name for e in manifest.files.values()} | {MANIFEST}
    for p in folder.iterdir():
        if p.is_file() and p.name not in keep and _is_index_file(p.name):
            p.unlink(missing_ok=True)


def _is_index_file(name: str) -> bool:
    return name.split("-", 1)[0] in FILE_ROLES or name.startswith(".")


class Texts:
    """Random access to the texts file through its offsets (memory-mapped): reads only the rows asked for."""

    def __init__(self, texts_path: Path, offsets_path: Path) -> None:
        self.path = texts_path
        self.offsets = np.load(offsets_path, mmap_mode="r", allow_pickle=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """The {"id", "text", "source", "line"} rows of `ids`, in that order."""
        out = []
        with open(self.path, "rb") as f:
            for i in ids:
                start, end = int(self.offsets[i]), int(self.offsets[i + 1])
                f.seek(start)
                try:
                    out.append(json.loads(f.read(end - start)))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise CorruptArtifact(f"{self.path}: row {i} unreadable ({e})") from None
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)
