"""`simcli serve` beyond one request: index-only serving with shared encoders, an index grown on disk,
whitening dimensions, the batcher's merging rules, the CLI command and a graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from simcli.heap import HeapTrimmer
from simcli.index import Index
from simcli.serve.api_errors import APIError
from simcli.serve.batcher import Batcher
from simcli.serve.options import ServeOptions
from tests.invoke import simcli
from tests.serve.test_serve import CORPUS, _build_index
from tests.serving import running_server, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def test_index_only_shares_one_encoder_and_picks_up_index_add(tmp_path: Path, roformer_sim_dir: Path) -> None:
    """--index alone: the model comes from each manifest, two indexes of one model share one encoder;
    `simcli index add` on a served folder is searched on the next request, without a restart."""
    faq = _build_index(CORPUS, roformer_sim_dir, tmp_path / "faq.idx")
    more = _build_index(CORPUS[:3], roformer_sim_dir, tmp_path / "more.idx")
    with running_server(ServeOptions(indexes=[str(faq), f"extra={more}"], dtype="float32")) as running:
        reg = running.service.registry
        assert sorted(reg.indexes) == ["extra", "faq"]
        assert (
            len(reg.encoders) == 1 and reg.indexes["faq"].model.encoder is reg.indexes["extra"].model.encoder
        )
        query = {"index": "faq", "queries": ["新加的句子"], "k": 1}
        before = httpx.post(f"{running.url}/search", json=query).json()
        assert before["generation"] == 1 and before["data"][0]["results"][0]["text"] != "新加的句子"
        new = tmp_path / "new.txt"
        new.write_text("新加的句子\n", encoding="utf-8")
        r = simcli("index", "add", str(faq), str(new), "--dtype", "float32")
        assert r.exit_code == 0, r.output
        after = httpx.post(f"{running.url}/search", json=query).json()
        assert after["generation"] == 2
        assert after["data"][0]["results"][0] == {
            "rank": 1,
            "id": len(CORPUS),
            "score": 1.0,
            "text": "新加的句子",
        }
        health = {i["name"]: i for i in httpx.get(f"{running.url}/health").json()["indexes"]}
        assert health["faq"]["count"] == len(CORPUS) + 1 and health["faq"]["generation"] == 2
        # an index name as `model` gives the vectors as that index makes them for its queries
        body = httpx.post(f"{running.url}/v1/embeddings", json={"model": "extra", "input": ["北京"]}).json()
        want = Index.load(more, dtype="float32").prepare(["北京"])[0]
        np.testing.assert_allclose(body["data"][0]["embedding"], want, atol=1e-6)


def test_dimensions_cut_the_whitening(tmp_path: Path, roformer_sim_dir: Path) -> None:
    """With --whitening (k = 16 kept), `dimensions` d <= 16 keeps the first d components: (x - mu) W[:, :d],
    L2-normalised, computed here with numpy; above 16 is refused naming the limit."""
    from simcli.models.encoder import load_encoder
    from simcli.whitening import Whitening

    enc = load_encoder(str(roformer_sim_dir), dtype="float32")
    chars = "花呗借额度怎么还款提升我喜欢北京今天天气很好信用卡手机电池周末去哪里玩"
    fit_texts = [chars[i : i + 3 + i % 5] + chars[(7 * i) % 30] for i in range(120)]
    w = Whitening.fit(enc.encode(fit_texts), dim=16, spec=enc.spec)
    path = tmp_path / "w.safetensors"
    w.save(path)
    texts = ["花呗怎么还款", "我喜欢北京"]
    x = enc.encode(texts).astype(np.float64)
    with running_server(
        ServeOptions(model=str(roformer_sim_dir), whitening=str(path), dtype="float32")
    ) as running:
        for d in (16, 5):
            body = httpx.post(f"{running.url}/v1/embeddings", json={"input": texts, "dimensions": d}).json()
            y = (x - w.mu) @ w.W[:, :d]
            y /= np.linalg.norm(y, axis=1, keepdims=True)
            np.testing.assert_allclose([r["embedding"] for r in body["data"]], y, atol=1e-6)
        plain = httpx.post(f"{running.url}/v1/embeddings", json={"input": texts}).json()
        assert len(plain["data"][0]["embedding"]) == 16
        r = httpx.post(f"{running.url}/v1/embeddings", json={"input": texts, "dimensions": 17})
        assert r.status_code == 400 and "keeps 16" in r.json()["error"]["message"]


class _StandIn:
    """An encoder stand-in (the model is not under test): a row's vector is [sum of its ids, encoder id]."""

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.calls: list[int] = []
        self.device = type("D", (), {"type": "cpu"})()

    def encode_ids(self, ids: list[list[int]], *, batch_tokens: int, stats: Any) -> np.ndarray:
        self.calls.append(len(ids))
        stats.tokens += sum(len(r) for r in ids)
        return np.array([[sum(r), self.ident] for r in ids], dtype=np.float32)


class _CountingTrimmer(HeapTrimmer):
    """Records when the batcher calls it, with `settled()` at that moment; trims nothing."""

    def __init__(self, settled: Any) -> None:
        super().__init__(0.05)
        self._trim = lambda _: 0  # active, with a short idle interval
        self.settled = settled
        self.events: list[tuple[str, int]] = []
        self.idled = threading.Event()

    def worked(self) -> None:
        self.events.append(("worked", self.settled()))

    def idle(self) -> None:
        self.events.append(("idle", self.settled()))
        self.idled.set()


def test_batcher_merges_per_encoder_within_budget_and_refuses_when_full() -> None:
    a, b = _StandIn(1), _StandIn(2)
    jobs: list[Any] = []
    trimmer = _CountingTrimmer(lambda: sum(j.done() for j in jobs))
    batcher = Batcher(max_batch_tokens=10, max_wait_ms=0, max_queue=5, trimmer=trimmer)
    jobs += [
        batcher.encode(a, [[1, 2], [3]]),  # 3 tokens
        batcher.encode(b, [[5]]),
        batcher.encode(a, [[4, 4, 4, 4]]),  # 7 in all for a
        batcher.encode(a, [[9, 9, 9, 9]]),  # would make 11 > 10: next batch
        batcher.encode(b, [[6, 6]]),
    ]
    with pytest.raises(APIError) as full:
        batcher.encode(a, [[1]])
    assert full.value.status == 503 and full.value.headers == {"Retry-After": "1"}
    batcher.start()
    results = [j.result(10) for j in jobs]
    assert batcher.call(lambda: 7).result(10) == 7
    assert trimmer.idled.wait(10), "the queue stayed empty for the trimmer's interval"
    batcher.close(10)
    assert trimmer.events[:4] == [("worked", 2), ("worked", 4), ("worked", 5), ("worked", 5)], (
        "after each of the three batches (futures settled by then) and after the call"
    )
    assert set(trimmer.events[4:]) == {("idle", 5)}
    assert [r.tolist() for r in results] == [
        [[3, 1], [3, 1]],
        [[5, 2]],
        [[16, 1]],
        [[36, 1]],
        [[12, 2]],
    ]
    assert a.calls == [3, 1] and b.calls == [2], "a's first two jobs merged; b's jobs merged apart from a's"
    with pytest.raises(APIError, match="shutting down"):
        batcher.encode(a, [[1]])


def test_cli_needs_something_to_serve() -> None:
    r = simcli("serve")
    assert r.exit_code == 2
    assert r.stderr == "simcli: error: give --model M and/or --index DIR: there is nothing to serve\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path: Path, roformer_sim_dir: Path) -> None:
    """The real command in a subprocess: startup line, then SIGTERM while a request is in flight (held
    --max-wait-ms 1500 for companions): the request is answered and the process exits with status 0."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "simcli",
        "serve",
        "--model",
        str(roformer_sim_dir),
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-wait-ms",
        "1500",
        "--trim-interval",
        "0.05",  # the model thread trims the heap while the request waits and when it falls idle
        "--workers",
        "1",  # the server in this process (several workers: tests/serve/test_serve_workers.py)
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        answer: dict[str, Any] = {}

        def slow() -> None:
            answer["r"] = httpx.post(
                f"{url}/v1/embeddings", json={"input": ["花呗怎么还款"] * 2}, timeout=120
            )

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.monotonic() + 30
        while (
            'simcli_requests_in_flight{endpoint="/v1/embeddings"} 1.0' not in httpx.get(f"{url}/metrics").text
        ):
            assert time.monotonic() < deadline, "the request never arrived"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        t.join(120)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert answer["r"].status_code == 200, answer["r"].text
    assert len(answer["r"].json()["data"]) == 2
    assert "Waiting for connections to close" in stderr, "premise: the request was in flight at SIGTERM"
    assert (
        f"simcli: serving on http://127.0.0.1:{port}; models: {roformer_sim_dir}; indexes: none; device/dtype: cpu float32; model threads: {ServeOptions().model_threads()}; batch tokens: 1024 (float32 on cpu)\n"
        in stderr
    )


def test_concurrent_searches_with_their_own_params_equal_index_search(
    tmp_path: Path, roformer_sim_dir: Path
) -> None:
    """An IVF index searched from 12 threads at once, half with nprobe 1 and half with nprobe 8: each answer
    equals `Index.search` with that request's parameter (per-call parameters, nothing shared changes);
    a parameter the index does not have is a 400."""
    from concurrent.futures import ThreadPoolExecutor

    chars = "花呗借额度怎么还款提升我喜欢北京今天天气很好信用卡手机电池周末去哪里玩"
    corpus = sorted({chars[i % 30 : i % 30 + 2 + i % 4] + chars[(7 * i) % 30] for i in range(300)})
    src = tmp_path / "many.txt"
    src.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    out = tmp_path / "ivf.idx"
    built = Index.build(str(src), out=out, model=str(roformer_sim_dir), index="IVF8,Flat")
    assert built.search_params == {"nprobe": 8}
    queries = ["花呗还款", "北京天气", "手机电池"]
    ref = Index.load(out)
    want = {n: ref.search(queries, k=5, params={"nprobe": n}) for n in (1, 8)}
    assert [[h.id for h in hits] for hits in want[1]] != [[h.id for h in hits] for hits in want[8]], (
        "premise: nprobe changes the answer"
    )
    with running_server(ServeOptions(indexes=[str(out)], dtype="float32")) as running:

        def ask(n: int) -> list[list[tuple[int, float]]]:
            body = {"index": "ivf", "queries": queries, "k": 5, "nprobe": n}
            data = httpx.post(f"{running.url}/search", json=body, timeout=60).json()["data"]
            return [[(h["id"], h["score"]) for h in rec["results"]] for rec in data]

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(ask, [1, 8] * 6))
        for n, got in zip([1, 8] * 6, answers, strict=True):
            for row, hits in zip(got, want[n], strict=True):
                assert [i for i, _ in row] == [h.id for h in hits]
                np.testing.assert_allclose([s for _, s in row], [h.score for h in hits], atol=2e-6)
        r = httpx.post(f"{running.url}/search", json={"index": "ivf", "queries": queries, "ef_search": 16})
        assert r.status_code == 400 and "efSearch" in r.json()["error"]["message"], r.text


def test_model_threads_default_to_the_cores_shared_among_worker_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert ServeOptions().model_threads() == 8
    assert ServeOptions(workers=3).model_threads() == 2
    assert ServeOptions(workers=16).model_threads() == 1
    assert ServeOptions(threads=5, workers=3).model_threads() == 5
