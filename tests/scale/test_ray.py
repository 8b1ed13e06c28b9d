"""simcli on a local Ray runtime (2 CPUs, shared by the module) against single-process runs of the same
commands: the store, --resume, a killed worker, whitening and the IVF index.

Skipped when Ray is not installed; CI installs the ray extra.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from simcli.io import ReadStats, read_records
from simcli.store import VectorStore, encode_to_store
from simcli.types import EncoderConfig
from tests.invoke import simcli
from tests.object_store import upload_to_s3

SHARD = 9
COMMON = ["--dtype", "float32", "--max-length", "24", "--shard-size", str(SHARD)]


@pytest.fixture(scope="module")
def _crash_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash")


@pytest.fixture
def crash_flag(_crash_dir: Path) -> Path:
    """The file whose existence makes one actor exit mid-shard (see `_exit_once_hook`)."""
    return _crash_dir / "exit-once"


def _exit_once_hook(flag: str) -> Any:
    """A Ray worker setup hook: in every worker, the encode actor's shard reader is wrapped so that the first
    shard read while `flag` exists removes it and kills the worker (os._exit, as if killed from outside),
    leaving that shard to Ray's retry. The fault lives here, in the test; the closure is pickled by value."""

    root = str(Path(__file__).resolve().parents[2])  # where simcli is when it is not installed

    def arm() -> None:
        import os
        import sys

        if root not in sys.path:  # the hook runs before Ray gives the worker the driver's paths
            sys.path.append(root)
        from simcli.scale import encode

        read = encode.read_shard

        def read_or_die(plan: Any, options: Any) -> Any:
            try:
                os.remove(flag)
            except FileNotFoundError:
                return read(plan, options)
            os._exit(1)

        encode.read_shard = read_or_die

    return arm


@pytest.fixture(scope="module")
def ray_runtime(
    _crash_dir: Path, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A 2-CPU runtime whose workers see the S3 endpoint (they inherit the environment at start) and keep
    simcli's cache (remembered probe readings among it) in a folder of this module, not the user's."""
    import ray

    from simcli.scale.runtime import connect

    if ray.is_initialized():  # a runtime an earlier test left: this module's workers need the hook below
        ray.shutdown()
    hook = _exit_once_hook(str(_crash_dir / "exit-once"))
    cache = str(tmp_path_factory.mktemp("actor-cache"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": hook, "env_vars": {"SIMCLI_CACHE": cache}})  # fmt: skip
    try:
        yield connect("local")  # joins the runtime above, as the commands do
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three inputs with empty lines, over-long lines and rows spanning shard boundaries."""
    d = tmp_path_factory.mktemp("corpus")
    base = ["今天天气很好", "花呗怎么还款", "", "借呗额度怎么提升", "我想去北京玩" * 12, "明天会下雨吗"]
    txt = d / "a.txt"
    txt.write_text("".join(f"{base[i % 6]}{i if i % 6 != 2 else ''}\n" for i in range(40)), encoding="utf-8")
    tsv = d / "b.tsv"
    tsv.write_text("id\ttext\n" + "".join(f"{i}\t{base[i % 6]}\n" for i in range(13)), encoding="utf-8")
    jsonl = d / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": base[i % 6]}) + "\n" for i in range(11)), encoding="utf-8")
    return [str(txt), str(tsv), str(jsonl)]


@pytest.fixture(scope="module")
def single_store(tmp_path_factory: pytest.TempPathFactory, corpus: list[str], wobert_dir: Path) -> Path:
    """The store a single-process `simcli encode` writes."""
    out = tmp_path_factory.mktemp("single") / "s.vec"
    run(["encode", *corpus, "--model", str(wobert_dir), "--out", str(out), *COMMON])
    return out


def run(args: list[str]) -> str:
    result = simcli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def assert_same_store(got: Path, want: Path) -> None:
    a, b = VectorStore.open(got), VectorStore.open(want)
    a.verify()
    assert list(a.iter_records()) == list(b.iter_records())
    np.testing.assert_allclose(a.vectors(), b.vectors(), rtol=0, atol=1e-6)
    ma, mb = a.manifest, b.manifest
    for key in ("count", "dim", "empty_lines_kept", "empty_lines_skipped", "truncated", "model", "inputs"):
        assert ma[key] == mb[key], key
    fields = ("name", "first_id", "count", "empty", "truncated", "jsonl_sha256")
    assert [[s[f] for f in fields] for s in ma["shards"]] == [[s[f] for f in fields] for s in mb["shards"]]


def test_ray_store_equals_single_process(
    ray_runtime: Any, tmp_path: Path, corpus: list[str], wobert_dir: Path, single_store: Path
) -> None:
    out = tmp_path / "r.vec"
    said = run(["encode", *corpus, "--model", str(wobert_dir), "--out", str(out), *COMMON, "--ray", "local",
                "--workers", "2", "--cpus-per-worker", "1"])  # fmt: skip
    assert_same_store(out, single_store)
    store = VectorStore.open(out)
    assert store.count == 64 and len(store.manifest["shards"]) == 8
    assert store.manifest["empty_lines_kept"] > 0 and store.manifest["truncated"] > 0
    assert "2 workers of 1 CPU" in said and "1 CPUs" not in said
    assert f"wrote 64 vectors (dim 48, float32) in 8 shards to {out}" in said


def test_ray_reads_an_s3_pattern_like_the_local_files(
    ray_runtime: Any, tmp_path: Path, corpus: list[str], wobert_dir: Path, single_store: Path
) -> None:
    uris = upload_to_s3(corpus, "corpus", "in")
    out = tmp_path / "r.vec"
    run(["encode", "s3://corpus/in/*", "--model", str(wobert_dir), "--out", str(out), *COMMON, "--ray", "local",
         "--workers", "2", "--cpus-per-worker", "1"])  # fmt: skip
    a, b = VectorStore.open(out), VectorStore.open(single_store)
    to_uri = dict(zip(corpus, uris))
    assert [(r.id, r.text, to_uri[r.source], r.line) for r in b.iter_records()] == [
        (r.id, r.text, r.source, r.line) for r in a.iter_records()
    ]
    np.testing.assert_allclose(a.vectors(), b.vectors(), rtol=0, atol=1e-6)
    assert [i["path"] for i in a.manifest["inputs"]] == uris and a.manifest["count"] == b.manifest["count"]


def test_skip_empty_and_whitening_on_ray(
    ray_runtime: Any, tmp_path: Path, corpus: list[str], wobert_dir: Path, single_store: Path
) -> None:
    white = tmp_path / "w.whiten"
    run(["whiten", "fit", str(single_store), "--dim", "16", "--out", str(white)])
    args = ["--model", str(wobert_dir), *COMMON, "--skip-empty", "--whitening", str(white)]
    run(["encode", *corpus, *args, "--out", str(tmp_path / "s.vec")])
    said = run(["encode", *corpus, *args, "--out", str(tmp_path / "r.vec"), "--ray", "local"])
    assert_same_store(tmp_path / "r.vec", tmp_path / "s.vec")
    assert VectorStore.open(tmp_path / "r.vec").manifest["empty_lines_skipped"] > 0
    assert re.search(r"^simcli: read 64 rows: wrote \d+ vectors .*, skipped \d+ empty$", said, re.MULTILINE)


def test_resume_after_an_interrupted_driver(
    ray_runtime: Any, tmp_path: Path, corpus: list[str], wobert_dir: Path, single_store: Path
) -> None:
    from simcli.models.encoder import load_encoder
    from simcli.scale.encode import Workers, encode_store

    out = tmp_path / "r.vec"
    config = EncoderConfig(str(wobert_dir), dtype="float32", max_length=24)
    spec = load_encoder(config).spec
    landed: list[int] = []

    def interrupt(sentences: int, tokens: int) -> None:
        landed.append(sentences)
        if len(landed) == 3:
            raise KeyboardInterrupt  # the driver stops with shards in flight

    options = {"column": None, "field": None, "errors": "strict", "skip_empty": False}
    with pytest.raises(KeyboardInterrupt):
        encode_store(ray_runtime, corpus, config, spec, out, pool=Workers(2, 1, 0), shard_size=SHARD,
                     store_dtype="float32", normalize=False, resume=False, overwrite=False,
                     read_options=options, progress=interrupt)  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert not manifest["complete"] and 1 <= len(manifest["shards"]) < 8
    (out / ".shard-00007.npy.half.tmp").write_bytes(b"half-written")  # a write the interruption cut short
    said = run(["encode", *corpus, "--model", str(wobert_dir), "--out", str(out), *COMMON, "--ray", "local",
                "--resume"])  # fmt: skip
    assert f"{len(manifest['shards'])} finished earlier" in said
    assert_same_store(out, single_store)
    assert not list(out.glob(".*.tmp"))


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(
    ray_runtime: Any,
    crash_flag: Path,
    tmp_path: Path,
    corpus: list[str],
    wobert_dir: Path,
    single_store: Path,
) -> None:
    from simcli.models.encoder import load_encoder
    from simcli.scale.encode import Workers, encode_store

    out = tmp_path / "r.vec"
    config = EncoderConfig(str(wobert_dir), dtype="float32", max_length=24)
    spec = load_encoder(config).spec
    results: list[dict[str, Any]] = []
    crash_flag.touch()  # the first actor to start a shard exits mid-shard (os._exit), once
    options = {"column": None, "field": None, "errors": "strict", "skip_empty": False}
    summary = encode_store(ray_runtime, corpus, config, spec, out, pool=Workers(2, 1, 0), shard_size=SHARD,
                           store_dtype="float32", normalize=False, resume=False, overwrite=False,
                           read_options=options, on_shard=results.append)  # fmt: skip
    assert not crash_flag.exists()  # an actor did die
    assert summary.count == 64 and summary.shards == 8
    assert sorted(json.loads(r["entry"])["name"] for r in results) == [f"shard-{k:05d}" for k in range(8)]
    assert len({r["worker"] for r in results}) >= 2
    assert_same_store(out, single_store)


def test_an_actor_on_the_driver_machine_shares_the_auto_probe_readings(
    tmp_path: Path, wobert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`encode_store` hands its actors a folder of the run: an actor that finds it (on the driver's machine)
    takes `--dtype auto`'s probe readings from there (one measurement for all of them, `once_per_run`, tested
    with real processes in tests/models/test_remembered.py); on another machine the folder is not there."""
    import torch

    from simcli.models.remembered import RUN_FOLDER_ENV
    from simcli.scale.encode import ShardEncoder

    monkeypatch.setenv(RUN_FOLDER_ENV, "")  # restored (unset) when the test ends
    monkeypatch.delenv(RUN_FOLDER_ENV)
    monkeypatch.setattr(
        torch, "set_num_threads", lambda n: None
    )  # the actor's thread count, not this process's
    config = EncoderConfig(str(wobert_dir), dtype="float32", max_length=24)
    ShardEncoder(
        config, None, str(tmp_path / "o"), "float32", False, {}, 1, measured=str(tmp_path / "elsewhere")
    )
    assert RUN_FOLDER_ENV not in os.environ
    (tmp_path / "measured").mkdir()
    ShardEncoder(
        config, None, str(tmp_path / "o"), "float32", False, {}, 1, measured=str(tmp_path / "measured")
    )
    assert os.environ[RUN_FOLDER_ENV] == str(tmp_path / "measured")


def test_actors_on_the_driver_machine_take_one_reading_of_the_auto_probes(
    ray_runtime: Any, tmp_path: Path, corpus: list[str], wobert_dir: Path
) -> None:
    """`--dtype auto` on Ray: the two actors (both on this machine) measure the speed probes once between them,
    in the folder of the run, and compute in one dtype."""
    from simcli.models.encoder import load_encoder
    from simcli.scale.encode import Workers, encode_store

    config = EncoderConfig(str(wobert_dir), dtype="auto", max_length=24)
    spec = load_encoder(config.with_options(dtype="float32")).spec
    measured = tmp_path / "measured"
    measured.mkdir()
    results: list[dict[str, Any]] = []
    options = {"column": None, "field": None, "errors": "strict", "skip_empty": False}
    encode_store(ray_runtime, corpus, config, spec, tmp_path / "auto.vec", pool=Workers(2, 1, 0),
                 shard_size=SHARD, store_dtype="float32", normalize=False, resume=False, overwrite=False,
                 read_options=options, on_shard=results.append, measured=measured)  # fmt: skip
    probes = [json.loads(f.read_text(encoding="utf-8"))["key"]["probe"] for f in measured.glob("*.json")]
    assert probes and len(probes) == len(set(probes)), probes
    assert len({r["worker"] for r in results}) == 2
    assert len({json.loads(r["entry"])["computed_with"]["dtype"] for r in results}) == 1


def test_ray_whitening_equals_single_process(ray_runtime: Any, tmp_path: Path, single_store: Path) -> None:
    from simcli.whitening import Whitening

    for extra in ([], ["--beta", "0.5", "--gamma", "0.5"]):
        run(
            [
                "whiten",
                "fit",
                str(single_store),
                "--dim",
                "20",
                "--out",
                str(tmp_path / "s.w"),
                "--overwrite",
                *extra,
            ]
        )
        run(["whiten", "fit", str(single_store), "--dim", "20", "--out", str(tmp_path / "r.w"), "--overwrite",
             "--ray", "local", *extra])  # fmt: skip
        a, b = Whitening.load(tmp_path / "r.w"), Whitening.load(tmp_path / "s.w")
        assert (a.n, a.rank, a.dim_out) == (b.n, b.rank, b.dim_out)
        np.testing.assert_allclose(a.mu, b.mu, rtol=0, atol=1e-10)
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=0, atol=1e-10)
        signs = np.sign((a.W * b.W).sum(axis=0))  # an eigenvector is defined up to its sign
        np.testing.assert_allclose(a.W * signs, b.W, rtol=1e-10, atol=1e-10)


def test_moments_merged_from_parts_equal_one_pass() -> None:
    from simcli.whitening import MomentAccumulator

    x = np.random.default_rng(0).normal(5.0, 2.0, size=(1000, 12))
    whole = MomentAccumulator()
    whole.add(x)
    merged = MomentAccumulator()
    for part in np.array_split(x, 7):
        acc = MomentAccumulator()
        acc.add(part)
        merged.merge(acc)
    merged.merge(MomentAccumulator())  # an empty part changes nothing
    mu, cov = merged.finish()
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False, bias=True), rtol=0, atol=1e-10)
    assert merged.n == 1000


@pytest.mark.parametrize(("kind", "whiten"), [("IVF4,Flat", "none"), ("IVF4,PQ4x4", "16"), ("flat", "16")])
def test_ray_index_returns_the_hits_of_the_single_process_build(
    ray_runtime: Any,
    tmp_path: Path,
    single_store: Path,
    kind: str,
    whiten: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import faiss

    from simcli.index import Index, pipeline
    from simcli.whitening import Whitening

    single = Index.build(single_store, out=tmp_path / "s.idx", index=kind, whiten=whiten)

    def corpus_in_one_array(*args: Any) -> Any:
        raise AssertionError("index build --ray put the whole corpus in one array on the driver")

    monkeypatch.setattr(pipeline, "prepare", corpus_in_one_array)  # the driver streams shard by shard
    from simcli.scale.index import build_hooks_on_ray

    moments, fill = build_hooks_on_ray(ray_runtime, single_store, lambda _: None)
    on_ray = Index.build(
        single_store, out=tmp_path / "r.idx", index=kind, whiten=whiten, moments=moments, fill=fill
    )
    a, b = (
        faiss.read_index(str(tmp_path / "r.idx" / "index-1.faiss")),
        faiss.read_index(str(tmp_path / "s.idx" / "index-1.faiss")),
    )
    assert a.ntotal == b.ntotal == 64
    if whiten != "none":  # fitted from moments merged on Ray: the single-process fit to round-off
        wa, wb = (Whitening.load(tmp_path / f / "whitening-1.safetensors") for f in ("r.idx", "s.idx"))
        np.testing.assert_allclose(wa.mu, wb.mu, rtol=0, atol=1e-10)
        np.testing.assert_allclose(
            np.abs(wa.W), np.abs(wb.W), rtol=0, atol=1e-8
        )  # eigenvector signs may flip
    if kind.startswith("IVF"):  # the same trained quantizer: the same centroids
        qa, qb = faiss.extract_index_ivf(a).quantizer, faiss.extract_index_ivf(b).quantizer
        np.testing.assert_allclose(qa.reconstruct_n(0, qa.ntotal), qb.reconstruct_n(0, qb.ntotal), atol=1e-6)
    texts = [r.text for r in VectorStore.open(single_store).iter_records()]
    queries = texts[:20]
    got, want = on_ray.search(queries, k=10), single.search(queries, k=10)
    assert [[(h.id, h.text) for h in hits] for hits in got] == [
        [(h.id, h.text) for h in hits] for hits in want
    ]
    assert on_ray.info()["search_params"] == single.info()["search_params"]
    assert (tmp_path / "r.idx" / "texts-1.jsonl").read_bytes() == (
        tmp_path / "s.idx" / "texts-1.jsonl"
    ).read_bytes()


def test_index_build_cli_on_ray(ray_runtime: Any, tmp_path: Path, single_store: Path) -> None:
    said = run(["index", "build", str(single_store), "--index", "IVF4,Flat", "--out", str(tmp_path / "i"),
                "--ray", "local"])  # fmt: skip
    assert "filled on Ray" in said and "wrote" in said


def test_ray_refuses_what_it_cannot_do(
    ray_runtime: Any, tmp_path: Path, corpus: list[str], wobert_dir: Path
) -> None:
    cases = [
        (["encode", *corpus, "--model", str(wobert_dir), "--json", "--ray", "local"], "--ray writes a store"),
        (["encode", *corpus, "--model", str(wobert_dir), "--out", str(tmp_path / "o"), "--workers", "2"],
         "apply with --ray"),
        (["index", "build", corpus[0], "--model", str(wobert_dir), "--out", str(tmp_path / "i"), "--ray", "local"],
         "one vector store folder"),
        (["whiten", "fit", corpus[0], "--model", str(wobert_dir), "--out", str(tmp_path / "w"), "--ray", "local"],
         "vector store folder"),
        (["encode", "-", "--model", str(wobert_dir), "--out", str(tmp_path / "o2"), "--ray", "local"], "not stdin"),
        (["encode", str(tmp_path / "missing.txt"), "--model", str(tmp_path / "no-model"), "--out",
          str(tmp_path / "o3"), "--ray", "local"], "missing.txt: no such file"),
    ]  # fmt: skip
    for args, message in cases:
        result = simcli(*args)
        assert result.exit_code != 0, args
        assert message in result.output, result.output
        assert len(result.output.strip().splitlines()) <= 2, result.output


def test_single_process_store_matches_read_records(corpus: list[str], single_store: Path) -> None:
    """The reference store itself holds the rows simcli.io reads (so the comparisons above mean something)."""
    stats = ReadStats()
    rows = list(read_records(corpus, stats=stats))
    got = list(VectorStore.open(single_store).iter_records())
    assert [(r.text, r.source, r.line) for r in got] == [(r.text, r.source, r.line) for r in rows]
    assert encode_to_store is not None


def test_a_ray_run_prints_only_simcli_lines(tmp_path: Path, wobert_dir: Path) -> None:
    """`--ray local` in a fresh process (as a user runs it): stderr holds simcli's own two lines and none of
    Ray's (its C++ logger announces the RAY_BACKEND_LOG_LEVEL that simcli sets, on stderr, before that level
    applies); stdout stays empty."""
    import os
    import subprocess
    import sys

    (tmp_path / "in.txt").write_text("今天天气很好\n花呗怎么还款\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "RAY_BACKEND_LOG_LEVEL"}  # simcli sets it
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    argv = ["encode", "in.txt", "--model", str(wobert_dir), "--out", "o.vec", *COMMON]
    ray = ["--ray", "local", "--workers", "1", "--cpus-per-worker", "1"]
    r = subprocess.run(
        [sys.executable, "-m", "simcli", *argv, *ray],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"simcli: model {wobert_dir} (wobert, word tokenizer), pooling first-last-avg, dim 48, max length 24; "
        + "on Ray: 1 worker of 1 CPU",
        "simcli: read 2 rows: wrote 2 vectors (dim 48, float32) in 1 shard to o.vec",
    ]
