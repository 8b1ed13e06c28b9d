"""simcli: Chinese sentence embeddings, BERT-whitening, FAISS retrieval and similar-question generation.

The public API resolves lazily (PEP 562) so that `import simcli` and `simcli --help` stay fast:
torch, transformers, faiss and jieba are imported only when a function that needs them is used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load_encoder": "simcli.models.encoder",
    "Encoder": "simcli.models.encoder",
    "EncoderConfig": "simcli.types",
    "GenerationConfig": "simcli.paraphrase",
    "encode": "simcli.models.encoder",
    "Whitening": "simcli.whitening",
    "Index": "simcli.index",
    "generate": "simcli.paraphrase",
    "evaluate_sts": "simcli.evaluate",
    "train": "simcli.training",
    "distill": "simcli.training",
    "train_generator": "simcli.training",
    "TrainOptions": "simcli.training.options",
}

__all__ = [
    "Encoder",
    "EncoderConfig",
    "GenerationConfig",
    "Index",
    "TrainOptions",
    "Whitening",
    "__version__",
    "distill",
    "encode",
    "evaluate_sts",
    "generate",
    "load_encoder",
    "train",
    "train_generator",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'simcli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
