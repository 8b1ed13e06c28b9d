"""Steps that used to be silent: Ctrl-C during encode / index build, the encode and build times of
`index build`, and an empty input to `encode`."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import simcli.store
import simcli.vectors
from simcli.index import Index
from simcli.store import VectorStore
from tests.invoke import simcli as run

SENTENCES = [
    "花呗怎么还款",
    "借呗额度怎么提升",
    "花呗如何还款",
    "我喜欢北京",
    "今天天气很好",
    "你是谁",
    "在哪里",
]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return src


def _interrupt_at_shard(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """Ctrl-C while shard `at` is being written (the shards before it are finished)."""
    write = simcli.store.write_shard

    def write_then_interrupt(out: Path, k: int, *args: Any) -> dict[str, Any]:
        if k == at:
            raise KeyboardInterrupt
        return write(out, k, *args)

    monkeypatch.setattr(simcli.store, "write_shard", write_then_interrupt)


def test_ctrl_c_during_encode_says_what_was_kept_and_the_resume_command_completes_it(
    tmp_path: Path, corpus: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.vec"
    args = ["encode", str(corpus), "-m", str(roformer_sim_dir), "--dtype", "float32", "--shard-size", "3"]
    _interrupt_at_shard(monkeypatch, 1)
    r = run(*args, "--out", str(out))
    assert r.exit_code == 130
    resume = shlex.join(["simcli", *args, "--out", str(out), "--resume"])
    assert r.stderr.splitlines()[1:] == [
        f"simcli: interrupted: {out} keeps 1 shard (3 rows); continue with: {resume}"
    ]
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    monkeypatch.undo()

    again = run(*shlex.split(resume)[1:])  # the printed command, as the user pastes it
    assert again.exit_code == 0, again.output
    assert again.stderr.splitlines()[-1].endswith(f"in 3 shards to {out}, 1 finished earlier")
    whole = run(*args, "--out", str(tmp_path / "whole.vec"))
    assert whole.exit_code == 0, whole.output
    resumed, reference = VectorStore.open(out), VectorStore.open(tmp_path / "whole.vec")
    resumed.verify()
    assert resumed.texts() == reference.texts() == SENTENCES
    assert np.array_equal(resumed.vectors(), reference.vectors())
    shards = [json.loads((p / "manifest.json").read_text())["shards"] for p in (out, tmp_path / "whole.vec")]
    assert [s["npy_sha256"] for s in shards[0]] == [s["npy_sha256"] for s in shards[1]]


def test_ctrl_c_with_overwrite_suggests_resume_instead(
    tmp_path: Path, corpus: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.vec"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # an old store to replace
    args = ["encode", str(corpus), "-m", str(roformer_sim_dir), "--shard-size", "2", "--out", str(out)]
    _interrupt_at_shard(monkeypatch, 2)
    r = run(*args, "--overwrite")
    assert r.exit_code == 130
    resume = shlex.join(["simcli", *args, "--resume"])  # --overwrite dropped: it excludes --resume
    assert (
        r.stderr.splitlines()[-1]
        == f"simcli: interrupted: {out} keeps 2 shards (4 rows); continue with: {resume}"
    )


def test_ctrl_c_before_the_first_shard_keeps_nothing_and_removes_the_new_folder(
    tmp_path: Path, corpus: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.vec"
    args = ["encode", str(corpus), "-m", str(roformer_sim_dir), "--out", str(out)]
    _interrupt_at_shard(monkeypatch, 0)
    r = run(*args)
    assert r.exit_code == 130
    assert (
        r.stderr.splitlines()[-1]
        == f"simcli: interrupted before the first shard was finished: nothing kept in {out}"
    )
    assert not out.exists()
    monkeypatch.undo()
    assert run(*args).exit_code == 0  # the same command again


def test_ctrl_c_before_the_first_shard_keeps_a_folder_the_user_made(
    tmp_path: Path, corpus: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder was there (empty) before the run: what the run wrote goes, the folder stays."""
    out = tmp_path / "mine"
    out.mkdir()
    args = ["encode", str(corpus), "-m", str(roformer_sim_dir), "--out", str(out)]
    _interrupt_at_shard(monkeypatch, 0)
    assert run(*args).exit_code == 130
    assert out.is_dir() and list(out.iterdir()) == []
    monkeypatch.undo()
    assert run(*args).exit_code == 0  # the same command again: no "folder is not empty"


def test_ctrl_c_during_index_build_leaves_the_folder_unchanged(
    tmp_path: Path, corpus: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt
        yield  # a generator, like the one it replaces

    monkeypatch.setattr(simcli.vectors, "encode_blocks", interrupted)
    out = tmp_path / "faq.idx"
    args = [
        "index",
        "build",
        str(corpus),
        "-m",
        str(roformer_sim_dir),
        "--dtype",
        "float32",
        "--out",
        str(out),
    ]
    r = run(*args)
    assert r.exit_code == 130
    again = shlex.join(["simcli", *args])
    assert r.stderr.splitlines()[-1] == (
        f"simcli: interrupted: {out} unchanged (an index is written whole once built); start again with: {again}"
    )
    assert not out.exists()
    monkeypatch.undo()
    assert run(*shlex.split(again)[1:]).exit_code == 0
    assert Index.load(out).texts() == SENTENCES


def test_index_build_reports_the_encode_time_and_the_build_time(
    tmp_path: Path, corpus: Path, roformer_sim_dir: Path
) -> None:
    r = run("index", "build", str(corpus), "-m", str(roformer_sim_dir), "--out", str(tmp_path / "i.idx"))
    assert r.exit_code == 0, r.output
    said = r.stderr.splitlines()
    encoded = [s for s in said if re.fullmatch(r"simcli: read 7 rows: encoded 7 sentences in \d+\.\ds", s)]
    built = [s for s in said if re.match(r"simcli: built in \d+\.\ds; ", s)]
    assert len(encoded) == len(built) == 1
    assert said.index(encoded[0]) < said.index(built[0])


@pytest.mark.parametrize(
    ("name", "text", "flags", "reason"),
    [
        ("empty.txt", "", [], ""),
        ("header.tsv", "text\n", [], ""),
        ("blank.txt", "\n\n\n", ["--skip-empty"], " (3 empty skipped)"),
    ],
)
def test_encode_of_an_empty_input_is_an_error_and_leaves_no_store(
    tmp_path: Path, roformer_sim_dir: Path, name: str, text: str, flags: list[str], reason: str
) -> None:
    src = tmp_path / name
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "out.vec"
    for target in (["--out", str(out)], ["--json"]):
        r = run("encode", str(src), "-m", str(roformer_sim_dir), *flags, *target)
        assert r.exit_code == 1
        assert r.stderr == f"simcli: error: {src}: no sentences to encode{reason}\n"
        assert r.stdout == ""
        assert not out.exists()
    # the same words as `index build`
    built = run("index", "build", str(src), "-m", str(roformer_sim_dir), *flags, "--out", str(tmp_path / "i"))
    assert built.exit_code == 1
    assert built.stderr.splitlines()[-1] == f"simcli: error: {src}: no sentences to index{reason}"


def test_training_off_a_terminal_logs_a_line_a_minute_with_the_time_left() -> None:
    from simcli.cli.progress import training_log_lines

    now = [100.0]
    lines: list[str] = []
    on_step = training_log_lines("training", lines.append, interval=60.0, clock=lambda: now[0])
    for step in range(1, 11):  # 30 s a step, 10 steps
        now[0] += 30.0
        on_step(step, 10, 1.0 / step, 24.0)
    assert lines == [
        "simcli: training: step 2/10, loss 0.5000, 24.0 pairs/s, about 4 min left",  # 60 s for 2 steps, 8 left
        "simcli: training: step 4/10, loss 0.2500, 24.0 pairs/s, about 3 min left",
        "simcli: training: step 6/10, loss 0.1667, 24.0 pairs/s, about 2 min left",
        "simcli: training: step 8/10, loss 0.1250, 24.0 pairs/s, about 1 min left",
        "simcli: training: step 10/10, loss 0.1000, 24.0 pairs/s",
    ]
    resumed: list[str] = []
    on_step = training_log_lines("training", resumed.append, interval=60.0, clock=lambda: now[0])
    for step in range(7, 11):  # a resumed run: the pace counts from its own first step
        now[0] += 30.0
        on_step(step, 10, 24.0, 24.0)
    assert resumed[0] == "simcli: training: step 8/10, loss 24.0000, 24.0 pairs/s, about 1 min left"
