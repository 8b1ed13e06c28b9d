"""What every tokenizer shares: the interface the encoder and the generator use (`Tokenizer`, `Batch`), the vocab
reader, BERT's Unicode classes and the decoding of generated tokens. The char tokenizer (`tokenizers.py`) and the
jieba word tokenizer (`word_tokenizer.py`) both build on it, so neither imports the other."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from simcli.errors import ModelError
from simcli.models.settings import tokenizer_json_vocab


@dataclass
class Batch:
    """Token ids of several texts, each with [CLS] ... [SEP], and how many were cut at max_length."""

    ids: list[list[int]]
    truncated: int


class Tokenizer:
    """Common interface and the special-token bookkeeping; subclasses implement `tokenize` and `encode_batch`."""

    kind: str = ""

    def __init__(self, vocab_path: Path) -> None:
        self.vocab_path = Path(vocab_path)
        self.vocab = read_vocab(self.vocab_path)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in self.vocab]
        if missing:
            raise ModelError(f"{self.vocab_path}: vocab lacks the special tokens {', '.join(missing)}")
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.mask_id = self.vocab["[MASK]"]
        self.special_ids = frozenset(i for t, i in self.vocab.items() if _is_special(t))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text` without [CLS]/[SEP]."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str], max_length: int) -> Batch:
        """Ids with [CLS] and [SEP], truncated to `max_length` tokens in all ([SEP] kept last)."""
        raise NotImplementedError

    def encode(self, text: str, max_length: int = 512) -> list[int]:
        return self.encode_batch([text], max_length).ids[0]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.inv_vocab.get(int(i), "[UNK]") for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids: special tokens dropped, CJK joined without spaces, words spaced."""
        return join_tokens(
            [t for i, t in zip(ids, self.convert_ids_to_tokens(ids)) if int(i) not in self.special_ids]
        )


def _is_special(token: str) -> bool:
    return len(token) > 2 and token.startswith("[") and token.endswith("]")


def read_vocab(path: Path) -> dict[str, int]:
    """token -> id from a BERT vocab.txt (one token a line, id = line number) or a WordPiece tokenizer.json."""
    if path.name == "tokenizer.json":
        return tokenizer_json_vocab(path)
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\r\n") for line in f]
    except FileNotFoundError:
        raise ModelError(f"{path}: vocab.txt missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: unreadable vocab ({e})") from e
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)  # first occurrence wins, as in BERT's loader
    return vocab


def is_cjk(ch: str) -> bool:
    """CJK ideograph ranges of BERT's basic tokenizer (and bert4keras)."""
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def is_punctuation(ch: str) -> bool:
    """BERT's punctuation: all non-alphanumeric printable ASCII, and every Unicode P* category."""
    cp = ord(ch)
    return (
        33 <= cp <= 47
        or 58 <= cp <= 64
        or 91 <= cp <= 96
        or 123 <= cp <= 126
        or unicodedata.category(ch).startswith("P")
    )


_NO_SPACE_AFTER = re.compile(r"([\u3000-\u303f\uff00-\uffef+\-/={(<\[]) ")
_DECIMAL = re.compile(r"(\d\.) (\d)")


def join_tokens(tokens: Sequence[str]) -> str:
    """Join WordPiece tokens into text the way bert4keras decodes generated ids (SimBERT / RoFormer-Sim):
    `##` pieces glue to the previous token, CJK tokens and tokens after CJK join without a space,
    other words are separated by one space; no space after CJK or opening punctuation.
    """
    text = ""
    for i, tok in enumerate(tokens):
        if tok.startswith("##") and len(tok) > 2:
            text += tok[2:]
        elif all(is_cjk(c) for c in tok):
            text += tok
        elif len(tok) == 1 and is_punctuation(tok):
            text += tok + " "
        elif i > 0 and text and is_cjk(text[-1]):
            text += tok
        else:
            text += " " + tok
    text = re.sub(" +", " ", text)
    text = _NO_SPACE_AFTER.sub(r"\1", text)
    text = _DECIMAL.sub(r"\1\2", text)
    return text.strip()
