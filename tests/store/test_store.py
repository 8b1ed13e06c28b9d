"""The vector store: round trips, float16, resume after an interruption, --shard splits, corruption, refusals.

The store logic is tested with a deterministic stand-in encoder (vector = hashed character counts), so the
expected vectors are computed independently of the store; `test_store_encoder.py` runs the real encoder.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simcli.errors import BadInput, CorruptArtifact, ManifestMismatch, OutputExists, SimcliError, UsageError
from simcli.io import ReadStats, Record
from simcli.store import VectorStore, encode_records, encode_to_store, parse_shard
from simcli.types import ModelSpec

DIM = 6


def fake_vector(text: str) -> np.ndarray:
    """Hashed character counts, scaled so that float16 cannot hold them exactly."""
    v = np.zeros(DIM, dtype=np.float64)
    for ch in text:
        v[zlib.crc32(ch.encode()) % DIM] += 1.0
    v = v / 3.0 + 0.1 * len(text) + 0.01
    return v.astype(np.float32)


class FakeEncoder:
    """Deterministic stand-in with the SentenceEncoder interface the store uses (`spec`, `encode`)."""

    def __init__(self, pooling: str = "pooler", fail_after: int | None = None) -> None:
        self.spec = ModelSpec("fake-model", "ab" * 32, "roformer-sim", "char", pooling, 64, DIM)
        self.calls: list[list[str]] = []
        self.fail_after = fail_after

    def encode(
        self, texts: Sequence[str], *, normalize: bool = False, stats: Any = None, progress: Any = None
    ) -> np.ndarray:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append(list(texts))
        v = np.stack([fake_vector(t) for t in texts]) if texts else np.empty((0, DIM), np.float32)
        if normalize:
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
        if stats is not None:
            stats.truncated += sum(len(t) > 6 for t in texts)
            stats.tokens += sum(len(t) + 2 for t in texts)
        if progress is not None:
            progress(len(texts), sum(len(t) + 2 for t in texts))
        return v


def make_records(n: int = 25, source: str = "in.txt") -> list[Record]:
    return [Record(f"句子{i}" + "长" * (i % 7), source, i + 1) for i in range(n)]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_round_trip_vectors_texts_records_manifest(tmp_path: Path) -> None:
    records = make_records(10)
    enc = FakeEncoder()
    summary = encode_to_store(records, enc, tmp_path / "s", shard_size=4, inputs=[], read_stats=ReadStats())
    assert (summary.count, summary.shards, summary.shards_written, summary.dim) == (10, 3, 3, DIM)
    assert summary.truncated == sum(len(r.text) > 6 for r in records) > 0
    assert [len(c) for c in enc.calls] == [4, 4, 2]  # one shard's worth of sentences per encode call
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "manifest.json",
        *[f"shard-0000{k}.{ext}" for k in range(3) for ext in ("jsonl", "npy")],
    ]
    store = VectorStore.open(tmp_path / "s")
    expected = np.stack([fake_vector(r.text) for r in records])
    assert store.vectors().dtype == np.float32
    np.testing.assert_array_equal(store.vectors(), expected)
    assert [v.shape for v in store.iter_vectors()] == [(4, DIM), (4, DIM), (2, DIM)]
    assert store.texts() == [r.text for r in records]
    assert store.ids() == list(range(10))
    assert [(r.source, r.line) for r in store.iter_records()] == [(r.source, r.line) for r in records]
    assert (store.count, store.dim, store.normalized, store.store_dtype, len(store)) == (
        10,
        DIM,
        False,
        "float32",
        10,
    )
    assert store.spec == enc.spec
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["kind"] == "store" and m["complete"] is True and m["count"] == 10
    assert [s["count"] for s in m["shards"]] == [4, 4, 2]
    assert m["model"] == enc.spec.to_dict()
    store.verify()


def test_float16_store_and_normalize(tmp_path: Path) -> None:
    records = make_records(7)
    encode_to_store(records, FakeEncoder(), tmp_path / "h", store_dtype="float16", normalize=True)
    store = VectorStore.open(tmp_path / "h")
    exact = np.stack([fake_vector(r.text) for r in records])
    exact /= np.linalg.norm(exact, axis=1, keepdims=True)
    assert np.load(tmp_path / "h" / "shard-00000.npy").dtype == np.float16
    got = store.vectors()
    assert got.dtype == np.float32 and store.normalized and store.store_dtype == "float16"
    np.testing.assert_array_equal(got, exact.astype(np.float16).astype(np.float32))
    assert not np.array_equal(got, exact), "premise: float16 rounding must show"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=2e-3)


def test_memory_stays_flat_records_are_pulled_one_shard_at_a_time(tmp_path: Path) -> None:
    pulled = 0

    def stream() -> Iterator[Record]:
        nonlocal pulled
        for r in make_records(20):
            pulled += 1
            yield r

    class Watching(FakeEncoder):
        def encode(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
            assert pulled <= len(self.calls) * 5 + 5, "the writer read ahead more than one shard"
            return super().encode(texts, **kw)

    enc = Watching()
    encode_to_store(stream(), enc, tmp_path / "s", shard_size=5)
    assert [len(c) for c in enc.calls] == [5, 5, 5, 5]


def test_resume_after_interruption_is_byte_identical_and_reencodes_nothing_finished(tmp_path: Path) -> None:
    records = make_records(25)
    encode_to_store(records, FakeEncoder(), tmp_path / "full", shard_size=4, inputs=["in.txt"])

    with pytest.raises(RuntimeError, match="simulated crash"):
        encode_to_store(records, FakeEncoder(fail_after=2), tmp_path / "r", shard_size=4, inputs=["in.txt"])
    partial = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert partial["complete"] is False and len(partial["shards"]) == 2
    with pytest.raises(CorruptArtifact, match="incomplete store"):
        VectorStore.open(tmp_path / "r")
    # What a kill in the middle of shard 2 leaves: one file of it written, a temporary file of the other.
    (tmp_path / "r" / "shard-00002.npy").write_bytes(b"half a shard")
    (tmp_path / "r" / ".shard-00002.jsonl.x1.tmp").write_bytes(b"partial")

    enc = FakeEncoder()
    summary = encode_to_store(records, enc, tmp_path / "r", shard_size=4, inputs=["in.txt"], resume=True)
    assert (summary.shards_skipped, summary.shards_written) == (2, 5)
    assert enc.calls[0] == [r.text for r in records[8:12]], "finished shards are not encoded again"
    assert sum(len(c) for c in enc.calls) == 25 - 8
    assert folder_bytes(tmp_path / "r") == folder_bytes(tmp_path / "full")


def test_resume_of_a_complete_store_encodes_nothing(tmp_path: Path) -> None:
    records = make_records(9)
    encode_to_store(records, FakeEncoder(), tmp_path / "s", shard_size=4)
    before = folder_bytes(tmp_path / "s")
    enc = FakeEncoder()
    summary = encode_to_store(records, enc, tmp_path / "s", shard_size=4, resume=True)
    assert enc.calls == [] and summary.shards_skipped == 3 and summary.count == 9
    assert folder_bytes(tmp_path / "s") == before


def test_resume_into_an_empty_folder_starts_fresh(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    summary = encode_to_store(make_records(3), FakeEncoder(), tmp_path / "s", resume=True)
    assert summary.shards_written == 1 and VectorStore.open(tmp_path / "s").count == 3


def _interrupted(tmp_path: Path, records: list[Record]) -> Path:
    out = tmp_path / "r"
    with pytest.raises(RuntimeError):
        encode_to_store(records, FakeEncoder(fail_after=2), out, shard_size=4, inputs=["in.txt"])
    return out


def test_resume_refuses_another_model_or_options(tmp_path: Path) -> None:
    records = make_records(12)
    out = _interrupted(tmp_path, records)
    with pytest.raises(ManifestMismatch) as e:
        encode_to_store(
            records, FakeEncoder(pooling="cls"), out, shard_size=4, inputs=["in.txt"], resume=True
        )
    assert str(e.value) == (
        f"{out}: cannot resume: this model does not fit (expected fake-model): pooling 'cls' != 'pooler' "
        "(replace --resume with --overwrite to start again)"
    )
    with pytest.raises(ManifestMismatch) as e:
        encode_to_store(records, FakeEncoder(), out, shard_size=5, inputs=["in.txt"], resume=True)
    assert (
        str(e.value)
        == f"{out}: cannot resume: shard_size was 4, now 5 (replace --resume with --overwrite to start again)"
    )
    with pytest.raises(ManifestMismatch, match="cannot resume: normalized was False, now True"):
        encode_to_store(
            records, FakeEncoder(), out, shard_size=4, inputs=["in.txt"], normalize=True, resume=True
        )


def test_resume_refuses_changed_input(tmp_path: Path) -> None:
    records = make_records(12)
    out = _interrupted(tmp_path, records)
    changed = list(records)
    changed[5] = Record("改过的句子", "in.txt", 6)
    with pytest.raises(ManifestMismatch) as e:
        encode_to_store(changed, FakeEncoder(), out, shard_size=4, inputs=["in.txt"], resume=True)
    assert str(e.value) == (
        f"{out}: cannot resume: in.txt:6 is not the text of id 5 in shard-00001.jsonl "
        "(input changed; replace --resume with --overwrite to start again)"
    )
    with pytest.raises(ManifestMismatch, match="the input now ends in shard 1, the interrupted run wrote 2"):
        encode_to_store(records[:4], FakeEncoder(), out, shard_size=4, inputs=["in.txt"], resume=True)


def test_resume_refuses_an_altered_finished_shard(tmp_path: Path) -> None:
    records = make_records(12)
    out = _interrupted(tmp_path, records)
    npy = out / "shard-00000.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifact) as e:
        encode_to_store(records, FakeEncoder(), out, shard_size=4, inputs=["in.txt"], resume=True)
    assert str(e.value) == f"{npy}: altered (sha256 differs from the manifest)"


def test_existing_output_is_refused_or_replaced(tmp_path: Path) -> None:
    out = tmp_path / "s"
    encode_to_store(make_records(5), FakeEncoder(), out, shard_size=1)
    with pytest.raises(OutputExists) as e:
        encode_to_store(make_records(5), FakeEncoder(), out)
    assert str(e.value) == (
        f"{out}: folder is not empty (use --resume to continue an interrupted run or --overwrite to replace it)"
    )
    encode_to_store(make_records(3), FakeEncoder(), out, overwrite=True, shard_size=2)
    assert VectorStore.open(out).count == 3
    names = sorted(p.name for p in out.iterdir())  # the old store had shards 0..4
    assert names == ["manifest.json", *[f"shard-0000{k}.{e}" for k in (0, 1) for e in ("jsonl", "npy")]]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExists) as e:
        encode_to_store(make_records(3), FakeEncoder(), out, overwrite=True)
    assert (
        str(e.value) == f"{out}: holds 'notes.txt', which is not part of a simcli store; choose another --out"
    )
    assert (out / "manifest.json").exists(), "a refused overwrite deletes nothing"
    with pytest.raises(UsageError, match="--resume and --overwrite exclude each other"):
        encode_to_store(make_records(3), FakeEncoder(), out, overwrite=True, resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExists, match="exists and is not a folder"):
        encode_to_store(make_records(3), FakeEncoder(), tmp_path / "file")


@pytest.mark.parametrize(("n_rows", "size", "workers"), [(25, 4, 3), (8, 4, 3), (10, 10, 2), (1, 1, 1)])
def test_shard_slices_are_disjoint_cover_everything_and_read_as_one(
    tmp_path: Path, n_rows: int, size: int, workers: int
) -> None:
    records = make_records(n_rows)
    encode_to_store(records, FakeEncoder(), tmp_path / "whole", shard_size=size)
    seen: list[int] = []
    for i in range(workers):
        encode_to_store(
            records, FakeEncoder(), tmp_path / "parts" / f"p{i}", shard_size=size, shard=(i, workers)
        )
        part = VectorStore.open(tmp_path / "parts" / f"p{i}")
        ids = part.ids()
        assert ids == sorted(ids) and part.shard_of == (i, workers)
        assert all((r // size) % workers == i for r in ids), "block b belongs to worker b % N"
        seen += ids
    assert sorted(seen) == list(range(n_rows)) and len(seen) == len(set(seen))
    merged = VectorStore.open(tmp_path / "parts")
    whole = VectorStore.open(tmp_path / "whole")
    assert merged.ids() == list(range(n_rows)) and merged.count == n_rows
    np.testing.assert_array_equal(merged.vectors(), whole.vectors())
    assert merged.texts() == whole.texts()


def test_merging_refuses_a_missing_worker(tmp_path: Path) -> None:
    for i in (0, 2):
        encode_to_store(make_records(12), FakeEncoder(), tmp_path / f"p{i}", shard_size=2, shard=(i, 3))
    with pytest.raises(ManifestMismatch) as e:
        VectorStore.open(tmp_path)
    assert str(e.value) == (
        f"{tmp_path}: the folders must be the workers 0..N-1 of one --shard i/N split (found 0/3, 2/3)"
    )


def test_encode_records_streams_ids_records_vectors(tmp_path: Path) -> None:
    records = make_records(11)
    enc = FakeEncoder()
    got = list(encode_records(records, enc, chunk_size=4, shard=(1, 2)))
    assert [i for i, _, _ in got] == [4, 5, 6, 7]
    assert [r for _, r, _ in got] == records[4:8]
    np.testing.assert_array_equal(
        np.stack([v for _, _, v in got]), [fake_vector(r.text) for r in records[4:8]]
    )


def test_corrupt_or_missing_files_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "s"
    encode_to_store(make_records(9), FakeEncoder(), out, shard_size=4)
    shard = out / "shard-00001.npy"
    saved = shard.read_bytes()
    shard.unlink()
    with pytest.raises(CorruptArtifact) as e:
        VectorStore.open(out)
    assert str(e.value) == f"{shard}: missing"
    shard.write_bytes(saved[:-8])
    with pytest.raises(CorruptArtifact) as e:
        VectorStore.open(out)
    assert (
        str(e.value)
        == f"{shard}: truncated or altered ({len(saved) - 8} bytes, the manifest says {len(saved)})"
    )
    shard.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    store = VectorStore.open(out)  # same size: only the hash can tell
    with pytest.raises(CorruptArtifact) as e:
        store.verify()
    assert str(e.value) == f"{shard}: altered (sha256 differs from the manifest)"
    (out / "manifest.json").unlink()
    with pytest.raises(CorruptArtifact) as e:
        VectorStore.open(out)
    assert str(e.value) == f"{out / 'manifest.json'}: manifest missing"


def test_empty_lines_are_counted_in_the_manifest(tmp_path: Path) -> None:
    records = [
        Record("一", "a.txt", 1),
        Record("", "a.txt", 2),
        Record("", "a.txt", 3),
        Record("二", "a.txt", 4),
    ]
    stats = ReadStats(empty_skipped=5)
    summary = encode_to_store(records, FakeEncoder(), tmp_path / "s", shard_size=3, read_stats=stats)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (summary.empty_kept, summary.empty_skipped) == (2, 5)
    assert (m["empty_lines_kept"], m["empty_lines_skipped"]) == (2, 5)


def test_empty_input_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as e:
        encode_to_store([], FakeEncoder(), tmp_path / "s", inputs=["in.txt"])
    assert str(e.value) == "in.txt: no sentences to encode"
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("bad", ["1", "2/2", "-1/3", "a/b", "1/0", "0/3/1", ""])
def test_parse_shard_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="expected i/N with 0 <= i < N"):
        parse_shard(bad)


def test_parse_shard_accepts() -> None:
    assert parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4)


def test_resume_may_switch_to_errors_replace(tmp_path: Path) -> None:
    """A run stopped by invalid UTF-8 continues with --errors replace; other read options must match."""
    records = make_records(12)
    out = tmp_path / "r"
    strict = {"column": None, "field": None, "errors": "strict", "skip_empty": False}
    with pytest.raises(RuntimeError):
        encode_to_store(records, FakeEncoder(fail_after=2), out, shard_size=4, read_options=strict)
    replace = {**strict, "errors": "replace"}
    summary = encode_to_store(records, FakeEncoder(), out, shard_size=4, read_options=replace, resume=True)
    assert (summary.shards_skipped, summary.shards_written) == (2, 1)
    assert json.loads((out / "manifest.json").read_text())["read"]["errors"] == "replace"
    with pytest.raises(
        ManifestMismatch, match="cannot resume: read was .*'skip_empty': False.*'skip_empty': True"
    ):
        encode_to_store(records, FakeEncoder(), out, shard_size=4, read_options={**replace, "skip_empty": True},
                        resume=True)  # fmt: skip


class WrongDimEncoder(FakeEncoder):
    """Says DIM in its spec and gives DIM - 1 numbers a sentence."""

    def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return super().encode(texts, **kwargs)[:, 1:]


def test_vectors_of_another_shape_are_refused_and_the_new_folder_removed(tmp_path: Path) -> None:
    out = tmp_path / "new" / "s.vec"
    with pytest.raises(
        SimcliError, match=rf"^encoder returned shape \(4, {DIM - 1}\), expected \(4, {DIM}\)$"
    ):
        encode_to_store(make_records(10), WrongDimEncoder(), out, shard_size=4)
    assert not (tmp_path / "new").exists()  # the folders this run made go with its first, failed shard
