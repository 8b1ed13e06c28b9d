"""`Index`: a loaded index folder, and its search: query vectors -> faiss candidates -> re-rank -> hits.

Queries go through the model, pooling, max length and whitening recorded in the manifest, never flags, and
through the same `to_index_space` as the corpus. Search is safe from several threads at once: on the CPU faiss
search parameters travel with each call (`SearchParams`); a GPU index is not safe for concurrent searches,
so its searches take turns behind a lock (simcli.index.gpu); the encoder loads once behind a lock, the texts
are read with a fresh file handle per call, and the re-rank step keeps no state per call. `add` is not: do
not add while other threads search.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from simcli.errors import BadInput, CorruptArtifact, ManifestMismatch, UsageError
from simcli.index import faiss_ops, persist, pipeline
from simcli.index.check import check as check_index
from simcli.index.choose import check_index_name, choose, parse_memory
from simcli.index.encoders import QueryEncoder, build_encoder
from simcli.index.gpu import GpuIndex, to_gpu
from simcli.index.inputs import Source, is_store, open_source
from simcli.index.manifest import IndexManifest
from simcli.index.rerank import IDENTITY, Candidates, Rerank
from simcli.index.search import SearchParams, set_search_params
from simcli.index.space import fit_whitening, to_index_space, whiten_value
from simcli.index.stored import stored_vectors
from simcli.io import ReadOptions
from simcli.types import EncoderConfig, Hit, Log, ModelSpec, ProgressFn


def _quiet(_: str) -> None:
    pass


class Index:
    """A cosine-retrieval index folder, loaded. Create with `Index.build` or `Index.load`.

    Attributes:
        path: the folder.
        manifest: its typed manifest (`IndexManifest`).
        faiss_index: the CPU faiss index (what is saved; the search parameter and list count come from it).
        gpu: its copy on the GPU (simcli.index.gpu.GpuIndex) that searches run on, or None.
        whitening: the Whitening applied before normalising, or None.
        rerank: the re-rank step every search runs (`IDENTITY` unless set; see simcli.index.rerank).
    """

    def __init__(
        self,
        path: Path,
        manifest: IndexManifest,
        faiss_index: Any,
        whitening: Any = None,
        gpu: GpuIndex | None = None,
        *,
        encoder: QueryEncoder | None = None,
        rerank: Rerank = IDENTITY,
    ) -> None:
        self.path, self.whitening, self.rerank = path, whitening, rerank
        self._radii: Any = None
        self._query_encoder = encoder or QueryEncoder(path)
        self._attach(manifest, faiss_index, gpu)

    def _attach(self, manifest: IndexManifest, faiss_index: Any, gpu: GpuIndex | None) -> None:
        """Point at a generation: its manifest, faiss index, texts and default search parameters."""
        self.manifest, self.faiss_index, self.gpu = manifest, faiss_index, gpu
        self._default_params = SearchParams(faiss_index, manifest.search.params, manifest.index.factory)
        self._texts = persist.Texts(path_of(self, "texts"), path_of(self, "offsets"))

    # -- facts ------------------------------------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec | None:
        return self.manifest.model

    @property
    def on_gpu(self) -> bool:
        return self.gpu is not None

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def search_params(self) -> dict[str, int]:
        """The default search parameters (tuned at build time)."""
        return dict(self.manifest.search.params)

    def info(self) -> dict[str, Any]:
        """What `simcli index info` shows: counts, model, whitening, index type and parameters, files."""
        m, spec = self.manifest, self.manifest.model
        w = m.whitening
        return {
            "path": str(self.path),
            "count": m.count,
            "dim": m.dim,
            "model": spec.model if spec else None,
            "family": spec.family if spec else None,
            "pooling": spec.pooling if spec else None,
            "max_length": spec.max_length if spec else None,
            "weights_sha256": spec.weights_sha256 if spec else None,
            "whitening": {**vars(w)} if w is not None else None,
            "index": m.index.factory,
            "index_kind": m.index.kind,
            "reason": m.index.reason,
            "lossless": m.index.lossless,
            "search_params": dict(m.search.params),
            "tuned_recall_at_10": m.search.tuned_recall,
            "bytes": m.file_bytes(),
            "built_on": m.index.built_on,
            "computed_with": ", ".join(f"{e['device']} {e['dtype']}" for e in m.computed_with) or None,
            "simcli_version": m.simcli_version,
            "csls": vars(m.csls) if m.csls is not None else None,
        }

    # -- building ---------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        source: Any,
        *,
        out: str | Path,
        model: str | EncoderConfig | Any | None = None,
        index: str = "auto",
        whiten: str | int = "auto",
        whitening: str | Path | None = None,
        memory: str | int | None = None,
        texts: Sequence[str] | None = None,
        spec: ModelSpec | None = None,
        encoder_options: dict[str, Any] | None = None,
        read_options: ReadOptions | Mapping[str, Any] | None = None,
        overwrite: bool = False,
        csls: bool = False,
        progress: ProgressFn | None = None,
        log: Log | None = None,
        moments: Callable[[], Any] | None = None,
        fill: Callable[[Any, Any], Any] | None = None,
    ) -> Index:
        """Build an index folder from raw vectors, a vector store or text, and return it loaded.

        Args:
            source: an (n, d) array of raw sentence vectors; a store folder (`simcli encode --out`); or text
                file path(s) (txt / tsv / csv / jsonl, "-" for stdin) encoded with `model`.
            out: the index folder to write (must be empty or absent, unless `overwrite`).
            model: hub id, local folder, an EncoderConfig or a loaded Encoder, for text sources.
            index: auto | flat | hnsw | ivf | ivfpq | a faiss factory string (inner-product metric).
            whiten: auto | none | full | K (output dimensions); see `simcli.index.space.fit_whitening`.
            whitening: a whitening file (`simcli whiten fit`) to apply instead of fitting one.
            memory: budget for the index in memory ("2GB", bytes; default half the RAM), for `auto`.
            texts, spec: the texts and ModelSpec of an array source.
            encoder_options: EncoderConfig fields overriding those of `model` (None values are ignored).
            read_options: a ReadOptions (or a dict of its fields) for the text readers.
            overwrite: replace an index already in `out`.
            csls: also compute the CSLS radii (`hubness`), for `search(rerank="csls")`.
            progress: called with (sentences, tokens) while encoding text.
            log: called with one-line notes (the CLI prints them on stderr).
            moments: `moments()` gathers the source's moment sums some other way than a pass over its vectors
                here (`simcli.index.space.fit_whitening`; on Ray: `simcli.scale.whiten`).
            fill: `fill(trained_index, whitening)` adds the source's vectors to the trained, empty index some
                other way and returns it filled, or None to fill it here (on Ray: `simcli.scale.index`).

        Raises:
            UsageError, BadInput, ManifestMismatch, OutputExists: bad options, inputs or folders.
        """
        log = log or _quiet
        out = Path(out)
        persist.check_out_folder(out, overwrite)
        budget = parse_memory(memory)
        index = check_index_name(index)  # before a model loads
        whiten_value(whiten)
        enc_options = dict(encoder_options or {})
        used: list[Any] = []

        def get_encoder() -> Any:
            used.append(build_encoder(model, enc_options, log))
            return used[-1]

        _check_model_for_text(source, model)
        src = open_source(
            source,
            texts=texts,
            spec=spec,
            encoder=get_encoder,
            read_options=read_options,
            progress=progress,
        )
        _warn_about(src, log)
        w = fit_whitening(src, whiten, whitening, log, moments=moments)
        model_path = str(used[0].checkpoint.path.absolute()) if used else None
        device = enc_options.get("device") or "auto"  # faiss follows --device: cuda:N builds on that GPU
        _write_index(src, w, index, budget, out, model_path, overwrite, log, fill, device)
        built = cls.load(out, verify=False, device=device, log=log)
        if csls:
            built.hubness(log=log)
        return built

    # -- loading ----------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        verify: bool = True,
        device: str = "auto",
        dtype: str | None = None,
        model: str | None = None,
        gpu: bool | None = None,
        rerank: Rerank = IDENTITY,
        log: Log | None = None,
    ) -> Index:
        """Open an index folder: check the manifest and every file's size and sha256, read the index.

        Args:
            path: the folder written by `Index.build`.
            verify: check the sha256 of every file (sizes are always checked).
            device: where the encoder runs for text queries.
            dtype: the encoder's compute dtype; None (default): the dtype the index's vectors were computed
                with when it was on this kind of device (manifest `computed_with`), else "auto".
            model: where the model lives now, when the path recorded at build time has moved; its weights
                must have the recorded hash.
            gpu: search on the GPU (default: when faiss sees one and the index has a GPU form); `device`
                cuda:N puts it on that GPU only, cpu keeps it off.
            rerank: the re-rank step of every search (default: none).
            log: one-line notes, such as why the faiss index stays on the CPU (default: stderr).

        Raises:
            CorruptArtifact: missing, truncated or altered files.
        """
        path = Path(path)
        manifest = persist.read(path)
        persist.verify(path, manifest, hashes=verify)
        index, on = _read_faiss(path, manifest, gpu, device, log)
        w = None
        if manifest.whitening is not None:
            from simcli.whitening import Whitening

            w = Whitening.load(path / manifest.files["whitening"].name)
            if w.sha256 != manifest.whitening.sha256:
                raise ManifestMismatch(f"{path}: the whitening file is not the one the manifest records")
        encoder = QueryEncoder(path, device=device, dtype=dtype, model=model)
        return cls(path, manifest, index, w, on, encoder=encoder, rerank=rerank)

    # -- querying ---------------------------------------------------------------------------------------
    def encoder(self) -> Any:
        """The encoder recorded in the manifest (model, pooling, tokenizer, max length), loaded once."""
        return self._query_encoder.get(self.manifest)

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
        return to_index_space(x, self.whitening)

    def candidates(
        self, vectors: np.ndarray, depth: int, params: dict[str, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss's `depth` best (scores, ids) for prepared query vectors, with this call's search parameters
        (the tuned ones unless `params`); ids -1 pad rows with fewer results.

        On the GPU a depth or nprobe above its limit (2048) is searched on the CPU index instead."""
        p = self._default_params if params is None else self._params(params)
        depth = min(depth, self.count)
        if self.gpu is not None:
            return self.gpu.search(vectors, depth, p.values)
        scores, ids = self.faiss_index.search(vectors, depth, params=p.faiss)
        return scores, ids

    def search(
        self,
        queries: Sequence[str] | np.ndarray,
        k: int = 10,
        min_score: float | None = None,
        params: dict[str, int] | None = None,
        rerank: Rerank | str | None = None,
    ) -> list[list[Hit]]:
        """The k nearest indexed texts of each query by cosine (or by the re-rank's score), best first.

        Args:
            queries: texts (encoded with the recorded model) or raw vectors (n, d) like the build's.
            k: hits per query.
            min_score: drop hits with a lower score.
            params: search parameters for this call only, e.g. {"nprobe": 64} or {"efSearch": 256}.
            rerank: the re-rank step for this call (default: the index's `rerank`); "none", or "csls" for
                `self.csls()` (CSLS with the default max(4k, 50) candidates; needs the radii of `hubness`).

        Returns:
            One list of Hit(rank, id, score, text, cosine) per query (cosine set when a re-rank replaced the
            score).

        Raises:
            UsageError: "csls" on an index without radii (the message names the command to run).
        """
        if k < 1:
            raise UsageError(f"-k must be at least 1, got {k}")
        if len(queries) == 0:
            return []
        if params:
            self._params(params)  # a wrong parameter is refused before the model loads
        step = self._rerank_step(rerank)  # before the model loads: a missing radii file fails fast
        x = self.prepare(queries)
        scores, ids = self.candidates(x, max(k, step.depth(k)), params or None)
        return self._hits(step(Candidates(x, scores, ids, k)), min_score)

    def _rerank_step(self, rerank: Rerank | str | None) -> Rerank:
        if rerank is None:
            return self.rerank
        if not isinstance(rerank, str):
            return rerank
        how = rerank.strip().lower()
        if how == "none":
            return IDENTITY
        if how == "csls":
            return self.csls()
        raise UsageError(f"--rerank must be none or csls, got {rerank!r}")

    # -- hubness (CSLS) ---------------------------------------------------------------------------------
    def csls(self, candidates: int | None = None) -> Rerank:
        """The CSLS re-rank step over this index's radii: `candidates` cosine candidates (default
        max(4k, 50)) re-scored by 2 cos - r(y). UsageError naming the command when there are no radii."""
        from simcli.index.csls import Csls

        return Csls(self.radii().r, candidates)

    def radii(self) -> Any:
        """The CSLS radii (simcli.index.neighbourhood.Radii) of every vector, read once."""
        from simcli.index.csls import read_radii

        if self._radii is None or len(self._radii.r) != self.count:
            self._radii = read_radii(self.path, self.manifest)
        return self._radii

    def hubness(self, k: int = 10, log: Log | None = None) -> Any:
        """Compute the CSLS radii r(y) of every vector through the index's own search (k nearest, itself
        excluded) and store them in the folder: a new generation whose manifest records the radii file's
        hash (the other files carry over). Returns the Radii."""
        import time
        from dataclasses import replace

        from simcli.index.csls import record, write_radii
        from simcli.index.neighbourhood import compute_radii, exact_search

        log = log or _quiet
        if k < 1:
            raise UsageError(f"-k must be at least 1, got {k}")
        start = time.perf_counter()
        radii = compute_radii(self.self_search, stored_vectors(self.path, self.manifest, self.faiss_index), k)
        g = self.manifest.generation + 1
        files = {**self.manifest.files, "radii": write_radii(self.path, g, radii)}
        exact = exact_search(self.faiss_index, self.manifest.index.lossless)
        manifest = replace(
            self.manifest, generation=g, files=files, csls=record(k, exact, self.manifest.index.factory)
        )
        persist.commit(self.path, manifest)
        self.manifest, self._radii = manifest, radii
        log(f"CSLS radii of {self.count} vectors (k {k}) in {time.perf_counter() - start:.1f}s")
        return radii

    def self_search(self, vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's `depth` best (scores, ids) for vectors already in index space, default parameters."""
        return self.candidates(np.ascontiguousarray(vectors, dtype=np.float32), depth)

    def stored_vectors(self) -> Any:
        """The index's vectors in index space, in id order, a block at a time."""
        return stored_vectors(self.path, self.manifest, self.faiss_index)

    def _params(self, params: dict[str, int]) -> SearchParams:
        return SearchParams(self.faiss_index, params, self.manifest.index.factory)

    def _hits(self, c: Candidates, min_score: float | None) -> list[list[Hit]]:
        """The one place hits are made: padding and low scores dropped, best first (equal scores: lower id
        first, so duplicates come back in a stable order), cut to k, texts read once for all queries."""
        kept_rows: list[list[tuple[float, int, float | None]]] = []
        for row_scores, row_ids in zip(c.scores, c.ids, strict=True):
            cos = c.cosines[len(kept_rows)] if c.cosines is not None else None
            kept = [
                (float(s), int(i), None if cos is None else float(cos[j]))
                for j, (s, i) in enumerate(zip(row_scores, row_ids, strict=True))
                if i >= 0 and (min_score is None or s >= min_score)
            ]
            kept.sort(key=lambda si: (-si[0], si[1]))
            kept_rows.append(kept[: c.k])
        wanted = sorted({i for kept in kept_rows for _, i, _ in kept})
        by_id = {r["id"]: r["text"] for r in self._texts.rows(wanted)}
        return [[Hit(r + 1, i, s, by_id[i], cs) for r, (s, i, cs) in enumerate(kept)] for kept in kept_rows]

    def rows(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The {"id", "text", "source", "line"} rows of `ids`, in that order (reads only those)."""
        return self._texts.rows(ids)

    def texts(self) -> list[str]:
        """All indexed texts, in id order."""
        return [r["text"] for r in self._texts]

    # -- adding -----------------------------------------------------------------------------------------
    def add(
        self,
        source: Any,
        *,
        texts: Sequence[str] | None = None,
        read_options: ReadOptions | Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        log: Log | None = None,
    ) -> int:
        """Append vectors to the index without rebuilding it, with the recorded model and whitening.

        Not safe while other threads search this Index.

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
        _warn_about(src, log)
        cpu = self.faiss_index
        old = self.manifest
        manifest = pipeline.add(
            self.path, old, cpu, self.whitening, src, lambda: stored_vectors(self.path, old, cpu), log=log
        )
        gpus = self.gpu.gpus if self.gpu is not None else []
        device = f"cuda:{gpus[0]}" if len(gpus) == 1 else "auto"
        index, on = _read_faiss(self.path, manifest, self.on_gpu or None, device)
        self._attach(manifest, index, on)
        return src.count

    # -- checking ---------------------------------------------------------------------------------------
    def check(self, sample: int = 1000, k: int = 10, params: dict[str, int] | None = None) -> dict[str, Any]:
        """Recall@k against exact search and latency, on a sample of the indexed vectors used as queries.

        Ground truth comes from the stored vectors (lossless indexes) or vectors-G.npy (lossy ones); see
        simcli.index.check.
        """
        p = self._default_params if params is None else self._params(params)
        return check_index(
            lambda x, k: self.candidates(x, k, p.values),
            self.dim,
            lambda: stored_vectors(self.path, self.manifest, self.faiss_index),
            p.values,
            count=self.count,
            sample=sample,
            k=k,
        )


def path_of(index: Index, role: str) -> Path:
    """The path of one of the index's files, by role (simcli.index.manifest.FILE_ROLES)."""
    return index.path / index.manifest.files[role].name


def _check_model_for_text(source: Any, model: Any) -> None:
    one = [source] if isinstance(source, str | Path) else source
    if model is not None and (
        isinstance(source, np.ndarray)
        or (len(one) == 1 and isinstance(one[0], str | Path) and is_store(one[0]))
    ):
        raise UsageError("--model is for text inputs: arrays and vector stores carry their own vectors")


def _write_index(
    src: Source,
    w: Any,
    index: str,
    budget: int | None,
    out: Path,
    model_path: str | None,
    overwrite: bool,
    log: Log,
    fill: Callable[[Any, Any], Any] | None,
    device: str,
) -> None:
    """Choose the faiss index for the source's size and the memory budget, and write the folder."""
    choice = choose(index, src.count, w.dim_out if w is not None else src.dim, budget)
    log(f"index {choice.factory} for {src.count} vectors ({choice.reason})")
    filler = None if fill is None else lambda trained: fill(trained, w)
    pipeline.build(
        src,
        w,
        choice,
        out,
        model_path=model_path,
        overwrite=overwrite,
        log=log,
        fill=filler,
        device=device,
    )


def _warn_about(src: Source, log: Log) -> None:
    if src.encode_seconds:  # text: what was read and how long encoding took (the build is timed apart)
        skipped = f", skipped {src.empty_skipped:,} empty" if src.empty_skipped else ""
        log(
            f"read {src.rows_read:,} row{'s' if src.rows_read != 1 else ''}: encoded {src.count:,} "
            f"sentence{'s' if src.count != 1 else ''} in {src.encode_seconds:.1f}s{skipped}"
        )
    if src.empty:
        log(f"warning: {src.empty} empty texts kept (use --skip-empty)")
    if src.truncated:
        log(
            f"warning: {src.truncated} text{'s' if src.truncated != 1 else ''} truncated at the model's max length"
        )


def _read_faiss(
    path: Path, manifest: IndexManifest, gpu: bool | None, device: str | None = "auto", log: Log | None = None
) -> tuple[Any, GpuIndex | None]:
    """The faiss index file of the manifest's generation, checked against its count and dim, and its GPU copy
    when asked (or by default when there is one; `device` cuda:N picks the GPU, cpu none)."""
    name = path / manifest.files["index"].name
    try:
        index = faiss.read_index(str(name))
    except RuntimeError as e:
        raise CorruptArtifact(f"{name}: not a faiss index ({faiss_ops.faiss_message(e)})") from None
    if index.ntotal != manifest.count or index.d != manifest.dim:
        raise CorruptArtifact(
            f"{path}: the faiss index holds {index.ntotal} vectors of dim {index.d}, "
            f"the manifest says {manifest.count} of dim {manifest.dim}"
        )
    # the defaults for whoever searches the faiss index without per-call parameters
    set_search_params(index, manifest.search.params)
    on = None
    if gpu is None or gpu:
        on = to_gpu(index, device, log or _say)
    return index, on


def _say(line: str) -> None:
    print(f"simcli: {line}", file=sys.stderr)
