"""Request bodies. Texts are checked by `texts_field` for one-line messages naming the bad item; the
other fields by pydantic in strict mode (no "5" for 5). Unknown fields are ignored, as OpenAI clients and
LangChain send extras."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from simcli.paraphrase import GenerationConfig
from simcli.serve.api_errors import bad_request


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class EmbeddingsRequest(_Body):
    """OpenAI's embeddings request, plus `normalize` (simcli's extension, as in text-embeddings-inference):
    false returns the vectors before the final L2 normalisation (raw pooled, or whitened)."""

    input: Any = None
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    normalize: bool = True


class SearchRequest(_Body):
    """`simcli query`'s options: the index by name, queries, k, min_score, nprobe and ef_search."""

    index: str
    queries: Any = None
    k: int = Field(10, ge=1, le=10_000)
    min_score: float | None = None
    nprobe: int | None = Field(None, ge=1)  # IVF lists to visit, this request only (default: tuned at build)
    ef_search: int | None = Field(None, ge=1)  # HNSW search breadth, this request only
    rerank: Literal["none", "csls"] = "none"  # csls: needs the index's radii (`simcli index hubness`)
    candidates: int | None = Field(None, ge=1)  # cosine candidates CSLS re-ranks (default max(4k, 50))


class SimilarRequest(_Body):
    """`simcli similar`: two texts (their cosine) or more (the matrix)."""

    texts: Any = None
    model: str | None = None


# `simcli generate`'s options: the fields of GenerationConfig (one list, with its types and defaults),
# plus the texts and the model's name.
_HINTS = typing.get_type_hints(GenerationConfig)
GenerateRequest = create_model(
    "GenerateRequest",
    __base__=_Body,
    texts=(Any, None),
    model=(str | None, None),
    **{f.name: (_HINTS[f.name], f.default) for f in dataclasses.fields(GenerationConfig)},  # type: ignore[call-overload]
)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def texts_field(value: Any, field: str, max_inputs: int, min_count: int = 1) -> list[str]:
    """The texts of a request field that takes a string or a list of strings (400 naming what is wrong)."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise bad_request(f"{field} must be a string or a list of strings, got {_json_type(value)}", field)
    if not items:
        raise bad_request(f"{field} is an empty list: give at least one text", field)
    if len(items) < min_count:
        raise bad_request(f"{field} needs at least {min_count} texts, got {len(items)}", field)
    if len(items) > max_inputs:
        raise bad_request(
            f"{field} has {len(items)} texts, more than this server's --max-inputs {max_inputs}",
            field,
            code="too_many_inputs",
        )
    for i, t in enumerate(items):
        if isinstance(t, int | list) and not isinstance(t, bool):
            raise bad_request(
                f"{field}[{i}]: token ids are not supported (they belong to another tokenizer): send text",
                field,
            )
        if not isinstance(t, str):
            raise bad_request(f"{field}[{i}] must be a string, got {_json_type(t)}", field)
        if not t:
            raise bad_request(f"{field}[{i}] is an empty string", field)
    return items
