#!/usr/bin/env bash
# The GPU path, run for real on a machine with CUDA, in under 10 minutes, ending in one table:
#   1. install: a fresh venv with the CUDA torch build and simcli's gpu extra (faiss-gpu-cu12, never faiss-cpu)
#   2. parity: the GPU code paths' tests, then m3e-small in fp16 on the GPU against float32 on the CPU
#      (min cosine over LCQMC sentences, and the dtype --dtype auto keeps after its calibration gate)
#   3. encode: simcli fp16 against sentence-transformers fp16, sentences/s on the same sentences
#   4. serve: bench/serve.py on the GPU (simcli vs the sentence-transformers endpoint vs infinity-emb when
#      it installs), 32 clients
#   5. faiss-gpu: build, load and query each index type (flat, ivf, ivfpq, hnsw, IVF_HNSW, auto) on 100k
#      vectors: where it ran, build seconds, queries/s, recall@10 against exact search
# A machine that says it has CUDA but lacks the driver, a GPU, CUDA torch or faiss GPU support fails here
# with one line and a non-zero exit: nothing is skipped.
#
# usage: bench/gpu.sh [venv dir (default .venv-gpu)]; needs ../shared/data/LCQMC beside the repository. The
# install (a few GB of CUDA wheels) is timed apart; the budget covers steps 2-5.
# env: SIMCLI_GPU_TORCH_INDEX (pip index of the CUDA torch build, default PyPI's, CUDA 12),
#      SIMCLI_GPU_DEVICE (default cuda:0), SIMCLI_GPU_BUDGET_S (default 600).
set -euo pipefail

fail() {
    echo "bench/gpu.sh: error: $*" >&2
    exit 1
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-$ROOT/.venv-gpu}
DEVICE=${SIMCLI_GPU_DEVICE:-cuda:0}
BUDGET=${SIMCLI_GPU_BUDGET_S:-600}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/simcli-gpu.XXXXXX")
TABLE=$OUT/table.tsv

command -v nvidia-smi >/dev/null 2>&1 || fail "nvidia-smi not found: no NVIDIA driver on this machine"
GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1) ||
    fail "nvidia-smi found no GPU (driver loaded?)"
[ -n "$GPU" ] || fail "nvidia-smi lists no GPU"
[ -d "$ROOT/../shared/data/LCQMC" ] || fail "$ROOT/../shared/data/LCQMC not found: the parity, encode and serve steps read it"

left() { echo $((BUDGET - (SECONDS - START))); }
step() { # name, then the command: run within the time left, fail loudly on error or overrun
    local name=$1
    shift
    local t=$SECONDS
    [ "$(left)" -gt 0 ] || fail "$name: out of time (budget ${BUDGET}s)"
    timeout "$(left)" "$@" >"$OUT/$name.log" 2>&1 || fail "$name failed or overran the budget (log: $OUT/$name.log)"
    printf '%s\tseconds\t%d\n' "$name" $((SECONDS - t)) >>"$TABLE"
}

printf 'machine\tgpu\t%s\n' "$GPU" >"$TABLE"

# -- 1. install ---------------------------------------------------------------------------------------------
install() {
    python3 -m venv "$VENV"
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    pip install -q --upgrade pip
    if [ -n "${SIMCLI_GPU_TORCH_INDEX:-}" ]; then
        pip install -q torch --index-url "$SIMCLI_GPU_TORCH_INDEX"
    else
        pip install -q torch # PyPI's Linux torch wheels are the CUDA 12 build
    fi
    pip uninstall -q -y faiss-cpu 2>/dev/null || true # shares the faiss/ package with faiss-gpu-cu12
    pip install -q -e "${ROOT}[gpu,serve,bench]" pytest httpx openai scipy
}
t=$SECONDS
install >"$OUT/install.log" 2>&1 || fail "installing into $VENV failed (log: $OUT/install.log)"
printf 'install\tseconds (outside the budget)\t%d\n' $((SECONDS - t)) >>"$TABLE"
START=$SECONDS # the 10 minutes start once the venv is ready
# shellcheck disable=SC1091
. "$VENV/bin/activate"
cd "$ROOT"
export PYTHONPATH=$ROOT
python - <<'EOF' || exit 1
import sys
import torch
def fail(msg):
    print(f"bench/gpu.sh: error: {msg}", file=sys.stderr)
    sys.exit(1)
if not torch.cuda.is_available():
    fail(f"torch {torch.__version__} sees no CUDA device (a CPU build, or a driver too old for its CUDA)")
import faiss
if getattr(faiss, "get_num_gpus", lambda: 0)() < 1:
    fail(f"faiss {faiss.__version__} has no GPU support or sees no GPU (faiss-cpu's files won? pip uninstall -y faiss-cpu faiss-gpu-cu12 && pip install faiss-gpu-cu12)")
EOF
printf 'versions\ttorch / faiss\t%s\n' "$(python -c 'import torch, faiss; print(torch.__version__, torch.version.cuda, "/", faiss.__version__)')" >>"$TABLE"

# -- 2. parity ----------------------------------------------------------------------------------------------
step tests python -m pytest -q -x tests/index/test_index_gpu.py tests/models/test_encode_cuda_loop.py tests/models/test_encoder.py
python - "$DEVICE" >>"$TABLE" <<'EOF' || fail "fp16 parity"
import sys
import numpy as np
from simcli.models.encoder import load_encoder
from tests.real_sentences import lcqmc_sentences

device = sys.argv[1]
sents = lcqmc_sentences(2000)
ref = load_encoder("m3e-small", device="cpu", dtype="float32").encode(sents, normalize=True)
fp16 = load_encoder("m3e-small", device=device, dtype="float16").encode(sents, normalize=True)
auto = load_encoder("m3e-small", device=device, dtype="auto")
cos = (ref * fp16).sum(1)
print(f"parity\tfp16 vs fp32 min cosine (2000 LCQMC)\t{cos.min():.5f} (mean {cos.mean():.6f})")
print(f"parity\t--dtype auto on {device}\t{str(auto.dtype).removeprefix('torch.')}: {auto.dtype_reason}")
if cos.min() < 0.999:
    print(f"bench/gpu.sh: error: fp16 min cosine {cos.min():.5f} < 0.999", file=sys.stderr)
    sys.exit(1)
EOF

# -- 3. encode ----------------------------------------------------------------------------------------------
python - "$DEVICE" >>"$TABLE" <<'EOF' || fail "encode against sentence-transformers"
import sys
import time
import torch
from sentence_transformers import SentenceTransformer
from simcli.models.encoder import load_encoder
from tests.real_sentences import lcqmc_sentences

device = sys.argv[1]
sents = lcqmc_sentences(20000)
enc = load_encoder("m3e-small", device=device, dtype="float16")
st = SentenceTransformer(str(enc.checkpoint.path), device=device).half()
def rate(fn):
    fn(sents[:512])  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        fn(sents)
        torch.cuda.synchronize()
        best = max(best, len(sents) / (time.perf_counter() - t))
    return best
mine = rate(lambda s: enc.encode(s, normalize=True))
theirs = rate(lambda s: st.encode(s, batch_size=256, normalize_embeddings=True))
print(f"encode\tsimcli fp16 sentences/s\t{mine:.0f}")
print(f"encode\tsentence-transformers fp16 sentences/s\t{theirs:.0f}")
print(f"encode\tsimcli / ST\t{mine / theirs:.2f}x")
EOF

# -- 4. serve -----------------------------------------------------------------------------------------------
SERVERS=simcli,st
INFINITY_ARGS=()
if [ "$(left)" -gt 240 ] && timeout 120 python3 -m venv "$OUT/infinity" &&
    timeout 150 "$OUT/infinity/bin/pip" install -q "infinity-emb[server,torch]" >"$OUT/infinity-install.log" 2>&1; then
    SERVERS=simcli,st,infinity
    INFINITY_ARGS=(--infinity "$OUT/infinity/bin/infinity_emb")
else
    printf 'serve\tinfinity-emb\tnot installable here (log: %s)\n' "$OUT/infinity-install.log" >>"$TABLE"
fi
export SIMCLI_BENCH_DEVICE=$DEVICE # bench/serve.py: every server on this GPU, the ST endpoint in fp16
step serve python bench/serve.py --servers "$SERVERS" ${INFINITY_ARGS[@]+"${INFINITY_ARGS[@]}"} \
    --concurrency 32 --requests 480 --repeats 1 --client http --memory-requests 0
grep -E '^(simcli|st|infinity) +32 |clients: simcli /|no load' "$OUT/serve.log" | sed 's/^/serve\t32 clients\t/' >>"$TABLE" ||
    fail "serve: no results in $OUT/serve.log"

# -- 5. faiss-gpu -------------------------------------------------------------------------------------------
python - "$DEVICE" "$OUT" >>"$TABLE" <<'EOF' || fail "faiss-gpu build, load and query"
import sys
import time
from pathlib import Path
import numpy as np
from simcli.index import Index

device, out = sys.argv[1], Path(sys.argv[2])
rng = np.random.default_rng(0)
centers = rng.standard_normal((1000, 256)).astype(np.float32)
x = centers[rng.integers(0, 1000, 100_000)] + 0.5 * rng.standard_normal((100_000, 256)).astype(np.float32)
q = x[rng.choice(len(x), 1000, replace=False)] + 0.1 * rng.standard_normal((1000, 256)).astype(np.float32)
un = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
truth = np.argsort(-(un(q) @ un(x).T), axis=1)[:, :10]
for kind in ("flat", "ivf", "ivfpq", "hnsw", "IVF1024_HNSW32,Flat", "auto"):
    notes = []
    t = time.perf_counter()
    built = Index.build(x, out=out / f"idx-{kind}", index=kind, encoder_options={"device": device}, log=notes.append)
    build_s = time.perf_counter() - t
    idx = Index.load(built.path, device=device, log=notes.append)
    idx.search(q[:10], k=10)
    t = time.perf_counter()
    hits = idx.search(q, k=10)
    qps = len(q) / (time.perf_counter() - t)
    found = np.array([[h.id for h in row] + [-1] * (10 - len(row)) for row in hits])
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    big = len(idx.search(q[:2], k=2500)[0])  # above the GPU's k limit: answered from the CPU copy
    where = "GPU" if idx.on_gpu else "CPU"
    why = next((n for n in notes if "stays on the CPU" in n), "")
    print(
        f"faiss\t{kind} ({idx.manifest.index.factory}, built on {idx.manifest.index.built_on}, searched on {where})"
        f"\tbuild {build_s:.1f}s, {qps:.0f} q/s, recall@10 {recall:.3f}, params {idx.search_params}, k 2500 -> {big}"
        + (f"; {why}" if why else "")
    )
EOF

printf 'total\tseconds\t%d (budget %d)\n' $((SECONDS - START)) "$BUDGET" >>"$TABLE"
[ $((SECONDS - START)) -le "$BUDGET" ] || fail "took $((SECONDS - START))s, over the ${BUDGET}s budget"
column -t -s $'\t' "$TABLE"
