"""`simcli train generator` smoke measurement: a few minutes of training on real weights and data, then a
look at what the generator writes. Not the quality benchmark (that needs hours of CPU).

    python bench/generator.py --data DIR                  # m3e-small, first 2,000 positive BQ train pairs
    python bench/generator.py --data DIR --pairs 500 --lr 2e-4

DIR holds `BQ/qianyan_bq_corpus/train.tsv` (s1<TAB>s2<TAB>0/1) and `BQ/BQ.test.data`. Trains one epoch over
the first --pairs label-1 pairs with the generator's defaults (or --lr), then prints the training pairs/s (the
loop's own clock: loading and writing excluded), the autocast dtype, the process's peak RSS, the loss curve,
and the top 3 of 100 samples (top-p 0.95) for the first sentences of the first --held BQ test pairs.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def positive_pairs(src: Path, n: int, dst: Path) -> Path:
    with open(src, encoding="utf-8") as f:
        rows = [line for line in f if line.rstrip("\n").split("\t")[-1] == "1"][:n]
    dst.write_text("".join(rows), encoding="utf-8")
    return dst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder holding BQ/")
    p.add_argument("--model", default="m3e-small")
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--lr", type=float, default=None, help="default: the generator's (1e-5)")
    p.add_argument("--held", type=int, default=3)
    a = p.parse_args()

    from simcli.paraphrase import load_paraphraser
    from simcli.training import TrainOptions, train_generator

    with tempfile.TemporaryDirectory() as tmp:
        data = positive_pairs(a.data / "BQ" / "qianyan_bq_corpus" / "train.tsv", a.pairs, Path(tmp) / "p.tsv")
        options = TrainOptions.generator(epochs=1, **({"lr": a.lr} if a.lr else {}))
        out, record = train_generator([data], a.model, Path(tmp) / "gen", options, log=print)
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(
            f"\n{record['pairs']:,} pairs, {record['steps']} steps, {record['pairs_per_second']:.1f} pairs/s, "
            f"autocast {record['autocast']}, peak RSS {rss_gb:.1f} GB, lr {record['hyperparameters']['lr']:g}"
        )
        print("loss:", ", ".join(f"{h['step']}: {h['loss']:.2f}" for h in record["loss_history"]))
        with open(a.data / "BQ" / "BQ.test.data", encoding="utf-8") as f:
            held = [next(f).split("\t")[0] for _ in range(a.held)]
        para = load_paraphraser(str(out))
        for text, found in zip(held, para.generate(held, n=100, k=3, seed=0), strict=True):
            print(f"\n{text}")
            for c in found:
                print(f"  {c.score:.3f}  {c.text}")


if __name__ == "__main__":
    main()
