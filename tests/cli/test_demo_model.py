"""`simcli demo-model`: a random checkpoint in a hub layout, written from any folder, atomically, that the other
commands accept; refusals are one line and leave the folder as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.invoke import simcli as run

SMALL = [
    "--hidden",
    "32",
    "--heads",
    "4",
]  # fast; the README's default width is tested by tests/docs/test_readme.py


def said(folder: Path, family: str, layout: str, hidden: int, heads: int, can: str) -> str:
    size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    return (
        f"wrote {folder.name}: random {family} weights in the hub layout of {layout} "
        f"(2 layers, hidden {hidden}, {heads} heads, {size:.1f} MB)\n"
        "its vectors are random, so their similarities mean nothing: it is for trying simcli offline\n"
        f"it can encode (encode, index build, query, similar, whiten fit, eval, train, serve){can}\n"
    )


def test_written_from_another_folder_then_info_encode_generate_accept_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a folder outside the repository (as a user's shell is): the README's default model, then the
    commands the README runs on it."""
    monkeypatch.chdir(tmp_path)
    r = run("demo-model", "tiny-model")
    assert r.exit_code == 0, r.output
    model = tmp_path / "tiny-model"
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "pytorch_model.bin", "vocab.txt"]
    layout = "junnyu/roformer_chinese_sim_char_*"
    assert r.stdout == said(model, "roformer-sim", layout, 384, 6, " and generate (generate)")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-model"]  # no staging folder left behind

    info = json.loads(run("info", "tiny-model", "--json").stdout)
    assert (info["family"], info["dim"], info["can_generate"]) == ("roformer-sim", 384, True)
    Path("faq.txt").write_text("花呗怎么还款\n借呗额度怎么提升\n今天天气很好\n", encoding="utf-8")
    r = run("encode", "faq.txt", "--model", "tiny-model", "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [len(row["vector"]) for row in rows] == [384, 384, 384]
    r = run(
        "generate", "花呗怎么还款", "--model", "tiny-model", "-n", "8", "-k", "3", "--seed", "1", "--json"
    )
    assert r.exit_code == 0, r.output
    (record,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert record["text"] == "花呗怎么还款" and 1 <= len(record["paraphrases"]) <= 3


@pytest.mark.parametrize(
    ("family", "detected", "generates"),
    [
        ("wobert", "wobert", False),
        ("roformer-word", "roformer-word", False),
        ("roformer-char", "roformer-char", False),
        ("simbert", "bert", True),
        ("bert", "bert", False),
    ],
)
def test_every_family_is_detected_as_itself(
    tmp_path: Path, family: str, detected: str, generates: bool
) -> None:
    """What the command says it can do is what `simcli info` finds in the folder."""
    out = tmp_path / family
    r = run("demo-model", str(out), "--family", family, *SMALL)
    assert r.exit_code == 0, r.output
    last = r.stdout.splitlines()[-1]
    assert last.endswith("and generate (generate)" if generates else "(only roformer-sim and simbert can)")
    info = json.loads(run("info", str(out), "--json").stdout)
    assert (info["family"], info["dim"], info["can_generate"]) == (detected, 32, generates)


def test_a_folder_that_holds_something_is_refused_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    for extra, message in (
        ([], f"{out}: folder is not empty (use --overwrite to replace the model there)"),
        (["--overwrite"], f"{out}: folder holds no model (no config.json): not replacing it"),
    ):
        r = run("demo-model", str(out), *SMALL, *extra)
        assert (r.exit_code, r.stdout, r.stderr) == (1, "", f"simcli: error: {message}\n")
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (tmp_path / "f").write_text("", encoding="utf-8")
    r = run("demo-model", str(tmp_path / "f"), *SMALL)
    assert (r.exit_code, r.stderr) == (1, f"simcli: error: {tmp_path / 'f'}: a file, not a folder\n")


def test_overwrite_replaces_a_model_folder(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert run("demo-model", str(out), *SMALL).exit_code == 0
    r = run("demo-model", str(out), "--hidden", "40", "--heads", "4", "--family", "bert", "--overwrite")
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert (config["hidden_size"], config["model_type"]) == (40, "bert")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_an_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that fails half-way (here: after its config is written) leaves no folder and no staging folder."""
    from simcli.models import demo

    def half(path: Path, **_: object) -> Path:
        (path / "config.json").write_text("{}", encoding="utf-8")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "build_offline", lambda family, path, **kw: half(path, **kw))
    r = run("demo-model", str(tmp_path / "m"), *SMALL)
    assert r.exit_code != 0
    assert list(tmp_path.iterdir()) == []


FAMILY_CHOICES = "'roformer-sim', 'wobert', 'roformer-word', 'roformer-char', 'simbert', 'bert'"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--family", "gpt2"],
            f"Invalid value for '--family': Value error, 'gpt2' is not one of {FAMILY_CHOICES} "
            + "(see simcli demo-model --help)",
        ),
        (["--hidden", "100", "--heads", "3"], "--hidden 100 must split into --heads 3 heads of an even size"),
        (["--hidden", "36", "--heads", "4"], "--hidden 36 must split into --heads 4 heads of an even size"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    """One line naming the flag at fault, exit 2, nothing written."""
    r = run("demo-model", str(tmp_path / "m"), *args)
    suffix = " (rotary pairs)" if "--hidden" in args else ""
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"simcli: error: {message}{suffix}\n")
    assert not (tmp_path / "m").exists()
