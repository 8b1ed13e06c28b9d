"""CSLS in an index: the radii file (a declared file role) and the re-rank step of `Index.search`.

`simcli index hubness` / `index build --csls` compute r(y) for every vector through the index's own search
(simcli.index.neighbourhood) and store it as radii-G.npy, hashed in the manifest like every file; `index add`
refreshes it (neighbourhood.refresh_radii). `Csls` is the re-rank step (simcli.index.rerank): fetch the top
M = max(4k, 50) by cosine, score them 2 cos - r(y) (Conneau et al. 2018, arXiv:1710.04087).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from simcli.errors import CorruptArtifact, UsageError
from simcli.index import persist
from simcli.index.hubness import csls_scores, default_candidates
from simcli.index.manifest import CslsRecord, FileEntry, IndexManifest, file_name
from simcli.index.neighbourhood import Radii
from simcli.index.rerank import Candidates


class Csls:
    """The CSLS re-rank step: `depth(k)` cosine candidates re-scored by 2 cos - r(y); the cosines are kept
    in `Candidates.cosines`. Holds only the read-only radii: safe from several threads."""

    def __init__(self, r: np.ndarray, candidates: int | None = None) -> None:
        if candidates is not None and candidates < 1:
            raise UsageError(f"--candidates must be at least 1, got {candidates}")
        self.r, self.candidates = np.asarray(r, dtype=np.float32), candidates

    def depth(self, k: int) -> int:
        return max(k, self.candidates if self.candidates is not None else default_candidates(k))

    def __call__(self, candidates: Candidates) -> Candidates:
        c = candidates
        valid = c.ids >= 0
        scores = np.where(valid, csls_scores(c.scores, self.r[np.where(valid, c.ids, 0)]), -np.inf)
        return replace(c, scores=scores.astype(np.float32), cosines=c.scores)


def missing_radii(folder: Path) -> UsageError:
    return UsageError(
        f"{folder} has no CSLS radii: run `simcli index hubness {folder}` (or build with `simcli index build --csls`)"
    )


def read_radii(folder: Path, manifest: IndexManifest) -> Radii:
    """The radii file of the manifest's generation (UsageError naming the command when there is none)."""
    entry = manifest.files.get("radii")
    if entry is None or manifest.csls is None:
        raise missing_radii(folder)
    a = np.load(folder / entry.name, allow_pickle=False)
    if a.shape != (manifest.count, 2):
        raise CorruptArtifact(f"{folder / entry.name}: shape {a.shape}, expected ({manifest.count}, 2)")
    return Radii.from_array(a, manifest.csls.k)


def write_radii(folder: Path, generation: int, radii: Radii) -> FileEntry:
    """radii-G.npy: float32 (n, 2), r(y) and the cosine of y's K-th neighbour."""
    return persist.write_npy(
        folder / file_name("radii", generation), [radii.to_array()], (len(radii.r), 2), np.float32
    )


def record(k: int, exact: bool, factory: str) -> CslsRecord:
    return CslsRecord(k=k, search="exact" if exact else f"approximate ({factory})")
