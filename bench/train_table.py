"""Fine-tuning on the whole ATEC training file: five test sets before and after, for each setting.

    python bench/train_table.py                                  # m3e-small; cosent, softmax, softmax + NLI
    python bench/train_table.py --settings cosent --test-limit 2000
    python bench/train_table.py --settings cosent --epochs 2 --skip-untrained

Settings (each one epoch unless --epochs, batch 32, AdamW lr 2e-5 unless --lr, weight decay 0.01, 10% linear
warm-up then decay, max length 64, float32 unless --dtype):
    cosent        ATEC.train.partial.derived.data with the CoSENT loss
    softmax       the same file with the softmax loss on concat(u, v, |u-v|) (the RoFormer-Sim-FT recipe)
    softmax+nli   the recipe's mix: ATEC binary pairs and Chinese-SNLI NLI pairs, half of each batch each
                  (an epoch is a pass over the larger file)

Every model, the untrained one first, is scored by simcli's evaluation code (Spearman x100 of the cosines, no
whitening) on the test files of ATEC, BQ, LCQMC, PAWSX and STS-B beside the checkout. Rows print as they finish
(a long run can be read while it goes); the table is printed at the end. Scores do not depend on the machine's
load; the training seconds printed do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
TESTS = {
    "ATEC": DATA / "ATEC" / "ATEC.test.data",
    "BQ": DATA / "BQ" / "BQ.test.data",
    "LCQMC": DATA / "LCQMC" / "LCQMC.test.data",
    "PAWSX": DATA / "PAWSX" / "PAWSX.test.data",
    "STS-B": DATA / "STS-B" / "STS-B.test.data",
}
TRAIN = DATA / "ATEC" / "ATEC.train.partial.derived.data"
NLI = DATA / "Chinese-SNLI" / "dev.txt"
SETTINGS = {
    "cosent": ("cosent", [TRAIN]),
    "softmax": ("softmax", [TRAIN]),
    "softmax+nli": ("softmax", [TRAIN, NLI]),
}


def scores(model: str, limit: int | None) -> list[float]:
    from simcli.evaluate import evaluate_sts

    results = evaluate_sts(list(TESTS.values()), model, whiten=("none",), dtype="float32", limit=limit)
    return [r.spearman for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="m3e-small")
    ap.add_argument("--settings", default="cosent,softmax,softmax+nli")
    ap.add_argument(
        "--test-limit", type=int, default=None, help="score only the first N pairs of each test set"
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="stop each setting after N steps of 32 pairs (default: one epoch)",
    )
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--skip-untrained", action="store_true", help="do not score the untrained model")
    ap.add_argument("--keep", type=Path, default=None, help="keep the trained models in this folder")
    args = ap.parse_args()

    from simcli.models.loading import open_checkpoint
    from simcli.training import TrainOptions, train

    folder = str(open_checkpoint(args.model).path)
    with tempfile.TemporaryDirectory() as tmp:
        tests = TESTS
        where = args.keep or Path(tmp)
        header = f"| model | {' | '.join(tests)} | mean |"
        table = [header, "|---" * (len(tests) + 2) + "|"]

        def row(name: str, values: list[float], base: list[float] | None) -> str:
            mean = sum(values) / len(values)
            if base is None:
                cells = [f"{v:.2f}" for v in [*values, mean]]
            else:
                cells = [
                    f"{v:.2f} ({v - b:+.2f})" for v, b in zip([*values, mean], [*base, sum(base) / len(base)])
                ]
            line = f"| {name} | {' | '.join(cells)} |"
            print(line, flush=True)
            return line

        print(header, flush=True)
        base = None if args.skip_untrained else scores(folder, args.test_limit)
        if base is not None:
            table.append(row(f"{args.model} untrained", base, None))
        for setting in args.settings.split(","):
            loss, files = SETTINGS[setting]
            tag = "" if (args.epochs, args.lr) == (1, 2e-5) else f"-e{args.epochs}-lr{args.lr:g}"
            out = where / f"{args.model}-{setting}{tag}"
            start = time.perf_counter()
            _, record = train(
                files, folder, out,
                TrainOptions(loss=loss, epochs=args.epochs, steps=args.steps, batch_size=32, lr=args.lr, warmup=0.1,
                             seed=args.seed, dtype=args.dtype),
                overwrite=True,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            pairs = record["steps"] * 32
            print(f"  ({setting}: {record['steps']} steps, ~{pairs} pairs in {seconds:.0f} s)", flush=True)
            table.append(
                row(
                    f"{setting}{tag} ({' + '.join(f.parent.name for f in files)})",
                    scores(str(out), args.test_limit),
                    base,
                )
            )
        print("\n" + "\n".join(table))


if __name__ == "__main__":
    main()
