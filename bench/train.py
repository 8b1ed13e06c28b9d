"""Fine-tuning: simcli against sentence-transformers on the same model, data and hyper-parameters, one run.

    python bench/train.py                          # m3e-small, first 6,000 ATEC train pairs, both losses
    python bench/train.py --losses cosent --n 2000

For each loss (simcli `softmax` vs sentence-transformers' SoftmaxLoss, simcli `cosent` vs its CoSENTLoss):
one epoch over the first --n pairs of ATEC.train.partial.derived.data, batch 32, AdamW lr 2e-5, weight decay
0.01, 10% linear warm-up then linear decay, max length 64, float32 weights; sentence-transformers through its
own `fit` (its Trainer underneath). Prints the Spearman x100 on the first --test ATEC test pairs before and
after (both scored by simcli's evaluation code on the written models), training pairs/s of each (wall time
of the whole training call: loading, tokenising and writing included for simcli, `fit` alone for
sentence-transformers) and the ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
warnings.filterwarnings("ignore")


def head_lines(src: Path, n: int, dst: Path) -> Path:
    with open(src, encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


def spearman_of(model: str, test: Path, threads_note: str = "") -> float:
    from simcli.evaluate import evaluate_sts

    return evaluate_sts([test], model, whiten=("none",), dtype="float32")[0].spearman


def train_simcli(folder: str, train: Path, out: Path, loss: str, args: argparse.Namespace) -> float:
    from simcli.training import TrainOptions
    from simcli.training import train as run

    start = time.perf_counter()
    run(
        [train], folder, out,
        TrainOptions(loss=loss, epochs=1, batch_size=args.batch_size, lr=args.lr, warmup=0.1, seed=args.seed,
                     dtype=args.dtype, batch_tokens=args.batch_tokens),
        overwrite=True,
    )  # fmt: skip
    return time.perf_counter() - start


def train_st(folder: str, train: Path, out: Path, loss: str, args: argparse.Namespace) -> float:
    import torch
    from sentence_transformers import InputExample, SentenceTransformer, losses
    from torch.utils.data import DataLoader

    torch.manual_seed(args.seed)
    model = SentenceTransformer(folder, device="cpu")
    model.max_seq_length = 64
    rows = [line.split("\t") for line in train.read_text(encoding="utf-8").splitlines()]
    examples = [
        InputExample(texts=[a, b], label=int(y) if loss == "softmax" else float(y)) for a, b, y in rows
    ]
    loader = DataLoader(examples, shuffle=True, batch_size=args.batch_size)  # type: ignore[arg-type]
    dim = model.get_sentence_embedding_dimension()
    objective = (
        losses.SoftmaxLoss(model, dim, num_labels=2) if loss == "softmax" else losses.CoSENTLoss(model)
    )
    steps = len(loader)
    start = time.perf_counter()
    model.fit(
        train_objectives=[(loader, objective)], epochs=1, warmup_steps=int(0.1 * steps),
        optimizer_params={"lr": args.lr}, weight_decay=0.01, show_progress_bar=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    model.save(str(out))
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="m3e-small")
    ap.add_argument("--n", type=int, default=6000, help="training pairs (the first of the file)")
    ap.add_argument("--test", type=int, default=4000, help="ATEC test pairs scored")
    ap.add_argument("--losses", default="softmax,cosent")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dtype", default="auto", help="simcli's mixed precision (auto: bf16 where it pays)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="simcli train --pass-tokens")
    ap.add_argument("--skip-st", action="store_true")
    args = ap.parse_args()

    import torch

    from simcli.models.loading import open_checkpoint

    folder = str(open_checkpoint(args.model).path)
    print(f"model {args.model} ({folder}); torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        train = head_lines(DATA / "ATEC" / "ATEC.train.partial.derived.data", args.n, t / "atec-train.tsv")
        test = head_lines(DATA / "ATEC" / "ATEC.test.data", args.test, t / "ATEC.test.data")
        before = spearman_of(folder, test)
        print(f"ATEC test (first {args.test}) before training: {before:.2f}")
        rows = []
        for loss in args.losses.split(","):
            s_sec = train_simcli(folder, train, t / f"simcli-{loss}", loss, args)
            s_score = spearman_of(str(t / f"simcli-{loss}"), test)
            print(
                f"simcli {loss}: {args.n / s_sec:.1f} pairs/s ({s_sec:.0f} s), ATEC {s_score:.2f}", flush=True
            )
            if args.skip_st:
                continue
            st_sec = train_st(folder, train, t / f"st-{loss}", loss, args)
            st_score = spearman_of(str(t / f"st-{loss}"), test)
            print(
                f"sentence-transformers {loss}: {args.n / st_sec:.1f} pairs/s ({st_sec:.0f} s), ATEC {st_score:.2f}"
            )
            rows.append((loss, s_score, st_score, st_sec / s_sec))
        print("\nloss     simcli   ST      diff   speed (simcli / ST pairs/s)")
        for loss, a, b, ratio in rows:
            print(f"{loss:8} {a:6.2f}  {b:6.2f}  {a - b:+5.2f}  {ratio:.2f}x")


if __name__ == "__main__":
    main()
