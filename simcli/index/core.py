"""`Index`: build a cosine index over a corpus, save it as a folder, load it and query it.

Flow (DESIGN.md): raw vectors (array, store or text through the encoder) -> whitening (fitted, given or
none) -> L2 normalisation -> FAISS inner-product index (chosen by `choose`) -> search parameters tuned for
recall -> index folder (`persist`). Queries go through the same model, pooling and whitening, read from the
manifest, never from flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from simcli.errors import BadInput, CorruptArtifact, ManifestMismatch, UsageError
from simcli.index import build as builder
from simcli.index import persist
from simcli.index.choose import IndexChoice, check_index_name, choose, parse_memory
from simcli.index.search import (
    TUNE_K,
    TUNE_QUERIES,
    drop_self,
    ground_truth,
    recall_at_k,
    search_parameter,
    set_search_params,
    tune,
)
from simcli.index.sources import Source, distinct, open_source
from simcli.manifest import check_same_model, new_manifest
from simcli.types import Hit, ModelSpec

WHITEN_AUTO_DIM = 256  # REFERENCE 5: whitening to 256-d cut memory 3x and search time ~4x at equal quality


def whiten_auto_dim(dim: int) -> int:
    """The usual cut for a model of this width (REFERENCE 2): 128 for small/tiny (<= 384), 384 for large
    (>= 1024), WHITEN_AUTO_DIM for base."""
    if dim <= 384:
        return min(128, dim)
    return 384 if dim >= 1024 else WHITEN_AUTO_DIM


SEED = 0
Log = Callable[[str], None]


def supervised(spec: ModelSpec) -> bool:
    """Vectors trained for cosine, which whitening does not help (REFERENCE 2): RoFormer-Sim's, and SimBERT's
    pooler (a BERT's `pooler` vectors: auto pooling picks it only for SimBERT, Checkpoint.similarity_trained)."""
    return spec.family == "roformer-sim" or (spec.family == "bert" and spec.pooling == "pooler")


def _quiet(_: str) -> None:
    pass


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _whiten_value(whiten: str | int) -> str | int:
    if isinstance(whiten, int):
        return whiten
    w = str(whiten).strip().lower()
    if w.isdigit():
        return int(w)
    if w not in ("auto", "none", "full"):
        raise UsageError(f"--whiten must be auto, none, full or a number of dimensions K, got {whiten!r}")
    return w


def fit_whitening(src: Source, whiten: str | int, whitening: str | Path | None, log: Log) -> Any:
    """The Whitening to apply before normalising (None for none), following `--whiten` / `--whitening`.

    auto: none for supervised RoFormer-Sim and for plain arrays (no model to judge by); otherwise a fit on the
    corpus with k = 256, capped below the covariance rank (REFERENCE 2 and 5).
    """
    from simcli.whitening import Whitening

    how = _whiten_value(whiten)
    if whitening is not None:
        if how != "auto":
            raise UsageError("give --whiten or --whitening FILE, not both")
        w = Whitening.load(whitening)
        if src.spec is not None:
            w.check_fits(src.spec, f"the corpus {src.describe}")
        elif w.dim_in != src.dim:
            raise ManifestMismatch(
                f"whitening {whitening} expects dim {w.dim_in}, the vectors have {src.dim}"
            )
        return w
    if how == "none":
        return None
    if how == "auto":
        if src.spec is None or supervised(src.spec):
            return None
        if src.normalized:
            log(
                f"note: {src.describe} holds L2-normalised vectors; whitening needs raw ones, so none is applied"
            )
            return None
        w = Whitening.fit(
            src.chunks(), dim=whiten_auto_dim(src.dim), spec=src.spec, clamp=True, source=src.describe
        )
        clamped = f" (lowered from {w.clamped_from}: rank {w.rank})" if w.clamped_from else ""
        log(f"whitening fitted on {w.n} vectors: {w.dim_in} -> {w.dim_out} dimensions{clamped}")
        return w
    if src.normalized:
        raise BadInput(f"{src.describe}: L2-normalised vectors; whitening must be fitted on raw vectors")
    w = Whitening.fit(
        src.chunks(), dim=None if how == "full" else int(how), spec=src.spec, source=src.describe
    )
    log(f"whitening fitted on {w.n} vectors: {w.dim_in} -> {w.dim_out} dimensions")
    return w


class _Prepared:
    """The source's vectors whitened (when there is a whitening) and L2-normalised, chunk by chunk."""

    def __init__(self, src: Source, whitening: Any) -> None:
        self.src, self.whitening = src, whitening

    def __call__(self) -> Iterator[np.ndarray]:
        for chunk in self.src.chunks():
            yield self.transform(chunk)

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.whitening is not None:
            return self.whitening.transform(x, normalize=True)
        return _normalize(x)


def _take_rows(chunks: Iterator[np.ndarray], ids: np.ndarray, dim: int) -> np.ndarray:
    """Rows `ids` (sorted) of vectors given chunk by chunk."""
    out = np.empty((len(ids), dim), dtype=np.float32)
    start = filled = 0
    for chunk in chunks:
        stop = start + len(chunk)
        hi = int(np.searchsorted(ids, stop))
        out[filled:hi] = chunk[ids[filled:hi] - start]
        filled, start = hi, stop
    return out


def _sample_ids(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def _reconstruct(index: faiss.Index, ids: np.ndarray) -> np.ndarray | None:
    """The stored vectors of `ids` (None when the index cannot give them back)."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    try:
        if ivf is not None:
            ivf.make_direct_map(True)
        return index.reconstruct_batch(np.asarray(ids, dtype=np.int64))
    except RuntimeError:
        return None
    finally:
        if ivf is not None:
            ivf.make_direct_map(False)


def _is_lossless(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> bool:
    back = _reconstruct(index, ids)
    return back is not None and back.shape == vectors.shape and bool(np.allclose(back, vectors, atol=1e-6))


@dataclass
class Index:
    """A cosine-retrieval index folder, loaded. Create with `Index.build` or `Index.load`."""

    path: Path
    manifest: dict[str, Any]
    faiss_index: Any = field(repr=False)
    whitening: Any = field(default=None, repr=False)
    on_gpu: bool = False
    device: str = "auto"
    dtype: str = "auto"
    model_override: str | None = None
    _encoder: Any = field(default=None, repr=False)
    _texts: persist.Texts | None = field(default=None, repr=False)
    _radii: Any = field(default=None, repr=False)

    # -- facts ------------------------------------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec | None:
        m = self.manifest.get("model")
        return ModelSpec.from_dict(m) if m else None

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def search_params(self) -> dict[str, int]:
        return dict(self.manifest["search"]["params"])

    def info(self) -> dict[str, Any]:
        """What `simcli index info` shows: counts, model, whitening, index type and parameters, files."""
        m = self.manifest
        spec = self.spec
        return {
            "path": str(self.path),
            "count": m["count"],
            "dim": m["dim"],
            "model": spec.model if spec else None,
            "family": spec.family if spec else None,
            "pooling": spec.pooling if spec else None,
            "max_length": spec.max_length if spec else None,
            "weights_sha256": spec.weights_sha256 if spec else None,
            "whitening": m["whitening"],
            "index": m["index"]["factory"],
            "index_kind": m["index"]["kind"],
            "reason": m["index"]["reason"],
            "lossless": m["index"]["lossless"],
            "search_params": m["search"]["params"],
            "tuned_recall_at_10": m["search"]["tuned_recall"],
            "bytes": sum(e["bytes"] for e in m["files"].values()),
            "built_on": m["index"]["built_on"],
            "computed_with": ", ".join(f"{e['device']} {e['dtype']}" for e in m.get("computed_with", []))
            or None,
            "simcli_version": m["simcli_version"],
            "csls": m.get("csls"),
        }

    # -- building ---------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        source: Any,
        *,
        out: str | Path,
        model: str | Any | None = None,
        index: str = "auto",
        whiten: str | int = "auto",
        whitening: str | Path | None = None,
        memory: str | int | None = None,
        texts: Sequence[str] | None = None,
        spec: ModelSpec | None = None,
        encoder_options: dict[str, Any] | None = None,
        read_options: dict[str, Any] | None = None,
        overwrite: bool = False,
        csls: bool = False,
        progress: Callable[[int, int], None] | None = None,
        log: Log | None = None,
    ) -> Index:
        """Build an index folder from raw vectors, a vector store or text, and return it loaded.

        Args:
            source: an (n, d) array of raw sentence vectors; a store folder (`simcli encode --out`); or text
                file path(s) (txt / tsv / csv / jsonl, "-" for stdin) encoded with `model`.
            out: the index folder to write (must be empty or absent, unless `overwrite`).
            model: hub id, local folder or a loaded Encoder, for text sources.
            index: auto | flat | hnsw | ivf | ivfpq | a faiss factory string (inner-product metric).
            whiten: auto | none | full | K (output dimensions); see `fit_whitening`.
            whitening: a whitening file (`simcli whiten fit`) to apply instead of fitting one.
            memory: budget for the index in memory ("2GB", bytes; default half the RAM), for `auto`.
            texts, spec: the texts and ModelSpec of an array source.
            encoder_options: pooling / tokenizer / device / dtype / max_length for `load_encoder`.
            read_options: column / field / errors / skip_empty for the text readers.
            overwrite: replace an index already in `out`.
            csls: also compute the CSLS radii (`hubness`), for `search(rerank="csls")`.
            progress: called with (sentences, tokens) while encoding text.
            log: called with one-line notes (the CLI prints them on stderr).

        Raises:
            UsageError, BadInput, ManifestMismatch, OutputExists: bad options, inputs or folders.
        """
        log = log or _quiet
        out = Path(out)
        persist.check_out_folder(out, overwrite)
        budget = parse_memory(memory)
        index = check_index_name(index)  # before a model loads
        _whiten_value(whiten)
        enc_options = dict(encoder_options or {})
        batch_tokens = enc_options.pop("batch_tokens", None)
        enc_holder: dict[str, Any] = {}

        def get_encoder() -> Any:
            if model is None:
                raise UsageError("text inputs need --model (or give a vector store folder)")
            if not isinstance(model, str):
                enc_holder["enc"] = model
                return model
            from simcli.models.encoder import load_encoder

            enc = load_encoder(model, **{k: v for k, v in enc_options.items() if v is not None})
            log(
                f"model {enc.spec.model} ({enc.spec.family}, pooling {enc.spec.pooling}, dim {enc.spec.dim}) on {enc.device}"
            )
            enc_holder["enc"] = enc
            return enc

        if model is not None and (isinstance(source, np.ndarray) or _is_store_source(source)):
            raise UsageError("--model is for text inputs: arrays and vector stores carry their own vectors")
        src = open_source(
            source,
            texts=texts,
            spec=spec,
            encoder=get_encoder,
            read_options=read_options,
            batch_tokens=batch_tokens,
            progress=progress,
        )
        if src.empty:
            log(f"warning: {src.empty} empty texts kept (use --skip-empty)")
        if src.truncated:
            log(f"warning: {src.truncated} texts truncated at the model's max length")
        w = fit_whitening(src, whiten, whitening, log)
        choice = choose(index, src.count, w.dim_out if w is not None else src.dim, budget)
        log(f"index {choice.factory} for {src.count} vectors ({choice.reason})")
        enc = enc_holder.get("enc")
        model_path = str(enc.checkpoint.path) if enc is not None else None
        built = _build(src, w, choice, out, log, model_path, overwrite)
        if csls:
            built.hubness(log=log)
        return built

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        verify: bool = True,
        device: str = "auto",
        dtype: str = "auto",
        model: str | None = None,
        gpu: bool | None = None,
    ) -> Index:
        """Open an index folder: check the manifest and every file's size and sha256, read the index.

        Args:
            path: the folder written by `Index.build`.
            verify: check the sha256 of every file (sizes are always checked).
            device, dtype: where and how the encoder runs for text queries (they change rounding only).
            model: where the model lives now, when the path recorded at build time has moved; its weights
                must have the recorded hash.
            gpu: search on the GPU (default: when faiss sees one and the index has a GPU form).

        Raises:
            CorruptArtifact: missing, truncated or altered files.
        """
        path = Path(path)
        manifest = persist.read(path)
        persist.verify(path, manifest, hashes=verify)
        files = manifest["files"]
        try:
            index = faiss.read_index(str(path / files["index"]["name"]))
        except RuntimeError as e:
            raise CorruptArtifact(
                f"{path / files['index']['name']}: not a faiss index ({builder._faiss_message(e)})"
            ) from None
        if index.ntotal != manifest["count"] or index.d != manifest["dim"]:
            raise CorruptArtifact(
                f"{path}: the faiss index holds {index.ntotal} vectors of dim {index.d}, "
                f"the manifest says {manifest['count']} of dim {manifest['dim']}"
            )
        w = None
        if "whitening" in files:
            from simcli.whitening import Whitening

            w = Whitening.load(path / files["whitening"]["name"])
            if w.sha256 != manifest["whitening"]["sha256"]:
                raise ManifestMismatch(f"{path}: the whitening file is not the one the manifest records")
        set_search_params(index, manifest["search"]["params"])
        on_gpu = False
        if gpu is None or gpu:
            index, on_gpu = builder.to_device(index)
            if on_gpu:
                set_search_params(index, manifest["search"]["params"])
        return cls(path, manifest, index, w, on_gpu, device, dtype, model)

    # -- querying ---------------------------------------------------------------------------------------
    def encoder(self) -> Any:
        """The encoder recorded in the manifest (model, pooling, tokenizer, max length), loaded once."""
        if self._encoder is None:
            spec = self.spec
            if spec is None:
                raise UsageError(f"{self.path} was built from vectors without a model: query it with vectors")
            from simcli.models.encoder import load_encoder

            where = self.model_override or _model_location(spec, self.manifest.get("model_path"))
            enc = load_encoder(
                where,
                pooling=spec.pooling,
                tokenizer=spec.tokenizer,
                device=self.device,
                dtype=self.dtype,
                max_length=spec.max_length,
                revision=spec.revision,
            )
            check_same_model(spec, enc.spec, f"model {where}")
            self._encoder = enc
        return self._encoder

    def prepare(self, queries: Sequence[str] | np.ndarray) -> np.ndarray:
        """Query vectors as the corpus vectors were made: encoded (text), whitened, L2-normalised."""
        if isinstance(queries, np.ndarray):
            x = queries.astype(np.float32, copy=False)
            x = x[None, :] if x.ndim == 1 else x
            raw_dim = self.whitening.dim_in if self.whitening is not None else self.dim
            if x.ndim != 2 or x.shape[1] != raw_dim:
                raise BadInput(f"query vectors must have dimension {raw_dim}, got shape {queries.shape}")
        else:
            x = self.encoder().encode(list(queries), normalize=False)
        if self.whitening is not None:
            return self.whitening.transform(x, normalize=True)
        return _normalize(x)

    def search(
        self,
        queries: Sequence[str] | np.ndarray,
        k: int = 10,
        min_score: float | None = None,
        params: dict[str, int] | None = None,
        rerank: str | None = None,
        candidates: int | None = None,
    ) -> list[list[Hit]]:
        """The k nearest indexed texts of each query by cosine (or CSLS), best first.

        Args:
            queries: texts (encoded with the recorded model) or raw vectors (n, d) like the build's.
            k: hits per query.
            min_score: drop hits with a lower cosine.
            params: search parameters for this call, e.g. {"nprobe": 64} or {"efSearch": 256}.
            rerank: None / "none" (cosine order) or "csls": fetch `candidates` by cosine and re-rank them by
                2 cos - r(y) (needs the radii of `hubness`); each Hit then carries its `csls` score too.
            candidates: cosine candidates for the re-rank (default max(4 k, 50)).

        Returns:
            One list of Hit(rank, id, score, text[, csls]) per query.

        Raises:
            UsageError: rerank "csls" on an index without radii (the message names the command to run).
        """
        from simcli.index.hubness import csls_rerank, default_candidates

        if k < 1:
            raise UsageError(f"-k must be at least 1, got {k}")
        how = (rerank or "none").lower()
        if how not in ("none", "csls"):
            raise UsageError(f"--rerank must be none or csls, got {rerank!r}")
        r = self.radii().r if how == "csls" else None  # before encoding: a missing file fails fast
        if candidates is not None and candidates < k:
            raise UsageError(f"--candidates must be at least -k ({k}), got {candidates}")
        if len(queries) == 0:
            return []
        fetch = min(k, self.count) if r is None else min(candidates or default_candidates(k), self.count)
        if params:
            name = search_parameter(self.faiss_index)
            unknown = [p for p in params if p != name]
            if unknown:
                have = name or "none (exact search)"
                raise UsageError(
                    f"{', '.join(unknown)} does not apply to {self.manifest['index']['factory']} (its parameter: {have})"
                )
            set_search_params(self.faiss_index, params)
        try:
            scores, ids = self.faiss_index.search(self.prepare(queries), fetch)
        finally:
            if params:
                set_search_params(self.faiss_index, self.search_params)
        csls = None
        if r is not None:
            ids, scores, csls = csls_rerank(ids, scores, r, min(k, self.count))
        texts = self._text_store().rows(sorted({int(i) for i in ids.ravel() if i >= 0}))
        by_id = {r["id"]: r["text"] for r in texts}
        results = []
        for row, (row_scores, row_ids) in enumerate(zip(scores, ids, strict=True)):
            kept = [
                (float(s), int(i), None if csls is None else float(csls[row, j]))
                for j, (s, i) in enumerate(zip(row_scores, row_ids, strict=True))
                if i >= 0 and (min_score is None or s >= min_score)
            ]
            if csls is None:
                kept.sort(key=lambda si: (-si[0], si[1]))  # equal scores (duplicates): lower id first, stable
            hits = [Hit(n + 1, i, s, by_id[i], c) for n, (s, i, c) in enumerate(kept)]
            results.append(hits)
        return results

    # -- hubness ----------------------------------------------------------------------------------------
    def radii(self) -> Any:
        """The CSLS radii (`simcli.index.neighbourhood.Radii`) of every vector (UsageError when not computed)."""
        from simcli.index.neighbourhood import Radii

        entry = self.manifest["files"].get("radii")
        if entry is None:
            raise UsageError(
                f"{self.path} has no CSLS radii: run `simcli index hubness {self.path}` "
                "(or build with `simcli index build --csls`)"
            )
        if self._radii is None:
            a = np.load(self.path / entry["name"], allow_pickle=False)
            if a.shape != (self.count, 2):
                raise CorruptArtifact(
                    f"{self.path / entry['name']}: shape {a.shape}, expected ({self.count}, 2)"
                )
            self._radii = Radii.from_array(a, int(self.manifest["csls"]["k"]))
        return self._radii

    def hubness(self, k: int = 10, log: Log | None = None) -> Any:
        """Compute the CSLS radii r(y) of every vector through the index's own search (k nearest, itself
        excluded) and store them in the folder (a new generation: the manifest records the file's hash).

        Returns:
            The Radii.
        """
        from simcli.index.neighbourhood import compute_radii

        log = log or _quiet
        if k < 1:
            raise UsageError(f"-k must be at least 1, got {k}")
        start = time.perf_counter()
        radii = compute_radii(self.faiss_index.search, self._stored_vectors(), k)
        manifest = {**self.manifest, "generation": int(self.manifest.get("generation", 0)) + 1}
        manifest["files"] = dict(self.manifest["files"])
        manifest["files"]["radii"] = persist.write_npy(
            self.path / persist.file_name("radii", manifest["generation"]),
            [radii.to_array()],
            (self.count, 2),
            np.float32,
        )
        manifest["csls"] = self._csls_entry(k)
        persist.commit(self.path, manifest)
        self.manifest, self._radii = manifest, radii
        log(f"CSLS radii of {self.count} vectors (k {k}) in {time.perf_counter() - start:.1f}s")
        return radii

    def _csls_entry(self, k: int) -> dict[str, Any]:
        from simcli.index.search import search_parameter

        exact = search_parameter(self.faiss_index) is None and bool(self.manifest["index"]["lossless"])
        return {"k": k, "search": "exact" if exact else f"approximate ({self.manifest['index']['factory']})"}

    def _text_store(self) -> persist.Texts:
        if self._texts is None:
            files = self.manifest["files"]
            self._texts = persist.Texts(
                self.path / files["texts"]["name"], self.path / files["offsets"]["name"]
            )
        return self._texts

    def texts(self) -> list[str]:
        """All indexed texts, in id order."""
        return [r["text"] for r in self._text_store()]

    # -- adding -----------------------------------------------------------------------------------------
    def add(
        self,
        source: Any,
        *,
        texts: Sequence[str] | None = None,
        read_options: dict[str, Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
        log: Log | None = None,
    ) -> int:
        """Append vectors to the index without rebuilding it, with the recorded model and whitening.

        Args:
            source: text file path(s), a vector store folder of the same model, or raw vectors (n, d).

        Returns:
            The number of vectors added (ids continue from the previous count).

        Raises:
            UsageError: the index type cannot grow (the message says to rebuild).
            ManifestMismatch: a store of another model.
        """
        log = log or _quiet
        src = open_source(
            source,
            texts=texts,
            spec=self.spec,
            encoder=self.encoder,
            read_options=read_options,
            progress=progress,
        )
        if self.spec is not None and src.spec is not None:
            check_same_model(self.spec, src.spec, f"the vectors of {src.describe}")
        raw_dim = self.whitening.dim_in if self.whitening is not None else self.dim
        if src.dim != raw_dim:
            raise ManifestMismatch(f"{src.describe}: vectors of dim {src.dim}, the index takes {raw_dim}")
        if src.normalized and self.whitening is not None:
            raise BadInput(f"{src.describe}: L2-normalised vectors cannot be whitened like the corpus")
        prepared = _Prepared(src, self.whitening)
        cpu = builder.to_cpu(self.faiss_index, self.on_gpu)
        before = cpu.ntotal
        try:
            builder.add(cpu, prepared())
        except RuntimeError as e:
            raise UsageError(
                f"{self.manifest['index']['factory']} cannot grow ({builder._faiss_message(e)}): "
                "rebuild the index with `simcli index build`"
            ) from None
        if cpu.ntotal != before + src.count:
            raise UsageError(
                f"{self.manifest['index']['factory']} did not take the new vectors: rebuild the index"
            )
        radii = (
            self._refreshed_radii(cpu, before, prepared, log) if "radii" in self.manifest["files"] else None
        )
        manifest = _write_generation(
            self.path,
            cpu,
            src,
            prepared,
            self.manifest,
            base=self,
            radii=radii,
        )
        log(f"added {src.count} vectors to {self.path} ({manifest['count']} in all)")
        fresh = Index.load(
            self.path, verify=False, device=self.device, dtype=self.dtype, model=self.model_override
        )
        self.manifest, self.faiss_index, self.on_gpu, self._texts, self._radii = (
            manifest,
            fresh.faiss_index,
            fresh.on_gpu,
            None,
            radii,
        )
        return src.count

    def _refreshed_radii(self, grown: faiss.Index, before: int, prepared: _Prepared, log: Log) -> Any:
        """The CSLS radii once the new vectors are in `grown` (see neighbourhood.refresh_radii for the rule)."""
        from simcli.index.neighbourhood import refresh_radii

        new = np.concatenate([c for c in prepared() if len(c)] or [np.empty((0, self.dim), np.float32)])
        radii, researched = refresh_radii(self.radii(), grown.search, self._stored_vectors, new, before)
        log(f"CSLS radii: {len(new)} new, {researched} of {before} old vectors re-searched")
        return radii

    # -- checking ---------------------------------------------------------------------------------------
    def check(self, sample: int = 1000, k: int = 10, params: dict[str, int] | None = None) -> dict[str, Any]:
        """Recall@k against exact search and latency, on a sample of the indexed vectors used as queries.

        Each query's own row is left out of both lists, so an index cannot score by finding the query itself.
        Ground truth comes from the stored vectors (lossless indexes) or vectors-G.npy (lossy ones).

        Returns:
            {"queries", "k", "recall", "params", "ms_per_query" (one at a time), "queries_per_s" (batched),
            "exact_queries_per_s"}.
        """
        if sample < 1 or k < 1:
            raise UsageError("--sample and -k must be at least 1")
        ids = _sample_ids(self.count, sample, SEED + 1)
        chunks = self._stored_vectors
        queries = _take_rows(chunks(), ids, self.dim)
        t0 = time.perf_counter()
        _, truth = ground_truth(queries, chunks(), k + 1)
        exact_s = time.perf_counter() - t0
        truth = drop_self(truth, ids, k)
        index = self.faiss_index
        if params:
            set_search_params(index, params)
        try:
            t0 = time.perf_counter()
            _, found = index.search(queries, k + 1)
            batch_s = time.perf_counter() - t0
            single = queries[: min(len(queries), 200)]
            t0 = time.perf_counter()
            for q in single:
                index.search(q[None, :], k)
            single_s = (time.perf_counter() - t0) / len(single)
        finally:
            if params:
                set_search_params(index, self.search_params)
        return {
            "queries": len(ids),
            "k": k,
            "recall": recall_at_k(drop_self(found, ids, k), truth, k),
            "params": params or self.search_params,
            "ms_per_query": single_s * 1000,
            "queries_per_s": len(ids) / batch_s if batch_s > 0 else float("inf"),
            "exact_queries_per_s": len(ids) / exact_s if exact_s > 0 else float("inf"),
            "count": self.count,
        }

    def _stored_vectors(self) -> Iterator[np.ndarray]:
        files = self.manifest["files"]
        if "vectors" in files:
            v = np.load(self.path / files["vectors"]["name"], mmap_mode="r", allow_pickle=False)
            for i in range(0, len(v), 65536):
                yield np.asarray(v[i : i + 65536], dtype=np.float32)
            return
        cpu = builder.to_cpu(self.faiss_index, self.on_gpu)
        for i in range(0, self.count, 65536):
            back = _reconstruct(cpu, np.arange(i, min(i + 65536, self.count)))
            if back is None:
                raise CorruptArtifact(
                    f"{self.path}: the index cannot give its vectors back and no vectors file is kept"
                )
            yield back


def _is_store_source(source: Any) -> bool:
    from simcli.index.sources import is_store

    if isinstance(source, str | Path):
        return is_store(source)
    return False


def _model_location(spec: ModelSpec, model_path: str | None) -> str:
    # The path as given may be relative to where the build ran: prefer the resolved folder when it still exists.
    if model_path and Path(model_path).is_dir():
        return model_path
    return spec.model


def _build(
    src: Source, w: Any, choice: IndexChoice, out: Path, log: Log, model_path: str | None, overwrite: bool
) -> Index:
    dim = w.dim_out if w is not None else src.dim
    prepared = _Prepared(src, w)
    index = builder.make_index(choice, dim)
    device_index, on_gpu = builder.to_device(index)
    log(f"building on {'GPU' if on_gpu else 'CPU'}")
    start = time.perf_counter()
    tune_ids = _sample_ids(src.count, TUNE_QUERIES, SEED)
    train_ids = (
        _sample_ids(src.count, choice.train_size, SEED + 2) if not index.is_trained else np.empty(0, np.int64)
    )
    if len(train_ids):
        builder.train(device_index, _take_rows(prepared(), train_ids, dim))
        log(f"trained on {len(train_ids)} vectors in {time.perf_counter() - start:.1f}s")
    queries = _take_rows(prepared(), tune_ids, dim)
    builder.add(device_index, prepared())
    params: dict[str, int] = {}
    recall = 1.0  # exact search: nothing to tune, and its ground truth would cost a second pass
    if not isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        truth = drop_self(ground_truth(queries, prepared(), TUNE_K + 1)[1], tune_ids, TUNE_K)
        params, recall = tune(device_index, queries, tune_ids, truth, log=log)
    build_s = time.perf_counter() - start
    cpu = builder.to_cpu(device_index, on_gpu)
    lossless = _is_lossless(cpu, tune_ids, queries)
    log(
        f"built in {build_s:.1f}s; search {params or 'exact'}: recall@{TUNE_K} {recall:.3f} on {len(tune_ids)} sample queries"
    )
    out.mkdir(parents=True, exist_ok=True)
    header: dict[str, Any] = {
        "model": src.spec.to_dict() if src.spec is not None else None,
        "model_path": model_path,
        "source": src.describe,
        "whitening": _whitening_entry(w),
        "index": {
            "kind": choice.kind,
            "factory": choice.factory,
            "nlist": choice.nlist,
            "train_size": len(train_ids),
            "reason": choice.reason,
            "metric": "inner_product",
            "lossless": lossless,
            "built_on": "gpu" if on_gpu else "cpu",
            "build_seconds": round(build_s, 3),
        },
        "search": {"params": params, "tuned_recall": round(recall, 4), "tune_queries": len(tune_ids)},
    }
    if overwrite and (out / persist.MANIFEST).is_file():
        # the new files take the next generation's names: the old index stays whole until the manifest switches
        header["generation"] = int(persist.read(out).get("generation", 0))
    _write_generation(out, cpu, src, prepared, header, base=None, whitening=w)
    return Index.load(out, verify=False)


def _whitening_entry(w: Any) -> dict[str, Any] | None:
    if w is None:
        return None
    return {
        "sha256": w.sha256,
        "dim_in": w.dim_in,
        "dim_out": w.dim_out,
        "n": w.n,
        "beta": w.beta,
        "gamma": w.gamma,
        "source": str(w.path) if w.path is not None else w.source,
    }


def _write_generation(
    folder: Path,
    cpu: faiss.Index,
    src: Source,
    prepared: _Prepared,
    header: dict[str, Any],
    *,
    base: Index | None,
    whitening: Any = None,
    radii: Any = None,
) -> dict[str, Any]:
    """Write the files of a new generation and switch the manifest to them."""
    old_files = base.manifest["files"] if base is not None else {}
    generation = int(header.get("generation", 0)) + 1
    first = base.count if base is not None else 0
    files: dict[str, Any] = {}
    files["index"] = persist.write_index(folder / persist.file_name("index", generation), cpu)

    def rows() -> Iterator[dict[str, Any]]:
        for i, r in enumerate(src.rows()):
            yield {"id": first + i, **r}

    old_texts = folder / old_files["texts"]["name"] if base is not None else None
    files["texts"], files["offsets"], count = persist.write_texts(
        folder / persist.file_name("texts", generation),
        folder / persist.file_name("offsets", generation),
        rows(),
        base=old_texts,
    )
    if count != cpu.ntotal:
        raise CorruptArtifact(f"{folder}: {count} texts for {cpu.ntotal} vectors")
    if base is not None and "whitening" in old_files:
        files["whitening"] = old_files["whitening"]
    elif whitening is not None:
        wpath = folder / persist.file_name("whitening", generation)
        whitening.save(wpath)
        files["whitening"] = persist.hash_entry(wpath)
    if not header["index"]["lossless"]:

        def vectors() -> Iterator[np.ndarray]:
            if base is not None:
                yield from base._stored_vectors()
            yield from prepared()

        files["vectors"] = persist.write_npy(
            folder / persist.file_name("vectors", generation), vectors(), (cpu.ntotal, cpu.d), np.float32
        )
    if radii is not None:
        files["radii"] = persist.write_npy(
            folder / persist.file_name("radii", generation), [radii.to_array()], (cpu.ntotal, 2), np.float32
        )
    manifest = {
        **new_manifest(persist.KIND, format_version=persist.FORMAT_VERSION),
        **{k: v for k, v in header.items() if k not in ("kind", "simcli_version", "format_version")},
        "generation": generation,
        # informational: which device/dtype computed the vectors, over all generations (auto may pick bf16)
        "computed_with": distinct(
            [*(base.manifest.get("computed_with", []) if base is not None else []), *src.computed_with]
        ),
        "count": int(cpu.ntotal),
        "dim": int(cpu.d),
        "files": files,
    }
    persist.commit(folder, manifest)
    return manifest
