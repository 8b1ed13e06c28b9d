"""The SHA-256 of model weights, remembered by the file's identity so that a cold start does not reread them.

Manifests and indexes record the weights' sha256 (the same vectors need the same model), and a fetched model is
checked against the one recorded at fetch. Hashing is a full read of the file at every start: 0.09 s of a 2.8 s
`simcli encode` of m3e-small (46 MB), several times that for a base-size model. As git's index does for its object
ids, the digest is kept with the file's device, inode, size, mtime and ctime; while all five are unchanged it is
reused, and any write to the file (which moves its ctime, whatever it does to the mtime) makes the next call read
it again. The entries live in a folder of the model cache (`simcli-sha256/`, given by the caller); where it cannot
be written the digest is simply computed each time.
"""

from __future__ import annotations

from pathlib import Path

from simcli.io import sha256_file
from simcli.models.remembered import recall, remember


def file_sha256(path: Path, remembered_in: Path) -> str:
    """The hex SHA-256 of `path`: remembered (in the folder `remembered_in`) from an earlier call while the file is
    unchanged, else read."""
    st = path.stat()
    identity = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    key = {"weights": str(path.resolve())}
    saved = recall(remembered_in, key)
    if isinstance(saved, dict) and saved.get("identity") == identity and isinstance(saved.get("sha256"), str):
        return str(saved["sha256"])
    digest = sha256_file(path)
    remember(remembered_in, key, {"identity": identity, "sha256": digest})
    return digest
