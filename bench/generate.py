"""Similar-question generation speed: simcli's batched UniLM sampler against the port's approach.

The popular PyTorch port of RoFormer-Sim draws one candidate per `generate` call. Here the baseline is a
loop of transformers' `RoFormerForCausalLM.generate(do_sample=True, top_p=0.95, max_new_tokens=CAP)`, one
call per candidate, and simcli is `Paraphraser.sample_ids` (n samples per question from one shared source
encoding, several questions per batch, finished rows dropped). Both run on the same small-size
RoFormer-Sim-shaped checkpoint (6 layers, hidden 384, 6 heads, intermediate 1536; the test vocabulary of
about 1700 characters instead of 12000) with random weights, in float32 on the CPU, in one run.

Random weights rarely emit [SEP], so both sides are capped at the same number of new tokens; the number of
tokens each side generated is printed with the rates. The baseline is timed on fewer calls and
extrapolated per candidate (stated in the output). The machine may be shared, so the two sides run in
interleaved rounds (2 questions x n by simcli, then the baseline's share of calls) and see the same load.

    python bench/generate.py                      # 20 LCQMC test questions, n=100, cap 32 new tokens
    python bench/generate.py --questions 20 --n 100 --cap 32 --baseline-calls 40

Whole processes (`--process-rounds R`, default 3): a cold `simcli generate` of 5 questions x n=100 (at most 24
new tokens, float32, re-ranking included) against a cold Python process that loads transformers'
RoFormerForCausalLM and makes the 500 one-sample `generate` calls of the port's approach, both on the same
small-shape checkpoint, R interleaved rounds; medians and the spread are printed. `--skip-batched` runs only
this row, `--process-rounds 0` skips it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "LCQMC" / "LCQMC.test.data"


def questions(count: int) -> list[str]:
    out: list[str] = []
    with open(DATA, encoding="utf-8") as f:
        for line in f:
            q = line.split("\t")[0].strip()
            if q and q not in out:
                out.append(q)
            if len(out) == count:
                break
    return out


# The port's approach as a whole process: load transformers' model, one `generate` call per candidate.
BASELINE_PROCESS = """
import sys, torch
from transformers import RoFormerForCausalLM
from transformers.utils import logging
from simcli.models.tokenizers import load_tokenizer
logging.set_verbosity_error()
path, n, cap, texts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
tok = load_tokenizer(path + "/vocab.txt", "char")
model = RoFormerForCausalLM.from_pretrained(path).eval()
made = 0
with torch.inference_mode():
    for text in texts:
        x = torch.tensor([tok.encode(text, 64)])
        for _ in range(n):
            model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, top_p=0.95, top_k=0,
                           max_new_tokens=cap, eos_token_id=tok.sep_id, pad_token_id=tok.pad_id)
            made += 1
print(made)
"""


def whole_processes(path: Path, texts: list[str], n: int, cap: int, rounds: int, threads: int) -> None:
    """Cold `simcli generate` against a cold loop of one-sample transformers `generate` calls."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    simcli_cmd = [sys.executable, "-m", "simcli", "generate", *texts, "-m", str(path), "-n", str(n), "-k", "20",
                  "--max-new-tokens", str(cap), "--dtype", "float32", "--seed", "0"]  # fmt: skip
    base_cmd = [sys.executable, "-c", BASELINE_PROCESS, str(path), str(n), str(cap), *texts]

    def run(cmd: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env)
        return time.perf_counter() - start

    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(rounds):
        ours.append(run(simcli_cmd))
        theirs.append(run(base_cmd))
    ratios = sorted(b / a for a, b in zip(ours, theirs, strict=True))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(
        f"processes : {len(texts)} questions x n={n}, at most {cap} new tokens, {rounds} interleaved rounds, "
        f"threads {threads or 'default'}; "
        f"simcli generate (cold, re-ranking included) median {a:.2f} s (runs {', '.join(f'{t:.2f}' for t in ours)}); "
        f"one-sample transformers generate loop (cold) median {b:.2f} s (runs {', '.join(f'{t:.1f}' for t in theirs)})"
    )
    print(
        f"ratio     : {b / a:.1f}x whole process (per round {ratios[0]:.1f}x-{ratios[-1]:.1f}x; target >= 10x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--n", type=int, default=100, help="candidates per question")
    ap.add_argument("--cap", type=int, default=32, help="max new tokens, both sides")
    ap.add_argument("--baseline-calls", type=int, default=40, help="generate() calls timed for the baseline")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--process-rounds", type=int, default=3, help="rounds of the whole-process row (0: skip)")
    ap.add_argument("--skip-batched", action="store_true", help="only the whole-process row")
    args = ap.parse_args()
    if args.skip_batched:
        with tempfile.TemporaryDirectory() as tmp:
            whole_processes(small_model(Path(tmp)), questions(5), 100, 24, args.process_rounds, args.threads)
        return

    import torch
    from transformers import RoFormerForCausalLM
    from transformers.utils import logging as hf_logging

    from simcli.paraphrase import load_paraphraser

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    qs = questions(args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        path = small_model(Path(tmp))
        para = load_paraphraser(str(path), device="cpu", dtype="float32")
        tok = para.tokenizer
        print(
            f"model: RoFormer-Sim shape 6/384/6, intermediate 1536, vocab {tok.vocab_size} (random weights), "
            f"float32, CPU, {torch.get_num_threads()} threads"
        )
        print(
            f"work: {len(qs)} LCQMC test questions x {args.n} candidates, top_p 0.95, at most {args.cap} new tokens"
        )

        ref = RoFormerForCausalLM.from_pretrained(str(path)).eval()  # hub config: is_decoder true

        def baseline_call(q: str) -> int:
            x = torch.tensor([tok.encode(q, 64)])
            out = ref.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=True,
                top_p=0.95,
                top_k=0,
                max_new_tokens=args.cap,
                eos_token_id=tok.sep_id,
                pad_token_id=tok.pad_id,
            )
            return out.shape[1] - x.shape[1]

        # warm-up both sides
        torch.manual_seed(0)
        para.sample_ids(qs[:2], n=8, seed=0, max_new_tokens=4)
        with torch.inference_mode():
            baseline_call(qs[0])

        # Interleaved rounds (the machine is shared: both sides then see the same background load). Each
        # round: simcli on `per_round` questions x n, then the baseline on its share of one-sample calls.
        per_round = 2
        rounds = [qs[i : i + per_round] for i in range(0, len(qs), per_round)]
        share = [
            args.baseline_calls // len(rounds) + (r < args.baseline_calls % len(rounds))
            for r in range(len(rounds))
        ]
        t_simcli = t_rerank = t_base = 0.0
        cands = toks = base_toks = calls = 0
        for r, group in enumerate(rounds):
            start = time.perf_counter()
            ids = para.sample_ids(group, keys=[r * per_round + i for i in range(len(group))], n=args.n, seed=0,
                                  max_new_tokens=args.cap)  # fmt: skip
            t_simcli += time.perf_counter() - start
            cands += sum(len(rows) for rows in ids)
            toks += sum(len(x) + (len(x) < args.cap) for rows in ids for x in rows)
            start = time.perf_counter()
            para.rerank(group, [[para.decode(x) for x in rows] for rows in ids], k=20)
            t_rerank += time.perf_counter() - start
            start = time.perf_counter()
            with torch.inference_mode():
                for i in range(share[r]):
                    base_toks += baseline_call(group[i % len(group)])
            t_base += time.perf_counter() - start
            calls += share[r]

    base_rate = calls / t_base
    simcli_rate = cands / t_simcli
    print(
        f"simcli    : {cands} candidates in {t_simcli:.2f} s = {simcli_rate:,.1f} candidates/s "
        f"({toks / t_simcli:,.0f} tokens/s, {toks / cands:.1f} tokens per candidate); "
        f"re-ranking them (decode, dedupe, pooler cosine, top 20) {t_rerank:.2f} s more"
    )
    print(
        f"baseline  : {calls} generate() calls in {t_base:.2f} s = {base_rate:,.2f} candidates/s "
        f"({base_toks / t_base:,.0f} tokens/s, {base_toks / calls:.1f} tokens per candidate); "
        f"extrapolated to {cands} candidates: {cands / base_rate:,.0f} s"
    )
    print(f"ratio     : {simcli_rate / base_rate:.1f}x candidates/s (target >= 10x)")
    if args.process_rounds:
        with tempfile.TemporaryDirectory() as tmp:
            whole_processes(small_model(Path(tmp)), qs[:5], 100, 24, args.process_rounds, args.threads)


def small_model(folder: Path) -> Path:
    """A RoFormer-Sim checkpoint of the small model's shape (6 layers, hidden 384), random weights."""
    from tests.checkpoints import build_roformer_sim

    return build_roformer_sim(
        folder / "sim", hidden_size=384, num_attention_heads=6, intermediate_size=1536, num_hidden_layers=6
    )


if __name__ == "__main__":
    main()
