"""Tokenizer throughput: simcli's WoBERT word tokenizer vs its char tokenizer vs transformers' RoFormerTokenizer.

    python bench/tokenizer_speed.py              # 5,000 LCQMC test sentences, max_length 64
    python bench/tokenizer_speed.py --data BQ --n 20000 --repeat 5

All tokenizers run on the same real sentences (../shared/data/LCQMC) with one vocab shaped like WoBERT's
(kexue.fm/archives/7758: BERT-style specials and ASCII pieces, frequent CJK characters, and the 20,000 most frequent
multi-character words of jieba's dictionary), built from jieba's dictionary since no hub is reachable.
Prints sentences/s (best of --repeat passes over the whole list, each by a fresh tokenizer, so simcli's
caches of out-of-vocab words and of seen texts start empty; one row shows a pass over texts already seen),
the ratios, and how often transformers' tokens agree
with simcli's. transformers' RoFormerTokenizer needs rjieba; without it that row is skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

DATA = ROOT.parent / "shared" / "data"
warnings.filterwarnings("ignore")


def sentences(name: str, n: int) -> list[str]:
    out: list[str] = []
    for split in ("test", "valid"):
        with open(DATA / name / f"{name}.{split}.data", encoding="utf-8") as f:
            for line in f:
                out += line.rstrip("\n").split("\t")[:2]
                if len(out) >= n:
                    return out[:n]
    return out


def best_rate(make: Callable[[], Any], run: Callable[[Any], object], n: int, repeat: int) -> float:
    """Sentences/s of the fastest of `repeat` passes, each with a fresh tokenizer (its caches empty)."""
    best = float("inf")
    for _ in range(repeat):
        tok = make()
        t = time.perf_counter()
        run(tok)
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="sentences (test split, then valid)")
    ap.add_argument("--data", default="LCQMC", help="data set under ../shared/data (BQ repeats sentences)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from simcli.models.tokenizers import CharTokenizer
    from simcli.models.word_tokenizer import WordTokenizer, jieba_segmenter
    from tests.checkpoints import word_vocab

    sents = sentences(args.data, args.n)
    n, L = len(sents), args.max_length
    chars = sum(map(len, sents))
    print(
        f"{n} {args.data} sentences ({len(set(sents))} distinct), {chars / n:.1f} characters on average,",
        end="",
    )
    print(f" max_length {L}")

    tmp = Path(tempfile.mkdtemp(prefix="simcli-bench-tok-"))
    vocab = word_vocab(n_chars=6000, n_words=20000)
    (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    print(f"vocab: {len(vocab)} entries (WoBERT-shaped, from jieba's dictionary)")

    t = time.perf_counter()
    jieba_segmenter()
    print(f"jieba dictionary load (once per process): {time.perf_counter() - t:.2f} s")

    path = tmp / "vocab.txt"
    char, word = CharTokenizer(path), WordTokenizer(path)
    ours = word.encode_batch(sents, L).ids
    rates = {
        "simcli char (HF tokenizers, Rust)": best_rate(  # no cache: one instance for all passes
            lambda: char, lambda t: t.encode_batch(sents, L), n, args.repeat
        ),
        "simcli word (jieba)": best_rate(
            lambda: WordTokenizer(path), lambda t: t.encode_batch(sents, L), n, args.repeat
        ),
        "simcli word, texts already seen (cached)": best_rate(
            lambda: word, lambda t: t.encode_batch(sents, L), n, args.repeat
        ),
    }
    theirs = None
    try:
        import rjieba  # noqa: F401
        from transformers import RoFormerTokenizer
    except ImportError:
        print("transformers RoFormerTokenizer: skipped (pip install rjieba to include it)")
    else:
        hf = RoFormerTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))})
        theirs = hf(sents, truncation=True, max_length=L)["input_ids"]
        rates["transformers RoFormerTokenizer (rjieba)"] = best_rate(
            lambda: hf, lambda t: t(sents, truncation=True, max_length=L), n, args.repeat
        )

    word_rate = rates["simcli word (jieba)"]
    print(f"\n{'tokenizer':42s} {'sentences/s':>12s} {'simcli word / this':>19s}")
    for name, rate in rates.items():
        print(f"{name:42s} {rate:12,.0f} {word_rate / rate:18.2f}x")
    if theirs is not None:
        same = sum(a == b for a, b in zip(ours, theirs))
        print(f"\ntransformers' ids equal simcli's on {same}/{n} sentences ({100 * same / n:.1f}%)")
        for s, a, b in zip(sents, ours, theirs):
            if a != b:
                print(f"  first difference: {s!r}\n    simcli       {word.convert_ids_to_tokens(a)}")
                print(f"    transformers {word.convert_ids_to_tokens(b)}")
                break


if __name__ == "__main__":
    main()
