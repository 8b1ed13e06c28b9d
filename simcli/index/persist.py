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
    radii-G.npy               CSLS radii (`index hubness`, `index build --csls`): float32 (count, 2), per
                              vector r(y) (mean cosine to its K nearest, itself excluded) and the cosine of
                              its K-th neighbour (what `index add` needs to refresh r)

G is a generation number. A build or an `index add` writes the files of a new generation, then the
manifest (atomically) that names them, then removes the old generation: an interrupted run leaves the
previous manifest and its files intact, never a half-written index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from simcli.errors import CorruptArtifact, OutputExists
from simcli.io import atomic_open, atomic_write_json
from simcli.manifest import read_manifest

MANIFEST = "manifest.json"
KIND = "index"
FORMAT_VERSION = 1
HASH_BLOCK = 1 << 20


class _HashingWriter:
    """A binary file wrapper that hashes and counts what passes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def entry(self, name: str) -> dict[str, Any]:
        return {"name": name, "bytes": self.size, "sha256": self.sha.hexdigest()}


def file_name(role: str, generation: int) -> str:
    ext = {
        "index": "faiss",
        "texts": "jsonl",
        "offsets": "npy",
        "whitening": "safetensors",
        "vectors": "npy",
        "radii": "npy",
    }
    return f"{role}-{generation}.{ext[role]}"


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse an --out that holds anything, unless overwrite (then only an index folder may be replaced)."""
    if out.exists() and not out.is_dir():
        raise OutputExists(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExists(f"--out {out} is not empty (use --overwrite to replace an index there)")
        if not (out / MANIFEST).is_file():
            raise OutputExists(f"--out {out} is not empty and not an index folder: not replacing it")


def write_index(path: Path, index: Any) -> dict[str, Any]:
    """Write a faiss index atomically, hashing it on the way; returns its file entry."""
    import faiss

    with atomic_open(path, "wb") as f:
        w = _HashingWriter(f)
        faiss.write_index(index, faiss.PyCallbackIOWriter(w.write))  # type: ignore[attr-defined]
    return w.entry(path.name)


def write_texts(
    texts_path: Path, offsets_path: Path, rows: Iterable[dict[str, Any]], base: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any], int]:
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


def write_npy(path: Path, chunks: Iterable[np.ndarray], shape: tuple[int, ...], dtype: Any) -> dict[str, Any]:
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


def hash_entry(path: Path) -> dict[str, Any]:
    """The file entry (name, bytes, sha256) of a file written by someone else (e.g. Whitening.save)."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            sha.update(block)
            size += len(block)
    return {"name": path.name, "bytes": size, "sha256": sha.hexdigest()}


def read(folder: Path) -> dict[str, Any]:
    """Read an index manifest (CorruptArtifact when it is missing, malformed or of another kind)."""
    if not folder.is_dir():
        raise CorruptArtifact(f"{folder}: no such index folder")
    manifest = read_manifest(folder / MANIFEST, KIND)
    for key in ("files", "count", "dim", "index"):
        if key not in manifest:
            raise CorruptArtifact(f"{folder / MANIFEST}: malformed index manifest (missing {key!r})")
    return manifest


def verify(folder: Path, manifest: dict[str, Any], *, hashes: bool = True) -> None:
    """Check that every file the manifest names exists with its size (and sha256 when `hashes`)."""
    for role, entry in manifest["files"].items():
        path = folder / entry["name"]
        if not path.is_file():
            raise CorruptArtifact(f"{path}: missing ({role} file of index {folder})")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CorruptArtifact(
                f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated or altered)"
            )
        if hashes and hash_entry(path)["sha256"] != entry["sha256"]:
            raise CorruptArtifact(f"{path}: sha256 does not match the manifest (file altered)")


def commit(folder: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest (the switch to the new generation), then remove files no manifest names."""
    atomic_write_json(folder / MANIFEST, manifest)
    keep = {e["name"] for e in manifest["files"].values()} | {MANIFEST}
    for p in folder.iterdir():
        if p.is_file() and p.name not in keep and _is_index_file(p.name):
            p.unlink(missing_ok=True)


def _is_index_file(name: str) -> bool:
    stem = name.split("-", 1)[0]
    return stem in ("index", "texts", "offsets", "whitening", "vectors", "radii") or name.startswith(".")


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
