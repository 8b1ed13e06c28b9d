"""Tokenizers: the interface the encoder and the generator use, the char tokenizer, and decoding.

Char models (RoFormer-Sim, SimBERT, char RoFormer, BERT, m3e, MiniLM) use plain BERT tokenisation with the
checkpoint's own vocab (vocab.txt, or the WordPiece vocab of a tokenizer.json) and the switches the checkpoint
states (`settings.tokenizer_settings`; lower-case where it states none: the RoFormer-Sim hub repos have no
tokenizer_config.json, and AutoTokenizer would fall back to a jieba tokenizer). The word tokenizer of WoBERT /
word RoFormer lives in `word_tokenizer.py`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from simcli.errors import UsageError
from simcli.models.settings import TokenizerSettings
from simcli.models.tokenizer_base import (
    Batch,
    Tokenizer,
    is_cjk,
    is_punctuation,
    join_tokens,
    read_vocab,
)

__all__ = [
    "Batch",
    "CharTokenizer",
    "Tokenizer",
    "is_cjk",
    "is_punctuation",
    "join_tokens",
    "load_tokenizer",
    "read_vocab",
]


class CharTokenizer(Tokenizer):
    """BERT tokenisation (clean, lower-case + strip accents, CJK split, WordPiece) by HF `tokenizers` (Rust),
    each switch as the checkpoint states it (`settings`; default: lower-case, strip accents, split CJK)."""

    kind = "char"

    def __init__(self, vocab_path: Path, settings: TokenizerSettings | None = None) -> None:
        super().__init__(vocab_path)
        from tokenizers import BertWordPieceTokenizer

        self.settings = settings or TokenizerSettings()
        options = {
            "lowercase": self.settings.lowercase,
            "strip_accents": self.settings.strip_accents,
            "handle_chinese_chars": self.settings.chinese_chars,
        }
        # Two instances: truncation is state on a `tokenizers` object, and `encode_batch` runs in the
        # encoder's background thread while `tokenize` may be called from another.
        self._fast = BertWordPieceTokenizer(dict(self.vocab), **options)
        self._untruncated = BertWordPieceTokenizer(dict(self.vocab), **options)
        self._max_length = 0
        self._lock = threading.Lock()

    def _truncate_to(self, max_length: int) -> None:
        if max_length < 3:
            raise UsageError(f"--max-length must be at least 3 ([CLS], one token, [SEP]), got {max_length}")
        if max_length != self._max_length:
            self._fast.enable_truncation(max_length)
            self._max_length = max_length

    def tokenize(self, text: str) -> list[str]:
        return self._untruncated.encode(text, add_special_tokens=False).tokens

    def encode_batch(self, texts: Sequence[str], max_length: int) -> Batch:
        with self._lock:  # the truncation length and the call that uses it go together
            self._truncate_to(max_length)
            encodings = self._fast.encode_batch(list(texts))
        return Batch(ids=[e.ids for e in encodings], truncated=sum(1 for e in encodings if e.overflowing))


def load_tokenizer(vocab_path: Path, kind: str, settings: TokenizerSettings | None = None) -> Tokenizer:
    """The tokenizer of `kind` ("char" or "word") over the checkpoint's own vocab (vocab.txt or tokenizer.json),
    with the char tokenizer's switches from `settings` (the word tokenizer lower-cases, as WoBERT was trained)."""
    if kind == "char":
        return CharTokenizer(vocab_path, settings)
    if kind == "word":
        from simcli.models.word_tokenizer import WordTokenizer

        return WordTokenizer(vocab_path)
    raise UsageError(f"--tokenizer must be char or word, got {kind!r}")
