"""`simcli serve` over HTTP: the real server (uvicorn on a free port) called with the `openai` client and
httpx. Vectors equal the library's, /search equals `Index.search`, batched requests keep their own rows."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI

from simcli.heap import malloc_trim
from simcli.index import Index
from simcli.serve.options import ServeOptions
from tests.invoke import simcli
from tests.serving import Running, running_server

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CORPUS = ["花呗怎么还款", "借呗额度怎么提升", "花呗如何还款", "我喜欢北京", "今天天气很好", "信用卡怎么提额"]
QUERIES = ["花呗还款", "北京", "额度"]


def _build_index(corpus: list[str], model: Path, out: Path, *options: str) -> Path:
    src = out.with_suffix(".txt")
    src.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    r = simcli(
        "index", "build", str(src), "--model", str(model), "--out", str(out), "--dtype", "float32", *options
    )
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, roformer_sim_dir: Path) -> Running:
    """--model (the tiny RoFormer-Sim) and --index faq.idx built with it, an API key, --max-inputs 8."""
    root = tmp_path_factory.mktemp("served")
    faq = _build_index(CORPUS, roformer_sim_dir, root / "faq.idx")
    options = ServeOptions(
        model=str(roformer_sim_dir), indexes=[str(faq)], dtype="float32", api_key=KEY, max_inputs=8,
        max_body_bytes=4096, max_wait_ms=20,
    )  # fmt: skip
    with running_server(options) as running:
        yield running


@pytest.fixture(scope="module")
def encoder(roformer_sim_dir: Path):  # type: ignore[no-untyped-def]
    from simcli.models.encoder import load_encoder

    return load_encoder(str(roformer_sim_dir), dtype="float32")


def client(running: Running) -> OpenAI:
    return OpenAI(base_url=f"{running.url}/v1", api_key=KEY, max_retries=0)


def post(running: Running, path: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{running.url}{path}", json=body, headers=AUTH if headers is None else headers, timeout=60
    )


def assert_serves(running: Running) -> None:
    """A normal request right after a bad one is answered."""
    r = post(running, "/v1/embeddings", {"input": "你好"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 48


# -- /v1/embeddings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_openai_client_vectors_equal_library(served: Running, encoder, encoding_format) -> None:  # type: ignore[no-untyped-def]
    """The openai client (asking for base64 by default and decoding it itself) gets the library's L2-normalised vectors."""
    texts = ["花呗怎么还款", "借呗额度", "今天天气很好，我们去公园散步吧"]
    kwargs = {} if encoding_format is None else {"encoding_format": encoding_format}
    res = client(served).embeddings.create(model="simcli", input=texts, **kwargs)
    rows = [d.embedding for d in res.data]
    if encoding_format == "base64":  # asked for explicitly, the client hands the strings over as they came
        rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows]  # type: ignore[arg-type]
    got = np.array(rows)
    want = encoder.encode(texts, normalize=True)
    assert [d.index for d in res.data] == [0, 1, 2]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # real token counts: one token per CJK character and punctuation mark, plus [CLS] and [SEP]
    assert res.usage.prompt_tokens == sum(len(t) + 2 for t in texts) == res.usage.total_tokens
    assert res.model == encoder.spec.model  # the model that computed them, whatever name was asked for


def test_single_string_and_raw_extension_equal_encode_json(
    served: Running, roformer_sim_dir: Path, tmp_path: Path
) -> None:
    """`normalize: false` returns what `simcli encode --json` prints (raw pooled vectors); a bare string works."""
    src = tmp_path / "one.txt"
    src.write_text("借呗额度怎么提升\n", encoding="utf-8")
    r = simcli("encode", str(src), "--model", str(roformer_sim_dir), "--json", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout.splitlines()[0])["vector"]
    body = post(served, "/v1/embeddings", {"input": "借呗额度怎么提升", "normalize": False}).json()
    np.testing.assert_allclose(body["data"][0]["embedding"], printed, atol=1e-6)
    assert abs(np.linalg.norm(printed) - 1.0) > 1e-3, "premise: raw vectors are not unit length"


def test_base64_is_little_endian_float32(served: Running, encoder) -> None:  # type: ignore[no-untyped-def]
    body = post(served, "/v1/embeddings", {"input": ["我喜欢北京"], "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, encoder.encode(["我喜欢北京"], normalize=True)[0], atol=1e-6)


def test_long_text_is_truncated_and_reported(served: Running, encoder) -> None:  # type: ignore[no-untyped-def]
    long = "花呗怎么还款" * 30  # 180 characters, max length 64
    body = post(served, "/v1/embeddings", {"input": [long, "你好"]}).json()
    assert body["usage"] == {"prompt_tokens": 64 + 4, "total_tokens": 68, "truncated_inputs": 1}
    np.testing.assert_allclose(
        body["data"][0]["embedding"], encoder.encode([long], normalize=True)[0], atol=1e-6
    )


def test_models_lists_served_names(served: Running) -> None:
    ids = [m.id for m in client(served).models.list().data]
    assert ids == [served.service.registry.default.name, "simcli", "faq"]
    assert client(served).models.retrieve("faq").id == "faq"


def test_concurrent_clients_get_their_own_rows(served: Running, encoder) -> None:  # type: ignore[no-untyped-def]
    """16 threads x 4 requests of different texts and counts: each answer holds its own texts' vectors,
    in its own order, while the batcher merged requests (the premise, read from /metrics)."""
    pool = [
        "花呗",
        "借呗额度",
        "我喜欢北京",
        "今天天气很好",
        "信用卡",
        "怎么还款呢",
        "周末去哪里玩",
        "手机电池",
    ]
    want = dict(zip(pool, encoder.encode(pool, normalize=True), strict=True))
    errors: list[str] = []

    def worker(t: int) -> None:
        with httpx.Client(headers=AUTH, timeout=60) as c:
            for r in range(4):
                texts = [pool[(t * 3 + r + j) % len(pool)] for j in range(1 + (t + r) % 5)]
                got = c.post(f"{served.url}/v1/embeddings", json={"input": texts}).json()
                for d, text in zip(got["data"], texts, strict=True):
                    if not np.allclose(d["embedding"], want[text], atol=1e-6):
                        errors.append(f"thread {t} request {r}: row {d['index']} is not {text}")

    before = _metric(served, "simcli_batch_requests_sum") - _metric(served, "simcli_batch_requests_count")
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    merged = _metric(served, "simcli_batch_requests_sum") - _metric(served, "simcli_batch_requests_count")
    assert merged > before, "premise: some batch held more than one request"


def _metric(running: Running, name: str) -> float:
    text = httpx.get(f"{running.url}/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- bad requests: each gets its status, and the server answers right after -------------------------------
BAD = [
    ("malformed JSON", "/v1/embeddings", b'{"input": ["a",', AUTH, 400, "invalid_json"),
    ("not an object", "/v1/embeddings", b'["a"]', AUTH, 400, "invalid_json"),
    ("wrong input type", "/v1/embeddings", {"input": 5}, AUTH, 400, "invalid_value"),
    ("wrong item type", "/v1/embeddings", {"input": ["a", None]}, AUTH, 400, "invalid_value"),
    ("token ids", "/v1/embeddings", {"input": [101, 102]}, AUTH, 400, "invalid_value"),
    ("empty list", "/v1/embeddings", {"input": []}, AUTH, 400, "invalid_value"),
    ("empty string", "/v1/embeddings", {"input": ""}, AUTH, 400, "invalid_value"),
    ("missing input", "/v1/embeddings", {"model": "simcli"}, AUTH, 400, "invalid_value"),
    ("too many inputs", "/v1/embeddings", {"input": ["好"] * 9}, AUTH, 400, "too_many_inputs"),
    ("body too large", "/v1/embeddings", {"input": ["好" * 2000]}, AUTH, 413, "too_large"),
    (
        "bad encoding_format",
        "/v1/embeddings",
        {"input": "a", "encoding_format": "hex"},
        AUTH,
        400,
        "invalid_value",
    ),
    (
        "dimensions without whitening",
        "/v1/embeddings",
        {"input": "a", "dimensions": 8},
        AUTH,
        400,
        "invalid_value",
    ),
    ("unknown model", "/v1/embeddings", {"input": "a", "model": "gpt-4"}, AUTH, 404, "model_not_found"),
    ("missing key", "/v1/embeddings", {"input": "a"}, {}, 401, "invalid_api_key"),
    (
        "wrong key",
        "/v1/embeddings",
        {"input": "a"},
        {"Authorization": "Bearer s3cret-kex"},
        401,
        "invalid_api_key",
    ),
    ("unknown index", "/search", {"index": "nope", "queries": ["a"]}, AUTH, 404, "index_not_found"),
    ("k as a string", "/search", {"index": "faq", "queries": ["a"], "k": "3"}, AUTH, 400, "invalid_value"),
    ("k zero", "/search", {"index": "faq", "queries": ["a"], "k": 0}, AUTH, 400, "invalid_value"),
    ("one text to compare", "/similar", {"texts": ["a"]}, AUTH, 400, "invalid_value"),
    ("bad generate option", "/generate", {"texts": ["a"], "top_p": 0}, AUTH, 400, "UsageError"),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_request_gets_its_status_and_server_stays_up(
    served: Running, path, body, headers, status, code
) -> None:  # type: ignore[no-untyped-def]
    if isinstance(body, bytes):
        r = httpx.post(f"{served.url}{path}", content=body, headers=headers, timeout=60)
    else:
        r = post(served, path, body, headers)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "\n" not in err["message"]
    assert_serves(served)


def test_answers_name_the_model_and_unknown_names_are_openai_404s(
    tmp_path: Path, roformer_sim_dir: Path
) -> None:
    """Served from an index alone (`--index bq=DIR`): the default alias `simcli`, the index's name, the model's
    own name and no name at all answer with the model that computed the vectors (the one the index records),
    not the index's name; a name the server does not list is OpenAI's 404 model_not_found."""
    bq = _build_index(CORPUS, roformer_sim_dir, tmp_path / "BQ.idx")
    with running_server(ServeOptions(indexes=[f"bq={bq}"], dtype="float32")) as running:
        listed = [m["id"] for m in httpx.get(f"{running.url}/v1/models", timeout=60).json()["data"]]
        assert listed == ["bq", "simcli", str(roformer_sim_dir)]
        for name in ("simcli", "bq", str(roformer_sim_dir), None):
            body = {"input": "花呗怎么还款"} | ({} if name is None else {"model": name})
            r = post(running, "/v1/embeddings", body, headers={})
            assert r.status_code == 200 and r.json()["model"] == str(roformer_sim_dir), (name, r.text)
        r = post(running, "/v1/embeddings", {"input": "花呗怎么还款", "model": "BQ"}, headers={})
        assert r.status_code == 404
        assert r.json() == {
            "error": {
                "message": f"model 'BQ' is not served here (served: bq, simcli, {roformer_sim_dir})",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }


def test_a_whitened_index_answers_with_its_own_name(tmp_path: Path, roformer_sim_dir: Path) -> None:
    """An index that whitens its vectors answers with its own name (the default alias included): sending the bare
    model's name back would give the raw vectors, which differ."""
    bq = _build_index(CORPUS, roformer_sim_dir, tmp_path / "bq.idx", "--whiten", "4")
    with running_server(ServeOptions(indexes=[f"bq={bq}"], dtype="float32")) as running:
        answers = {}
        for name in ("simcli", "bq", str(roformer_sim_dir)):
            r = post(running, "/v1/embeddings", {"input": "花呗怎么还款", "model": name}, headers={})
            assert r.status_code == 200, r.text
            answers[name] = (r.json()["model"], r.json()["data"][0]["embedding"])
    assert [answers[n][0] for n in answers] == ["bq", "bq", str(roformer_sim_dir)]
    assert answers["simcli"][1] == answers["bq"][1] != answers[str(roformer_sim_dir)][1]


def test_openai_client_raises_the_api_errors(served: Running) -> None:
    import openai

    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        client(served).embeddings.create(model="gpt-4", input="你好")
    bad = OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model="simcli", input="你好")
    with pytest.raises(openai.BadRequestError, match="empty string"):
        client(served).embeddings.create(model="simcli", input=["a", ""])
    assert_serves(served)


def test_full_queue_answers_503_with_retry_after(served: Running) -> None:
    """With the model thread held and the queue at --max-queue, a request is refused at once."""
    batcher = served.service.batcher
    release = threading.Event()
    held = batcher.call(release.wait)  # the worker takes it and blocks
    while batcher.depth:
        pass
    limit, batcher.max_queue = batcher.max_queue, 1
    queued = batcher.call(lambda: None)
    try:
        r = post(served, "/v1/embeddings", {"input": "你好"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == "queue_full"
    finally:
        batcher.max_queue = limit
        release.set()
    held.result(10), queued.result(10)
    assert_serves(served)


# -- /search, /similar, /generate -------------------------------------------------------------------------
def test_search_equals_index_search(served: Running) -> None:
    faq = served.service.registry.indexes["faq"].path
    expected = Index.load(faq, dtype="float32").search(QUERIES, k=3)
    body = post(served, "/search", {"index": "faq", "queries": QUERIES, "k": 3}).json()
    assert [rec["query"] for rec in body["data"]] == QUERIES
    for rec, hits in zip(body["data"], expected, strict=True):
        assert [(h["rank"], h["id"], h["text"]) for h in rec["results"]] == [
            (h.rank, h.id, h.text) for h in hits
        ]
        np.testing.assert_allclose([h["score"] for h in rec["results"]], [h.score for h in hits], atol=2e-6)
    cut = post(served, "/search", {"index": "faq", "queries": "花呗还款", "k": 5, "min_score": 0.95}).json()
    assert all(h["score"] >= 0.95 for h in cut["data"][0]["results"])
    assert len(cut["data"][0]["results"]) < 5, "premise: min_score dropped hits"


def test_search_records_equal_query_json(served: Running) -> None:
    faq = served.service.registry.indexes["faq"].path
    r = simcli("query", str(faq), *QUERIES, "-k", "2", "--json", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    printed = [json.loads(line) for line in r.stdout.splitlines()]
    body = post(served, "/search", {"index": "faq", "queries": QUERIES, "k": 2}).json()
    for got, want in zip(body["data"], printed, strict=True):
        assert got["query"] == want["query"]
        assert [(h["rank"], h["id"], h["text"]) for h in got["results"]] == [
            (h["rank"], h["id"], h["text"]) for h in want["results"]
        ]
        np.testing.assert_allclose(
            [h["score"] for h in got["results"]], [h["score"] for h in want["results"]], atol=2e-6
        )


def test_similar_equals_cosine_matrix(served: Running, roformer_sim_dir: Path) -> None:
    from simcli.index.similar import cosine_matrix
    from simcli.types import EncoderConfig

    texts = ["我喜欢北京", "我不喜欢北京", "今天天气很好"]
    want = cosine_matrix(texts, EncoderConfig(str(roformer_sim_dir), dtype="float32"))
    body = post(served, "/similar", {"texts": texts}).json()
    assert body["texts"] == texts
    np.testing.assert_allclose(body["cosine"], want, atol=2e-6)
    pair = post(served, "/similar", {"texts": texts[:2]}).json()
    assert pair["a"] == texts[0] and pair["b"] == texts[1]
    assert pair["cosine"] == pytest.approx(float(want[0, 1]), abs=2e-6)


def test_generate_equals_library(served: Running, roformer_sim_dir: Path) -> None:
    from simcli.paraphrase import load_paraphraser

    options = {"n": 6, "k": 3, "seed": 7, "max_new_tokens": 8}
    body = post(served, "/generate", {"texts": ["花呗怎么还款"], **options}).json()
    para = load_paraphraser(str(roformer_sim_dir), dtype="float32")
    want = para.generate(["花呗怎么还款"], **options)[0]
    got = body["data"][0]["paraphrases"]
    assert [p["text"] for p in got] == [p.text for p in want] and got
    assert body["model"] == str(roformer_sim_dir)
    np.testing.assert_allclose([p["score"] for p in got], [p.score for p in want], atol=2e-6)
    # the served generator runs on the served encoder's weights: no second copy of the model
    model = served.service.registry.models[str(roformer_sim_dir)]
    assert model.paraphraser().encoder.model.backbone is model.encoder.model.backbone


def test_generate_refused_where_the_model_cannot(tmp_path: Path, wobert_dir: Path) -> None:
    with running_server(ServeOptions(model=str(wobert_dir), dtype="float32")) as running:
        r = post(running, "/generate", {"texts": ["花呗怎么还款"]}, headers={})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "cannot_generate" and "WoBERT" in r.json()["error"]["message"]
        assert post(running, "/v1/embeddings", {"input": "你好"}, headers={}).status_code == 200


# -- health, metrics -------------------------------------------------------------------------------------
def test_health_and_metrics(served: Running) -> None:
    health = httpx.get(f"{served.url}/health").json()  # open without the key, for probes
    assert health["status"] == "ok" and health["indexes"][0]["name"] == "faq"
    assert health["indexes"][0]["count"] == len(CORPUS)
    text = httpx.get(f"{served.url}/metrics").text
    for series in (
        'simcli_requests_total{endpoint="/v1/embeddings",status="200"}',
        'simcli_request_errors_total{code="invalid_json",endpoint="/v1/embeddings"}',
        "simcli_queue_depth 0.0",
        "simcli_batch_sentences_bucket",
        "simcli_batch_tokens_bucket",
        'simcli_request_duration_seconds_bucket{endpoint="/search"',
    ):
        assert series in text, series
    if malloc_trim() is None:
        return  # not glibc: nothing to trim with
    # the model thread trims the heap once its queue has stayed empty for --trim-interval (1 s) after work
    deadline = time.monotonic() + 30
    while not re.search(
        r"^simcli_heap_trims_total [1-9]", httpx.get(f"{served.url}/metrics").text, re.MULTILINE
    ):
        assert time.monotonic() < deadline, "no heap trim within 30 s of idling after work"
        time.sleep(0.2)


def test_search_csls_rerank_equals_index_search(served: Running) -> None:
    """rerank csls over HTTP: refused (400 naming the command) until the index has radii, then the hits of
    Index.search(rerank="csls") with both scores; runs last in this module (it adds radii to the index)."""
    faq = served.service.registry.indexes["faq"].path
    refused = post(served, "/search", {"index": "faq", "queries": QUERIES, "k": 3, "rerank": "csls"})
    assert refused.status_code == 400 and "simcli index hubness" in refused.json()["error"]["message"]
    Index.load(faq).hubness(k=3)  # the server picks up the folder's new manifest without a restart
    expected = Index.load(faq, dtype="float32").search(QUERIES, k=3, rerank="csls")
    body = post(served, "/search", {"index": "faq", "queries": QUERIES, "k": 3, "rerank": "csls"}).json()
    for rec, hits in zip(body["data"], expected, strict=True):
        assert [(h["rank"], h["id"], h["text"]) for h in rec["results"]] == [
            (h.rank, h.id, h.text) for h in hits
        ]
        np.testing.assert_allclose([h["csls"] for h in rec["results"]], [h.score for h in hits], atol=2e-6)
        np.testing.assert_allclose([h["cosine"] for h in rec["results"]], [h.cosine for h in hits], atol=2e-6)
    assert post(served, "/search", {"index": "faq", "queries": QUERIES, "rerank": "bm25"}).status_code == 400
    assert_serves(served)
