"""Writing a trained model back as a checkpoint in its input's own layout, atomically.

The weights file keeps the original's key names (the hub's `roformer.` / `bert.` prefix or none, the
pooler, the MLM head with its decoder tied to the word embeddings) and is written as model.safetensors;
every other file of the input folder (config.json, vocab.txt / tokenizer.json, tokenizer configs, the
sentence-transformers module folders, README) is copied unchanged, so every simcli command loads the
result as it loads the original.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from simcli import io
from simcli.errors import OutputExists
from simcli.io import atomic_write_json
from simcli.models.loading import WEIGHT_FILES, Checkpoint
from simcli.models.native import OPTIONAL_KEYS
from simcli.models.sentence import SentenceModel

RECORD = "training.json"
CLASSIFIER = "classifier.safetensors"
#: Files of the input folder not copied: its weights (replaced), other frameworks' weights (now stale), an
#: earlier run's training files, and hidden files (simcli's fetch marker).
SKIPPED_SUFFIXES = (".h5", ".msgpack", ".ot", ".onnx", ".ckpt", ".index")
SKIPPED_NAMES = {*WEIGHT_FILES, RECORD, CLASSIFIER, "model.safetensors.index.json", "onnx", "openvino"}


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that holds anything, unless --overwrite and it is an earlier training output."""
    if out.exists() and not out.is_dir():
        raise OutputExists(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExists(f"--out {out} is not empty (use --overwrite to replace a trained model there)")
        if not (out / RECORD).is_file():
            raise OutputExists(f"--out {out} is not empty and holds no {RECORD}: not replacing it")


def trained_state_dict(
    ckpt: Checkpoint, model: SentenceModel, mlm_head: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """The original weights file's tensors, with every trained one replaced under its original key."""
    original = ckpt.state_dict()
    model_type = str(ckpt.config["model_type"])
    prefix = f"{model_type}." if any(k.startswith(f"{model_type}.") for k in original) else ""
    out = dict(original)

    def put(key: str, value: torch.Tensor) -> None:
        old = original.get(key)
        dtype = old.dtype if old is not None and old.is_floating_point() else value.dtype
        out[key] = value.detach().to("cpu", dtype).contiguous().clone()

    for k, v in model.backbone.state_dict().items():
        if k in OPTIONAL_KEYS and prefix + k not in original:
            continue  # computed, not stored (the rotary table)
        put(prefix + k, v)
    if model.pooler is not None:
        put(prefix + "pooler.dense.weight", model.pooler.weight)
        put(prefix + "pooler.dense.bias", model.pooler.bias)
    emb = model.backbone.state_dict()["embeddings.word_embeddings.weight"]
    decoder = "cls.predictions.decoder.weight"
    old_emb = original.get(prefix + "embeddings.word_embeddings.weight")
    if decoder in original and old_emb is not None and torch.equal(original[decoder], old_emb):
        put(decoder, emb)  # keep the decoder tied to the (trained) word embeddings
    if mlm_head is not None:  # distillation trains the head too; written under the keys the original has
        head = mlm_head.state_dict()
        for k, v in head.items():
            if k not in ("predictions.decoder.weight", "predictions.bias") and "cls." + k in original:
                put("cls." + k, v)
        if "cls.predictions.bias" in original:  # the one the forward uses is decoder.bias
            put("cls.predictions.bias", head["predictions.decoder.bias"])
        untied = "predictions.decoder.weight"
        if decoder in original and not (old_emb is not None and torch.equal(original[decoder], old_emb)):
            put(decoder, head[untied])
    # untouched tensors are copied too: safetensors refuses tensors that share storage (tied weights)
    replaced = {k for k in out if original.get(k) is not out[k]}
    return {k: v if k in replaced else v.contiguous().clone() for k, v in out.items()}


def _copy_layout(src: Path, dst: Path, skip: Callable[[Path], bool] = lambda _p: False) -> None:
    for item in sorted(src.iterdir()):
        if item.name in SKIPPED_NAMES or item.suffix in SKIPPED_SUFFIXES or item.name.startswith("."):
            continue
        if skip(item):
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)


@contextmanager
def staged_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """`simcli.io.staged_folder` for a training output, after `check_out` allowed replacing `out`."""
    check_out(out, overwrite)
    with io.staged_folder(out) as stage:
        yield stage


def write_checkpoint(
    folder: Path,
    ckpt: Checkpoint,
    model: SentenceModel,
    record: dict[str, Any],
    *,
    head: torch.nn.Module | None = None,
    mlm_head: torch.nn.Module | None = None,
) -> None:
    """Fill `folder` (a staged, empty folder): the input's files, the trained weights, the classifier head
    (`classifier.safetensors`, key `weight`: (5, 3 dim)) and the training record."""
    from safetensors.torch import save_file

    _copy_layout(ckpt.path, folder)
    weights = trained_state_dict(ckpt, model, mlm_head)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if head is not None:
        save_file(
            {
                k.removeprefix("dense."): v.detach().cpu().float().contiguous()
                for k, v in head.state_dict().items()
            },
            str(folder / CLASSIFIER),
        )
    atomic_write_json(folder / RECORD, record)


# -- a generator's output: the standard layout of its family -----------------------------------------------
#: Files that state another sentence pooling (sentence-transformers modules): a generator's is its pooler.
POOLING_FILES = {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"}


def _states_pooling(item: Path) -> bool:
    return item.name in POOLING_FILES or (item.is_dir() and re.fullmatch(r"\d+_\w+", item.name) is not None)


def generator_config(config: dict[str, Any], sep_id: int) -> dict[str, Any]:
    """config.json of a trained generator: a BERT becomes SimBERT (`pooler_activation: linear`, which is how
    simcli tells SimBERT from a BERT with an NSP pooler), a RoFormer the RoFormer-Sim hub port's config."""
    c = {k: v for k, v in config.items() if k != "uniem_embedding_strategy"}  # m3e's pooling statement
    c["pooler_activation"] = "linear"
    if c["model_type"] == "roformer":
        c.update(architectures=["RoFormerForCausalLM"], is_decoder=True, eos_token_id=sep_id)
        c.setdefault("rotary_value", False)
    else:
        c["architectures"] = ["BertForMaskedLM"]
    return c


def generator_state_dict(
    ckpt: Checkpoint, model: SentenceModel, mlm_head: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """The trained weights under the hub keys of the family: `bert.` / `roformer.` backbone and pooler, and
    the MLM head `cls.predictions.*` (decoder weight = the word embeddings when tied). The dtype is the
    original word embeddings'."""
    model_type = str(ckpt.config["model_type"])
    original = ckpt.state_dict()
    emb_key = next(k for k in original if k.endswith("embeddings.word_embeddings.weight"))
    dtype = original[emb_key].dtype if original[emb_key].is_floating_point() else torch.float32
    out: dict[str, torch.Tensor] = {}
    for k, v in model.backbone.state_dict().items():
        if k not in OPTIONAL_KEYS:  # the rotary table is computed, not stored (as on the hub)
            out[f"{model_type}.{k}"] = v
    assert model.pooler is not None
    out[f"{model_type}.pooler.dense.weight"] = model.pooler.weight
    out[f"{model_type}.pooler.dense.bias"] = model.pooler.bias
    head = mlm_head.state_dict()
    for k in ("transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight"):
        out[f"cls.predictions.{k}"] = head[f"predictions.{k}"]
    out["cls.predictions.transform.LayerNorm.bias"] = head["predictions.transform.LayerNorm.bias"]
    out["cls.predictions.decoder.weight"] = head["predictions.decoder.weight"]
    out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"] = head["predictions.decoder.bias"]
    # each tensor its own copy: safetensors refuses tensors that share storage (the tied decoder)
    return {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in out.items()}


def write_generator_checkpoint(
    folder: Path, ckpt: Checkpoint, model: SentenceModel, mlm_head: torch.nn.Module, record: dict[str, Any]
) -> None:
    """Fill `folder` (staged, empty) with a generator in its family's standard layout: the input's tokenizer
    files and other files (not its pooling statements), config.json, model.safetensors, training.json."""
    from safetensors.torch import save_file

    from simcli.models.tokenizer_base import read_vocab

    _copy_layout(ckpt.path, folder, skip=_states_pooling)
    sep_id = read_vocab(ckpt.vocab_path)["[SEP]"]
    atomic_write_json(folder / "config.json", generator_config(ckpt.config, sep_id))
    weights = generator_state_dict(ckpt, model, mlm_head)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    atomic_write_json(folder / RECORD, record)
