"""BERT-whitening: streaming fit, transform, and a safe one-file format (kexue.fm/archives/8069).

Given row vectors x (N of them, dimension d) and hyper-parameters beta, gamma, k:

    mu = mean(x);  Sigma = (1/N) sum (x - beta*mu)(x - beta*mu)^T = Cov(x) + (1-beta)^2 mu mu^T
    Sigma = U Lambda U^T;  W = U[:, :k] Lambda[:k]^(-gamma/2)
    y = (x - beta*mu) W,  then L2-normalised.

beta = gamma = 1 is whitening (the covariance of y is the identity); beta = gamma = 0 is a pure rotation
(cosines are kept; with a cut to k it is near-lossless dimension reduction).

The moments are accumulated in float64 batch by batch (Chan et al.'s pairwise update of centred sums, which
avoids the cancellation of `sum x x^T - N mu mu^T` on the strongly non-centred vectors of BERT-like
models), so memory is O(d^2) whatever N is.

File format (`.whiten`): one safetensors file with the float64 tensors `mu` (d,), `W` (d, k) and
`eigenvalues` (d,), and the metadata (n, beta, gamma, dims, rank, the source ModelSpec, the content hash)
as JSON under the `simcli` key of the safetensors header. No pickle anywhere; written atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from simcli.errors import BadInput, CorruptArtifact, ManifestMismatch, UsageError
from simcli.io import atomic_write_bytes
from simcli.manifest import check_same_model, new_manifest
from simcli.types import ModelSpec, ProgressFn, SentenceEncoder
from simcli.vectors import BLOCK_SENTENCES, chunked, encode_blocks, l2_normalize

KIND = "whitening"
FORMAT_VERSION = 1
CHUNK_ROWS = 8192  # rows converted to float64 at a time: 8192 x 768 x 8 B = 50 MB
# An eigenvalue counts as an empty direction (Lambda^(-gamma/2) would only amplify noise) below the larger of
# - float64 round-off of the eigen solver: largest eigenvalue x d x eps64 (numpy's matrix_rank rule), and
# - the rounding noise of the input: each coordinate of a float32 vector carries an error of about
#   eps32 x |x_j|, i.e. a variance floor of about eps^2 x E||x||^2 / d per direction; x NOISE_MARGIN.
#   (LayerNorm outputs, e.g. [CLS] with uniform LayerNorm weights, lie in a hyperplane: that direction's
#   eigenvalue is pure float32 noise, ~1e-14 of the largest, and must not be whitened up.)
NOISE_MARGIN = 100.0


class MomentAccumulator:
    """Streaming float64 mean and centred second moment of row vectors (memory O(d^2)).

    Batches are merged with the pairwise update of Chan, Golub and LeVeque: each batch is centred on its
    own mean, so no large `sum x x^T` is ever differenced against `N mu mu^T`.
    """

    def __init__(self, dim: int | None = None, eps: float | None = None) -> None:
        """Start empty.

        Args:
            dim: the vector dimension (taken from the first batch when None).
            eps: relative precision of the inputs (default: that of the coarsest float dtype added, e.g.
                float32's; pass float16's for vectors that were stored as float16).
        """
        self.n = 0
        self.dim = dim
        self.eps = 0.0 if eps is None else float(eps)
        self._fixed_eps = eps is not None
        self._mean: np.ndarray | None = None  # (d,) float64
        self._m2: np.ndarray | None = None  # (d, d) float64: sum of (x - mean)(x - mean)^T

    def add(self, batch: np.ndarray) -> None:
        """Add a batch of row vectors, shape (m, d) (or one vector, shape (d,))."""
        x = np.asarray(batch)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise BadInput(f"whitening: expected vectors of shape (n, d), got an array of shape {x.shape}")
        if self.dim is None:
            self.dim = int(x.shape[1])
        if x.shape[1] != self.dim:
            raise BadInput(
                f"whitening: vectors of dimension {x.shape[1]} after vectors of dimension {self.dim}"
            )
        if not self._fixed_eps and np.issubdtype(x.dtype, np.floating):
            self.eps = max(self.eps, float(np.finfo(x.dtype).eps))
        for start in range(0, x.shape[0], CHUNK_ROWS):
            self._add_chunk(x[start : start + CHUNK_ROWS])

    def _add_chunk(self, x: np.ndarray) -> None:
        m = x.shape[0]
        if m == 0:
            return
        xb = x.astype(np.float64)  # a copy: centred in place below
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf are reported just below
            mean_b = xb.mean(axis=0)
            xb -= mean_b
            m2_b = xb.T @ xb  # numpy calls BLAS syrk for a.T @ a
        # NaN/Inf anywhere in the chunk propagates to its mean or to the diagonal: no extra pass over it
        if not (np.isfinite(mean_b).all() and np.isfinite(np.trace(m2_b))):
            raise BadInput("whitening: the vectors contain NaN or Inf")
        self._combine(m, mean_b, m2_b)

    def merge(self, other: MomentAccumulator) -> None:
        """Add the moments another accumulator gathered (e.g. on another worker), as if its vectors had been
        added here: the same pairwise update as between batches."""
        if other.n == 0 or other._mean is None or other._m2 is None:
            return
        if self.dim is None:
            self.dim = other.dim
        if other.dim != self.dim:
            raise BadInput(f"whitening: moments of dimension {other.dim} after dimension {self.dim}")
        if not self._fixed_eps:
            self.eps = max(self.eps, other.eps)
        self._combine(other.n, other._mean.copy(), other._m2.copy())

    def _combine(self, m: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        """Chan et al.'s update: these moments and those of m more rows (their mean, centred sum)."""
        if self._mean is None or self._m2 is None:
            self.n, self._mean, self._m2 = m, mean_b, m2_b
            return
        n = self.n + m
        delta = mean_b - self._mean
        self._m2 += m2_b
        self._m2 += np.outer(delta, delta) * (self.n * m / n)
        self._mean += delta * (m / n)
        self.n = n

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            raise BadInput("whitening: no vectors to fit on")
        return self._mean.copy()

    @property
    def mean_square_norm(self) -> float:
        """E||x||^2 = trace(Cov) + ||mu||^2."""
        if self._mean is None or self._m2 is None or self.n == 0:
            return 0.0
        return float(np.trace(self._m2) / self.n + self._mean @ self._mean)

    def noise_floor(self) -> float:
        """Eigenvalue below which a direction holds only the inputs' rounding noise (see NOISE_MARGIN)."""
        d = self.dim or 1
        return NOISE_MARGIN * self.eps**2 * self.mean_square_norm / d

    def finish(self, beta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """The mean mu and the covariance around beta*mu (1/N), both float64.

        Returns:
            (mu (d,), Sigma (d, d)) with Sigma = Cov + (1-beta)^2 mu mu^T (kexue.fm/archives/8069).
        """
        if self._mean is None or self._m2 is None or self.n == 0:
            raise BadInput("whitening: no vectors to fit on")
        mu = self._mean.copy()
        cov = self._m2 / self.n
        if beta != 1.0:
            cov = cov + (1.0 - beta) ** 2 * np.outer(mu, mu)
        cov = (cov + cov.T) / 2  # exact symmetry for eigh
        return mu, cov


def _iter_batches(vectors: np.ndarray | Iterable[np.ndarray], block: int = 4096) -> Iterable[np.ndarray]:
    """Batches of rows from an array or an iterable of arrays; single vectors are grouped into blocks."""
    if isinstance(vectors, np.ndarray):
        yield vectors
        return
    pending: list[np.ndarray] = []
    for v in vectors:
        a = np.asarray(v)
        if a.ndim == 1:
            pending.append(a)
            if len(pending) >= block:
                yield np.stack(pending)
                pending = []
            continue
        if pending:
            yield np.stack(pending)
            pending = []
        yield a
    if pending:
        yield np.stack(pending)


@dataclass(eq=False)
class Whitening:
    """A fitted BERT-whitening transform. Create with `fit`, `from_moments` or `load`.

    Attributes:
        mu: (d,) float64 mean of the fitting vectors.
        W: (d, k) float64, U Lambda^(-gamma/2) cut to the top-k components.
        eigenvalues: (d,) float64, descending, of the covariance around beta*mu.
        n: number of fitting vectors.
        beta, gamma: the hyper-parameters (kexue.fm/archives/8069).
        rank: numerical rank of the covariance.
        spec: the ModelSpec of the fitting vectors (None when unknown, e.g. plain arrays).
        clamped_from: the k that was asked for when it was lowered to the rank (else None).
        source: free-form description of where the vectors came from.
    """

    mu: np.ndarray
    W: np.ndarray
    eigenvalues: np.ndarray
    n: int
    beta: float = 1.0
    gamma: float = 1.0
    rank: int = 0
    spec: ModelSpec | None = None
    clamped_from: int | None = None
    source: str = ""
    path: Path | None = field(default=None, compare=False)
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = self._content_hash()

    @property
    def dim_in(self) -> int:
        return int(self.W.shape[0])

    @property
    def dim_out(self) -> int:
        return int(self.W.shape[1])

    # -- fitting --------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        vectors: np.ndarray | Iterable[np.ndarray],
        *,
        dim: int | None = None,
        beta: float = 1.0,
        gamma: float = 1.0,
        spec: ModelSpec | None = None,
        clamp: bool = False,
        source: str = "",
    ) -> Whitening:
        """Fit on raw (not L2-normalised) sentence vectors, streaming float64 moments.

        Args:
            vectors: an array (N, d) or an iterable of arrays (m, d) / vectors (d,), e.g. store shards.
            dim: k, the output dimension (None: d).
            beta: how much of the mean to remove (1: all).
            gamma: the power of the eigenvalue scaling (1: whitening, 0: rotation only).
            spec: the ModelSpec that produced the vectors, recorded for `check_fits`.
            clamp: lower k to the covariance rank instead of refusing (gamma > 0 only).
            source: a description recorded in the file (e.g. the store path).

        Raises:
            BadInput: fewer than 2 vectors, NaN/Inf, or k above the rank with gamma > 0 and no clamp.
            UsageError: k outside 1..d, or a negative gamma / non-finite beta.
        """
        acc = MomentAccumulator(spec.dim if spec is not None else None)
        for batch in _iter_batches(vectors):
            acc.add(batch)
        return cls.from_moments(acc, dim=dim, beta=beta, gamma=gamma, spec=spec, clamp=clamp, source=source)

    @classmethod
    def from_moments(
        cls,
        acc: MomentAccumulator,
        *,
        dim: int | None = None,
        beta: float = 1.0,
        gamma: float = 1.0,
        spec: ModelSpec | None = None,
        clamp: bool = False,
        source: str = "",
    ) -> Whitening:
        """Finish a fit from accumulated moments (several k / beta / gamma can share one accumulator)."""
        if not np.isfinite(beta):
            raise UsageError(f"--beta must be a finite number, got {beta}")
        if not (np.isfinite(gamma) and gamma >= 0):
            raise UsageError(f"--gamma must be a finite number >= 0, got {gamma}")
        if acc.n < 2:
            raise BadInput(f"whitening needs at least 2 vectors, got {acc.n}")
        mu, cov = acc.finish(beta)
        d = mu.shape[0]
        k = d if dim is None else int(dim)
        if not 1 <= k <= d:
            raise UsageError(f"--dim must be between 1 and {d} (the vector dimension), got {k}")
        # Sigma is symmetric PSD: eigh gives its SVD (U Lambda U^T) faster than svd; sort descending.
        lam, u = np.linalg.eigh(cov)
        order = np.argsort(lam)[::-1]
        lam, u = lam[order], u[:, order]
        lam = np.maximum(lam, 0.0)  # round-off can leave tiny negatives
        tol = max(lam[0] * d * float(np.finfo(np.float64).eps), acc.noise_floor())
        rank = int((lam > tol).sum())
        clamped_from = None
        if gamma > 0 and k > rank:
            # Lambda^(-gamma/2) of an empty direction explodes (kexue.fm/archives/8069): refuse or clamp, never Inf.
            if rank == 0:
                raise BadInput(f"whitening: the {acc.n} vectors are all identical; nothing to fit")
            if not clamp:
                raise BadInput(
                    f"whitening: covariance of {acc.n} vectors of dimension {d} has rank {rank} < --dim {k} "
                    f"(need N well above d); use --dim {rank} or less, more vectors, or --clamp"
                )
            clamped_from, k = k, rank
        scale = np.power(lam[:k], -gamma / 2) if gamma > 0 else np.ones(k)
        w = u[:, :k] * scale[None, :]
        return cls(
            mu=mu,
            W=np.ascontiguousarray(w),
            eigenvalues=lam,
            n=acc.n,
            beta=float(beta),
            gamma=float(gamma),
            rank=rank,
            spec=spec,
            clamped_from=clamped_from,
            source=source,
        )

    # -- applying -------------------------------------------------------------------------------------
    def transform(self, x: np.ndarray, normalize: bool = True) -> np.ndarray:
        """(x - beta*mu) W, L2-normalised by default; float32 (n, k), or (k,) for one vector.

        Do not L2-normalise x first (kexue.fm/archives/8069): whitening is fitted on raw vectors.
        """
        a = np.asarray(x)
        single = a.ndim == 1
        a2 = a[None, :] if single else a
        if a2.ndim != 2 or a2.shape[1] != self.dim_in:
            raise ManifestMismatch(
                f"whitening expects vectors of dimension {self.dim_in}, got an array of shape {a.shape}"
            )
        out = np.empty((a2.shape[0], self.dim_out), dtype=np.float32)
        shift = self.beta * self.mu
        for start in range(0, a2.shape[0], CHUNK_ROWS):
            y = (a2[start : start + CHUNK_ROWS].astype(np.float64) - shift) @ self.W
            if normalize:
                l2_normalize(y, inplace=True)  # a vector equal to beta*mu maps to 0 and stays 0 (no NaN)
            out[start : start + CHUNK_ROWS] = y
        return out[0] if single else out

    def check_fits(self, spec: ModelSpec, what: str) -> None:
        """Raise ManifestMismatch unless vectors of `spec` are what this whitening was fitted on.

        Args:
            spec: the spec of the vectors about to be transformed (e.g. `encoder.spec`).
            what: a short name of those vectors' source for the message, e.g. "model ./wobert".
        """
        name = f"whitening {self.path}" if self.path is not None else "whitening"
        if self.spec is not None:  # name the whitening's own model, then the one it was applied to
            check_same_model(spec, self.spec, f"{name} (fitted for model {self.spec.model})", what)
        if spec.dim != self.dim_in:
            raise ManifestMismatch(f"{name} does not fit {what}: dim {self.dim_in} != {spec.dim}")

    # -- persistence ----------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The JSON metadata saved with the tensors (also what `simcli whiten info` shows)."""
        return new_manifest(
            KIND,
            format_version=FORMAT_VERSION,
            n=self.n,
            dim_in=self.dim_in,
            dim_out=self.dim_out,
            beta=self.beta,
            gamma=self.gamma,
            rank=self.rank,
            clamped_from=self.clamped_from,
            source=self.source,
            spec=self.spec.to_dict() if self.spec is not None else None,
            sha256=self.sha256,
        )

    def _content_hash(self) -> str:
        h = hashlib.sha256()
        fixed = {
            "n": self.n,
            "beta": float(self.beta),
            "gamma": float(self.gamma),
            "spec": self.spec.to_dict() if self.spec is not None else None,
        }
        h.update(json.dumps(fixed, sort_keys=True).encode())
        for a in (self.mu, self.W, self.eigenvalues):
            arr = np.ascontiguousarray(a, dtype=np.float64)
            h.update(repr(arr.shape).encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write one safetensors file (float64 tensors + JSON metadata in its header), atomically."""
        from safetensors.numpy import save

        data = save(
            {
                "mu": np.ascontiguousarray(self.mu, dtype=np.float64),
                "W": np.ascontiguousarray(self.W, dtype=np.float64),
                "eigenvalues": np.ascontiguousarray(self.eigenvalues, dtype=np.float64),
            },
            metadata={"simcli": json.dumps(self.metadata(), ensure_ascii=False, sort_keys=True)},
        )
        atomic_write_bytes(Path(path), data)

    @classmethod
    def load(cls, path: str | Path) -> Whitening:
        """Read a file written by `save`; checks its kind, shapes and content hash.

        Raises:
            CorruptArtifact: missing, not a whitening file, truncated or altered.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load

        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CorruptArtifact(f"{path}: whitening file not found") from None
        except OSError as e:
            raise CorruptArtifact(f"{path}: cannot read whitening file ({e})") from e
        try:
            tensors = load(raw)
            meta = json.loads(_header_metadata(raw).get("simcli", "null"))
        except (SafetensorError, ValueError, UnicodeDecodeError) as e:
            raise CorruptArtifact(f"{path}: not a simcli whitening file ({e})") from e
        if not isinstance(meta, dict) or meta.get("kind") != KIND:
            raise CorruptArtifact(f"{path}: not a simcli whitening file (no whitening metadata)")
        try:
            mu, w, lam = tensors["mu"], tensors["W"], tensors["eigenvalues"]
            spec = ModelSpec.from_dict(meta["spec"]) if meta.get("spec") else None
            obj = cls(
                mu=mu,
                W=w,
                eigenvalues=lam,
                n=int(meta["n"]),
                beta=float(meta["beta"]),
                gamma=float(meta["gamma"]),
                rank=int(meta["rank"]),
                spec=spec,
                clamped_from=meta.get("clamped_from"),
                source=str(meta.get("source", "")),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptArtifact(f"{path}: whitening metadata incomplete ({e})") from e
        if mu.shape != (obj.dim_in,) or lam.shape != (obj.dim_in,) or w.ndim != 2:
            raise CorruptArtifact(f"{path}: inconsistent shapes mu {mu.shape}, W {w.shape}")
        if obj.sha256 != meta.get("sha256"):
            raise CorruptArtifact(f"{path}: content hash mismatch (file altered or truncated)")
        return obj


def _header_metadata(raw: bytes) -> dict[str, str]:
    """The `__metadata__` dict of a safetensors header (safetensors.numpy.load drops it)."""
    if len(raw) < 8:
        raise ValueError("file too short")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ValueError("header length beyond end of file")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return meta if isinstance(meta, dict) else {}


def whitening_for(path: str | Path, spec: ModelSpec, what: str) -> Whitening:
    """Load a whitening file and check that it fits vectors of `spec` (for `simcli encode --whitening`).

    Example:
        w = whitening_for(args.whitening, encoder.spec, f"model {model}")
        vectors = w.transform(encoder.encode(texts))  # whitened and L2-normalised, float32
    """
    w = Whitening.load(path)
    w.check_fits(spec, what)
    return w


def fit_store(
    path: str | Path,
    *,
    dim: int | None = None,
    beta: float = 1.0,
    gamma: float = 1.0,
    clamp: bool = False,
    moments: Callable[[Any, float], MomentAccumulator] | None = None,
) -> Whitening:
    """Fit on the vectors of a store folder (`simcli encode --out`), shard by shard.

    `moments(store, eps)` gathers the store's moments some other way (on Ray: simcli.scale.whiten).

    Raises:
        BadInput: the store holds L2-normalised vectors (kexue.fm/archives/8069: whitening is fitted on raw vectors).
    """
    from simcli.store import VectorStore

    store = VectorStore.open(path)
    if store.dim != store.spec.dim:
        raise CorruptArtifact(f"{path}: manifest dim {store.dim} != model dim {store.spec.dim}")
    if store.normalized:
        raise BadInput(
            f"{path}: the store holds L2-normalised vectors; whitening must be fitted on raw vectors "
            "(re-encode without --normalize)"
        )
    # float16 shards carry float16 rounding noise even though they are read as float32
    eps = float(np.finfo(np.dtype(store.store_dtype)).eps)
    if moments is not None:
        acc = moments(store, eps)
    else:
        acc = MomentAccumulator(store.dim, eps=eps)
        for batch in store.iter_vectors():
            acc.add(batch)
    return Whitening.from_moments(
        acc, dim=dim, beta=beta, gamma=gamma, spec=store.spec, clamp=clamp, source=str(path)
    )


def fit_texts(
    texts: Iterable[str],
    encoder: SentenceEncoder,
    *,
    dim: int | None = None,
    beta: float = 1.0,
    gamma: float = 1.0,
    clamp: bool = False,
    source: str = "",
    chunk: int = BLOCK_SENTENCES,
    progress: ProgressFn | None = None,
) -> Whitening:
    """Encode `texts` chunk by chunk with `encoder` (raw vectors) and fit on them; memory stays flat.

    Args:
        texts: sentences, e.g. `(r.text for r in read_records(paths, skip_empty=True))`.
        encoder: a loaded Encoder; its spec is recorded in the whitening.
        chunk: sentences encoded per call.
        progress: called with (sentences, tokens) per batch.
    """
    acc = MomentAccumulator(encoder.spec.dim)
    for _, vectors in encode_blocks(encoder, chunked(texts, chunk), progress=progress):
        acc.add(vectors)
    return Whitening.from_moments(
        acc, dim=dim, beta=beta, gamma=gamma, spec=encoder.spec, clamp=clamp, source=source
    )


class WhitenedEncoder:
    """An encoder whose vectors go through a whitening file: (x - beta*mu) W[:, :k], L2-normalised.

    Has the encoder interface the store and the CLI use (`spec`, `encode`, `info`, `max_length`, `dim`,
    `device`, `dtype`), so `simcli encode --whitening FILE` writes whitened vectors through the same streaming
    path and records which device and dtype computed them. The spec's dim is k and its `extra` names the
    whitening's content hash, so the store's manifest records it.
    """

    def __init__(self, encoder: Any, whitening: Whitening, path: str | Path) -> None:
        whitening.check_fits(encoder.spec, f"model {encoder.spec.model}")
        self.encoder = encoder
        self.whitening = whitening
        self.path = Path(path)
        self.max_length = encoder.max_length
        self.dim = whitening.dim_out

    @classmethod
    def from_file(cls, encoder: Any, path: str | Path) -> WhitenedEncoder:
        """`encoder` whose vectors go through the whitening file at `path` (`simcli whiten fit`); the file must
        fit the encoder's model and pooling."""
        return cls(encoder, Whitening.load(path), path)

    @property
    def device(self) -> Any:
        return self.encoder.device

    @property
    def dtype(self) -> Any:
        return self.encoder.dtype

    @property
    def spec(self) -> ModelSpec:
        base = self.encoder.spec
        extra = {**base.extra, "whitening_sha256": self.whitening.sha256, "whitening_dim": self.dim}
        return replace(base, dim=self.dim, extra=extra)

    def encode(self, texts: Sequence[str], *, normalize: bool = True, **kwargs: Any) -> np.ndarray:
        """Whitened, L2-normalised float32 vectors (`normalize` is accepted for interface parity: always on)."""
        return self.whitening.transform(self.encoder.encode(texts, normalize=False, **kwargs), normalize=True)

    def info(self) -> dict[str, Any]:
        return {**self.encoder.info(), "dim": self.dim, "whitening": str(self.path)}
