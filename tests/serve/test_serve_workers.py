"""`simcli serve` as a user starts it, in a subprocess on two cores: the plan it prints (workers, model threads
and why), explicit options kept, and the features that need every worker to agree working across two
worker processes (/metrics summed, an index grown on disk, /generate)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from simcli.models.remembered import RUN_FOLDER_ENV
from simcli.serve.footprint import worker_footprint
from simcli.serve.machine import available_bytes
from simcli.serve.options import MULTIPROC_ENV, ServeOptions
from simcli.serve.plan import Machine, memory_cap
from tests.invoke import simcli
from tests.serve.test_serve import CORPUS, _build_index
from tests.serving import wait_ready

ROOT = Path(__file__).resolve().parents[2]
CPUS = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else []
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to pin the server to")
PLAN_LINE = re.compile(r"^simcli: (\d+) workers? x (\d+) model threads?: (.*)$", re.MULTILINE)
SERVING_LINE = re.compile(
    r"^simcli: worker (\d+) serving on .*; model threads: (\d+); batch tokens: (.*)$", re.MULTILINE
)


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; the server's status (every process killed if it hangs)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def workers_seen(self, count: int, timeout: float = 60.0) -> set[int]:
        """The worker pids that answer /health on fresh connections, until `count` of them have."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < count:
            assert time.monotonic() < deadline, f"only workers {seen} answered"
            seen.add(httpx.get(f"{self.url}/health").json()["worker"])
        return seen


def _serving(served: Served) -> set[tuple[int, str, str]]:
    """(pid, model threads, batch tokens) of each worker's serving line so far."""
    return {(int(pid), threads, budget) for pid, threads, budget in SERVING_LINE.findall(served.stderr)}


def _until(done: Callable[[], bool], seconds: float = 10) -> None:
    """Wait up to `seconds` for `done()`: the reader thread takes the server's lines as they come (late on a
    loaded machine); the caller asserts afterwards."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(*args: str) -> Served:
    """`simcli serve ARGS` pinned to two CPUs, its stderr collected as it comes; ready when /health answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "simcli", "serve", "--port", str(port), "--dtype", "float32", *args]
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, CPUS)  # the child inherits it (a preexec_fn is unsafe in a threaded process)
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        # a session of its own: the workers can be killed with it if SIGTERM fails
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
    finally:
        os.sched_setaffinity(0, mine)
    served = Served(proc, f"http://127.0.0.1:{port}")
    assert proc.stderr is not None
    threading.Thread(target=lambda: served.lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        wait_ready(served.url, timeout=120)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return served


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, roformer_sim_dir: Path) -> Iterator[tuple[Served, Path]]:
    """`simcli serve --model M --index faq.idx` with no --workers or --threads, on two cores: two workers."""
    faq = _build_index(CORPUS, roformer_sim_dir, tmp_path_factory.mktemp("two") / "faq.idx")
    options = ServeOptions(model=str(roformer_sim_dir), indexes=[str(faq)])
    room = memory_cap(Machine(2, available_bytes()), worker_footprint(options).bytes)
    assert room is None or room >= 2, "premise: this machine has memory for two workers"
    served = _serve("--model", str(roformer_sim_dir), "--index", str(faq))
    try:
        served.workers_seen(2)
        yield served, faq
    finally:
        served.stop()


def test_default_plan_is_printed_and_two_workers_serve(two: tuple[Served, Path]) -> None:
    served, _ = two
    seen = served.workers_seen(2)
    plan = PLAN_LINE.findall(served.stderr)
    assert len(plan) == 1 and plan[0][:2] == ("2", "1"), served.stderr
    assert re.fullmatch(
        r"one worker a core \(2 cores; ~0\.5 GiB a worker, 50% of the [\d.]+ GiB available holds \d+\)",
        plan[0][2],
    ), plan[0][2]
    want = {(pid, "1", "1024 (float32 on cpu)") for pid in seen}
    _until(lambda: _serving(served) >= want)
    assert _serving(served) == want, served.stderr


def _env_folder(pid: int, name: str) -> Path:
    """The folder that the worker `pid` was given in its environment variable `name`."""
    environ = Path(f"/proc/{pid}/environ").read_text().split("\0")
    return next(Path(v.split("=", 1)[1]) for v in environ if v.startswith(f"{name}="))


def _metrics_dir(pid: int) -> Path:
    """The folder where the workers' metrics meet, as the worker `pid` was given it."""
    return _env_folder(pid, MULTIPROC_ENV)


def _counts(folder: Path) -> float:
    """simcli_requests_total of /v1/embeddings (status 200) summed over the metrics files in `folder`."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    total = registry.get_sample_value(
        "simcli_requests_total", {"endpoint": "/v1/embeddings", "status": "200"}
    )
    return total or 0.0


def _own_counts(shared: Path, pids: set[int], into: Path) -> list[float]:
    """Each worker's count from its files alone: what a /metrics of one process would have said."""
    out = []
    for pid in sorted(pids):
        alone = into / str(pid)
        shutil.rmtree(alone, ignore_errors=True)
        alone.mkdir()
        for f in shared.glob(f"*_{pid}.db"):
            shutil.copy(f, alone / f.name)
        out.append(_counts(alone))
    return out


def test_metrics_sum_every_worker(two: tuple[Served, Path], tmp_path: Path) -> None:
    """Embeddings requests, 8 at a time on fresh connections, until both workers have answered some; /metrics,
    whichever worker answers the scrape, counts every one of them (each worker's own count is less)."""
    from concurrent.futures import ThreadPoolExecutor

    served, _ = two
    seen = served.workers_seen(2)
    shared = _metrics_dir(min(seen))
    before = _counts(shared)
    sent = 0

    def ask(i: int) -> int:
        return httpx.post(f"{served.url}/v1/embeddings", json={"input": [CORPUS[i % 6]]}).status_code

    with ThreadPoolExecutor(8) as pool:
        while not all(n > 0 for n in _own_counts(shared, seen, tmp_path)):
            assert sent < 400, "every request went to one worker"
            assert list(pool.map(ask, range(8))) == [200] * 8
            sent += 8
    own = _own_counts(shared, seen, tmp_path)
    assert sum(own) == before + sent and all(0 < n < before + sent for n in own), own
    line = f'simcli_requests_total{{endpoint="/v1/embeddings",status="200"}} {before + sent:.1f}'
    for _ in range(6):
        assert line in httpx.get(f"{served.url}/metrics").text


def test_every_worker_searches_the_index_grown_on_disk(two: tuple[Served, Path]) -> None:
    """`simcli index add` on the served folder: every /search answers from generation 2, whichever worker
    takes it, until both workers' /health report generation 2 (each reloads on its own next search)."""
    served, faq = two
    new = faq.with_name("new.txt")
    new.write_text("新加的句子\n", encoding="utf-8")
    r = simcli("index", "add", str(faq), str(new), "--dtype", "float32")
    assert r.exit_code == 0, r.output
    query = {"index": "faq", "queries": ["新加的句子"], "k": 1}
    generations: dict[int, int] = {}
    deadline = time.monotonic() + 60
    while len(generations) < 2 or set(generations.values()) != {2}:
        assert time.monotonic() < deadline, generations
        after = httpx.post(f"{served.url}/search", json=query).json()
        assert after["generation"] == 2 and after["data"][0]["results"][0]["text"] == "新加的句子"
        health = httpx.get(f"{served.url}/health").json()
        generations[health["worker"]] = health["indexes"][0]["generation"]


def test_generate_on_both_workers_equals_library(two: tuple[Served, Path], roformer_sim_dir: Path) -> None:
    """Seeded /generate answers, on fresh connections spread over the workers, equal the library's."""
    from simcli.paraphrase import load_paraphraser

    served, _ = two
    options = {"n": 6, "k": 3, "seed": 7, "max_new_tokens": 8}
    want = load_paraphraser(str(roformer_sim_dir), dtype="float32").generate(["花呗怎么还款"], **options)[0]
    for _ in range(4):
        body = httpx.post(f"{served.url}/generate", json={"texts": ["花呗怎么还款"], **options}, timeout=120)
        got = body.json()["data"][0]["paraphrases"]
        assert [p["text"] for p in got] == [p.text for p in want] and got
        np.testing.assert_allclose([p["score"] for p in got], [p.score for p in want], atol=2e-6)


@pytest.mark.parametrize(
    ("args", "workers", "threads", "reason"),
    [
        (["--workers", "1"], 1, 2, "--workers 1 given; 2 cores shared"),
        (
            ["--workers", "2", "--threads", "1", "--batch-tokens", "2048"],
            2,
            1,
            "--workers and --threads as given",
        ),
    ],
)
def test_given_options_win_and_sigterm_ends_every_worker(
    args: list[str], workers: int, threads: int, reason: str, roformer_sim_dir: Path
) -> None:
    """An option given is never changed; SIGTERM ends the server (every worker) with status 0, and the folder of
    the workers' metrics goes with it."""
    served = _serve("--model", str(roformer_sim_dir), *args)
    try:
        seen = served.workers_seen(workers)
        shared = _metrics_dir(min(seen)) if workers > 1 else None
        assert httpx.post(f"{served.url}/v1/embeddings", json={"input": "你好"}).status_code == 200
    finally:
        code = served.stop()
    assert code == 0, served.stderr
    want = {(p, str(threads), "2048 (--batch-tokens)") for p in seen}
    _until(lambda: (workers == 1 or _serving(served) >= want) and bool(PLAN_LINE.search(served.stderr)))
    assert PLAN_LINE.findall(served.stderr) == [(str(workers), str(threads), reason)]
    if workers == 1:
        assert f"; model threads: {threads}; batch tokens: 1024 (float32 on cpu)\n" in served.stderr
    else:
        assert _serving(served) == want, served.stderr
        assert shared is not None and shared.name == "metrics" and not shared.parent.exists()


def test_the_workers_take_one_reading_of_the_auto_probes(roformer_sim_dir: Path) -> None:
    """`--dtype auto`: one worker measures the speed probes and every worker takes its reading, so that two
    workers of one server never serve two dtypes (a probe near its threshold reads either side from start to
    start: seen under the Skylake-SP caps, one worker in int8 and one in float32)."""
    served = _serve("--model", str(roformer_sim_dir), "--dtype", "auto", "--workers", "2", "--threads", "1")
    try:
        seen = served.workers_seen(2)
        folders = {_env_folder(pid, RUN_FOLDER_ENV) for pid in seen}
        assert len(folders) == 1, folders
        probes = [
            json.loads(f.read_text(encoding="utf-8"))["key"]["probe"] for f in folders.pop().glob("*.json")
        ]
    finally:
        assert served.stop() == 0, served.stderr
    assert probes and len(probes) == len(set(probes)), probes  # each probe measured once, for both workers
    _until(lambda: len(_serving(served)) == 2)
    assert len({budget for _, _, budget in _serving(served)}) == 1, served.stderr  # one dtype (and budget)


def test_a_worker_that_cannot_load_ends_the_server_with_its_error(tmp_path: Path) -> None:
    """An index folder that holds no index: the workers fail to load it, and instead of uvicorn restarting
    them forever the command ends with the worker's one-line error and exit status 1."""
    empty = tmp_path / "empty.idx"
    empty.mkdir()
    cmd = [sys.executable, "-m", "simcli", "serve", "--index", str(empty), "--port", str(_free_port())]
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, CPUS)
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    finally:
        os.sched_setaffinity(0, mine)
    assert PLAN_LINE.findall(r.stderr)[0][0] == "2", "premise: two workers"
    assert r.returncode == 1, r.stderr
    assert r.stderr.endswith(f"simcli: error: {empty}/manifest.json: manifest missing\n"), r.stderr
