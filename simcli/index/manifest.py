"""The index manifest as a typed record, and the file roles an index folder may hold.

manifest.json keeps the layout it always had (a JSON object with "model", "whitening", "index", "search",
"files", ...); this module is the one place that reads and writes it. Code uses attributes
(`manifest.index.factory`), never string keys.

A new per-index file (say, the CSLS radii of the hubness re-rank) gets a place by declaring its role:

    FILE_ROLES["radii"] = FileRole("radii", "npy", "per-vector CSLS radii")

then writing it with `persist.write_npy(folder / file_name("radii", generation), ...)` and putting the
returned FileEntry in `manifest.files["radii"]`: it is then hashed, verified on load, carried over by
`index add` (when `carried`) and cleaned up with its generation like the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from simcli import __version__
from simcli.errors import CorruptArtifact
from simcli.manifest import read_manifest
from simcli.types import ModelSpec

KIND = "index"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FileRole:
    """A kind of file an index folder holds.

    Attributes:
        role: the key in `manifest.files` and the stem of the file name (`{role}-{generation}.{ext}`).
        ext: the file name's extension.
        about: one line for the folder layout documentation.
        carried: `index add` keeps the previous generation's file as it is (True for files fitted once,
            such as the whitening) instead of writing a new one.
    """

    role: str
    ext: str
    about: str
    carried: bool = False


#: Every file role an index folder may hold. Add a role here (or at import time, from the module that writes
#: it) to give a new per-index file a name, a hash in the manifest and a check on load.
FILE_ROLES: dict[str, FileRole] = {
    r.role: r
    for r in (
        FileRole("index", "faiss", "the FAISS index (CPU form)"),
        FileRole("texts", "jsonl", 'one {"id", "text", "source", "line"} a vector, in id order'),
        FileRole("offsets", "npy", "int64 byte offsets of the text lines"),
        FileRole("whitening", "safetensors", "the whitening applied before normalising", carried=True),
        FileRole("vectors", "npy", "the normalised float32 vectors, kept for lossy (PQ) indexes"),
        FileRole(
            "radii",
            "npy",
            "CSLS radii: per vector r(y) and the cosine of its K-th neighbour (float32, n x 2)",
        ),
    )
}


def file_name(role: str, generation: int) -> str:
    """The file name of a role in a generation, e.g. index-3.faiss."""
    return f"{role}-{generation}.{FILE_ROLES[role].ext}"


@dataclass(frozen=True)
class FileEntry:
    """One file of the folder: its name, byte size and sha256."""

    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class WhiteningRecord:
    """What the manifest says about the whitening applied before normalising."""

    sha256: str
    dim_in: int
    dim_out: int
    n: int
    beta: float
    gamma: float
    source: str | None


@dataclass(frozen=True)
class IndexRecord:
    """The FAISS index: its type, why it was chosen and how it was built."""

    kind: str
    factory: str
    nlist: int | None
    train_size: int
    reason: str
    metric: str
    lossless: bool
    built_on: str
    build_seconds: float


@dataclass(frozen=True)
class SearchRecord:
    """The default search parameters, tuned at build time, and the recall they gave."""

    params: dict[str, int]
    tuned_recall: float
    tune_queries: int
    target_recall: float | None = None
    target_reached: bool | None = None
    warning: str | None = None  # what tuning said when it stayed below its target


@dataclass(frozen=True)
class CslsRecord:
    """The CSLS radii file (`index hubness`): K neighbours per r(y), and how they were found ("exact" or
    "approximate (factory)")."""

    k: int
    search: str


@dataclass
class IndexManifest:
    """manifest.json of an index folder.

    Attributes:
        model: the ModelSpec of the vectors (None for indexes built from plain arrays).
        model_path: where the model was loaded from at build time (None when not a text build).
        source: where the vectors came from.
        whitening: the whitening record (None: the vectors were only L2-normalised).
        index, search: the FAISS index and its tuned search parameters.
        count, dim: vectors and their dimension in the index.
        generation: the generation whose files `files` names.
        computed_with: the distinct {"device", "dtype"} that computed the vectors, over all generations.
        files: role -> FileEntry, for every role in FILE_ROLES the folder holds.
        csls: the CSLS radii record, when the folder holds a radii file.
    """

    model: ModelSpec | None
    model_path: str | None
    source: str
    whitening: WhiteningRecord | None
    index: IndexRecord
    search: SearchRecord
    count: int
    dim: int
    generation: int
    computed_with: list[dict[str, str]] = field(default_factory=list)
    files: dict[str, FileEntry] = field(default_factory=dict)
    simcli_version: str = __version__
    format_version: int = FORMAT_VERSION
    csls: CslsRecord | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to manifest.json."""
        return {
            "kind": KIND,
            "simcli_version": self.simcli_version,
            "format_version": self.format_version,
            "model": self.model.to_dict() if self.model is not None else None,
            "model_path": self.model_path,
            "source": self.source,
            "whitening": asdict(self.whitening) if self.whitening is not None else None,
            "index": asdict(self.index),
            "search": asdict(self.search),
            "generation": self.generation,
            "computed_with": [dict(e) for e in self.computed_with],
            "count": self.count,
            "dim": self.dim,
            "files": {role: asdict(e) for role, e in self.files.items()},
            **({"csls": asdict(self.csls)} if self.csls is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: Path | str) -> IndexManifest:
        """Parse manifest.json's object (CorruptArtifact naming `where` when a field is missing or malformed)."""
        try:
            return cls(
                model=ModelSpec.from_dict(data["model"]) if data.get("model") else None,
                model_path=data.get("model_path"),
                source=str(data.get("source", "")),
                whitening=_record(WhiteningRecord, data["whitening"]) if data.get("whitening") else None,
                index=_record(IndexRecord, data["index"]),
                search=_record(SearchRecord, data["search"]),
                count=int(data["count"]),
                dim=int(data["dim"]),
                generation=int(data.get("generation", 0)),
                computed_with=[dict(e) for e in data.get("computed_with", [])],
                files={role: _record(FileEntry, e) for role, e in data["files"].items()},
                simcli_version=str(data.get("simcli_version", "")),
                format_version=int(data.get("format_version", FORMAT_VERSION)),
                csls=_record(CslsRecord, data["csls"]) if data.get("csls") else None,
            )
        except KeyError as e:
            raise CorruptArtifact(f"{where}: malformed index manifest (missing {e.args[0]!r})") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise CorruptArtifact(f"{where}: malformed index manifest ({e})") from None

    def file_bytes(self) -> int:
        """The size of all the files the manifest names."""
        return sum(e.bytes for e in self.files.values())


def _record(cls: Any, data: Any) -> Any:
    """A dataclass from a JSON object: unknown keys dropped (a newer simcli may add some), missing ones named."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in data and not _has_default(cls, n)]
    if missing:
        raise KeyError(f"{missing[0]}")
    return cls(**{n: data[n] for n in names if n in data})


def _has_default(cls: Any, name: str) -> bool:
    from dataclasses import MISSING

    f = cls.__dataclass_fields__[name]
    return f.default is not MISSING or f.default_factory is not MISSING


def read(path: Path) -> IndexManifest:
    """Read and parse an index folder's manifest.json (CorruptArtifact when missing, malformed or of another kind)."""
    return IndexManifest.from_json(read_manifest(path, KIND), path)
