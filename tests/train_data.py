"""A small synthetic but learnable pair task for the training tests: sentences drawn from topics (disjoint
sets of characters of the tiny checkpoints' vocab); a pair is similar (1) when both sentences come from
one topic. Random encoders score near 0 on it; a few hundred steps teach it."""

from __future__ import annotations

import random
from pathlib import Path

from tests.checkpoints import char_vocab


def topic_chars(n_topics: int = 8, per_topic: int = 12) -> list[list[str]]:
    chars = [t for t in char_vocab() if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    return [chars[i * per_topic : (i + 1) * per_topic] for i in range(n_topics)]


def sentence(rng: random.Random, chars: list[str], length: int) -> str:
    return "".join(rng.choice(chars) for _ in range(length))


def pairs(n: int, seed: int, *, nli: bool = False, scores: bool = False) -> list[tuple[str, str, str]]:
    """n labelled pairs: binary 0/1 (default), NLI names, or 0-5 scores (shared-topic share x 5)."""
    rng = random.Random(seed)
    topics = topic_chars()
    out = []
    for _ in range(n):
        a = rng.randrange(len(topics))
        same = rng.random() < 0.5
        b = a if same else rng.choice([t for t in range(len(topics)) if t != a])
        s1 = sentence(rng, topics[a], rng.randint(4, 12))
        if scores:
            k = rng.randint(0, 5)  # 5 - k of 5 characters from the other topic
            s2 = "".join(rng.choice(topics[a] if i < k else topics[b]) for i in range(5)) + sentence(
                rng, topics[a] if same else topics[b], rng.randint(0, 4)
            )
            label = str(k if same else max(0, k - 3))
        else:
            s2 = sentence(rng, topics[b], rng.randint(4, 12))
            label = (
                ("entailment" if same else rng.choice(["contradiction", "neutral"]))
                if nli
                else str(int(same))
            )
        out.append((s1, s2, label))
    return out


def write_pairs(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows), encoding="utf-8")
    return path
