"""Small random checkpoints in the exact layouts of the hub repos (the JunnYu/RoFormer_pytorch port, WoBERT,
SimBERT), built on the fly: `simcli demo-model DIR` writes one to try simcli without a model hub, and the tests
build their tiny models with the same builders.

Nothing is downloaded: the vocabularies come from jieba's own dictionary (realistic characters and
words), the weights are random but seeded. The test sizes are distinct (hidden 48, 4 heads, intermediate 37,
2 layers) so that a swapped dimension fails loudly.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch

from simcli.errors import OutputExists, UsageError
from simcli.io import staged_folder
from simcli.types import DemoFamily

SPECIAL_HEAD = (
    ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]", "<S>", "<T>"]
)
# As in BERT's Chinese vocab: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103.
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103

ASCII_PIECES = (
    list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    + list(string.digits)
    + list(string.ascii_lowercase)
    + ["iphone", "hello", "world", "app", "ok", "vip", "##s", "##ing", "##ed", "##12", "##3", "##pp", "##0"]
    + ["，", "。", "？", "！", "、", "：", "；", "“", "”", "（", "）", "《", "》", "…", "—"]
)


@lru_cache(maxsize=1)
def _jieba_freq() -> list[tuple[str, int]]:
    import jieba

    path = Path(jieba.__file__).parent / "dict.txt"
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            word, freq, *_ = line.split(" ")
            rows.append((word, int(freq)))
    rows.sort(key=lambda r: -r[1])
    return rows


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def char_vocab(n_chars: int = 1500) -> list[str]:
    """BERT-Chinese-like char vocab: specials, ASCII pieces, then the most frequent CJK characters."""
    vocab = list(SPECIAL_HEAD) + ASCII_PIECES
    seen = set(vocab)
    chars = 0
    for word, _ in _jieba_freq():
        for ch in word:
            if _is_cjk(ch) and ch not in seen:
                seen.add(ch)
                vocab.append(ch)
                chars += 1
        if chars >= n_chars:
            break
    return vocab


def word_vocab(n_chars: int = 1500, n_words: int = 2000) -> list[str]:
    """WoBERT-like vocab: the char vocab plus the most frequent multi-character jieba words (kexue.fm/archives/7758)."""
    vocab = char_vocab(n_chars)
    seen = set(vocab)
    added = 0
    for word, _ in _jieba_freq():
        if len(word) > 1 and all(_is_cjk(c) for c in word) and word not in seen:
            seen.add(word)
            vocab.append(word)
            added += 1
            if added >= n_words:
                break
    return vocab


TINY = {"hidden_size": 48, "num_attention_heads": 4, "intermediate_size": 37, "num_hidden_layers": 2}


def _write_vocab(path: Path, vocab: list[str]) -> None:
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")


def _perturb(model: torch.nn.Module, seed: int) -> None:
    # transformers initialises LayerNorm to (1, 0) and biases to 0; random values make every weight matter.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue
            scale = 0.3 if p.dim() > 1 else 0.1
            base = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))


def build_roformer_sim(
    path: Path,
    seed: int = 0,
    fmt: str = "bin",
    config: dict[str, Any] | None = None,
    sep_bias: float = 0.0,
    **sizes: int,
) -> Path:
    """A RoFormer-Sim checkpoint as on the hub: RoFormerForCausalLM keys + roformer.pooler.dense.*,
    the port's config fields, is_decoder true, no embed_positions table, no tokenizer_config.json.
    `config` overrides config.json fields (e.g. rotary_value, hidden_act, embedding_size); `sep_bias` is added
    to the MLM head's [SEP] logit, so that generation ends after a few tokens as a trained model's does."""
    from transformers import RoFormerConfig, RoFormerForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = char_vocab()
    dims = {**TINY, **sizes}
    hub_config = {
        "architectures": ["RoFormerForCausalLM"],
        "model_type": "roformer",
        "attention_probs_dropout_prob": 0.1,
        "embedding_size": dims["hidden_size"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": dims["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": dims["intermediate_size"],
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "num_attention_heads": dims["num_attention_heads"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": len(vocab),
        "directionality": "bidi",
        "is_decoder": True,
        "eos_token_id": SEP_ID,
        "pooler_activation": "linear",
        "rotary_value": False,
        "use_bias": True,
        "norm_type": "layer_norm",
        "use_cache": True,
        **(config or {}),
    }
    torch.manual_seed(seed)
    cfg = RoFormerConfig(**{k: v for k, v in hub_config.items() if k != "architectures"})
    model = RoFormerForCausalLM(cfg)
    _perturb(model, seed)
    sd = {k: v.clone() for k, v in model.state_dict().items() if "embed_positions" not in k}
    g = torch.Generator().manual_seed(seed + 1)
    h = dims["hidden_size"]
    sd["roformer.pooler.dense.weight"] = 0.3 * torch.randn(h, h, generator=g)
    sd["roformer.pooler.dense.bias"] = 0.1 * torch.randn(h, generator=g)
    sd["cls.predictions.decoder.weight"] = sd[
        "roformer.embeddings.word_embeddings.weight"
    ]  # tied, as on the hub
    for key in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        sd[key][SEP_ID] += sep_bias
    _save(path, sd, fmt)
    (path / "config.json").write_text(json.dumps(hub_config, indent=2), encoding="utf-8")
    _write_vocab(path, vocab)
    return path


def build_wobert(
    path: Path, seed: int = 1, fmt: str = "bin", config: dict[str, Any] | None = None, **sizes: int
) -> Path:
    """A WoBERT (Plus) checkpoint as on the hub: BertForMaskedLM keys (no pooler), word vocab,
    tokenizer_config.json naming RoFormerTokenizer. `config` overrides config.json fields."""
    from transformers import BertConfig, BertForMaskedLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = word_vocab()
    dims = {**TINY, **sizes}
    hub_config = {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": dims["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": dims["intermediate_size"],
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "num_attention_heads": dims["num_attention_heads"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": len(vocab),
        **(config or {}),
    }
    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(**{k: v for k, v in hub_config.items() if k != "architectures"}))
    _perturb(model, seed)
    _save(path, dict(model.state_dict()), fmt)
    (path / "config.json").write_text(json.dumps(hub_config, indent=2), encoding="utf-8")
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "RoFormerTokenizer", "do_lower_case": True}), encoding="utf-8"
    )
    _write_vocab(path, vocab)
    return path


def build_roformer_mlm(
    path: Path,
    word: bool,
    seed: int = 2,
    fmt: str = "bin",
    config: dict[str, Any] | None = None,
    **sizes: int,
) -> Path:
    """Word (junnyu/roformer_chinese_base) or char RoFormer: RoFormerForMaskedLM keys, no pooler.
    `config` overrides config.json fields."""
    from transformers import RoFormerConfig, RoFormerForMaskedLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = word_vocab() if word else char_vocab()
    dims = {**TINY, **sizes}
    hub_config = {
        "architectures": ["RoFormerForMaskedLM"],
        "model_type": "roformer",
        "embedding_size": dims["hidden_size"],
        "hidden_act": "gelu",
        "hidden_size": dims["hidden_size"],
        "intermediate_size": dims["intermediate_size"],
        "max_position_embeddings": 1536 if word else 512,
        "num_attention_heads": dims["num_attention_heads"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": len(vocab),
        "rotary_value": False,
        **(config or {}),
    }
    torch.manual_seed(seed)
    model = RoFormerForMaskedLM(
        RoFormerConfig(**{k: v for k, v in hub_config.items() if k != "architectures"})
    )
    _perturb(model, seed)
    sd = {k: v for k, v in model.state_dict().items() if "embed_positions" not in k}
    _save(path, sd, fmt)
    (path / "config.json").write_text(json.dumps(hub_config, indent=2), encoding="utf-8")
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "RoFormerTokenizer", "do_lower_case": True}), encoding="utf-8"
    )
    _write_vocab(path, vocab)
    return path


def build_simbert(
    path: Path,
    seed: int = 5,
    with_pooler: bool = True,
    config: dict[str, Any] | None = None,
    sep_bias: float = 0.0,
    **sizes: int,
) -> Path:
    """SimBERT layout: BertForMaskedLM keys plus bert.pooler.dense.*, a char vocab and pooler_activation
    linear (without the pooler: a plain char BERT). `config` overrides config.json fields; `sizes` the
    dimensions (default hidden 40, 5 heads); `sep_bias` as for `build_roformer_sim`."""
    from transformers import BertConfig, BertForMaskedLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = char_vocab()
    dims = {**TINY, "hidden_size": 40, "num_attention_heads": 5, **sizes}
    hub_config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": dims["hidden_size"],
        "num_attention_heads": dims["num_attention_heads"],
        "intermediate_size": dims["intermediate_size"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "vocab_size": len(vocab),
        "pad_token_id": 0,
        "pooler_activation": "linear",
        **(config or {}),
    }
    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(**{k: v for k, v in hub_config.items() if k != "architectures"}))
    _perturb(model, seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if with_pooler:
        g = torch.Generator().manual_seed(seed + 1)
        h = hub_config["hidden_size"]
        sd["bert.pooler.dense.weight"] = 0.3 * torch.randn(h, h, generator=g)
        sd["bert.pooler.dense.bias"] = 0.1 * torch.randn(h, generator=g)
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"]
    for key in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        if key in sd:
            sd[key][SEP_ID] += sep_bias
    _save(path, sd, "bin")
    (path / "config.json").write_text(json.dumps(hub_config), encoding="utf-8")
    _write_vocab(path, vocab)
    return path


def _save(path: Path, sd: dict[str, torch.Tensor], fmt: str) -> None:
    if fmt == "bin":
        torch.save(sd, path / "pytorch_model.bin")
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        # safetensors refuses shared storage: store the tied decoder as its own copy, as save_pretrained does
        save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path / "model.safetensors"))
    else:
        raise ValueError(fmt)
    os.sync()


OFFLINE_SEP_BIAS = 10.0  # random weights never say [SEP]: this ends a generated sentence after ~5 tokens


@dataclass(frozen=True)
class DemoLayout:
    """A family `simcli demo-model` writes: its builder and whether the result can generate."""

    build: Callable[..., Path]
    generates: bool
    layout: str  # what it imitates, for --help


DEMO_FAMILIES: dict[DemoFamily, DemoLayout] = {
    "roformer-sim": DemoLayout(build_roformer_sim, True, "junnyu/roformer_chinese_sim_char_*"),
    "wobert": DemoLayout(build_wobert, False, "junnyu/wobert_chinese_plus_base (jieba word vocab)"),
    "roformer-word": DemoLayout(
        partial(build_roformer_mlm, word=True), False, "junnyu/roformer_chinese_base"
    ),
    "roformer-char": DemoLayout(
        partial(build_roformer_mlm, word=False), False, "junnyu/roformer_chinese_char_base"
    ),
    "simbert": DemoLayout(build_simbert, True, "a SimBERT port (BERT with a linear pooler)"),
    "bert": DemoLayout(partial(build_simbert, with_pooler=False), False, "a plain Chinese char BERT"),
}


def build_offline(
    family: DemoFamily, path: Path, *, hidden: int = 384, heads: int = 6, layers: int = 2
) -> Path:
    """The README's offline model (what `simcli demo-model DIR --family F` writes into a staged folder): wide
    enough for every README example (`--dim 256`, `--whiten none,full,256`, the Python API's whitening to 256),
    RoFormer-Sim small's width and heads, two layers to stay fast. Generating families get a [SEP] bias so
    that a sampled sentence ends."""
    fam = DEMO_FAMILIES[family]
    sizes = {"hidden_size": hidden, "num_attention_heads": heads, "num_hidden_layers": layers}
    extra = {"sep_bias": OFFLINE_SEP_BIAS} if fam.generates else {}
    return fam.build(path, **sizes, intermediate_size=4 * hidden, **extra)


def check_sizes(hidden: int, heads: int) -> None:
    """Refuse a width that does not split into heads of an even size (rotary position pairs)."""
    if hidden % heads or (hidden // heads) % 2:
        raise UsageError(
            f"--hidden {hidden} must split into --heads {heads} heads of an even size (rotary pairs)"
        )


def write_demo_model(
    out: Path,
    family: DemoFamily = "roformer-sim",
    *,
    hidden: int = 384,
    heads: int = 6,
    layers: int = 2,
    overwrite: bool = False,
) -> Path:
    """Write a random checkpoint of `family` to `out`, atomically: built in a folder beside it, renamed into
    place (with `overwrite`, replacing a model folder, never a folder that holds no config.json).

    Raises:
        UsageError: an unknown family or sizes that do not fit.
        OutputExists: `out` is a file, or a non-empty folder (without `overwrite`, or not a model's).
    """
    if family not in DEMO_FAMILIES:
        raise UsageError(f"--family {family!r}: expected one of {', '.join(DEMO_FAMILIES)}")
    check_sizes(hidden, heads)
    if out.exists() and not out.is_dir():
        raise OutputExists(f"{out}: a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExists(f"{out}: folder is not empty (use --overwrite to replace the model there)")
        if not (out / "config.json").is_file():
            raise OutputExists(f"{out}: folder holds no model (no config.json): not replacing it")
    with staged_folder(out) as stage:
        build_offline(family, stage, hidden=hidden, heads=heads, layers=layers)
    return out
