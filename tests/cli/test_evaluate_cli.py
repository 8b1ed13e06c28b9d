"""`simcli eval sts`: exit codes, exact JSON lines and table cells against the library, plot, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simcli.evaluate import evaluate_sts, summary_rows
from tests.invoke import simcli as run
from tests.quality.test_evaluate import make_pairs, write_data


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return [
        write_data(tmp_path / "ATEC.test.data", make_pairs(80, seed=7)),
        write_data(tmp_path / "STS-B.test.data", make_pairs(60, seed=8)),
    ]


def test_json_lines_equal_library_results(roformer_sim_dir: Path, files: list[Path]) -> None:
    args = ("--pooling", "pooler,first-last-avg", "--whiten", "none,full,8", "--dtype", "float32")
    r = run("eval", "sts", *files, "--model", roformer_sim_dir, *args, "--json")
    assert r.exit_code == 0, r.stderr
    expected = evaluate_sts(
        files, str(roformer_sim_dir), poolings="pooler,first-last-avg", whiten="none,full,8", dtype="float32"
    )
    assert r.stdout == "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in expected)
    assert len(expected) == 12
    # stderr: the model line, then a note for each clamped setting (pooler vectors have rank 47 here)
    assert r.stderr == (
        f"simcli: {roformer_sim_dir} (roformer-sim, dim 48, max length 64) on cpu float32\n"
        "simcli: note: ATEC pooler whiten full: k 48 lowered to the covariance rank 47 (160 vectors)\n"
        "simcli: note: STS-B pooler whiten full: k 48 lowered to the covariance rank 47 (120 vectors)\n"
    )


def test_table_rows_and_plot(roformer_sim_dir: Path, files: list[Path], tmp_path: Path) -> None:
    png = tmp_path / "plot.png"
    r = run("eval", "sts", *files, "--model", roformer_sim_dir, "--pooling", "cls", "--whiten", "none,16",
            "--dtype", "float32", "--plot", png)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    lines = r.stdout.splitlines()
    assert lines[0] == "Spearman x100; whitening beta 1, gamma 1, fitted on each task"
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    header = [[c.strip() for c in line.split("┃")[1:-1]] for line in lines if line.startswith("┃")]
    assert header == [["pooling", "whiten", "ATEC", "STS-B", "avg"]]
    expected = evaluate_sts(files, str(roformer_sim_dir), poolings="cls", whiten="none,16", dtype="float32")
    _, rows = summary_rows(expected)
    assert cells == [[p, w, *(f"{s:.2f}" for s in scores), f"{avg:.2f}"] for p, w, scores, avg in rows]
    assert len(cells) == 2


def test_title_and_model_line_say_only_what_applies(
    roformer_sim_dir: Path, files: list[Path], tmp_path: Path
) -> None:
    """No whitening: the title says nothing of one. The model line gives PAWSX's longer cut only where a PAWSX
    file is evaluated (alone: its cut is the only one), and --max-length instead of both."""
    model = ("--model", roformer_sim_dir, "--pooling", "cls", "--whiten", "none", "--dtype", "float32")
    r = run("eval", "sts", *files, *model)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == "Spearman x100"
    line = f"simcli: {roformer_sim_dir} (roformer-sim, dim 48, max length {{}}) on cpu float32\n"
    assert r.stderr == line.format("64")
    pawsx = write_data(tmp_path / "PAWSX.test.data", make_pairs(40, seed=10))
    for args, cut in (
        ([files[0], pawsx], "64 (PAWSX 128)"),
        ([pawsx], "128"),
        ([files[0], pawsx, "--max-length", 32], "32"),
    ):
        r = run("eval", "sts", *args, *model, "--json")
        assert (r.exit_code, r.stderr) == (0, line.format(cut)), args


def test_fit_on_and_options(roformer_sim_dir: Path, files: list[Path], tmp_path: Path) -> None:
    fit = tmp_path / "fit.txt"
    fit.write_text("\n".join(a for a, _, _ in make_pairs(150, seed=9)) + "\n", encoding="utf-8")
    r = run("eval", "sts", files[0], "--model", roformer_sim_dir, "--pooling", "first-last-avg",
            "--whiten", "full", "--beta", 0, "--gamma", 0, "--fit-on", fit, "--limit", 30,
            "--dtype", "float32", "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    (got,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (got["pairs"], got["fit_on"], got["fit_n"], got["beta"], got["gamma"], got["dim"]) == (
        30,
        str(fit),
        150,
        0.0,
        0.0,
        48,
    )
    plain = run("eval", "sts", files[0], "--model", roformer_sim_dir, "--pooling", "first-last-avg",
                "--whiten", "none", "--limit", 30, "--dtype", "float32", "--json")  # fmt: skip
    # beta = gamma = 0 with k = d is a rotation: cosines, hence the score, are those without whitening
    assert json.loads(plain.stdout)["spearman"] == pytest.approx(got["spearman"], abs=1e-6)


def test_errors(roformer_sim_dir: Path, files: list[Path], tmp_path: Path) -> None:
    model = ("--model", roformer_sim_dir, "--dtype", "float32")
    r = run("eval", "sts", *files, *model, "--whiten", "none,abc")
    assert (r.exit_code, r.stdout, r.stderr) == (
        2,
        "",
        "simcli: error: --whiten 'abc': expected none, full or a dimension such as 256\n",
    )
    r = run("eval", "sts", tmp_path / "missing.data", *model)
    assert (r.exit_code, r.stderr) == (1, f"simcli: error: {tmp_path / 'missing.data'}: no such file\n")
    bad = tmp_path / "bad.data"
    bad.write_text("甲\t乙\t1\n丙\t丁\tneutral\n", encoding="utf-8")
    r = run("eval", "sts", bad, *model)
    assert (r.exit_code, r.stderr) == (1, f"simcli: error: {bad}:2: label 'neutral' is not a number\n")
    r = run("eval", "sts", files[0], *model, "--whiten", "none,256")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[-1] == "simcli: error: --whiten 256 is above the model's dimension 48"
    r = run("eval", "sts", files[0], *model, "--columns", "1,2")
    assert (r.exit_code, r.stderr) == (
        2,
        "simcli: error: --columns '1,2': expected three columns 'first,second,label', e.g. 0,1,2 or 1,3,4\n",
    )
    r = run("eval", "sts", files[0], *model, "--pooling", "mean")
    assert r.exit_code == 2
    assert "--pooling 'mean' is not one of" in r.stderr
