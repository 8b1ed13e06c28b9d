"""The tests' tiny checkpoints: the builders live in `simcli.models.demo` (`simcli demo-model DIR` writes the
README's offline model with them); the tests import them from here."""

from __future__ import annotations

from simcli.models.demo import (
    CLS_ID,
    MASK_ID,
    OFFLINE_SEP_BIAS,
    PAD_ID,
    SEP_ID,
    TINY,
    UNK_ID,
    build_roformer_mlm,
    build_roformer_sim,
    build_simbert,
    build_wobert,
    char_vocab,
    word_vocab,
)

__all__ = [
    "CLS_ID",
    "MASK_ID",
    "OFFLINE_SEP_BIAS",
    "PAD_ID",
    "SEP_ID",
    "TINY",
    "UNK_ID",
    "build_roformer_mlm",
    "build_roformer_sim",
    "build_simbert",
    "build_wobert",
    "char_vocab",
    "word_vocab",
]
