"""The faiss GPU path against a fake GPU module whose index behaves like faiss's GPU types (tests/fake_gpu.py):
parameters read from the CPU index, set through GpuParameterSpace, cloner options, limits, fallbacks, locking,
one StandardGpuResources a device, --device cuda:N."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from simcli.index import Index
from simcli.index import gpu as gpu_mod
from simcli.index.neighbourhood import index_stats
from tests import fake_gpu
from tests.fake_gpu import FakeGpu, FakeGpuIndex, FakeReplicas, FakeResources
from tests.invoke import simcli

D = 64


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, D))
    return (centers[rng.integers(0, 40, 4000)] + 0.6 * rng.standard_normal((4000, D))).astype(np.float32)


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGpu]:
    yield fake_gpu.install(monkeypatch, gpus=1)
    gpu_mod.resources.cache_clear()


def test_the_fake_is_no_cpu_index(corpus: np.ndarray) -> None:
    """Premise: what the old code did to a GPU index fails on the fake as on the real one."""
    cpu = faiss.index_factory(D, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    cpu.train(unit(corpus))
    fake = FakeGpuIndex(cpu, 0)
    with pytest.raises((RuntimeError, TypeError)):
        faiss.extract_index_ivf(fake)
    with pytest.raises((RuntimeError, TypeError)):
        faiss.ParameterSpace().set_index_parameter(fake, "nprobe", 8)
    fake.nprobe = 4096
    with pytest.raises(RuntimeError, match="nprobe <= 2048"):
        fake.search(unit(corpus[:2]), 10)
    fake.nprobe = 8
    with pytest.raises(RuntimeError, match="k <= 2048"):
        fake.search(unit(corpus[:2]), 2049)


def test_gpu_build_is_tuned_and_saved_with_its_parameters(
    tmp_path: Path, corpus: np.ndarray, gpu: FakeGpu
) -> None:
    """An IVF built on the GPU is tuned through the GPU search (not left at nprobe 1) and the saved CPU file
    carries the tuned nprobe."""
    idx = Index.build(corpus, out=tmp_path / "ivf", index="IVF64,Flat")
    assert idx.manifest.index.built_on == "gpu" and idx.on_gpu
    nprobe = idx.manifest.search.params["nprobe"]
    assert 8 <= nprobe <= 64 and idx.manifest.search.tuned_recall >= 0.97
    saved = faiss.read_index(str(idx.path / idx.manifest.files["index"].name))
    assert faiss.extract_index_ivf(saved).nprobe == nprobe
    # the ladder ran on the GPU index: 500 sample queries at k 11, nprobe rising from 8
    assert isinstance(idx.gpu.index, FakeGpuIndex)  # type: ignore[union-attr]
    assert gpu.moves[0][0] == [0] and gpu.back >= 1


def test_cpu_built_ivf_loads_onto_the_gpu_and_answers_like_the_cpu(
    tmp_path: Path, corpus: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU-built IVF loads on the GPU (no "nprobe does not apply"), searches there at the tuned nprobe and
    at a per-call one, with the CPU's answers; `index stats` calls it approximate, not exact."""
    cpu_idx = Index.build(corpus, out=tmp_path / "ivf", index="IVF64,Flat")
    assert not cpu_idx.on_gpu
    queries = corpus[:50]
    want = cpu_idx.search(queries, k=10)
    want4 = cpu_idx.search(queries, k=10, params={"nprobe": 4})
    fake = fake_gpu.install(monkeypatch, gpus=1)
    idx = Index.load(tmp_path / "ivf")
    assert idx.on_gpu and idx.search(queries, k=10) == want
    assert idx.search(queries, k=10, params={"nprobe": 4}) == want4
    g = idx.gpu.index  # type: ignore[union-attr]
    assert g.searches[-1] == (10, 4) and g.searches[-2] == (10, cpu_idx.search_params["nprobe"])
    assert fake.moves[0][0] == [0]
    report = index_stats(idx, k=5)
    assert report.exact is False and "approximate (IVF64,Flat, nprobe" in report.method
    gpu_mod.resources.cache_clear()


def test_beyond_the_gpu_limit_searches_the_cpu_copy(tmp_path: Path, corpus: np.ndarray, gpu: FakeGpu) -> None:
    """k (or CSLS candidates) and nprobe above 2048 on a GPU index answer from the CPU copy, equal to exact
    search for a flat index, instead of faiss's GPU error."""
    idx = Index.build(corpus[:3000], out=tmp_path / "flat", index="flat")
    assert idx.on_gpu
    hits = idx.search(corpus[:2], k=2500)
    assert [len(h) for h in hits] == [2500, 2500]
    x = unit(corpus[:2])
    truth = np.argsort(-(x @ unit(corpus[:3000]).T), axis=1, kind="stable")[:, :2500]
    assert [h.id for h in hits[0][:100]] == truth[0, :100].tolist()
    assert idx.gpu.index.searches == []  # type: ignore[union-attr]  # the GPU never saw k 2500
    ivf = Index.build(corpus, out=tmp_path / "ivf", index="IVF2560,Flat")
    assert len(ivf.search(corpus[:1], k=5, params={"nprobe": 2560})[0]) == 5
    assert all(n <= 2048 for _, n in ivf.gpu.index.searches)  # type: ignore[union-attr]


def test_tuned_nprobe_above_the_limit_is_capped_on_the_gpu(
    tmp_path: Path, corpus: np.ndarray, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    idx = Index.build(corpus, out=tmp_path / "ivf", index="IVF2560,Flat")
    path = idx.path / idx.manifest.files["index"].name
    cpu = faiss.read_index(str(path))
    faiss.extract_index_ivf(cpu).nprobe = 2560
    fake_gpu.install(monkeypatch, gpus=1)
    moved = gpu_mod.to_gpu(cpu, "auto", print)
    assert moved is not None and moved.index.nprobe == 2048
    assert capsys.readouterr().out == (
        "note: nprobe 2560 is above the GPU limit 2048: the GPU index searches at 2048\n"
    )
    gpu_mod.resources.cache_clear()


@pytest.mark.parametrize(
    ("factory", "option"),
    [("IVF32_HNSW32,Flat", "allowCpuCoarseQuantizer"), ("IVF16,PQ64", "useFloat16")],
)
def test_cloner_options_let_the_move_succeed(
    corpus: np.ndarray, gpu: FakeGpu, factory: str, option: str
) -> None:
    """The auto IVF{n}_HNSW32 needs a CPU coarse quantizer; PQ64 needs float16 lookup tables."""
    cpu = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
    if option == "allowCpuCoarseQuantizer":  # training PQ64 takes minutes on 2 cores: its move is enough
        cpu.train(unit(corpus))
        cpu.add(unit(corpus))
    with pytest.raises(RuntimeError):  # premise: the default options fail
        gpu.to_gpu(FakeResources(), 0, cpu, fake_gpu.FakeClonerOptions())
    moved = gpu_mod.to_gpu(cpu, "auto")
    assert moved is not None and getattr(gpu.moves[-1][1], option) is True
    other = "useFloat16" if option == "allowCpuCoarseQuantizer" else "allowCpuCoarseQuantizer"
    assert getattr(gpu.moves[-1][1], other) is False  # IVF-Flat storage stays float32
    if cpu.is_trained:
        _, i = moved.search(unit(corpus[:3]), 5, {"nprobe": 8})
        assert i.shape == (3, 5) and (i[:, 0] == [0, 1, 2]).all()


def test_an_hnsw_quantizer_is_trained_on_the_cpu_then_searched_on_the_gpu(
    tmp_path: Path, corpus: np.ndarray, gpu: FakeGpu
) -> None:
    log: list[str] = []
    idx = Index.build(corpus, out=tmp_path / "h", index="IVF32_HNSW32,Flat", log=log.append)
    assert idx.manifest.index.built_on == "cpu" and idx.on_gpu
    assert (
        "faiss index stays on the CPU: its coarse quantizer is not flat (trained on the CPU; a load searches it on the GPU)"
        in log
    )
    assert gpu.moves[-1][1].allowCpuCoarseQuantizer is True


def test_refine_and_failed_moves_fall_back_with_one_reason(
    tmp_path: Path, corpus: np.ndarray, gpu: FakeGpu
) -> None:
    log: list[str] = []
    idx = Index.build(corpus, out=tmp_path / "r", index="IVF16,SQ8,RFlat", log=log.append)
    assert not idx.on_gpu and idx.manifest.index.built_on == "cpu"
    reason = "faiss index stays on the CPU: IndexRefine has no GPU form in faiss (build without a refine step to search on the GPU)"
    assert log.count(reason) == 2  # the build, then its load
    assert gpu.moves == [] and len(idx.search(corpus[:1], k=3)[0]) == 3
    gpu.refuse = "out of memory"
    said: list[str] = []
    flat = Index.load(
        Index.build(corpus[:100], out=tmp_path / "f", index="flat", log=said.append).path, log=said.append
    )
    assert not flat.on_gpu
    assert (
        said[-1]
        == "faiss index stays on the CPU: moving it to GPU 0 failed (Error in cloning: out of memory)"
    )


def test_one_gpu_resources_per_device_across_loads_and_reloads(
    tmp_path: Path, corpus: np.ndarray, gpu: FakeGpu
) -> None:
    idx = Index.build(corpus[:2000], out=tmp_path / "ivf", index="IVF16,Flat")
    Index.load(idx.path)
    idx.add(corpus[2000:2100])  # a new generation, moved to the GPU again
    assert len(gpu.moves) == 4 and FakeResources.created == 1
    assert idx.on_gpu and idx.count == 2100 and idx.gpu.ntotal == 2100  # type: ignore[union-attr]


def test_device_cuda_n_puts_the_index_on_that_gpu_only(
    tmp_path: Path, corpus: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    Index.build(corpus[:500], out=tmp_path / "flat", index="flat")
    fake = fake_gpu.install(monkeypatch, gpus=2)
    one = Index.load(tmp_path / "flat", device="cuda:1")
    assert fake.moves[-1][0] == [1] and isinstance(one.gpu.index, FakeGpuIndex)  # type: ignore[union-attr]
    both = Index.load(tmp_path / "flat")
    assert fake.moves[-1][0] == [0, 1] and isinstance(both.gpu.index, FakeReplicas)  # type: ignore[union-attr]
    assert FakeResources.created == 2
    assert not Index.load(tmp_path / "flat", device="cpu").on_gpu
    with pytest.raises(Exception, match="faiss sees 2 GPUs"):
        Index.load(tmp_path / "flat", device="cuda:2")
    gpu_mod.resources.cache_clear()


def test_concurrent_searches_take_turns_on_the_gpu(tmp_path: Path, corpus: np.ndarray, gpu: FakeGpu) -> None:
    """The server searches from a thread pool: on a GPU index the searches are serialised (the fake raises
    on overlap), and each sees its own nprobe."""
    idx = Index.build(corpus, out=tmp_path / "ivf", index="IVF64,Flat")
    errors: list[BaseException] = []
    results: dict[int, list] = {}

    def run(n: int) -> None:
        try:
            for _ in range(5):
                results[n] = idx.search(corpus[:5], k=5, params={"nprobe": n})
        except BaseException as e:  # noqa: BLE001  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2, 4, 8, 16, 32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for n, got in results.items():
        assert got == idx.search(corpus[:5], k=5, params={"nprobe": n})
    assert len(idx.gpu.index.searches) == 6 * 5 + 6  # type: ignore[union-attr]


def test_without_either_faiss_extra_index_commands_say_which_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base install depends on neither faiss-cpu nor faiss-gpu-cu12 (they share the `faiss` package)."""
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # as when neither extra is installed
    monkeypatch.delitem(sys.modules, "simcli.index")
    result = simcli("index", "info", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "simcli: error: the index commands need faiss: pip install -e '.[cpu]' "
        "(or '.[gpu]' on a CUDA 12 machine, after pip uninstall -y faiss-cpu)"
    )


def test_served_gpu_index_answers_concurrent_and_large_k_searches(
    tmp_path: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`simcli serve` on a GPU index: concurrent /search requests (the fake raises on overlapping searches)
    and k 2500 (above the GPU's 2048) all answer 200, with the same hits as the CPU index."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from simcli.serve.options import ServeOptions
    from tests.serving import running_server

    src = tmp_path / "c.txt"
    src.write_text("\n".join(f"问题{i}怎么办" for i in range(2600)) + "\n", encoding="utf-8")
    out = tmp_path / "c.idx"
    r = simcli(
        "index", "build", str(src), "-m", str(roformer_sim_dir), "--out", str(out), "--dtype", "float32"
    )
    assert r.exit_code == 0, r.output
    want = Index.load(out, dtype="float32").search(["问题7怎么办"], k=2500)[0]
    fake = fake_gpu.install(monkeypatch, gpus=1)
    options = ServeOptions(indexes=[str(out)], dtype="float32", max_wait_ms=5)
    with running_server(options) as running:
        assert running.service.registry.indexes["c"].index.on_gpu

        def ask(k: int) -> httpx.Response:
            return httpx.post(
                f"{running.url}/search", json={"index": "c", "queries": "问题7怎么办", "k": k}, timeout=60
            )

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, [5] * 24 + [2500] * 2))
    assert [a.status_code for a in answers] == [200] * 26
    big = answers[-1].json()["data"][0]["results"]
    assert [h["id"] for h in big] == [h.id for h in want]
    assert [h["id"] for h in answers[0].json()["data"][0]["results"]] == [h.id for h in want[:5]]
    gpu_index = running.service.registry.indexes["c"].index.gpu.index
    assert len(gpu_index.searches) == 24 and fake.moves[0][0] == [0]
    gpu_mod.resources.cache_clear()
