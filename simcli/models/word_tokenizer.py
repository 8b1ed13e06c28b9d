"""The jieba word tokenizer of WoBERT, WoBERT Plus and word RoFormer (kexue.fm/archives/7758).

The rule, as bert4keras applies it when these models were trained:
1. lower-case, NFD, drop combining marks (category Mn), on the whole text, *before* jieba;
2. `jieba.cut(text, HMM=False)` with jieba's default dictionary;
3. a jieba word found in the vocab is one token; any other word gets ordinary BERT tokenisation
   (control characters dropped, whitespace splits, CJK characters and punctuation become single
   tokens, greedy longest-match WordPiece with `##`, `[UNK]` when a chunk cannot be matched);
4. concatenate, then [CLS] ... [SEP].

Consequences worth knowing (all pinned by tests/models/test_tokenizers.py): full-width letters and digits are
not NFKC-folded (BERT never does that), and jieba cuts every character outside
`[\\u4e00-\\u9fd5a-zA-Z0-9+#&._%-]` into its own word, so runs of such characters (full-width ASCII,
kana, hangul, Cyrillic, "ß") reach WordPiece one character at a time, unlike in the char tokenizer.

Speed: jieba's dictionary (about 1 s to load) is loaded once per process, on first use, with its
"Building prefix dict" log silenced. Out-of-vocab words are tokenised once and cached, so the cost per
sentence is jieba's segmentation plus one dict lookup per word; short texts seen before skip jieba too.
For a long text `encode_batch` stops consuming jieba's (lazy) output once it has more tokens than fit,
so a huge line costs little more than its first `max_length` tokens.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from simcli.errors import UsageError
from simcli.models.tokenizer_base import Batch, Tokenizer, is_cjk, is_punctuation

# bert4keras' Tokenizer(word_maxlen=200): a longer chunk is one unknown token (Google's BERT and HF use 100).
WORD_MAX_CHARS = 200
OOV_CACHE_SIZE = 1 << 16  # distinct out-of-vocab jieba words remembered (a few MB at most)
# Whole short texts remembered: question corpora repeat a lot (BQ test: 31% distinct sentences), and jieba
# is the cost. A few MB at most.
TEXT_CACHE_SIZE = 1 << 14
TEXT_CACHE_MAX_CHARS = 128

_jieba_lock = threading.Lock()
_jieba_dt: Any = None


def jieba_segmenter() -> Any:
    """jieba's default `Tokenizer` (`jieba.dt`) with its dictionary loaded, once per process, quietly."""
    global _jieba_dt
    if _jieba_dt is None:
        with _jieba_lock:
            if _jieba_dt is None:
                import jieba

                logger = jieba.default_logger
                level = logger.level
                # jieba logs "Building prefix dict ..." and "Loading model cost ..." on stderr at DEBUG
                # (and a failed cache dump at ERROR, which is harmless: it only makes the next load slower).
                logger.setLevel(logging.CRITICAL + 1)
                try:
                    jieba.dt.initialize()
                finally:
                    logger.setLevel(level)
                _jieba_dt = jieba.dt
    return _jieba_dt


def lower_strip_accents(text: str) -> str:
    """bert4keras' `lowercase_and_normalize`: lower-case, NFD, drop combining marks (Mn). No NFKC."""
    text = text.lower()
    if text.isascii():
        return text
    text = unicodedata.normalize("NFD", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def is_control(ch: str) -> bool:
    return ord(ch) in (0, 0xFFFD) or unicodedata.category(ch) in ("Cc", "Cf")


def basic_split(text: str) -> list[str]:
    """BERT's basic tokenizer after normalisation: drop control characters, split on whitespace,
    and make every CJK character and punctuation mark its own chunk."""
    chunks: list[str] = []
    current: list[str] = []
    for ch in text:
        if is_whitespace(ch):  # tested before is_control: \t \n \r are Cc but count as spaces
            if current:
                chunks.append("".join(current))
                current = []
        elif is_control(ch):
            continue  # dropped without splitting the word, as in BERT
        elif is_cjk(ch) or is_punctuation(ch):
            if current:
                chunks.append("".join(current))
                current = []
            chunks.append(ch)
        else:
            current.append(ch)
    if current:
        chunks.append("".join(current))
    return chunks


def wordpiece(chunk: str, vocab: dict[str, int]) -> list[str] | None:
    """Greedy longest-match-first WordPiece with `##` continuations; None when the chunk cannot be covered."""
    if len(chunk) > WORD_MAX_CHARS:
        return None
    pieces: list[str] = []
    start = 0
    while start < len(chunk):
        end = len(chunk)
        while end > start:
            piece = chunk[start:end] if start == 0 else "##" + chunk[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return None
        pieces.append(piece)
        start = end
    return pieces


class WordTokenizer(Tokenizer):
    """WoBERT's jieba word tokenizer over the checkpoint's own vocab.txt (kexue.fm/archives/7758)."""

    kind = "word"

    def __init__(self, vocab_path: Path) -> None:
        super().__init__(vocab_path)
        self._oov_ids = lru_cache(maxsize=OOV_CACHE_SIZE)(self._bert_ids)
        self._text_ids = lru_cache(maxsize=TEXT_CACHE_SIZE)(self._all_ids)

    def _bert_ids(self, word: str) -> tuple[int, ...]:
        """Ids of a word outside the vocab, tokenised the ordinary BERT way."""
        ids: list[int] = []
        for chunk in basic_split(word):
            pieces = wordpiece(chunk, self.vocab)
            if pieces is None:
                ids.append(self.unk_id)
            else:
                ids.extend(self.vocab[p] for p in pieces)
        return tuple(ids)

    def _words(self, text: str) -> Iterable[str]:
        return jieba_segmenter().cut(lower_strip_accents(text), HMM=False)  # type: ignore[no-any-return]

    def _ids(self, text: str, limit: int | None = None) -> tuple[list[int], bool]:
        """Token ids of `text` without specials; with `limit`, the first `limit` ids and whether more followed."""
        ids: list[int] = []
        get = self.vocab.get
        oov = self._oov_ids
        for word in self._words(text):
            i = get(word)
            if i is None:
                ids.extend(oov(word))
            else:
                ids.append(i)
            if limit is not None and len(ids) > limit:
                return ids[:limit], True
        return ids, False

    def _all_ids(self, text: str) -> tuple[int, ...]:
        return tuple(self._ids(text)[0])

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text` without [CLS]/[SEP] (unknown chunks as "[UNK]").

        Example: with WoBERT's vocab, "用iPhone12拍照" -> ["用", "iphone", "##12", "拍照"].
        """
        inv = self.inv_vocab
        return [inv[i] for i in self._ids(text)[0]]

    def encode_batch(self, texts: Sequence[str], max_length: int) -> Batch:
        """Ids with [CLS] and [SEP] for each text, cut to `max_length` tokens in all ([SEP] kept last).

        Args:
            texts: the sentences.
            max_length: tokens per text including [CLS] and [SEP], at least 3.

        Returns:
            Batch with one id list per text and how many texts were cut.
        """
        if max_length < 3:
            raise UsageError(f"--max-length must be at least 3 ([CLS], one token, [SEP]), got {max_length}")
        body = max_length - 2
        out: list[list[int]] = []
        truncated = 0
        for text in texts:
            if len(text) <= TEXT_CACHE_MAX_CHARS:
                ids: Sequence[int] = self._text_ids(text)
                cut = len(ids) > body
                if cut:
                    ids = ids[:body]
            else:  # long text: stop jieba once past max_length
                ids, cut = self._ids(text, body)
            truncated += cut
            out.append([self.cls_id, *ids, self.sep_id])
        return Batch(ids=out, truncated=truncated)
