"""`--dtype auto`'s accuracy check and speed probes are remembered between runs, under keys that name what they
depend on: the same answer where nothing changed, a new measurement where anything did."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.models import device as device_mod
from simcli.models import encoder as encoder_mod
from simcli.models import remembered
from simcli.models.encoder import load_encoder
from simcli.models.int8 import is_quantized

SENTENCES = ["花呗怎么还款", "今天天气不错", "借款逾期三天会影响征信吗"]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """The calibrations that really ran (each one encodes the calibration sentences twice)."""
    runs: list[torch.dtype] = []
    real = encoder_mod._calibration_cosine

    def counting(enc: encoder_mod.Encoder, want: torch.dtype) -> tuple[float, torch.nn.Module]:
        runs.append(want)
        return real(enc, want)

    monkeypatch.setattr(encoder_mod, "_calibration_cosine", counting)
    monkeypatch.setattr(device_mod, "cpu_bf16_speedup", lambda: 0.0)
    monkeypatch.setattr(device_mod, "cpu_int8_speedup", lambda: 2.0)  # auto tries int8
    return runs


def test_a_remembered_calibration_gives_the_model_a_measured_one_gives(
    roformer_sim_dir: Path, counted: list[torch.dtype]
) -> None:
    first = load_encoder(str(roformer_sim_dir))
    assert counted == [torch.qint8] and first.dtype == torch.qint8 and is_quantized(first.backbone)
    again = load_encoder(str(roformer_sim_dir))
    assert counted == [torch.qint8], "the second load measured again"
    assert again.dtype == torch.qint8 and is_quantized(again.backbone)
    assert again.dtype_reason == first.dtype_reason + " (remembered)"
    np.testing.assert_array_equal(again.encode(SENTENCES), first.encode(SENTENCES))


def test_anything_the_vectors_depend_on_gives_a_new_calibration(
    roformer_sim_dir: Path, tmp_path: Path, counted: list[torch.dtype], monkeypatch: pytest.MonkeyPatch
) -> None:
    roformer_sim_dir = Path(shutil.copytree(roformer_sim_dir, tmp_path / "model"))  # its weights change below
    load_encoder(str(roformer_sim_dir))
    load_encoder(str(roformer_sim_dir), max_length=16)
    load_encoder(str(roformer_sim_dir), pooling="cls")
    assert len(counted) == 3
    # the same settings on capped kernels (another instruction set) are another machine
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    remembered.machine_key.cache_clear()
    try:
        load_encoder(str(roformer_sim_dir))
    finally:
        remembered.machine_key.cache_clear()
    assert len(counted) == 4
    # new weights under the same name
    weights = roformer_sim_dir / "pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    state = {k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, weights)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    load_encoder(str(roformer_sim_dir))
    assert len(counted) == 5


def test_a_probe_reading_is_remembered_only_far_above_its_threshold(tmp_path: Path) -> None:
    readings = iter([4.0, 2.0, 2.5, 0.5, 0.6])
    calls: list[float] = []

    def measure() -> float:
        calls.append(next(readings))
        return calls[-1]

    assert device_mod.remembered_speedup("clear", measure, 1.5) == 4.0
    assert device_mod.remembered_speedup("clear", measure, 1.5) == 4.0 and calls == [4.0]  # at 2x: kept
    # near the threshold, and under it (a burst of load can read low): measured at every start
    assert device_mod.remembered_speedup("near", measure, 1.5) == 2.0
    assert device_mod.remembered_speedup("near", measure, 1.5) == 2.5
    assert device_mod.remembered_speedup("slow", measure, 1.5) == 0.5
    assert device_mod.remembered_speedup("slow", measure, 1.5) == 0.6 and len(calls) == 5


def _probe_in_a_worker(log: str) -> float:
    """One server worker's `--dtype auto` probe: slow enough that the workers overlap, and a reading of its own
    (near the threshold, so never remembered between runs)."""

    def measure() -> float:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        return 1.0 + (os.getpid() % 5) / 10

    return device_mod.remembered_speedup("near", measure, 1.5)


@pytest.mark.parametrize("one_run", [True, False])
def test_the_workers_of_one_server_share_one_probe_reading(
    one_run: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `simcli serve --workers N` sets the run folder; three processes started at once, as uvicorn starts them
    if one_run:
        (tmp_path / "run").mkdir()
        monkeypatch.setenv(remembered.RUN_FOLDER_ENV, str(tmp_path / "run"))
    log = tmp_path / "measured.log"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        readings = pool.map(_probe_in_a_worker, [str(log)] * 3)
    measured_by = log.read_text(encoding="utf-8").split()
    if one_run:  # one of them measures, the others wait and take its reading
        assert len(measured_by) == 1 and len(set(readings)) == 1
        assert readings[0] == 1.0 + (int(measured_by[0]) % 5) / 10
    else:  # each its own
        assert len(measured_by) == 3


def test_a_damaged_or_unwritable_memory_is_only_a_new_measurement(tmp_path: Path) -> None:
    folder = tmp_path / "measured"
    remembered.remember(folder, {"a": 1}, 0.5)
    assert remembered.recall(folder, {"a": 1}) == 0.5 and remembered.recall(folder, {"a": 2}) is None
    (entry,) = folder.iterdir()
    entry.write_text("{not json", encoding="utf-8")
    assert remembered.recall(folder, {"a": 1}) is None
    blocked = tmp_path / "a-file"  # a folder that cannot be created: its parent is a file
    blocked.write_text("", encoding="utf-8")
    remembered.remember(blocked / "measured", {"a": 1}, 0.5)
    assert remembered.recall(blocked / "measured", {"a": 1}) is None
