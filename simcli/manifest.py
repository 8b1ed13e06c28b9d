"""Manifests: the JSON record every artefact carries, and the checks that artefacts fit together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simcli import __version__
from simcli.errors import CorruptArtifact, ManifestMismatch
from simcli.types import ModelSpec, dtype_label

# Fields of ModelSpec that change the vectors; the model name is left out on purpose: the same
# checkpoint loaded from a hub id or a local copy has the same weights hash.
_DECIDING_FIELDS = ("weights_sha256", "family", "tokenizer", "pooling", "max_length", "dim")


def new_manifest(kind: str, **fields: Any) -> dict[str, Any]:
    """A manifest dict with the common header (kind, simcli version) and the given fields."""
    return {"kind": kind, "simcli_version": __version__, **fields}


def computed_with(encoder: Any) -> dict[str, str]:
    """The device and dtype an encoder computes with, as manifests record them (informational, never checked:
    they change the numbers by rounding only)."""
    return {
        "device": str(getattr(encoder, "device", "unknown")),
        "dtype": dtype_label(getattr(encoder, "dtype", "unknown")),
    }


def read_manifest(path: Path, kind: str) -> dict[str, Any]:
    """Read a manifest JSON file and check that it is of the expected kind."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptArtifact(f"{path}: manifest missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptArtifact(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(data, dict) or data.get("kind") != kind:
        found = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise CorruptArtifact(f"{path}: expected a {kind} manifest, found {found!r}")
    return data


def check_same_model(expected: ModelSpec, found: ModelSpec, what: str, target: str | None = None) -> None:
    """Raise ManifestMismatch naming every deciding field where `found` differs from `expected`.

    Args:
        expected: the spec of the artefact being extended or queried (e.g. the index).
        found: the spec of the thing that must fit it (e.g. the encoder or a whitening file).
        what: a short name of `found` for the message, e.g. "whitening file w.whiten".
        target: a short name of `expected` (default: "(expected <its model>)").
    """
    diffs = [
        f"{name} {getattr(found, name)!r} != {getattr(expected, name)!r}"
        for name in _DECIDING_FIELDS
        if getattr(found, name) != getattr(expected, name)
    ]
    if diffs:
        target = target or f"(expected {expected.model})"
        raise ManifestMismatch(f"{what} does not fit {target}: " + "; ".join(diffs))
