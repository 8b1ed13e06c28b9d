"""Every command and Python snippet of the README and of docs/ run against the offline model the docs name
(`simcli demo-model ./tiny-model`), page by page in reading order, on small input files with the names the
docs use. An example that a user cannot run fails here."""

from __future__ import annotations

import json
import random
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import checkpoints
from tests.invoke import simcli

ROOT = Path(__file__).resolve().parents[2]
#: The pages whose examples run, in reading order: later pages use what earlier ones wrote (stores, indexes).
PAGES = [
    "README.md",
    *(
        f"docs/{name}.md"
        for name in (
            "install", "models", "encode", "whitening", "evaluate", "train", "generate", "index-and-query",
            "hubness", "serve", "scale-out", "python-api", "performance", "testing", "architecture",
        )
    ),
]  # fmt: skip
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.DOTALL)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on a busy shared machine two threads spin against each other (generation measured
    10x slower in CPU time); the results do not change."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The README's offline models, written by `simcli demo-model DIR [--family wobert]`."""
    root = tmp_path_factory.mktemp("offline")
    models = {"roformer-sim": root / "tiny-model", "wobert": root / "tiny-wobert"}
    for family, folder in models.items():
        r = simcli("demo-model", str(folder), "--family", family)
        assert r.exit_code == 0, r.output
    return models


def _sentences(n: int, seed: int) -> list[str]:
    """n distinct sentences of characters the offline vocab holds (so no two tokenise alike)."""
    chars = [t for t in checkpoints.char_vocab() if len(t) == 1 and "\u4e00" <= t <= "\u9fff"][:600]
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out["".join(rng.choices(chars, k=rng.randint(5, 14)))] = None
    return list(out)


def _inputs(folder: Path) -> None:
    """The files the README's examples name."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "examples", folder / "examples")
    shutil.copy(ROOT / "examples" / "faq.txt", folder / "faq.txt")

    def lines(texts: list[str]) -> str:
        return "\n".join(texts) + "\n"

    (folder / "corpus.txt").write_text(lines(_sentences(300, 1)), encoding="utf-8")
    for name, seed in (("lines.txt", 2), ("big.txt", 3), ("queries.txt", 4), ("more_faq.txt", 5)):
        (folder / name).write_text(lines(_sentences(6, seed)), encoding="utf-8")
    qs = _sentences(5, 6)
    (folder / "questions.tsv").write_text(
        lines(["id\tquestion", *(f"{i}\t{q}" for i, q in enumerate(qs))]), encoding="utf-8"
    )
    (folder / "train.tsv").write_text(
        lines(["text\tlabel", *(f"{q}\t1" for q in _sentences(3, 7))]), encoding="utf-8"
    )
    for k, name in enumerate(("ATEC", "BQ", "LCQMC", "PAWSX", "STS-B")):
        s = _sentences(
            300 if name == "LCQMC" else 80, 10 + k
        )  # LCQMC: enough sentences for `--whiten ...,256`
        rows = [
            f"{a}\t{b}\t{i % (6 if name == 'STS-B' else 2)}" for i, (a, b) in enumerate(zip(s[::2], s[1::2]))
        ]
        (folder / f"{name}.test.data").write_text(lines(rows), encoding="utf-8")


def _commands(block: str) -> list[tuple[list[str], str | None, str | None]]:
    """The simcli commands of a bash block: (argv, file piped in by `cat F |`, file of `> F`)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():  # a trailing backslash continues the command
        line = re.sub(r"\s\[[^\]]*\]", "", line)  # `[--json]`: an optional part, shown, not typed
        for part in " ".join(shlex.split(line, comments=True, posix=False)).split("&&"):
            stdin = None
            if "|" in part:
                feed, part = part.split("|", 1)
                stdin = shlex.split(feed)[1]
            stdout = None
            if ">" in part:
                part, stdout = (x.strip() for x in part.split(">", 1))
            argv = shlex.split(part)
            # `simcli serve` runs until stopped: tests/test_serve*.py start the real server instead
            if argv and argv[0] == "simcli" and argv[1:2] != ["serve"]:
                out.append((argv[1:], stdin, stdout))
    return out


def _offline_model(argv: list[str], models: dict[str, Path]) -> list[str]:
    """Every --model / -m value becomes the offline model of its family (WoBERT stays WoBERT); so does a
    --teacher / --student that names no folder of an earlier command."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in ("--model", "-m"):
            out[i + 1] = str(models["wobert" if "wobert" in out[i + 1] else "roformer-sim"])
        elif arg in ("--teacher", "--student") and not Path(out[i + 1]).exists():
            out[i + 1] = str(models["roformer-sim"])  # a hub name; a folder made by an earlier command stays
    return out


def _run(argv: list[str], stdin: str | None, stdout: str | None, models: dict[str, Path], where: str) -> None:
    feed = Path(stdin).read_bytes() if stdin else None
    # `simcli generate` without --model uses SIMCLI_MODEL (else junnyu/roformer_chinese_sim_char_ft_base); it is
    # set for every command, as a user's shell would: commands on a store must not mistake it for --model
    env = {"SIMCLI_MODEL": str(models["roformer-sim"])}
    r = simcli(*_offline_model(argv, models), stdin=feed, env=env)
    assert r.exit_code == 0, f"{where}: simcli {shlex.join(argv)}\n{r.output}"
    if stdout:
        Path(stdout).write_text(r.stdout, encoding="utf-8")


def _blocks(kind: str) -> list[tuple[str, str]]:
    """(code, "page:line") of every `kind` block of the pages, in reading order."""
    out = []
    for page in PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        out += [
            (m.group(2), f"{page}:{text[: m.start()].count(chr(10)) + 1}")
            for m in BLOCK.finditer(text)
            if m.group(1) == kind
        ]
    return out


def test_every_docs_page_is_run() -> None:
    """A new page of docs/ joins PAGES (or is deliberately left out here), so its examples cannot rot unseen."""
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages - set(PAGES) == {"docs/cli.md", "docs/references.md"}


def test_readme_commands_run_with_the_offline_model(
    offline: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = 0
    for n, (block, where) in enumerate(_blocks("bash")):
        folder = tmp_path / ("quick-start" if n == 0 else "shared")  # the quick start is a fresh checkout
        if not folder.exists():
            _inputs(folder)
        monkeypatch.chdir(folder)
        for argv, stdin, stdout in _commands(block):
            _run(argv, stdin, stdout, offline, where)
            ran += 1
    assert ran >= 25  # every documented command, not a handful
    shared = tmp_path / "shared"
    hits = [json.loads(x) for x in (shared / "hits.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(hits) == 6 and all(len(h["results"]) == 10 for h in hits)  # 6 queries, 10 hits each
    assert (
        (shared / "augmented.tsv").read_text(encoding="utf-8").startswith("text\tlabel\tsource_row\tscore\n")
    )


@pytest.mark.parametrize("page", ["README.md", "docs/python-api.md"])
def test_python_snippets_run_with_the_offline_model(
    page: str,
    offline: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (code,) = [code for code, where in _blocks("python") if where.startswith(page + ":")]
    code, n = re.subn(r'^M = "[^"]*"', f"M = {str(offline['roformer-sim'])!r}", code, flags=re.MULTILINE)
    assert n == 1
    _inputs(tmp_path / "py")
    monkeypatch.chdir(tmp_path / "py")
    scope: dict[str, object] = {}
    exec(compile(code, f"{page} (Python API)", "exec"), scope)  # noqa: S102
    assert scope["vecs"].shape == (2, 384)  # type: ignore[attr-defined]
    if page == "docs/python-api.md":
        assert scope["y"].shape == (2, 256)  # type: ignore[attr-defined]
    assert len(capsys.readouterr().out.splitlines()) == 3  # the three hits printed


def test_cli_reference_page_is_current() -> None:
    """docs/cli.md is what `python -m simcli.cli.reference` renders from the commands today."""
    from simcli.cli.reference import render

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert page == render(), "docs/cli.md is stale: python -m simcli.cli.reference > docs/cli.md"
    for command in ("simcli encode", "simcli index build", "simcli train", "simcli serve", "simcli eval sts"):
        assert f"## `{command}`" in page
