"""Every hint simcli prints, followed: the error is triggered, the suggested flag or command is added to the
same invocation (or run), and that then succeeds. A hint that leads into a second error is a bug.

How the hints were found: `grep -rnE "use --|pass --|run |try |\\(use|did you mean|pip install" simcli/`, plus
the messages that name a flag to swap (`replace --resume with --overwrite`) and the shared texts
(`store.RESTART`, `sources.OFFLINE_ALTERNATIVES`, `sources.GENERATE_ALTERNATIVES`). Hints that cannot be
followed here: `pip install` (checked to name a real extra of pyproject.toml), the short names and hub ids
(they need the package registry or the hub; checked to be real short names, and that nothing was asked of
either), and the Ray forms of the resume hints (the same `store.RESTART` text as the single-process ones).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import tomllib

from simcli.models import sources
from tests.invoke import simcli as run
from tests.train_data import pairs, write_pairs

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = ["花呗怎么还款", "借呗额度怎么提升", "花呗如何还款", "我喜欢北京", "今天天气很好"]
F32 = ("--dtype", "float32")


def ok(*args: Any) -> Any:
    r = run(*args)
    assert r.exit_code == 0, r.output
    return r


def fails(code: int, message: str, *args: Any) -> None:
    """The invocation fails with exactly this one line on stderr (after any progress notes)."""
    r = run(*args)
    assert r.exit_code == code, r.output
    assert r.stderr.splitlines()[-1] == f"simcli: error: {message}"


def write(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write(tmp_path / "faq.txt", SENTENCES)


@pytest.fixture
def index(tmp_path: Path, corpus: Path, roformer_sim_dir: Path) -> Path:
    out = tmp_path / "faq.idx"
    ok("index", "build", corpus, "-m", roformer_sim_dir, "--out", out, *F32)
    return out


# -- invalid UTF-8: "(use --errors replace)", on every command that reads text ---------------------------


def _bad_utf8(tmp_path: Path, suffix: str) -> Path:
    path = tmp_path / f"bad{suffix}"
    head = b"text\n" if suffix == ".tsv" else b""
    path.write_bytes(head + "花呗怎么还款\n".encode() + b"\xe5\x80 bad\n" + "今天天气很好\n".encode())
    return path


READERS = {
    "encode": lambda m, bad, t: ["encode", bad, "-m", m, "--out", t / "y.vec"],
    "index build": lambda m, bad, t: ["index", "build", bad, "-m", m, "--out", t / "y.idx"],
    "whiten fit": lambda m, bad, t: ["whiten", "fit", bad, "-m", m, "--out", t / "w.whiten", "--clamp"],
    "generate --input": lambda m, bad, t: ["generate", "--input", bad, "--out", t / "o.tsv", "-m", m,
                                            "-n", "2", "-k", "1", "--max-new-tokens", "3", "--seed", "1"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(READERS))
def test_invalid_utf8_hint(command: str, tmp_path: Path, roformer_sim_dir: Path) -> None:
    bad = _bad_utf8(tmp_path, ".tsv" if command.startswith("generate") else ".txt")
    line = 3 if command.startswith("generate") else 2
    args = READERS[command](roformer_sim_dir, bad, tmp_path)
    fails(1, f"{bad}:{line}: invalid UTF-8 (use --errors replace)", *args)
    out = Path(args[args.index("--out") + 1])
    assert not out.exists() and not out.parent.joinpath(f".{out.name}.parts").exists()  # nothing half-made
    ok(*args, "--errors", "replace")
    assert out.exists()


def test_invalid_utf8_hint_on_an_index(tmp_path: Path, index: Path) -> None:
    bad = _bad_utf8(tmp_path, ".txt")
    for args in (["index", "add", index, bad], ["query", index, "--file", bad, "--json"]):
        fails(1, f"{bad}:2: invalid UTF-8 (use --errors replace)", *args)
        r = ok(*args, "--errors", "replace")
    assert r.stdout.count('"query"') == 3  # the replaced line is a query too
    assert ok("index", "info", index, "--json").stdout.count('"count": 8') == 1


# -- a failed first shard leaves no half-made store ------------------------------------------------------


def test_failed_first_shard_removes_only_what_it_made(tmp_path: Path, roformer_sim_dir: Path) -> None:
    bad = _bad_utf8(tmp_path, ".txt")
    base = ("encode", bad, "-m", roformer_sim_dir)
    error = f"{bad}:2: invalid UTF-8 (use --errors replace)"
    # folders simcli made (parents included) go; a folder the user had stays, emptied of the store it began
    fails(1, error, *base, "--out", tmp_path / "a" / "b" / "y.vec")
    assert not (tmp_path / "a").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    fails(1, error, *base, "--out", mine)
    assert mine.is_dir() and list(mine.iterdir()) == []
    ok(*base, "--out", mine, "--errors", "replace")
    fails(1, error, *base, "--out", mine, "--overwrite")  # the old store is replaced: nothing half-made
    assert mine.is_dir() and list(mine.iterdir()) == []
    # a missing column found after the model loaded: the same
    tsv = write(tmp_path / "late.tsv", ["a\tb", "你\t好", "坏"])
    fails(1, f"{tsv}:3: row has 1 fields, no column 1 ('b')", "encode", tsv, "--column", "b",
          "-m", roformer_sim_dir, "--out", tmp_path / "late.vec")  # fmt: skip
    assert not (tmp_path / "late.vec").exists()
    # a store with a finished shard is kept (--resume continues it)
    fails(1, f"{tsv}:3: row has 1 fields, no column 1 ('b')", "encode", tsv, "--column", "b",
          "-m", roformer_sim_dir, "--out", tmp_path / "late.vec", "--shard-size", "1")  # fmt: skip
    assert min(p.name for p in (tmp_path / "late.vec").iterdir()) == "manifest.json"
    assert (tmp_path / "late.vec" / "shard-00000.npy").is_file()


def test_model_that_fails_to_load_makes_no_folder(
    tmp_path: Path, corpus: Path, roformer_sim_dir: Path, model_copy: Any
) -> None:
    broken = model_copy(roformer_sim_dir)
    weights = broken / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    r = run("encode", corpus, "-m", broken, "--out", tmp_path / "y.vec")
    assert r.exit_code == 1 and r.stderr.startswith(f"simcli: error: {weights}: unreadable weights")
    assert not (tmp_path / "y.vec").exists()


def test_interrupt_keeps_the_folder_for_resume(tmp_path: Path, roformer_sim_dir: Path) -> None:
    """Only errors discard: Ctrl-C before the first shard leaves the store for --resume."""
    from simcli.io import Record
    from simcli.models.encoder import load_encoder
    from simcli.store import encode_to_store

    def rows() -> Any:
        yield Record("花呗", "x.txt", 1)
        raise KeyboardInterrupt

    out = tmp_path / "y.vec"
    with pytest.raises(KeyboardInterrupt):
        encode_to_store(rows(), load_encoder(str(roformer_sim_dir)), out, shard_size=4)
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


# -- output folders: "(use --resume ... or --overwrite ...)", "(use --overwrite ...)", "(pass --overwrite ...)"


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_store_folder_not_empty_hint(flag: str, tmp_path: Path, corpus: Path, roformer_sim_dir: Path) -> None:
    args = ("encode", corpus, "-m", roformer_sim_dir, "--out", tmp_path / "y.vec", *F32)
    ok(*args)
    fails(1, f"{tmp_path / 'y.vec'}: folder is not empty (use --resume to continue an interrupted run or "
          "--overwrite to replace it)", *args)  # fmt: skip
    r = ok(*args, flag)
    assert r.stderr.splitlines()[-1].startswith("simcli: read 5 rows: wrote 5 vectors")


def test_store_named_as_a_file_is_refused(tmp_path: Path, corpus: Path, roformer_sim_dir: Path) -> None:
    # `--out vectors.npy` would otherwise make a folder called vectors.npy
    out = tmp_path / "vectors.npy"
    fails(2, f"--out {out}: names a file, but encode writes a folder (its shard-NNNNN.npy files hold the vectors in "
          "input order); choose a folder name such as vectors.vec", "encode", corpus, "-m", roformer_sim_dir,
          "--out", out, *F32)  # fmt: skip
    assert not out.exists()
    out.mkdir()  # an existing folder of that name (made by hand, or by an earlier version) is used as it is
    ok("encode", corpus, "-m", roformer_sim_dir, "--out", out, *F32)
    assert (out / "manifest.json").exists()


def _out_exists_cases(tmp_path: Path, corpus: Path, model: Path) -> dict[str, tuple[list[Any], str]]:
    tsv = write(tmp_path / "in.tsv", ["text", *SENTENCES[:2]])
    gen = ["-n", "2", "-k", "1", "--max-new-tokens", "3", "--seed", "1"]
    return {
        "index build": (["index", "build", corpus, "-m", model, "--out", tmp_path / "i.idx", *F32],
                        f"--out {tmp_path / 'i.idx'} is not empty (use --overwrite to replace an index there)"),
        "whiten fit": (["whiten", "fit", corpus, "-m", model, "--out", tmp_path / "w.whiten", "--clamp"],
                       f"--out {tmp_path / 'w.whiten'} exists (use --overwrite to replace it)"),
        "generate --input": (["generate", "--input", tsv, "--out", tmp_path / "o.tsv", "-m", model, *gen],
                             f"{tmp_path / 'o.tsv'}: exists (pass --overwrite to replace it)"),
    }  # fmt: skip


@pytest.mark.parametrize("command", ["index build", "whiten fit", "generate --input"])
def test_output_exists_hint(command: str, tmp_path: Path, corpus: Path, roformer_sim_dir: Path) -> None:
    args, message = _out_exists_cases(tmp_path, corpus, roformer_sim_dir)[command]
    ok(*args)
    fails(1, message, *args)
    ok(*args, "--overwrite")


def test_train_out_not_empty_hint(tmp_path: Path, roformer_sim_dir: Path) -> None:
    data = write_pairs(tmp_path / "train.tsv", pairs(40, 1))
    out = tmp_path / "trained"
    args = ("train", data, "--model", roformer_sim_dir, "--out", out, "--steps", "1")
    ok(*args)
    fails(1, f"--out {out} is not empty (use --overwrite to replace a trained model there)", *args)
    ok(*args, "--overwrite")


# -- resume: "replace --resume with --overwrite", "pass --dtype X, or --allow-mixed" -------------------


def _swap(args: Sequence[Any], old: str, new: str) -> list[Any]:
    return [new if a == old else a for a in args]


def test_store_resume_mismatch_hint(tmp_path: Path, corpus: Path, roformer_sim_dir: Path) -> None:
    out = tmp_path / "y.vec"
    ok("encode", corpus, "-m", roformer_sim_dir, "--out", out, "--shard-size", "2", *F32)
    args = ["encode", corpus, "-m", roformer_sim_dir, "--out", out, "--shard-size", "3", "--resume", *F32]
    fails(1, f"{out}: cannot resume: shard_size was 2, now 3 (replace --resume with --overwrite to start "
          "again)", *args)  # fmt: skip
    fails(2, "--resume and --overwrite exclude each other", *args, "--overwrite")  # why the hint says swap
    ok(*_swap(args, "--resume", "--overwrite"))


@pytest.mark.parametrize("follow", [("--dtype", "float32"), ("--allow-mixed",)])
def test_store_resume_dtype_hint(
    follow: tuple[str, ...], tmp_path: Path, corpus: Path, roformer_sim_dir: Path
) -> None:
    out = tmp_path / "y.vec"
    ok("encode", corpus, "-m", roformer_sim_dir, "--out", out, *F32)
    args = ("encode", corpus, "-m", roformer_sim_dir, "--out", out, "--resume", "--dtype", "bfloat16")
    fails(1, f"{out}: cannot resume: the interrupted run computed in float32, this run in bfloat16 "
          "(pass --dtype float32, or --allow-mixed to keep both in one store)", *args)  # fmt: skip
    ok(*args, *follow)  # the later --dtype wins, as for any repeated option


def _interrupted_generate(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from simcli.errors import SimcliError
    from simcli.paraphrase import Paraphraser, load_paraphraser

    tsv = write(tmp_path / "in.tsv", ["text", *SENTENCES])
    args = ["generate", "--input", tsv, "--out", tmp_path / "o.tsv", "-m", model,
            "-n", "2", "-k", "1", "--max-new-tokens", "3", "--seed", "1"]  # fmt: skip
    # part files of 4 * 2 // 2 = 4 sentences: the run stops after the first part (kept by the follow-ups)
    monkeypatch.setattr("simcli.paraphrase.load_paraphraser", partial(load_paraphraser, max_rows=2))
    real, calls = Paraphraser.generate, []

    def stop_on_second(self: Paraphraser, *a: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise SimcliError("stopped")
        return real(self, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(Paraphraser, "generate", stop_on_second)
        r = run(*args)
    assert r.exit_code == 1 and (tmp_path / ".o.tsv.parts").is_dir(), r.output
    return args


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_generate_interrupted_hint(
    flag: str, tmp_path: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _interrupted_generate(tmp_path, roformer_sim_dir, monkeypatch)
    fails(1, f"{tmp_path / 'o.tsv'}: an interrupted run left .o.tsv.parts (pass --resume to continue it, "
          "--overwrite to start over)", *args)  # fmt: skip
    ok(*args, flag)
    assert len((tmp_path / "o.tsv").read_text(encoding="utf-8").splitlines()) == 1 + len(SENTENCES)


def test_generate_resume_mismatch_hint(
    tmp_path: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*_interrupted_generate(tmp_path, roformer_sim_dir, monkeypatch), "--resume"]
    changed = _swap(args, "3", "4")  # --max-new-tokens
    fails(1, f"{tmp_path / 'o.tsv'}: --resume with different settings than the interrupted run "
          "(max_new_tokens); replace --resume with --overwrite to start over", *changed)  # fmt: skip
    ok(*_swap(changed, "--resume", "--overwrite"))


# -- models ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "last-avg", "first-last-avg"])
def test_no_pooler_hint(pooling: str, corpus: Path, wobert_dir: Path) -> None:
    args = ["encode", corpus, "-m", wobert_dir, "--json", "--pooling", "pooler"]
    fails(1, "--pooling pooler needs trained pooler weights, and this wobert checkpoint has none "
          "(use cls, last-avg or first-last-avg)", *args)  # fmt: skip
    assert ok(*_swap(args, "pooler", pooling)).stdout.count('"vector"') == len(SENTENCES)


def test_cannot_generate_hint(wobert_dir: Path, roformer_sim_dir: Path) -> None:
    args = ["generate", "花呗怎么还款", "-m", wobert_dir, "-n", "2", "-k", "1", "--max-new-tokens", "3"]
    fails(1, f"{wobert_dir}: cannot generate: WoBERT was trained as a masked LM only, it has no UniLM-trained "
          "seq2seq head (use a RoFormer-Sim checkpoint, e.g. junnyu/roformer_chinese_sim_char_ft_base)",
          *args)  # fmt: skip
    ok(*_swap(args, wobert_dir, roformer_sim_dir))  # a RoFormer-Sim checkpoint (a local one: no hub here)


def _no_fetching(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a model hub or the package registry was asked")

    monkeypatch.setattr("huggingface_hub.snapshot_download", refuse)
    monkeypatch.setattr(sources, "_pip_download", refuse)


def test_generate_without_model_names_what_can_generate(
    monkeypatch: pytest.MonkeyPatch, roformer_sim_dir: Path
) -> None:
    fails(
        1,
        f"m3e-small: cannot generate; {sources.GENERATE_ALTERNATIVES}",
        "generate",
        "花呗",
        "-m",
        "m3e-small",
    )
    r = run("generate", "花呗", "-n", "2", "-k", "1")  # the default hub model, offline
    assert r.exit_code == 1
    assert r.stderr.startswith("simcli: error: junnyu/roformer_chinese_sim_char_ft_base: not a local folder")
    assert r.stderr.endswith(f"; {sources.GENERATE_ALTERNATIVES}\n") and r.stderr.count("\n") == 1
    assert "m3e-small and all-minilm-l6-v2 cannot generate" in sources.GENERATE_ALTERNATIVES
    # "a local folder of one" followed; `simcli demo-model DIR` comes from the command that makes one
    ok("generate", "花呗", "-m", roformer_sim_dir, "-n", "2", "-k", "1", "--max-new-tokens", "3")


@pytest.mark.parametrize(
    ("typo", "name"),
    [("m3e-smal", "m3e-small"), ("M3E-small ", "m3e-small"), ("all-minilm-l6", "all-minilm-l6-v2")],
)
def test_short_name_typo_hint(typo: str, name: str, monkeypatch: pytest.MonkeyPatch, corpus: Path) -> None:
    _no_fetching(monkeypatch)
    fails(2, f"unknown model {typo!r}: did you mean {name}?", "info", typo)
    fails(2, f"unknown model {typo!r}: did you mean {name}?", "encode", corpus, "-m", typo, "--json")
    assert name in sources.SHORT_NAMES  # following it needs the package registry: a real short name


def test_typo_check_leaves_folders_and_hub_ids_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, roformer_sim_dir: Path
) -> None:
    shutil.copytree(roformer_sim_dir, tmp_path / "m3e-smal")
    monkeypatch.chdir(tmp_path)
    assert ok("info", "m3e-smal", "--json").stdout.count('"family": "roformer-sim"') == 1
    r = run("info", "someone/m3e-smal")  # a hub id: the hub is asked (offline here), no guess
    assert r.exit_code == 1 and "did you mean" not in r.stderr and "hub download failed" in r.stderr


def test_offline_alternatives_hint(corpus: Path, roformer_sim_dir: Path) -> None:
    r = run("encode", corpus, "-m", "someone/missing-model", "--json")
    assert r.exit_code == 1 and r.stderr.endswith(f"without the hub use {sources.OFFLINE_ALTERNATIVES}\n")
    for name in sources.SHORT_NAMES:
        assert f" {name}" in sources.OFFLINE_ALTERNATIVES
    ok("encode", corpus, "-m", roformer_sim_dir, "--json")  # "a local model folder"


def test_moved_model_hint(tmp_path: Path, corpus: Path, roformer_sim_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(roformer_sim_dir, model)
    ok("index", "build", corpus, "-m", model, "--out", tmp_path / "i.idx", *F32)
    model.rename(tmp_path / "moved")
    r = run("query", tmp_path / "i.idx", "花呗", "--json")
    assert r.exit_code == 1
    assert (
        f"its model folder {model} is missing; pass --model with the folder that holds those weights"
        in r.stderr
    )
    assert (
        ok("query", tmp_path / "i.idx", "花呗", "--json", "--model", tmp_path / "moved").stdout.count(
            '"query"'
        )
        == 1
    )


# -- index, whitening, training ---------------------------------------------------------------------------


@pytest.mark.parametrize("follow", ["hubness", "build --csls"])
def test_csls_radii_hint(
    follow: str, tmp_path: Path, corpus: Path, index: Path, roformer_sim_dir: Path
) -> None:
    args = ("query", index, "花呗", "--rerank", "csls", "--json", "-k", "2")
    fails(2, f"{index} has no CSLS radii: run `simcli index hubness {index}` (or build with "
          "`simcli index build --csls`)", *args)  # fmt: skip
    if follow == "hubness":
        ok("index", "hubness", index)
    else:
        ok("index", "build", corpus, "-m", roformer_sim_dir, "--out", index, "--overwrite", "--csls", *F32)
    ok(*args)


@pytest.mark.parametrize("command", ["encode", "index build"])
def test_empty_lines_hint(command: str, tmp_path: Path, roformer_sim_dir: Path) -> None:
    text = write(tmp_path / "gaps.txt", [SENTENCES[0], "", SENTENCES[1]])
    if command == "encode":
        args, warning = (
            ["encode", text, "-m", roformer_sim_dir, "--json"],
            "1 empty line kept (use --skip-empty)",
        )
    else:
        args = ["index", "build", text, "-m", roformer_sim_dir, "--out", tmp_path / "i.idx", *F32]
        warning = "1 empty texts kept (use --skip-empty)"
    r = ok(*args)
    assert f"simcli: warning: {warning}\n" in r.stderr
    if command == "index build":
        args.append("--overwrite")
    r = ok(*args, "--skip-empty")
    assert "warning" not in r.stderr
    if command == "encode":
        assert "simcli: read 3 rows: encoded 2 sentences (dim 48), skipped 1 empty\n" in r.stderr
        assert r.stdout.count('"vector"') == 2
    else:
        assert r.stdout.startswith(f"wrote {tmp_path / 'i.idx'}: 2 vectors")


@pytest.mark.parametrize("follow", ["--dim", "--clamp"])
def test_whitening_rank_hint(follow: str, tmp_path: Path, corpus: Path, roformer_sim_dir: Path) -> None:
    args = ("whiten", "fit", corpus, "-m", roformer_sim_dir, "--out", tmp_path / "w.whiten")
    r = run(*args)
    assert r.exit_code == 1, r.output
    found = re.search(r"has rank (\d+) < --dim (\d+) \(need N well above d\); use --dim (\d+) or less, "
                      r"more vectors, or --clamp$", r.stderr.strip())  # fmt: skip
    assert found is not None, r.stderr
    rank = found.group(3)
    assert found.group(1) == rank and int(rank) == len(SENTENCES) - 1
    r = ok(*args, *(["--dim", rank] if follow == "--dim" else ["--clamp"]))
    assert f"-> {rank} dimensions" in r.stdout


@pytest.mark.parametrize(("kind", "loss", "message"), [
    ("scores", "cosent", ("labels are scores; the softmax loss needs classes: give --threshold (e.g. 2.5) or "
                         "use --loss cosent")),
    ("nli", "softmax", "NLI labels have no order for --loss cosent; use --loss softmax"),
])  # fmt: skip
def test_train_loss_hint(kind: str, loss: str, message: str, tmp_path: Path, roformer_sim_dir: Path) -> None:
    data = write_pairs(tmp_path / f"{kind}.tsv", pairs(40, 4, **{kind: True}))
    other = "softmax" if loss == "cosent" else "cosent"
    args = [
        "train",
        data,
        "--model",
        roformer_sim_dir,
        "--out",
        tmp_path / "t",
        "--steps",
        "1",
        "--loss",
        other,
    ]
    fails(2, f"{data}: {message}", *args)
    ok(*_swap(args, other, loss))


# -- contradictions refused, and what the refusal says to do ------------------------------------------------


def test_store_flags_contradiction_hint(
    tmp_path: Path, corpus: Path, roformer_sim_dir: Path, wobert_dir: Path
) -> None:
    store = tmp_path / "y.vec"
    ok("encode", corpus, "-m", roformer_sim_dir, "--out", store, *F32)
    fix = "a store's vectors are already computed: drop the flag, or encode the text again"
    base = ["index", "build", store, "--out", tmp_path / "i.idx"]
    fails(2, f"{store}: a vector store of model {roformer_sim_dir}; --model {wobert_dir} contradicts it ({fix})",
          *base, "--model", wobert_dir)  # fmt: skip
    fails(2, f"{store}: a vector store of model {roformer_sim_dir}; --model m3e-small contradicts it ({fix})",
          *base, "--model", "m3e-small")  # fmt: skip
    fails(2, f"{store}: a vector store made with --pooling pooler; --pooling cls contradicts it ({fix})",
          *base, "--pooling", "cls")  # fmt: skip
    fails(2, f"{store}: a vector store made with --max-length 64; --max-length 32 contradicts it ({fix})",
          *base, "--max-length", "32")  # fmt: skip
    fails(2, f"{store}: a vector store made with --tokenizer char; --tokenizer word contradicts it ({fix})",
          *base, "--tokenizer", "word")  # fmt: skip
    assert not (tmp_path / "i.idx").exists()
    # the hint followed: the flag dropped; the store's own values given explicitly are no contradiction
    ok(*base)
    copy = tmp_path / "same-weights"
    shutil.copytree(roformer_sim_dir, copy)
    ok(*base, "--overwrite", "--model", roformer_sim_dir, "--pooling", "pooler", "--max-length", "64")
    ok(*base, "--overwrite", "--model", copy)  # the same weights in another folder


def test_eval_sts_takes_a_model_list(tmp_path: Path, roformer_sim_dir: Path, wobert_dir: Path) -> None:
    import json

    from simcli.evaluate import evaluate_sts

    data = write_pairs(tmp_path / "A.test.data", pairs(40, 5))
    args = ("eval", "sts", data, "--whiten", "none", *F32)
    r = ok(*args, "--model", f"{roformer_sim_dir},{wobert_dir}", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(row["model"], row["pooling"]) for row in rows] == [
        (str(roformer_sim_dir), "pooler"),
        (str(wobert_dir), "first-last-avg"),
    ]
    for row, model in zip(rows, (roformer_sim_dir, wobert_dir), strict=True):
        (alone,) = evaluate_sts([data], str(model), whiten="none", dtype="float32")
        assert row["spearman"] == alone.spearman
    table = ok(*args, "--model", f"{roformer_sim_dir},{wobert_dir}").stdout
    cells = [
        [c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")
    ]
    assert [c[:3] for c in cells] == [
        [str(roformer_sim_dir), "pooler", "none"],
        [str(wobert_dir), "first-last-avg", "none"],
    ]
    fails(2, "eval retrieval takes one --model (eval sts takes a comma list)",
          "eval", "retrieval", data, "--model", f"{roformer_sim_dir},{wobert_dir}")  # fmt: skip


# -- hints that cannot be followed here ----------------------------------------------------------------------


def test_install_hints_name_real_extras() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    found = [
        (path.name, m.group(1))
        for path in sorted((ROOT / "simcli").rglob("*.py"))
        for m in re.finditer(r"pip install (-e '[^']*'|[^\s)`'\"]+)", path.read_text(encoding="utf-8"))
    ]
    texts = [path.read_text(encoding="utf-8") for path in (ROOT / "simcli").rglob("*.py")]
    assert len(found) == sum(t.count("pip install") for t in texts)  # none in a shape the pattern misses
    named = set()
    for name, target in found:
        extra = re.fullmatch(r"-e '\.\[(\w+)\]'", target)
        if extra is not None:  # an extra of this project, installed from its source folder
            assert extra.group(1) in extras, (name, target)
            named.add(extra.group(1))
        else:  # or one plain package (never `simcli[...]`: that name on PyPI is another project)
            assert re.fullmatch(r"[a-z][a-z0-9-]*", target) and "simcli" not in target, (name, target)
    assert named == {"cpu", "ray", "plot", "serve"}  # a new hint is seen here: check its extra too


def test_serve_without_its_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_fastapi(name: str, *a: Any, **kw: Any) -> Any:
        if name == "fastapi":
            raise ImportError("No module named 'fastapi'", name="fastapi")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    fails(1, "simcli serve needs the serve extra (fastapi is missing): pip install -e '.[serve]' in the simcli "
          "source folder", "serve", "--model", "m3e-small")  # fmt: skip


@pytest.mark.parametrize("command", [["encode"], ["index", "build"], ["eval", "sts"], ["generate"]])
def test_usage_error_help_hint(command: list[str]) -> None:
    r = run(*command, "--no-such-flag")
    assert r.exit_code == 2
    where = " ".join(["simcli", *command])
    assert r.stderr.endswith(f"(see {where} --help)\n")
    assert f"Usage: {where} [OPTIONS]" in ok(*command, "--help").stdout
