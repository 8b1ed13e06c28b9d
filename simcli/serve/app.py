"""The HTTP layer: parse, call the same library functions as the CLI, serialise (so the CLI and the
server can never disagree).

Endpoints: POST /v1/embeddings and GET /v1/models (OpenAI-compatible), POST /search (`simcli query --json`
records), POST /similar (`simcli similar --json`), POST /generate (`simcli generate --json`), GET /health,
GET /metrics (Prometheus). The model runs only on the batcher's thread; tokenising, faiss searches and
whitening run in the thread pool; the event loop only parses and serialises.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from simcli.errors import SimcliError
from simcli.heap import HeapTrimmer
from simcli.serve.api_errors import APIError, bad_request, from_simcli
from simcli.serve.batcher import Batcher
from simcli.serve.metrics import CONTENT_TYPE, Metrics
from simcli.serve.options import ServeOptions
from simcli.serve.registry import Registry, ServedModel
from simcli.serve.schemas import (
    EmbeddingsRequest,
    GenerateRequest,
    SearchRequest,
    SimilarRequest,
    texts_field,
)

log = logging.getLogger("simcli.serve")
ENDPOINTS = ("/v1/embeddings", "/v1/models", "/search", "/similar", "/generate", "/health", "/metrics")
Body = TypeVar("Body", bound=BaseModel)
Scope = MutableMapping[str, Any]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def endpoint_label(path: str) -> str:
    if path.startswith("/v1/models"):
        return "/v1/models"
    return path if path in ENDPOINTS else "other"  # bounded label values, whatever clients ask for


class _Observe:
    """ASGI middleware: requests by endpoint and status, and their latency."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        label = endpoint_label(scope["path"])
        self.metrics.in_flight.labels(label).inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.in_flight.labels(label).dec()
            self.metrics.requests.labels(label, str(status[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)


class Service:
    """The app's state: options, what is loaded, the batcher and the metrics."""

    def __init__(self, registry: Registry, options: ServeOptions) -> None:
        self.registry = registry
        self.options = options
        self.metrics = Metrics()
        self.batcher = Batcher(
            max_batch_tokens=options.encoder.batch_tokens,
            max_wait_ms=options.max_wait_ms,
            max_queue=options.max_queue,
            on_batch=self.metrics.batch,
            on_depth=self.metrics.queue_depth.set,
            trimmer=HeapTrimmer(
                options.trim_interval_s,
                on_trim=self.metrics.heap_trims.inc,
                idle_only=any(e.device.type == "cuda" for e in registry.encoders),
            ),
        )
        self.started = int(time.time())
        self._key = options.api_key.encode() if options.api_key else None

    # -- request plumbing -------------------------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # constant-time comparison: the time taken says nothing about how much of the key matched
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._key):
            raise APIError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )

    async def body(self, request: Request, model: type[Body]) -> Body:
        """The JSON body, read within --max-body-bytes and validated (whatever the Content-Type says, so
        `curl -d` works)."""
        self.check_key(request)
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(
                413, f"request body of {declared} bytes is over the {limit}-byte limit", code="too_large"
            )
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise APIError(413, f"request body is over the {limit}-byte limit", code="too_large")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise bad_request(f"malformed JSON body: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise bad_request("the body must be a JSON object", code="invalid_json")
        try:
            return model.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or None
            raise bad_request(f"{where}: {err['msg']}" if where else err["msg"], where) from None

    async def encode(self, model: ServedModel, texts: list[str]) -> tuple[np.ndarray, int, int]:
        """(raw vectors, tokens, truncated texts): tokenised in the thread pool, encoded by the batcher."""
        enc = model.encoder
        batch = await run_in_threadpool(enc.tokenizer.encode_batch, texts, enc.max_length)
        future = self.batcher.encode(enc, batch.ids)
        raw = await asyncio.wrap_future(future)
        return raw, sum(len(r) for r in batch.ids), batch.truncated

    async def on_model_thread(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self.batcher.call(fn))


def create_app(registry: Registry, options: ServeOptions) -> FastAPI:
    """The FastAPI app serving `registry` (already loaded) with `options`."""
    service = Service(registry, options)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for in-flight requests: drain what is queued
            await run_in_threadpool(service.batcher.close)
            service.metrics.close()

    app = FastAPI(title="simcli", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service
    app.add_middleware(_Observe, metrics=service.metrics)
    _errors(app, service)
    _routes(app, service)
    return app


def _errors(app: FastAPI, service: Service) -> None:
    def refuse(request: Request, e: APIError) -> Response:
        service.metrics.errors.labels(endpoint_label(request.url.path), e.code or str(e.status)).inc()
        return _json(e.body(), e.status, e.headers)

    async def api_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, APIError)
        return refuse(request, e)

    async def simcli_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, SimcliError)
        return refuse(request, from_simcli(e))

    async def crash(request: Request, e: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return refuse(
            request, APIError(500, f"internal error: {type(e).__name__}: {e}", code="internal_error")
        )

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(SimcliError, simcli_error)
    app.add_exception_handler(Exception, crash)


def _routes(app: FastAPI, service: Service) -> None:
    """Every endpoint, one group at a time (OpenAI-compatible, index and text, status)."""
    _openai_routes(app, service)
    _text_routes(app, service)
    _status_routes(app, service)


def _openai_routes(app: FastAPI, service: Service) -> None:
    """POST /v1/embeddings, GET /v1/models and /v1/models/{name}."""
    reg, opts = service.registry, service.options

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        """OpenAI-compatible embeddings."""
        body = await service.body(request, EmbeddingsRequest)
        texts = texts_field(body.input, "input", opts.max_inputs)
        model = reg.model(body.model)
        if body.dimensions is not None and body.dimensions < 1:
            raise bad_request("dimensions must be at least 1", "dimensions")
        raw, tokens, truncated = await service.encode(model, texts)
        vectors = model.finish(raw, normalize=body.normalize, dimensions=body.dimensions)
        if body.encoding_format == "base64":
            little = np.ascontiguousarray(vectors, dtype="<f4")
            values: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
        else:
            values = vectors.tolist()
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_inputs": truncated}
        return _json(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(values)],
                "model": model.model_id,
                "usage": usage,
            }
        )

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": service.started, "owned_by": "simcli"}

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        """The model names `model` may take (OpenAI-compatible)."""
        service.check_key(request)
        return _json({"object": "list", "data": [model_card(n) for n in reg.models]})

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> Response:
        service.check_key(request)
        reg.model(name)
        return _json(model_card(name))


def _text_routes(app: FastAPI, service: Service) -> None:
    """POST /search, /similar and /generate: the records of `simcli query`, `similar` and `generate`."""
    reg, opts = service.registry, service.options

    @app.post("/search")
    async def search(request: Request) -> Response:
        """The k nearest indexed texts of each query: the records of `simcli query --json`."""
        body = await service.body(request, SearchRequest)
        served = reg.index(body.index)
        queries = texts_field(body.queries, "queries", opts.max_inputs)
        raw, _, _ = await service.encode(served.model, queries)
        params = {n: v for n, v in (("nprobe", body.nprobe), ("efSearch", body.ef_search)) if v is not None}
        generation, results = await run_in_threadpool(
            served.search, raw, body.k, body.min_score, params or None, body.rerank, body.candidates
        )
        records = [
            {"query": q, "results": [h.to_json() for h in hits]}
            for q, hits in zip(queries, results, strict=True)
        ]
        return _json({"object": "list", "index": served.name, "generation": generation, "data": records})

    @app.post("/similar")
    async def similar(request: Request) -> Response:
        """Cosine of two texts, or the matrix of several: `simcli similar --json`."""
        body = await service.body(request, SimilarRequest)
        texts = texts_field(body.texts, "texts", opts.max_inputs, min_count=2)
        model = reg.model(body.model)
        raw, _, _ = await service.encode(model, texts)
        x = model.finish(raw, normalize=True)
        m = np.clip(x @ x.T, -1.0, 1.0)
        if len(texts) == 2:
            return _json({"a": texts[0], "b": texts[1], "cosine": round(float(m[0, 1]), 6)})
        return _json({"texts": texts, "cosine": [[round(float(v), 6) for v in row] for row in m]})

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        """Similar sentences from RoFormer-Sim's UniLM head: the records of `simcli generate --json`."""
        body = await service.body(request, GenerateRequest)
        texts = texts_field(body.texts, "texts", opts.max_inputs)
        model = reg.model(body.model)
        if not model.can_generate:
            from simcli.models.unilm import check_can_generate

            try:
                check_can_generate(model.encoder.checkpoint)
            except SimcliError as e:
                raise APIError(400, str(e), param="model", code="cannot_generate") from None
        from simcli.paraphrase import GenerationConfig

        try:  # the sampling options, checked once as the CLI checks them
            config = GenerationConfig(**body.model_dump(exclude={"texts", "model"}))
        except SimcliError as e:
            raise from_simcli(e) from None
        results = await service.on_model_thread(lambda: model.paraphraser().generate(texts, config))
        data = [
            {"text": t, "paraphrases": [{"text": p.text, "score": round(p.score, 6)} for p in found]}
            for t, found in zip(texts, results, strict=True)
        ]
        return _json({"object": "list", "model": model.model_id, "data": data})


def _status_routes(app: FastAPI, service: Service) -> None:
    """GET /health and /metrics."""
    reg = service.registry

    @app.get("/health")
    async def health() -> Response:
        """200 once every model and index is loaded (they are loaded before the port opens)."""
        return _json(
            {
                "status": "ok",
                "models": sorted(reg.models),
                "indexes": [i.info() for i in reg.indexes.values()],
                "queue_depth": service.batcher.depth,
                "worker": os.getpid(),  # which of the --workers processes answered
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)
