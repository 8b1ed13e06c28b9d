"""Inputs given as URIs (s3://, file://) and URI patterns the shell cannot expand, read by a single-process
`simcli encode` through pyarrow's filesystems, against the same files read from local paths.

The S3 endpoint is moto's server on localhost (the `s3_endpoint` fixture), reached through AWS_ENDPOINT_URL as
pyarrow reaches S3 or MinIO.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="URI inputs need pyarrow (pip install -e '.[ray]')")

from simcli.io import expand_uri_globs
from simcli.store import VectorStore
from tests.invoke import simcli
from tests.object_store import upload_to_s3

COMMON = ["--dtype", "float32", "--max-length", "24", "--shard-size", "7"]


@pytest.fixture(scope="module")
def local_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("in")
    (d / "a.txt").write_text(
        "".join(f"花呗怎么还款{i}\n" for i in range(9)) + "\n借呗额度\n", encoding="utf-8"
    )
    (d / "b.tsv").write_text("id\ttext\n1\t今天天气很好\n2\t明天会下雨吗\n", encoding="utf-8")
    (d / "c.jsonl").write_text("".join(json.dumps({"text": f"我想去北京{i}"}) + "\n" for i in range(5)),
                               encoding="utf-8")  # fmt: skip
    return [str(d / n) for n in ("a.txt", "b.tsv", "c.jsonl")]


def encode(inputs: list[str], out: Path, model: Path) -> str:
    result = simcli("encode", *inputs, "--model", str(model), "--out", str(out), *COMMON)
    assert result.exit_code == 0, result.output
    return result.output


def assert_same_rows_and_vectors(got: Path, want: Path, sources: dict[str, str]) -> None:
    """Same ids, texts, lines and vectors; each row's source is the URI `sources` maps its local path to."""
    a, b = VectorStore.open(got), VectorStore.open(want)
    rows_a, rows_b = list(a.iter_records()), list(b.iter_records())
    assert [(r.id, r.text, r.line) for r in rows_a] == [(r.id, r.text, r.line) for r in rows_b]
    assert [r.source for r in rows_a] == [sources[r.source] for r in rows_b]
    np.testing.assert_array_equal(a.vectors(), b.vectors())
    assert [i["path"] for i in a.manifest["inputs"]] == sorted(set(sources.values()))


def test_an_s3_pattern_is_expanded_and_read_like_the_local_files(
    s3_endpoint: str, tmp_path: Path, local_inputs: list[str], wobert_dir: Path
) -> None:
    uris = upload_to_s3(local_inputs, "corpus", "2026/parts")
    assert expand_uri_globs(["s3://corpus/2026/parts/*"]) == uris  # sorted, as a shell sorts
    assert expand_uri_globs(["s3://corpus/2026/parts/*.jsonl", "x.txt"]) == [uris[2], "x.txt"]
    plain = f"{uris[0]}?endpoint_override={s3_endpoint}"  # a query's "?" is not a wildcard
    assert expand_uri_globs([plain]) == [plain]
    assert expand_uri_globs(["s3://corpus/*/parts/[ab].*"]) == uris[:2]  # a wildcard folder: listed deep
    encode(local_inputs, tmp_path / "local.vec", wobert_dir)
    said = encode(["s3://corpus/2026/parts/*"], tmp_path / "s3.vec", wobert_dir)
    assert "wrote 18 vectors" in said
    assert_same_rows_and_vectors(tmp_path / "s3.vec", tmp_path / "local.vec", dict(zip(local_inputs, uris)))


def test_file_uris_read_like_local_paths(tmp_path: Path, local_inputs: list[str], wobert_dir: Path) -> None:
    folder = Path(local_inputs[0]).parent
    uris = [f"file://{p}" for p in local_inputs]
    assert expand_uri_globs([f"file://{folder}/*"]) == uris
    encode(local_inputs, tmp_path / "local.vec", wobert_dir)
    encode([f"file://{folder}/*"], tmp_path / "uri.vec", wobert_dir)
    assert_same_rows_and_vectors(tmp_path / "uri.vec", tmp_path / "local.vec", dict(zip(local_inputs, uris)))


def test_bad_uris_are_one_line_errors_that_name_them(
    s3_endpoint: str, tmp_path: Path, local_inputs: list[str], wobert_dir: Path
) -> None:
    upload_to_s3(local_inputs[:1], "bad", "x")
    for given, said in [
        ("s3://bad/x/*.parquet", "s3://bad/x/*.parquet: no file matches"),
        ("s3://bad/nowhere/*.txt", "s3://bad/nowhere/*.txt: no file matches"),
        ("s3://bad/x/missing.txt", "s3://bad/x/missing.txt: no such file"),
    ]:
        out = tmp_path / "o.vec"
        result = simcli("encode", given, "--model", str(wobert_dir), "--out", str(out))
        assert result.exit_code != 0
        assert said in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()
