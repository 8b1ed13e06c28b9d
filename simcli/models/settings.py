"""What a checkpoint folder states about how to run it, and where each statement comes from.

Tokenizer settings come from `tokenizer_config.json` (transformers' BertTokenizer keys), else from the
normalizer of a `tokenizer.json`, else simcli's default (lower-case: the published RoFormer-Sim / WoBERT
checkpoints ship no tokenizer config and were trained lower-cased). Pooling comes from a sentence-transformers
folder (`modules.json` + the Pooling module's `config.json`, a Normalize module) or from m3e's
`uniem_embedding_strategy` in config.json. Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simcli.errors import ModelError

# Where a resolved setting came from (shown by `simcli info`).
CONFIG = "config"
TOKENIZER_CONFIG = "tokenizer config"
TOKENIZER_JSON = "tokenizer.json"
ST_MODULES = "sentence-transformers modules"
DEFAULT = "simcli default"

# sentence-transformers pooling modes (sentence_transformers Pooling.POOLING_MODES) -> simcli's names.
ST_POOLINGS = {
    "cls": "cls",
    "mean": "last-avg",
    "max": "max",
    "mean_sqrt_len_tokens": "mean-sqrt-len",
    "weightedmean": "weighted-mean",
    "lasttoken": "last-token",
}
# The boolean keys older sentence-transformers versions write, in their order.
ST_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# m3e / uniem's `uniem_embedding_strategy` (github.com/wangyuxinwhy/uniem) -> simcli's names.
UNIEM_POOLINGS = {"last_mean": "last-avg", "cls": "cls", "first_last_mean": "first-last-avg"}
ST_MODULE_TYPES = ("Transformer", "Pooling", "Normalize")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, None when the file does not exist; ModelError when it is unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: unreadable ({e})") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


@dataclass(frozen=True)
class TokenizerSettings:
    """BERT tokenisation switches, as transformers' BertTokenizer and `tokenizers`' BertNormalizer name them."""

    lowercase: bool = True
    strip_accents: bool | None = None  # None: strip when lower-casing (BERT's rule)
    chinese_chars: bool = True  # a space around each CJK character
    model_max_length: int | None = None  # tokens the checkpoint's tokenizer allows, if it says
    sources: dict[str, str] = field(default_factory=dict, compare=False)  # setting -> where it came from


# tokenizer_config.json key / tokenizer.json normalizer key for each setting.
_TOKENIZER_KEYS = {
    "lowercase": ("do_lower_case", "lowercase"),
    "strip_accents": ("strip_accents", "strip_accents"),
    "chinese_chars": ("tokenize_chinese_chars", "handle_chinese_chars"),
}
# transformers writes a huge sentinel for "no limit".
_NO_LIMIT = 10**12


def tokenizer_settings(folder: Path) -> TokenizerSettings:
    """The tokenizer switches `folder` states: tokenizer_config.json, then tokenizer.json's BertNormalizer,
    then simcli's defaults; a sentence-transformers `do_lower_case: true` lower-cases the input as well."""
    tok_config = read_json(folder / "tokenizer_config.json") or {}
    normalizer = _bert_normalizer(folder)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (config_key, normalizer_key) in _TOKENIZER_KEYS.items():
        if config_key in tok_config:
            values[name], sources[name] = tok_config[config_key], TOKENIZER_CONFIG
        elif normalizer_key in normalizer:
            values[name], sources[name] = normalizer[normalizer_key], TOKENIZER_JSON
        else:
            sources[name] = DEFAULT
    for name in ("lowercase", "chinese_chars"):
        if name in values and not isinstance(values[name], bool):
            raise ModelError(f"{folder}: tokenizer setting {_TOKENIZER_KEYS[name][0]} is not true/false")
    if values.get("strip_accents") not in (None, True, False):
        raise ModelError(f"{folder}: tokenizer setting strip_accents is not true, false or null")
    st_config = read_json(folder / "sentence_bert_config.json") or {}
    if st_config.get("do_lower_case") is True:  # sentence-transformers lower-cases the text itself
        values["lowercase"], sources["lowercase"] = True, ST_MODULES
    limit = tok_config.get("model_max_length")
    if isinstance(limit, (int, float)) and 0 < limit < _NO_LIMIT:
        values["model_max_length"], sources["model_max_length"] = int(limit), TOKENIZER_CONFIG
    return TokenizerSettings(**values, sources=sources)


def _bert_normalizer(folder: Path) -> dict[str, Any]:
    data = read_json(folder / "tokenizer.json")
    normalizer = (data or {}).get("normalizer") or {}
    return normalizer if normalizer.get("type") == "BertNormalizer" else {}


def tokenizer_json_vocab(path: Path) -> dict[str, int]:
    """token -> id of the WordPiece model in a `tokenizer.json` (ModelError for any other model type)."""
    data = read_json(path) or {}
    model = data.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ModelError(
            f"{path}: holds a {model.get('type') or 'unknown'} tokenizer model; simcli loads WordPiece (BERT) "
            "vocabularies"
        )
    return {str(t): int(i) for t, i in model["vocab"].items()}


@dataclass(frozen=True)
class PoolingStatement:
    """The pooling a checkpoint states for its sentence vectors."""

    mode: str  # simcli's name
    source: str  # ST_MODULES or CONFIG
    normalize: bool = False  # a Normalize module follows the pooling
    include_prompt: bool = True
    max_seq_length: int | None = None  # sentence_bert_config.json


def pooling_statement(folder: Path, config: dict[str, Any]) -> PoolingStatement | None:
    """The pooling `folder` states, None when it states none; ModelError for one simcli cannot run."""
    modules = read_json_list(folder / "modules.json")
    if modules is not None:
        return _sentence_transformers_pooling(folder, modules)
    strategy = config.get("uniem_embedding_strategy")
    if strategy is None:
        return None
    if strategy not in UNIEM_POOLINGS:
        raise ModelError(
            f"{folder / 'config.json'}: uniem_embedding_strategy {strategy!r} is not supported "
            f"(simcli runs {', '.join(UNIEM_POOLINGS)})"
        )
    return PoolingStatement(mode=UNIEM_POOLINGS[strategy], source=CONFIG)


def read_json_list(path: Path) -> list[Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: unreadable ({e})") from e
    if not isinstance(data, list):
        raise ModelError(f"{path}: expected a JSON list of modules")
    return data


def _sentence_transformers_pooling(folder: Path, modules: list[Any]) -> PoolingStatement:
    where = folder / "modules.json"
    kinds: list[tuple[str, str]] = []  # (type's last name, path)
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1] if isinstance(m, dict) else ""
        if kind not in ST_MODULE_TYPES:
            raise ModelError(
                f"{where}: module {kind or m!r} is not supported (simcli runs {', '.join(ST_MODULE_TYPES)})"
            )
        kinds.append((kind, str(m.get("path", ""))))
    order = [k for k, _ in kinds]
    if order[:2] != ["Transformer", "Pooling"] or order[2:] not in ([], ["Normalize"]):
        raise ModelError(
            f"{where}: modules {' -> '.join(order)} are not supported (simcli runs Transformer -> Pooling "
            "[-> Normalize])"
        )
    if kinds[0][1] not in ("", "."):
        raise ModelError(
            f"{where}: the Transformer module lives in {kinds[0][1]!r}; simcli reads it from the folder"
        )
    pooling_config_path = folder / kinds[1][1] / "config.json"
    pooling_config = read_json(pooling_config_path)
    if pooling_config is None:
        raise ModelError(f"{pooling_config_path}: missing (modules.json names a Pooling module there)")
    modes = _st_modes(pooling_config)
    if len(modes) != 1 or modes[0] not in ST_POOLINGS:
        raise ModelError(
            f"{pooling_config_path}: pooling {'+'.join(modes) or 'none'} is not supported (simcli runs one of "
            f"{', '.join(ST_POOLINGS)}; a concatenation of several is not supported)"
        )
    include_prompt = pooling_config.get("include_prompt", True)
    st_model_config = read_json(folder / "config_sentence_transformers.json") or {}
    if st_model_config.get("default_prompt_name"):
        raise ModelError(
            f"{folder / 'config_sentence_transformers.json'}: default_prompt_name "
            f"{st_model_config['default_prompt_name']!r} is not supported (simcli adds no prompts)"
        )
    max_seq = (read_json(folder / "sentence_bert_config.json") or {}).get("max_seq_length")
    return PoolingStatement(
        mode=ST_POOLINGS[modes[0]],
        source=ST_MODULES,
        normalize=order[-1] == "Normalize",
        include_prompt=bool(include_prompt),
        max_seq_length=int(max_seq) if isinstance(max_seq, int) else None,
    )


def _st_modes(pooling_config: dict[str, Any]) -> list[str]:
    """Pooling modes of a Pooling module's config: `pooling_mode` (str or list, newer) or the booleans."""
    if "pooling_mode" in pooling_config:
        mode = pooling_config["pooling_mode"]
        return [str(m) for m in mode] if isinstance(mode, list) else [str(mode)]
    return [mode for key, mode in ST_POOLING_FLAGS.items() if pooling_config.get(key) is True]
