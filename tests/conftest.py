"""Shared fixtures: an isolated environment and tiny checkpoints built once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import checkpoints


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing may reach a model hub; caches live in the test's own folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    # huggingface_hub reads HF_HOME once, at import: simcli's own cache (fetched models, remembered digests) is
    # pointed here explicitly
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "simcli-cache"))
    monkeypatch.delenv("SIMCLI_MODEL", raising=False)
    monkeypatch.delenv("SIMCLI_DEVICE", raising=False)
    monkeypatch.delenv("SIMCLI_DEBUG", raising=False)


@pytest.fixture(autouse=True)
def _float32_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--dtype auto` is float32 in tests on every machine: vectors are compared with independent float32
    computations, and whether auto picks bf16 or int8 depends on the CPU (tests of the rule patch this again)."""
    from simcli.models import device

    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset())  # no native bf16
    monkeypatch.setattr(device, "cpu_int8_speedup", lambda: 1.0)  # int8 no faster than float32


@pytest.fixture(scope="session")
def _models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def _cached(root: Path, name: str, build) -> Path:  # type: ignore[no-untyped-def]
    path = root / name
    if not (path / "config.json").exists():
        build(path)
    return path


@pytest.fixture(scope="session")
def roformer_sim_dir(_models_root: Path) -> Path:
    """A tiny RoFormer-Sim checkpoint in the hub layout (read-only: copy it before changing it)."""
    return _cached(_models_root, "roformer_sim", checkpoints.build_roformer_sim)


@pytest.fixture(scope="session")
def wobert_dir(_models_root: Path) -> Path:
    """A tiny WoBERT checkpoint in the hub layout (read-only: copy it before changing it)."""
    return _cached(_models_root, "wobert", checkpoints.build_wobert)


@pytest.fixture(scope="session")
def roformer_word_dir(_models_root: Path) -> Path:
    return _cached(_models_root, "roformer_word", lambda p: checkpoints.build_roformer_mlm(p, word=True))


@pytest.fixture(scope="session")
def roformer_char_dir(_models_root: Path) -> Path:
    return _cached(_models_root, "roformer_char", lambda p: checkpoints.build_roformer_mlm(p, word=False))


@pytest.fixture
def model_copy(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Copy a session checkpoint into the test's folder so the test may alter it."""

    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 endpoint on localhost (moto's server; no network), for s3:// inputs: AWS_ENDPOINT_URL and test
    credentials are set for the session, so pyarrow (and Ray workers started afterwards) reach it as they
    would reach S3 or MinIO. Returns the endpoint URL."""
    pytest.importorskip("pyarrow", reason="s3:// inputs need pyarrow (pip install -e '.[ray]')")
    server_module = pytest.importorskip("moto.server", reason="moto is in the dev extra")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        try:
            yield url
        finally:
            server.stop()
