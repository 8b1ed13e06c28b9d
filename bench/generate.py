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
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--n", type=int, default=100, help="candidates per question")
    ap.add_argument("--cap", type=int, default=32, help="max new tokens, both sides")
    ap.add_argument("--baseline-calls", type=int, default=40, help="generate() calls timed for the baseline")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch
    from transformers import RoFormerForCausalLM
    from transformers.utils import logging as hf_logging

    from simcli.paraphrase import load_paraphraser
    from tests.checkpoints import build_roformer_sim

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    qs = questions(args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_roformer_sim(
            Path(tmp) / "sim",
            hidden_size=384,
            num_attention_heads=6,
            intermediate_size=1536,
            num_hidden_layers=6,
        )
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


if __name__ == "__main__":
    main()
