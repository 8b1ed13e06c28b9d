"""`simcli train generator` on real weights: train a similar-question generator from m3e-small, then measure
what it is good for. Each stage writes into --work and the next one reads it, so a long run can be resumed
stage by stage:

    python bench/generator.py prepare --data DIR --work W   # held-out questions, filtered training files
    python bench/generator.py train   --work W --steps 700 --lr 2e-4
    python bench/generator.py quality --work W              # (a) paraphrases of the 300 held-out questions
    python bench/generator.py faq     --work W              # (b) FAQ expansion on BQ test
    python bench/generator.py faq-rules --work W --entries 300   # (b) which variants to add: chosen on BQ valid
    python bench/generator.py augment --work W              # (c) cosent with / without paraphrases, 3 seeds
    python bench/generator.py sts     --work W              # (d) eval sts of the generator's own vectors
    python bench/generator.py report  --work W              # the markdown tables of all of the above

DIR holds the public sets: BQ (qianyan_bq_corpus/train.tsv, BQ.test.data, BQ.valid.data), ATEC
(ATEC.train.partial.derived.data, ATEC.test.data), ChineseSTS (simtrain_to05sts.txt), SimCLUE
(train_pair_1w.json, train_rank_1w.json), LCQMC, PAWSX and STS-B test files. AFQMC is left out: it shares
6,719 pairs with the ATEC test set.

Held out: the first 150 distinct first sentences of BQ test pairs and of LCQMC test pairs. Every training
pair that holds a sentence of the BQ test set or of the held-out LCQMC questions is removed first (counted).
Paraphrases are scored by the *untrained* m3e-small through sentence-transformers, an independent scorer.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_line

HELD_PER_SET = 150
SAMPLES, TOP = 100, 5  # n=100 samples a question, the best 5 kept
NEW_TOKENS = 32  # the longest sample: the proof's generator trains on sentences of at most 32 tokens


def strip(s: str) -> str:
    return re.sub(r"\s+", "", s)


def tsv_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n").split("\t") for line in f if line.strip()]


def load(work: Path, name: str) -> dict:
    return json.loads((work / name).read_text(encoding="utf-8"))


def save(work: Path, name: str, value: object) -> None:
    (work / name).write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")


# --- prepare -----------------------------------------------------------------------------------------------


def first_distinct(rows: list[list[str]], n: int) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r[0], None)
        if len(seen) == n:
            break
    return list(seen)


def prepare(a: argparse.Namespace) -> None:
    d, w = a.data, a.work
    (w / "train").mkdir(parents=True, exist_ok=True)
    bq_test = tsv_rows(d / "BQ" / "BQ.test.data")
    lcqmc_test = tsv_rows(d / "LCQMC" / "LCQMC.test.data")
    held = {"bq": first_distinct(bq_test, HELD_PER_SET), "lcqmc": first_distinct(lcqmc_test, HELD_PER_SET)}
    banned = {strip(s) for r in bq_test for s in r[:2]} | {strip(s) for s in held["lcqmc"]}

    removed: dict[str, int] = {}

    def keep(name: str, rows: list[list[str]], cols: tuple[int, int], out: str) -> None:
        kept = [r for r in rows if strip(r[cols[0]]) not in banned and strip(r[cols[1]]) not in banned]
        removed[name] = len(rows) - len(kept)
        (w / "train" / out).write_text("".join("\t".join(r) + "\n" for r in kept), encoding="utf-8")

    keep("BQ train", tsv_rows(d / "BQ" / "qianyan_bq_corpus" / "train.tsv"), (0, 1), "bq_train.data")
    keep("ATEC train", tsv_rows(d / "ATEC" / "ATEC.train.partial.derived.data"), (0, 1), "atec_train.data")
    # ChineseSTS: id1, s1, id2, s2, score 0-5 (almost only 0 and 5): as s1, s2, label (score >= 4)
    sts = [
        [r[1], r[3], "1" if float(r[4]) >= 4 else "0"]
        for r in tsv_rows(d / "ChineseSTS" / "simtrain_to05sts.txt")
    ]
    keep("ChineseSTS", sts, (0, 1), "chinese_sts.data")
    for name in ("train_pair_1w.json", "train_rank_1w.json"):
        rows = [json.loads(line) for line in (d / "SimCLUE" / name).read_text(encoding="utf-8").splitlines()]
        a_key, b_key = ("sentence1", "sentence2") if "pair" in name else ("query", "title")
        kept = [r for r in rows if strip(r[a_key]) not in banned and strip(r[b_key]) not in banned]
        removed[f"SimCLUE {name}"] = len(rows) - len(kept)
        (w / "train" / f"simclue_{name.split('_')[1]}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8"
        )
    save(w, "held.json", held)
    save(w, "prepared.json", {"removed": removed, "data": str(d)})
    print(f"held out {sum(map(len, held.values()))} questions; removed rows overlapping the tests: {removed}")


# --- train -------------------------------------------------------------------------------------------------


def train(a: argparse.Namespace) -> None:
    w, out = a.work, a.work / a.out
    files = sorted(str(p) for p in (w / "train").iterdir())
    cmd = ["simcli", "train", "generator", *files, "--model", a.model, "--out", str(out), "--lr", str(a.lr)]
    cmd += ["--steps", str(a.steps)] if a.steps else []
    cmd += ["--max-length", str(a.max_length)] + (["--group-by-length"] if a.group_by_length else [])
    cmd += ["--seed", str(a.seed)] + (["--resume"] if out.exists() else [])
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    record = load(out, "training.json")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    save(
        w,
        f"train-{a.out}.json",
        {
            "command": cmd,
            "wall_s": wall,
            "peak_rss_gb": peak,
            "cpu": cpu_line(),
            "pairs_per_second": record.get("pairs_per_second"),
            "autocast": record.get("autocast"),
        },
    )
    print(f"wall {wall / 60:.1f} min, peak RSS {peak:.1f} GB, {record.get('pairs_per_second')} pairs/s")


# --- shared by the measuring stages ------------------------------------------------------------------------


def simcli_cmd(*args: str) -> None:
    print("$ simcli " + " ".join(args), flush=True)
    subprocess.run(["simcli", *args], check=True)


def paraphrase_file(
    model: Path, texts: list[str], out: Path, n: int, k: int
) -> dict[str, list[tuple[str, float]]]:
    """{text: [(paraphrase, cosine), ...]} through `simcli generate --input --out` (reused when present)."""
    if not out.exists():
        src = out.with_suffix(".in.tsv")
        src.write_text("text\n" + "".join(t + "\n" for t in texts), encoding="utf-8")
        simcli_cmd(
            "generate",
            "--input",
            str(src),
            "--column",
            "text",
            "--out",
            str(out),
            "--model",
            str(model),
            "-n",
            str(n),
            "-k",
            str(k),
            "--top-p",
            "0.95",
            "--seed",
            "0",
            "--max-new-tokens",
            str(NEW_TOKENS),
        )
    found: dict[str, list[tuple[str, float]]] = {t: [] for t in texts}
    with open(out, encoding="utf-8") as f:
        header = next(f).rstrip("\n").split("\t")
        col, score = header.index("text"), header.index("score")
        line = header.index("source_row")
        for row in (r.rstrip("\n").split("\t") for r in f):
            found[texts[int(row[line]) - 2]].append((row[col], float(row[score])))
    return found


class Scorer:
    """The untrained m3e-small through sentence-transformers: an encoder simcli's code does not touch."""

    def __init__(self, model: str = "m3e-small") -> None:
        from sentence_transformers import SentenceTransformer

        from simcli.models import sources

        self.st = SentenceTransformer(str(sources.fetch(model)[0]), device="cpu")

    def __call__(self, texts: list[str]):
        return self.st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def distinct_2(texts: list[str]) -> float:
    grams = [t[i : i + 2] for t in texts for i in range(len(t) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def quality_of(found: dict[str, list[tuple[str, float]]], scorer: Scorer) -> dict[str, object]:
    """Item (a): paraphrase quality of {input: ranked paraphrases}."""
    import numpy as np

    tops = {t: [c for c, _ in cands[:TOP]] for t, cands in found.items()}
    enough = sum(len({c for c in cs if c != t}) >= TOP for t, cs in tops.items())
    pairs = [(t, c) for t, cs in tops.items() for c in cs]
    cos = (scorer([t for t, _ in pairs]) * scorer([c for _, c in pairs])).sum(1) if pairs else np.zeros(0)
    return {
        "inputs": len(found),
        "share_with_5": enough / len(found),
        "mean_cosine_top5": float(cos.mean()) if len(cos) else float("nan"),
        "distinct_2_top5": float(np.mean([distinct_2(cs) for cs in tops.values() if cs] or [0.0])),
        "median_edit_distance": float(np.median([edit_distance(t, c) for t, c in pairs]))
        if pairs
        else float("nan"),
        "examples": {t: tops[t] for t in list(found)[:: max(1, len(found) // 10)][:10]},
    }


# --- (a) quality -------------------------------------------------------------------------------------------


def baselines(w: Path, held: dict[str, list[str]], scorer: Scorer) -> dict[str, dict[str, float]]:
    """The scorer's mean cosine of each held-out question to its labelled paraphrase (the second sentence of
    its first label-1 test pair) and to another held-out question of its set (a fixed random pairing): the
    two ends that the generated paraphrases' cosine is read between."""
    import numpy as np

    data = Path(load(w, "prepared.json")["data"])
    tests = {"bq": data / "BQ" / "BQ.test.data", "lcqmc": data / "LCQMC" / "LCQMC.test.data"}
    out = {}
    for name, questions in held.items():
        partner: dict[str, str] = {}
        for r in tsv_rows(tests[name]):
            if len(r) >= 3 and r[2] == "1":
                partner.setdefault(r[0], r[1])
        labelled = [(q, partner[q]) for q in questions if q in partner]
        order = np.random.default_rng(0).permutation(len(questions))
        shuffled = [(q, questions[j]) for q, j in zip(questions, order, strict=True) if questions[j] != q]

        def mean_cos(pairs: list[tuple[str, str]]) -> float:
            a, b = scorer([x for x, _ in pairs]), scorer([y for _, y in pairs])
            return float((a * b).sum(1).mean())

        out[name] = {
            "labelled paraphrase": mean_cos(labelled),
            "labelled pairs": len(labelled),
            "random question": mean_cos(shuffled),
        }
    return out


def quality(a: argparse.Namespace) -> None:
    w = a.work
    held = load(w, "held.json")
    held = {k: v[: a.held] for k, v in held.items()}
    texts = held["bq"] + held["lcqmc"]
    found = paraphrase_file(a.model or w / "gen", texts, w / f"{a.tag}held.gen.tsv", SAMPLES, 10)
    scorer = Scorer()
    result = quality_of(found, scorer)
    result["per_set"] = {k: quality_of({t: found[t] for t in v}, scorer) for k, v in held.items()}
    for k, v in baselines(w, held, scorer).items():
        result["per_set"][k]["baselines"] = v  # type: ignore[index]
    save(w, f"{a.tag}quality.json", result)
    brief = {k: v for k, v in result.items() if k not in ("examples", "per_set")}
    print(json.dumps(brief, indent=1), {k: v["mean_cosine_top5"] for k, v in result["per_set"].items()})


# --- (b) FAQ expansion -------------------------------------------------------------------------------------


def ranks_of(q, entries, owner: list[int], truth: list[int]) -> list[int]:
    """1-based rank of each query's entry when an entry scores the best cosine of any of its variants."""
    import numpy as np

    sims = q @ entries.T  # (queries, variants); variants are grouped by entry, in entry order
    starts = np.flatnonzero(np.r_[True, np.diff(owner) != 0])
    best = np.maximum.reduceat(sims, starts, axis=1)  # (queries, entries)
    own = best[np.arange(len(truth)), truth]
    return list((best > own[:, None]).sum(1) + 1)


def mrr_r1(ranks: list[int]) -> dict[str, float]:
    return {
        "mrr@10": 100 * sum(1 / r for r in ranks if r <= 10) / len(ranks),
        "r@1": 100 * sum(r == 1 for r in ranks) / len(ranks),
    }


def faq(a: argparse.Namespace) -> None:
    import numpy as np

    from simcli.models.encoder import load_encoder

    w, data = a.work, Path(load(a.work, "prepared.json")["data"])
    positives = [r for r in tsv_rows(data / "BQ" / "BQ.test.data") if r[2] == "1"]
    entries = first_distinct(positives, a.entries)
    index = {e: i for i, e in enumerate(entries)}
    queries = [(r[1], index[r[0]]) for r in positives if r[0] in index]
    found = paraphrase_file(a.model or w / "gen", entries, w / f"{a.tag}faq.gen.tsv", SAMPLES, TOP)
    plain = (entries, list(range(len(entries))))
    texts, owner = [], []
    for i, e in enumerate(entries):
        for t in [e, *(c for c, _ in found[e][:TOP])]:
            texts.append(t)
            owner.append(i)
    gen = load_encoder(str(a.model or w / "gen"))
    encoders = {
        "m3e-small (untrained, sentence-transformers)": Scorer(),
        "the generator's own vectors": lambda t: gen.encode(t, normalize=True),
    }
    result: dict[str, object] = {
        "entries": len(entries),
        "queries": len(queries),
        "variants": len(texts) - len(entries),
    }
    truth = [i for _, i in queries]
    for name, enc in encoders.items():
        q = np.asarray(enc([t for t, _ in queries]))
        result[name] = {
            "plain": mrr_r1(ranks_of(q, np.asarray(enc(plain[0])), plain[1], truth)),
            "expanded": mrr_r1(ranks_of(q, np.asarray(enc(texts)), owner, truth)),
        }
    save(w, f"{a.tag}faq.json", result)
    print(json.dumps(result, indent=1, ensure_ascii=False))


# Which generated variants to add, compared on two FAQs: the rules are chosen on BQ valid and checked on BQ test.
RULES: dict[str, dict[str, object]] = {
    "best 1": {"n": 1},
    "best 3": {"n": 3},
    "best 5 (the faq stage)": {"n": 5},
    "best 10": {"n": 10},
    "best 20": {"n": 20},
    "best 5 at edit distance >= 5": {"n": 5, "edit": 5},
    "5 by MMR (lambda 0.7)": {"n": 5, "mmr": 0.7},
    "10 by MMR (lambda 0.7)": {"n": 10, "mmr": 0.7},
    "best 5, entry = centroid": {"n": 5, "centroid": True},
}


def choose_variants(entry: str, found: list[tuple[str, float]], vec, rule: dict[str, object]) -> list[str]:  # type: ignore[no-untyped-def]
    """The variants a rule adds to `entry` from its candidates (ranked by the generator's own cosine); MMR picks
    each next one by lambda x cosine to the entry - (1 - lambda) x its largest cosine to those already picked."""
    import numpy as np

    n, least = int(rule["n"]), int(rule.get("edit", 0))  # type: ignore[call-overload]
    own = strip(entry)
    cands = [c for c, _ in found if strip(c) != own]
    if least:  # the quadratic edit distance only for the rule that asks for it
        cands = [c for c in cands if edit_distance(strip(c), own) >= least]
    if "mmr" not in rule or not cands:
        return cands[:n]
    lam = float(rule["mmr"])  # type: ignore[arg-type]
    v = np.stack([vec[c] for c in cands])
    relevance, picked = v @ vec[entry], []
    while len(picked) < min(n, len(cands)):
        redundancy = (v @ v[picked].T).max(1) if picked else np.zeros(len(cands))
        score = lam * relevance - (1 - lam) * redundancy
        score[picked] = -np.inf
        picked.append(int(score.argmax()))
    return [cands[k] for k in picked]


def faq_rules(a: argparse.Namespace) -> None:
    """FAQ expansion under each rule of RULES, on BQ valid (to choose) and BQ test (to check): MRR@10 and R@1
    gains over the plain FAQ, both scorers, from all distinct candidates of n=100 samples an entry."""
    import numpy as np

    from simcli.models.encoder import load_encoder

    w, data = a.work, Path(load(a.work, "prepared.json")["data"])
    model = a.model or w / "gen"
    gen = load_encoder(str(model))
    scorers = {"m3e-small": Scorer(), "own vectors": lambda t: gen.encode(t, normalize=True)}
    result: dict[str, dict[str, dict[str, float]]] = {}
    for split in a.splits.split(","):
        positives = [r for r in tsv_rows(data / "BQ" / f"BQ.{split}.data") if r[2] == "1"]
        entries = first_distinct(positives, a.entries)
        index = {e: i for i, e in enumerate(entries)}
        queries = [(r[1], index[r[0]]) for r in positives if r[0] in index]
        found = paraphrase_file(model, entries, w / f"{a.tag}faq-{split}.all.tsv", SAMPLES, SAMPLES)
        texts = list(
            dict.fromkeys([*entries, *(q for q, _ in queries), *(c for f in found.values() for c, _ in f)])
        )
        truth = [i for _, i in queries]
        for name, enc in scorers.items():
            vec = dict(zip(texts, np.asarray(enc(texts)), strict=True))
            q = np.stack([vec[t] for t, _ in queries])
            plain = mrr_r1(ranks_of(q, np.stack([vec[e] for e in entries]), list(range(len(entries))), truth))
            for label, rule in RULES.items():
                chosen = [choose_variants(e, found[e], vec, rule) for e in entries]
                if rule.get("centroid"):
                    rows = [
                        np.mean([vec[t] for t in [e, *c]], 0) for e, c in zip(entries, chosen, strict=True)
                    ]
                    cent = np.stack([r / np.linalg.norm(r) for r in rows])
                    got = mrr_r1(ranks_of(q, cent, list(range(len(entries))), truth))
                else:
                    owner = [i for i, c in enumerate(chosen) for _ in range(1 + len(c))]
                    variants = np.stack(
                        [vec[t] for e, c in zip(entries, chosen, strict=True) for t in [e, *c]]
                    )
                    got = mrr_r1(ranks_of(q, variants, owner, truth))
                key = f"{split} {name}"
                result.setdefault(label, {})[key] = got["mrr@10"] - plain["mrr@10"]
                result[label][key + " r@1"] = got["r@1"] - plain["r@1"]
            result.setdefault("plain MRR@10", {})[f"{split} {name}"] = plain["mrr@10"]
    save(w, f"{a.tag}faq-rules.json", result)
    cols = [f"{s} {n}" for s in a.splits.split(",") for n in scorers]
    print("| rule | " + " | ".join(f"MRR@10 gain, BQ {c}" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for label, row in result.items():
        print(
            f"| {label} | "
            + " | ".join(f"{row[c]:+.2f}" if label in RULES else f"{row[c]:.2f}" for c in cols)
            + " |"
        )


# --- (c) augmentation --------------------------------------------------------------------------------------


def spearman(models: list[str], test: Path) -> dict[str, float]:
    out = subprocess.run(
        ["simcli", "eval", "sts", str(test), "--model", ",".join(models), "--whiten", "none", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["model"]: r["spearman"] for r in rows}


def augment(a: argparse.Namespace) -> None:
    w, data = a.work, Path(load(a.work, "prepared.json")["data"])
    (w / "augment").mkdir(exist_ok=True)
    rows = tsv_rows(data / "BQ" / "BQ.valid.data")[: a.pairs]
    firsts = first_distinct(rows, len(rows))
    found = paraphrase_file(a.model or w / "gen", firsts, w / "augment" / f"{a.tag}valid.gen.tsv", a.n, 1)
    extra = [[found[r[0]][0][0], r[1], r[2]] for r in rows if found[r[0]]]  # s1 replaced, label kept
    plain, augmented = w / "augment" / "plain.data", w / "augment" / f"{a.tag}augmented.data"
    plain.write_text("".join("\t".join(r[:3]) + "\n" for r in rows), encoding="utf-8")
    augmented.write_text("".join("\t".join(r[:3]) + "\n" for r in rows + extra), encoding="utf-8")
    models = []
    # plain-steps: the plain pairs for as many steps as the augmented run takes (two passes), so that more
    # steps alone are not read as the paraphrases' effect
    # (the plain runs do not depend on the generator: another generator's --tag reuses them)
    runs = (
        ("plain", plain, []),
        (f"{a.tag}augmented", augmented, []),
        ("plain-steps", plain, ["--epochs", "2"]),
    )
    for seed in a.seeds:
        for name, f, flags in runs:
            out = w / "augment" / f"{name}-{seed}"
            if not (out / "config.json").exists():
                simcli_cmd(
                    "train",
                    str(f),
                    "--model",
                    "m3e-small",
                    "--loss",
                    "cosent",
                    "--seed",
                    str(seed),
                    *flags,
                    "--out",
                    str(out),
                    "--overwrite",
                )
            models.append(str(out))
    scores = spearman(["m3e-small", *models], data / "BQ" / "BQ.test.data")
    save(
        w,
        f"{a.tag}augment.json",
        {"pairs": len(rows), "added": len(extra), "n": a.n, "seeds": a.seeds, "spearman": scores},
    )
    print(json.dumps(scores, indent=1))


# --- (d) the generator's own vectors, and 5: distillation ---------------------------------------------------

STS_SETS = (
    "ATEC/ATEC.test.data",
    "BQ/BQ.test.data",
    "LCQMC/LCQMC.test.data",
    "PAWSX/PAWSX.test.data",
    "STS-B/STS-B.test.data",
)


def sts(a: argparse.Namespace) -> None:
    w, data = a.work, Path(load(a.work, "prepared.json")["data"])
    # with the distillation's teacher and student once `distill` has run
    extra = [w / "augment" / f"plain-{a.teacher_seed}", w / "distilled"] if (w / "distilled").exists() else []
    models = ["m3e-small", str(w / "gen"), *map(str, extra)]
    if a.models:  # other folders of WORK only (the rows above are in sts.json already)
        models = [str(w / m) for m in a.models.split(",")]
    out = subprocess.run(
        ["simcli", "eval", "sts", *(str(data / s) for s in STS_SETS), "--model", ",".join(models), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    save(w, f"{a.tag}sts.json", rows)
    for r in rows:
        print(r)


def labelled_rows(path: Path) -> list[list[str]]:
    """s1, s2, label rows of a training file: .data as it is, SimCLUE's pair .jsonl by its keys."""
    if path.suffix != ".jsonl":
        return tsv_rows(path)
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [[r["sentence1"], r["sentence2"], str(r["label"])] for r in rows if "sentence1" in r]


def distill(a: argparse.Namespace) -> None:
    w = a.work
    teacher = w / "augment" / f"plain-{a.teacher_seed}"
    if a.mix:  # every labelled training file, shuffled: the teacher's similarities over general questions too
        rows = [r for f in sorted((w / "train").iterdir()) for r in labelled_rows(f)]
        random.Random(0).shuffle(rows)
        rows = rows[: a.pairs]
    else:
        rows = tsv_rows(w / "train" / "bq_train.data")[: a.pairs]
    pairs = w / f"{a.out}.data"
    pairs.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    start = time.perf_counter()
    cmd = ["train", "distill", str(pairs), "--teacher", str(teacher), "--student", str(w / "gen")]
    cmd += ["--out", str(w / a.out), "--overwrite", "--epochs", str(a.epochs)]
    cmd += ["--lr", str(a.lr)] if a.lr else []
    simcli_cmd(*cmd)
    record = load(w / a.out, "training.json")
    save(
        w,
        "distill.json" if a.out == "distilled" else f"{a.out}.json",
        {
            "command": cmd,
            "teacher": str(teacher),
            "pairs": len(rows),
            "wall_s": time.perf_counter() - start,
            "pairs_per_second": record.get("pairs_per_second"),
        },
    )


# --- report ------------------------------------------------------------------------------------------------


def quality_rows(name: str, q: dict) -> list[str]:
    out = []
    for part, r in [("all", q), *q.get("per_set", {}).items()]:
        base = r.get("baselines", {})
        ends = "".join(
            f" {base[k]:.3f} |" if k in base else " |" for k in ("labelled paraphrase", "random question")
        )
        out.append(
            f"| {name} | {part} ({r['inputs']}) | {100 * r['share_with_5']:.0f}% | {r['mean_cosine_top5']:.3f} "
            f"| {r['distinct_2_top5']:.3f} | {r['median_edit_distance']:.0f} |{ends}"
        )
    return out


def report(a: argparse.Namespace) -> None:
    import statistics

    w = a.work
    have = {f.stem: load(w, f.name) for f in w.glob("*.json")}
    lines: list[str] = []
    runs = sorted((k.removeprefix("train-"), v) for k, v in have.items() if k.startswith("train-"))
    if runs:
        head = "| run | from | pairs | steps | lr | max length | dtype | pairs/s | wall | peak RSS |"
        lines += [f"CPU: {runs[0][1]['cpu']}", "", head, "|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in runs:
        rec = load(w / name, "training.json")
        hp = rec["hyperparameters"]
        lines.append(
            f"| {name} | {Path(rec['model']).name} | {rec['pairs']:,} | {rec['steps']} | {hp['lr']:g} "
            f"| {hp['max_length']} | {t['autocast']} | {t['pairs_per_second']:.1f} | {t['wall_s'] / 60:.1f} min "
            f"| {t['peak_rss_gb']:.1f} GB |"
        )
    lines += [""] if runs else []
    quality_of_models = [
        (n, have[f"{tag}quality"])
        for n, tag in (("generator", ""), ("distilled", "distilled-"))
        if f"{tag}quality" in have
    ]
    if quality_of_models:
        lines += [
            (
                "| model | inputs | >= 5 paraphrases | mean cosine (m3e-small) | distinct-2 | median edit distance "
                "| labelled paraphrase | random question |"
            ),
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, q in quality_of_models:
            lines += quality_rows(n, q)
        lines += ["", "| input | top 5 |", "|---|---|"]
        lines += [f"| {t} | {' / '.join(c)} |" for t, c in quality_of_models[0][1]["examples"].items()]
        lines.append("")
    if f := have.get("faq"):
        lines += [
            f"FAQ: {f['entries']} entries, {f['queries']} queries, {f['variants']} generated variants",
            "",
            "| scored by | MRR@10 plain | MRR@10 expanded | R@1 plain | R@1 expanded |",
            "|---|---|---|---|---|",
        ]
        for name, r in f.items():
            if isinstance(r, dict):
                p, e = r["plain"], r["expanded"]
                lines.append(
                    f"| {name} | {p['mrr@10']:.1f} | {e['mrr@10']:.1f} ({e['mrr@10'] - p['mrr@10']:+.1f}) "
                    f"| {p['r@1']:.1f} | {e['r@1']:.1f} ({e['r@1'] - p['r@1']:+.1f}) |"
                )
        lines.append("")
    if g := have.get("augment"):
        sp = g["spearman"]
        named = {Path(m).name: v for m, v in sp.items()}
        by = {
            k: [named[f"{k}-{seed}"] for seed in g["seeds"] if f"{k}-{seed}" in named]
            for k in ("plain", "plain-steps", "augmented")
        }
        diffs = [b - a_ for a_, b in zip(by["plain"], by["augmented"], strict=True)]
        if len(by["plain-steps"]) == len(diffs):  # against the plain pairs trained as many steps
            by["augmented - plain-steps"] = [
                b - a_ for a_, b in zip(by["plain-steps"], by["augmented"], strict=True)
            ]
        lines += [
            (
                f"Augmentation: {g['pairs']} BQ valid pairs + {g['added']} with s1 replaced by its best paraphrase "
                f"(n={g['n']}), cosent, seeds {g['seeds']}; BQ test Spearman x100 (untrained: "
                f"{sp.get('m3e-small', float('nan')):.2f})"
            ),
            "",
            "| | " + " | ".join(f"seed {s}" for s in g["seeds"]) + " | mean |",
            "|---|" + "---|" * (len(g["seeds"]) + 1),
        ]
        for k, v in (*((k, v) for k, v in by.items() if v), ("augmented - plain", diffs)):
            lines.append(f"| {k} | " + " | ".join(f"{x:.2f}" for x in v) + f" | {statistics.mean(v):+.2f} |")
        lines.append("")
    if rows := [
        r for r in have.get("sts", []) if r["whiten"] == "none"
    ]:  # Spearman x100, as eval sts gives it
        sets = list(dict.fromkeys(r["dataset"] for r in rows))
        models = list(dict.fromkeys(r["model"] for r in rows))
        lines += ["| model | " + " | ".join(sets) + " | mean |", "|---|" + "---|" * (len(sets) + 1)]
        for m in models:
            vals = {r["dataset"]: r["spearman"] for r in rows if r["model"] == m}
            mean = sum(vals.values()) / len(vals)
            lines.append(
                f"| {Path(m).name} | " + " | ".join(f"{vals[s]:.2f}" for s in sets) + f" | {mean:.2f} |"
            )
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    for name in ("prepare", "train", "quality", "faq", "faq-rules", "augment", "sts", "distill", "report"):
        s = sub.add_parser(name)
        s.add_argument("--work", type=Path, required=True, help="folder the stages share")
        if name == "prepare":
            s.add_argument("--data", type=Path, required=True, help="folder of the public sets")
        if name == "train":
            s.add_argument("--model", default="m3e-small")
            s.add_argument("--steps", type=int, default=None, help="default: one epoch")
            s.add_argument("--lr", type=float, default=2e-4)
            s.add_argument("--max-length", type=int, default=32, help="tokens per sentence (the CPU budget)")
            s.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True)
            s.add_argument("--seed", type=int, default=42)
            s.add_argument("--out", default="gen", help="the generator's folder inside WORK")
        if name == "quality":
            s.add_argument("--held", type=int, default=HELD_PER_SET, help="held-out questions of each set")
        if name in ("quality", "faq", "faq-rules", "augment"):
            s.add_argument("--model", type=Path, default=None, help="default: WORK/gen")
            s.add_argument("--tag", default="", help="prefix of this stage's output files")
        if name == "faq-rules":
            s.add_argument("--splits", default="valid,test", help="the BQ files whose FAQs to build")
        if name in ("faq", "faq-rules"):
            s.add_argument(
                "--entries",
                type=int,
                default=1000,
                help="FAQ entries (first distinct first sentences of label-1 pairs)",
            )
        if name == "augment":
            s.add_argument("--pairs", type=int, default=2000)
            s.add_argument("--n", type=int, default=32, help="samples per sentence")
            s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        if name == "distill":
            s.add_argument("--pairs", type=int, default=5000, help="first rows of the filtered BQ train file")
            s.add_argument("--mix", action="store_true", help="rows of every training file, shuffled")
            s.add_argument("--epochs", type=int, default=1)
            s.add_argument("--lr", type=float, default=None, help="default: simcli train distill's")
            s.add_argument("--out", default="distilled", help="the student's folder inside WORK")
        if name == "sts":
            s.add_argument("--models", default="", help="comma-separated folders of WORK to evaluate instead")
            s.add_argument("--tag", default="", help="prefix of this stage's output file")
        if name in ("distill", "sts"):
            s.add_argument("--teacher-seed", type=int, default=0, help="the augment stage's plain-SEED model")
    a = p.parse_args()
    stages = {
        "prepare": prepare,
        "train": train,
        "quality": quality,
        "faq": faq,
        "faq-rules": faq_rules,
        "augment": augment,
        "sts": sts,
        "distill": distill,
        "report": report,
    }
    stages[a.stage](a)


if __name__ == "__main__":
    main()
