"""The weights' sha256 is read once and then remembered by the file's identity, never past a change."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from simcli.models import digest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_digest_is_remembered_until_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights, memory = tmp_path / "model.safetensors", tmp_path / "digests"
    weights.write_bytes(b"a" * 1000)
    first = digest.file_sha256(weights, memory)
    assert first == _sha(weights)
    reads: list[Path] = []
    real = digest.sha256_file
    monkeypatch.setattr(digest, "sha256_file", lambda p: reads.append(p) or real(p))
    assert digest.file_sha256(weights, memory) == first and reads == []  # unchanged: not read again
    # the same size, the old mtime put back: the ctime still moves, so the file is read again
    st = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert digest.file_sha256(weights, memory) == _sha(weights) != first and reads == [weights]


def test_a_damaged_or_unwritable_memory_only_costs_a_reread(tmp_path: Path) -> None:
    weights, memory = tmp_path / "w.bin", tmp_path / "digests"
    weights.write_bytes(b"x" * 100)
    digest.file_sha256(weights, memory)
    (entry,) = memory.iterdir()
    entry.write_text("{not json", encoding="utf-8")
    assert digest.file_sha256(weights, memory) == _sha(weights)
    blocked = tmp_path / "a-file"  # a folder that cannot be created: its parent is a file
    blocked.write_text("", encoding="utf-8")
    assert digest.file_sha256(weights, blocked / "digests") == _sha(weights)
