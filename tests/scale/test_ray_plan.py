"""The Ray driver's reading plan: shards located by file offsets read back exactly the rows `read_records`
gives (texts, sources, lines, empty counts), for every input format; no Ray runtime needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simcli.errors import BadInput, UsageError
from simcli.io import ReadStats, read_records
from simcli.scale.plan import ShardPlan, plan_shards, read_shard
from simcli.scale.whiten import groups


def _inputs(tmp_path: Path) -> list[str]:
    txt = tmp_path / "a.txt"
    txt.write_bytes(("\ufeff第一句\n\n  第二句  \n" + "长句" * 50 + "\n最后一句").encode())
    tsv = tmp_path / "b.tsv"
    tsv.write_text('id\ttext\n1\t"引号"不成对\n2\t\n3\t第三\n', encoding="utf-8")
    csv = tmp_path / "c.csv"
    csv.write_text('text,label\n"跨\n两行",1\n,0\n"逗号,在内",1\n', encoding="utf-8")
    jsonl = tmp_path / "d.jsonl"
    rows = [{"text": "甲"}, {"text": ""}, {"text": " 乙 ", "x": 1}, {"text": "丙"}]
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return [str(txt), str(tsv), str(csv), str(jsonl)]


@pytest.mark.parametrize("skip_empty", [False, True])
@pytest.mark.parametrize("shard_size", [1, 3, 100])
def test_shards_read_back_the_rows_read_records_gives(
    tmp_path: Path, skip_empty: bool, shard_size: int
) -> None:
    paths = _inputs(tmp_path)
    want_stats = ReadStats()
    want = list(read_records(paths, skip_empty=skip_empty, stats=want_stats))
    stats = ReadStats()
    plans = plan_shards(paths, shard_size=shard_size, skip_empty=skip_empty, stats=stats)
    options = {"column": None, "field": None, "errors": "strict", "skip_empty": skip_empty}
    got = []
    for k, plan in enumerate(plans):
        plan = ShardPlan.from_json(plan.to_json())  # as the actors get it
        assert (plan.k, plan.first) == (k, len(got))
        rows = read_shard(plan, options)
        assert len(rows) == plan.count
        assert (plan.source, plan.line) == (rows[0].source, rows[0].line)
        got.extend(rows)
    assert [(r.text, r.source, r.line) for r in got] == [(r.text, r.source, r.line) for r in want]
    assert (stats.empty_kept, stats.empty_skipped, stats.records) == (
        want_stats.empty_kept,
        want_stats.empty_skipped,
        want_stats.records,
    )
    assert len(plans) == -(-len(want) // shard_size)


def test_file_uris_read_like_paths(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="URIs are read through pyarrow (the ray extra)")
    paths = _inputs(tmp_path)
    uris = [Path(p).as_uri() for p in paths]
    plans = plan_shards(uris, shard_size=4)
    options = {"column": None, "field": None, "errors": "strict", "skip_empty": False}
    got = [r for p in plans for r in read_shard(p, options)]
    want = list(read_records(paths))
    assert [(r.text, r.line) for r in got] == [(r.text, r.line) for r in want]
    assert {r.source for r in got} == set(uris)
    with pytest.raises(BadInput, match="no such file"):
        plan_shards([Path(tmp_path / "missing.txt").as_uri()], shard_size=4)


def test_parquet_rows_are_numbered_from_one(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="parquet is read through pyarrow (the ray extra)")
    import pyarrow.parquet as pq

    texts = ["一", "", " 二 ", None, "三", "四", "五"]
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": list(range(7)), "sentence": texts}), path, row_group_size=3)
    for skip_empty in (False, True):
        stats = ReadStats()
        plans = plan_shards([str(path)], shard_size=2, column="sentence", skip_empty=skip_empty, stats=stats)
        options = {"column": "sentence", "field": None, "errors": "strict", "skip_empty": skip_empty}
        got = [(r.text, r.line) for p in plans for r in read_shard(p, options)]
        want = [((t or "").strip(), i + 1) for i, t in enumerate(texts)]
        if skip_empty:
            want = [w for w in want if w[0]]
        assert got == want
        assert stats.empty_skipped == (2 if skip_empty else 0)
    with pytest.raises(BadInput, match="no column 'nope'"):
        plan_shards([str(path)], shard_size=2, column="nope")


def test_stdin_and_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not stdin"):
        plan_shards(["-"], shard_size=2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n[1]\n', encoding="utf-8")
    with pytest.raises(BadInput, match=r"bad.jsonl:2: not a JSON object"):
        plan_shards([str(bad)], shard_size=2)


def test_groups_are_consecutive_runs_of_near_equal_length() -> None:
    items = list(range(10))
    for parts in (1, 3, 4, 10, 20):
        g = groups(items, parts)
        assert [x for part in g for x in part] == items
        assert len(g) == min(parts, 10)
        assert max(map(len, g)) - min(map(len, g)) <= 1


class _Resources:
    """What `ray.cluster_resources()` reports, the one thing `workers_for` asks of the runtime."""

    def __init__(self, cpus: int, gpus: int = 0) -> None:
        self.resources = {"CPU": float(cpus), "GPU": float(gpus)}

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


def test_the_default_pool_is_one_actor_a_cpu_or_a_gpu() -> None:
    from simcli.scale.encode import Workers, workers_for

    assert workers_for(_Resources(16), None, None, 0) == Workers(16, 1.0, 0.0)
    assert workers_for(_Resources(16), 4, None, 0) == Workers(4, 4.0, 0.0)  # --workers alone: CPUs shared
    assert workers_for(_Resources(16), None, 2, 0) == Workers(8, 2.0, 0.0)
    assert workers_for(_Resources(16), None, 0.5, 0) == Workers(32, 0.5, 0.0)
    assert workers_for(_Resources(16, gpus=4), None, None, 1) == Workers(4, 1.0, 1.0)
    assert workers_for(_Resources(16, gpus=4), None, None, 0.5) == Workers(8, 1.0, 0.5)


def test_actors_get_their_own_gpu_not_the_drivers_cuda_n() -> None:
    """Ray narrows an actor's CUDA_VISIBLE_DEVICES to its GPU: the driver's cuda:3 does not exist there."""
    from simcli.scale.encode import actor_config
    from simcli.types import EncoderConfig

    assert actor_config(EncoderConfig("m", device="cuda:3")).device == "cuda"
    assert actor_config(EncoderConfig("m", device="cuda:3", dtype="float16")).dtype == "float16"
    for kept in ("cuda", "cpu", "auto"):
        assert actor_config(EncoderConfig("m", device=kept)).device == kept


def test_the_run_line_names_the_pool() -> None:
    from simcli.scale.encode import Workers

    assert Workers(1, 1.0, 0.0).describe() == "1 worker of 1 CPU"
    assert Workers(2, 2.0, 0.0).describe() == "2 workers of 2 CPUs"
    assert Workers(1_200, 0.5, 0.0).describe() == "1,200 workers of 0.5 CPUs"
    assert Workers(4, 1.0, 0.5).describe() == "4 workers of 1 CPU and 0.5 GPUs"


def test_the_driver_probes_inputs_and_model_before_ray_starts(
    tmp_path: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`probe` needs no Ray: a missing input fails before the model is looked at, a relative model folder
    becomes the absolute path the workers load, and a whitening file sets the spec's dim; nothing is written."""
    from simcli.models.encoder import load_encoder
    from simcli.scale.encode import probe
    from simcli.types import EncoderConfig
    from simcli.whitening import fit_texts

    text = tmp_path / "in.txt"
    text.write_text("今天天气很好\n花呗怎么还款\n我想办信用卡\n", encoding="utf-8")
    options = {"column": None, "field": None, "errors": "strict", "skip_empty": False}
    out = tmp_path / "o.vec"

    def run(inputs: list[str], model: str, whitening: Path | None = None) -> Any:
        config = EncoderConfig(model)
        return probe(
            inputs, out, config, whitening=whitening, read_options=options, resume=False, overwrite=False
        )

    with pytest.raises(BadInput, match=r"missing\.txt: no such file$"):
        run([str(tmp_path / "missing.txt")], str(tmp_path / "no-model"))

    monkeypatch.chdir(roformer_sim_dir.parent)
    probed = run([str(text)], roformer_sim_dir.name)
    assert probed.config.model == str(roformer_sim_dir.absolute())
    assert (probed.spec.model, probed.spec.dim, probed.max_length, probed.whitening) == (
        probed.config.model,
        48,
        64,
        None,
    )
    assert (probed.info["device"], probed.info["dtype"]) == (
        "cpu",
        "float32",
    )  # the probe's, not the workers'

    encoder = load_encoder(EncoderConfig(roformer_sim_dir.name, device="cpu", dtype="float32"))
    w = fit_texts(text.read_text(encoding="utf-8").split(), encoder, dim=2)
    w.save(tmp_path / "w.safetensors")
    whitened = run([str(text)], roformer_sim_dir.name, tmp_path / "w.safetensors")
    assert whitened.spec.dim == 2 and whitened.spec.extra["whitening_sha256"] == w.sha256
    assert whitened.whitening is not None and whitened.whitening.sha256 == w.sha256
    assert not out.exists()
