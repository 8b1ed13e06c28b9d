"""What a new user trips over: query input options, models recorded as absolute paths, file modes,
resume with another dtype, one-line usage errors, index info on an altered file, wording."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.invoke import simcli as run

SENTENCES = ["花呗怎么还款", "借呗额度怎么提升", "花呗如何还款", "我喜欢北京", "今天天气很好"]


@pytest.fixture
def faq(tmp_path: Path, roformer_sim_dir: Path) -> Path:
    corpus = tmp_path / "faq.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "faq.idx"
    r = run(
        "index", "build", str(corpus), "-m", str(roformer_sim_dir), "--out", str(out), "--dtype", "float32"
    )
    assert r.exit_code == 0, r.output
    return out


def _hits(output: str) -> list[tuple[str, list[str]]]:
    rows = [json.loads(line) for line in output.splitlines()]
    return [(row["query"], [h["text"] for h in row["results"]]) for row in rows]


# -- query --file with --column / --field, and - for stdin ------------------------------------------


def test_query_file_column_and_stdin_dash(faq: Path, tmp_path: Path) -> None:
    expected = run("query", str(faq), "借呗额度", "花呗如何还款", "-k", "2", "--json")
    assert expected.exit_code == 0, expected.output
    want = _hits(expected.stdout)
    assert [q for q, _ in want] == ["借呗额度", "花呗如何还款"]

    tsv = tmp_path / "q.tsv"
    tsv.write_text("id\tquestion\tlabel\n1\t借呗额度\t0\n2\t花呗如何还款\t1\n", encoding="utf-8")
    r = run("query", str(faq), "--file", str(tsv), "-k", "2", "--json")
    assert r.exit_code == 1
    assert (
        r.stderr
        == f"simcli: error: {tsv}: several columns, choose one with --column (header: id, question, label)\n"
    )
    r = run("query", str(faq), "--file", str(tsv), "--column", "question", "-k", "2", "--json")
    assert r.exit_code == 0, r.output
    assert _hits(r.stdout) == want

    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"q": "借呗额度"}\n{"q": "花呗如何还款"}\n', encoding="utf-8")
    r = run("query", str(faq), "--file", str(jsonl), "--field", "q", "-k", "2", "--json")
    assert r.exit_code == 0, r.output
    assert _hits(r.stdout) == want

    # `-` reads the queries from stdin (never a search for the text "-"), as txt or, with --column, tsv
    r = run("query", str(faq), "-", "-k", "2", "--json", stdin="借呗额度\n\n花呗如何还款\n")
    assert r.exit_code == 0, r.output
    assert _hits(r.stdout) == want
    r = run(
        "query", str(faq), "-", "--column", "1", "-k", "2", "--json", stdin=tsv.read_text(encoding="utf-8")
    )
    assert r.exit_code == 0, r.output
    assert _hits(r.stdout) == want
    r = run("query", str(faq), "--file", "-", "-k", "2", "--json", stdin="借呗额度\n花呗如何还款\n")
    assert _hits(r.stdout) == want

    r = run("query", str(faq), "借呗额度", "--column", "question")
    assert r.exit_code == 2
    assert r.stderr == "simcli: error: --column and --field choose the text of --file (or of - for stdin)\n"


# -- an index used from another working directory; a moved model -----------------------------------


def test_index_from_another_directory_and_moved_model(
    tmp_path: Path, roformer_sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    shutil.copytree(roformer_sim_dir, work / "tiny-model")
    (work / "faq.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    monkeypatch.chdir(work)
    r = run("index", "build", "faq.txt", "-m", "./tiny-model", "--out", "faq.idx", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    manifest = json.loads((work / "faq.idx" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["model"]["model"] == str(work / "tiny-model")  # absolute, not "./tiny-model"
    assert manifest["model_path"] == str(work / "tiny-model")
    r = run("encode", "faq.txt", "-m", "tiny-model", "--out", "faq.vec", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    store = json.loads((work / "faq.vec" / "manifest.json").read_text(encoding="utf-8"))
    assert store["model"]["model"] == str(work / "tiny-model")

    want = run("query", "faq.idx", "借呗额度", "-k", "2", "--json")
    assert want.exit_code == 0, want.output

    monkeypatch.chdir(elsewhere)
    r = run("query", str(work / "faq.idx"), "借呗额度", "-k", "2", "--json")
    assert r.exit_code == 0, r.output
    assert _hits(r.stdout) == _hits(want.stdout)
    # an index built from the store (which records the model too) also answers text queries from here
    r = run("index", "build", str(work / "faq.vec"), "--out", "vec.idx")
    assert r.exit_code == 0, r.output
    assert _hits(run("query", "vec.idx", "借呗额度", "-k", "2", "--json").stdout) == _hits(want.stdout)

    (work / "tiny-model").rename(work / "moved-model")
    r = run("query", str(work / "faq.idx"), "借呗额度", "-k", "1")
    assert r.exit_code == 1
    sha = manifest["model"]["weights_sha256"][:16]
    assert r.stderr == (
        f"simcli: error: {work / 'faq.idx'}: its model folder {work / 'tiny-model'} is missing; pass --model "
        f"with the folder that holds those weights (sha256 {sha}...)\n"
    )
    assert len(r.stderr.splitlines()) == 1
    r = run(
        "query", str(work / "faq.idx"), "借呗额度", "-k", "2", "--json", "--model", str(work / "moved-model")
    )
    assert r.exit_code == 0, r.output
    assert _hits(r.stdout) == _hits(want.stdout)


# -- written files get the mode the umask gives a normal file --------------------------------------


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in sorted(folder.rglob("*"))}


def test_written_files_follow_the_umask(tmp_path: Path, roformer_sim_dir: Path, umask: None) -> None:
    m = str(roformer_sim_dir)
    corpus = tmp_path / "in" / "c.tsv"
    corpus.parent.mkdir()
    corpus.write_text("text\tlabel\n" + "".join(f"{s}\t1\n" for s in SENTENCES * 12), encoding="utf-8")
    out = tmp_path / "out"
    for args in (
        ["encode", str(corpus), "--out", str(out / "c.vec")],
        ["index", "build", str(corpus), "--out", str(out / "c.idx"), "--index", "hnsw"],
        ["whiten", "fit", str(out / "c.vec"), "--dim", "4", "--out", str(out / "c.whiten")],
        [
            "generate",
            "--input",
            str(corpus),
            "--out",
            str(out / "aug.tsv"),
            "-n",
            "4",
            "-k",
            "1",
            "--max-new-tokens",
            "3",
        ],
    ):
        r = run(*args, *(["-m", m] if args[0] != "whiten" else []), "--dtype", "float32")
        assert r.exit_code == 0, (args, r.output)
    modes = _modes(out)
    files = {name for name in modes if (out / name).is_file()}
    assert {
        "c.vec/manifest.json",
        "c.vec/shard-00000.npy",
        "c.idx/manifest.json",
        "c.whiten",
        "aug.tsv",
    } <= files
    assert any(name.startswith("c.idx/index-") for name in files)
    assert {name: modes[name] for name in files} == dict.fromkeys(files, 0o644)
    assert {name: modes[name] for name in modes if name not in files} == {"c.vec": 0o755, "c.idx": 0o755}

    from simcli.io import atomic_write_text

    os.umask(0o027)  # the mode follows the umask, whatever it is
    atomic_write_text(tmp_path / "x.txt", "x")
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o640


# -- --resume refuses another device dtype (or --allow-mixed) ---------------------------------------


def test_resume_refuses_another_dtype(tmp_path: Path, roformer_sim_dir: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(
        "花呗怎么还款\n借呗额度\n".encode() + b"\xff\xfe\n" + "我喜欢北京\n今天天气很好\n".encode()
    )
    out = tmp_path / "s.vec"
    base = ["encode", str(src), "-m", str(roformer_sim_dir), "--out", str(out), "--shard-size", "2"]
    r = run(*base, "--dtype", "bfloat16")  # stops at line 3 after finishing shard 0, in bfloat16
    assert r.exit_code == 1
    assert r.stderr.endswith(f"simcli: error: {src}:3: invalid UTF-8 (use --errors replace)\n")

    r = run(*base, "--dtype", "float32", "--resume", "--errors", "replace")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1] == (
        f"simcli: error: {out}: cannot resume: the interrupted run computed in bfloat16, this run in float32 "
        "(pass --dtype bfloat16, or --allow-mixed to keep both in one store)"
    )
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [s["computed_with"]["dtype"] for s in manifest["shards"]] == ["bfloat16"]  # nothing was changed

    r = run(*base, "--dtype", "float32", "--resume", "--errors", "replace", "--allow-mixed")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [s["computed_with"]["dtype"] for s in manifest["shards"]] == ["bfloat16", "float32", "float32"]
    assert manifest["complete"] is True


def test_resume_with_auto_continues_in_the_dtype_begun(tmp_path: Path, roformer_sim_dir: Path) -> None:
    # auto measures its probes at every start; resuming, it takes the finished shards' dtype instead of refusing
    src = tmp_path / "in.txt"
    src.write_bytes(
        "花呗怎么还款\n借呗额度\n".encode() + b"\xff\xfe\n" + "我喜欢北京\n今天天气很好\n".encode()
    )
    out, whole = tmp_path / "s.vec", tmp_path / "whole.vec"
    base = ["encode", str(src), "-m", str(roformer_sim_dir), "--shard-size", "2"]
    assert run(*base, "--out", str(out), "--dtype", "bfloat16").exit_code == 1  # shard 0 finished in bfloat16

    r = run(*base, "--out", str(out), "--resume", "--errors", "replace")  # auto: float32 on this test CPU
    assert r.exit_code == 0, r.output
    assert "simcli: --resume: dtype bfloat16, as the finished shards (--dtype chooses another)\n" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [s["computed_with"]["dtype"] for s in manifest["shards"]] == ["bfloat16"] * 3
    # the store an uninterrupted bfloat16 run makes, byte for byte
    assert run(*base, "--out", str(whole), "--dtype", "bfloat16", "--errors", "replace").exit_code == 0
    for name in ("shard-00000.npy", "shard-00001.npy", "shard-00002.npy"):
        assert (out / name).read_bytes() == (whole / name).read_bytes()


# -- usage errors and the truncated-weights error are one line; --help stays rich, no <bool> ----


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["encode"], "Missing argument 'inputs' (see simcli encode --help)"),
        (["index", "build", "x.txt"], "Missing option '--out' / '-o' (see simcli index build --help)"),
        (["query", "faq.idx", "-k", "many"], "Invalid value for '-k': "),
        (["encode", "x.txt", "-m", "m", "--no-such-flag"], "No such option: --no-such-flag"),
        (["no-such-command"], "No such command 'no-such-command' (see simcli --help)"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    r = run(*args)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"simcli: error: {message}")
    assert "╭" not in r.stderr


def test_help_stays_rich_without_bool_on_flags() -> None:
    for args in (["--help"], ["encode", "--help"], ["index", "build", "--help"], ["query", "--help"]):
        r = run(*args)
        assert r.exit_code == 0, r.output
        assert "╭" in r.stdout and "Usage: simcli" in r.stdout
        assert "<bool>" not in r.stdout
    r = run(*["encode", "--help"])
    assert "--resume" in r.stdout and "<int range>" in r.stdout  # value options keep their type
    r = run(*["index"])  # a group alone shows its help, as before
    assert r.exit_code == 2 and "build" in r.output and "error" not in r.output


def test_truncated_weights_error_is_one_line_naming_the_file(roformer_sim_dir: Path, model_copy) -> None:  # type: ignore[no-untyped-def]
    model = model_copy(roformer_sim_dir)
    weights = model / "pytorch_model.bin"
    os.truncate(weights, weights.stat().st_size // 2)
    r = run("info", str(model))
    assert r.exit_code == 1
    assert r.stderr == (
        f"simcli: error: {weights}: unreadable weights, truncated or corrupted (RuntimeError: PytorchStreamReader "
        "failed reading zip archive: failed finding central directory)\n"
    )


def test_a_whitening_that_does_not_fit_names_its_own_model(
    tmp_path: Path, roformer_sim_dir: Path, wobert_dir: Path
) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES * 4) + "\n", encoding="utf-8")
    w = tmp_path / "w.whiten"
    r = run(
        "whiten",
        "fit",
        str(corpus),
        "-m",
        str(wobert_dir),
        "--dim",
        "4",
        "--out",
        str(w),
        "--dtype",
        "float32",
    )
    assert r.exit_code == 0, r.output
    r = run("similar", "a", "b", "-m", str(roformer_sim_dir), "--whitening", str(w))
    assert r.exit_code == 1
    assert r.stderr.startswith(
        f"simcli: error: whitening {w} (fitted for model {wobert_dir}) does not fit model {roformer_sim_dir}: "
        "weights_sha256 "
    )
    assert "family 'wobert' != 'roformer-sim'" in r.stderr and len(r.stderr.splitlines()) == 1


# -- index info on an altered faiss file fails, naming it ---------------------------------------------


def test_index_info_refuses_an_altered_or_truncated_file(faq: Path) -> None:
    r = run("index", "info", str(faq))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1] == "files               3, sizes and sha256 as the manifest records"
    (faiss_file,) = faq.glob("index-*.faiss")
    data = bytearray(faiss_file.read_bytes())
    data[-5] ^= 0xFF  # same size, one byte changed
    faiss_file.write_bytes(bytes(data))
    for args in (
        ["index", "info", str(faq)],
        ["index", "info", str(faq), "--json"],
        ["query", str(faq), "花呗"],
    ):
        r = run(*args)
        assert (r.exit_code, r.stdout) == (1, "")
        assert r.stderr == f"simcli: error: {faiss_file}: sha256 does not match the manifest (file altered)\n"
    faiss_file.write_bytes(bytes(data[:-7]))
    r = run("index", "info", str(faq))
    assert r.exit_code == 1
    assert r.stderr == (
        f"simcli: error: {faiss_file}: {len(data) - 7} bytes, the manifest says {len(data)} (truncated or altered)\n"
    )


# -- tuning that cannot reach its recall target says so once, with faiss's warnings folded in ----------


def test_tuning_below_target_warns_once_and_records_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from simcli.index import Index

    x = np.random.default_rng(5).standard_normal((400, 48)).astype(np.float32)  # no structure: PQ loses much
    notes: list[str] = []
    Index.build(
        x, out=tmp_path / "pq.idx", index="IVF8,PQ4x4", texts=[str(i) for i in range(400)], log=notes.append
    )
    printed = capfd.readouterr()
    assert (
        "WARNING clustering" not in printed.err + printed.out
    )  # faiss's own lines (one per sub-quantizer) are gone
    manifest = json.loads((tmp_path / "pq.idx" / "manifest.json").read_text(encoding="utf-8"))
    search = manifest["search"]
    assert search["target_recall"] == 0.97 and search["target_reached"] is False
    recall = search["tuned_recall"]
    assert recall < 0.9
    (warning,) = [n for n in notes if n.startswith("warning:")]
    assert search["warning"] == warning
    assert warning.startswith(
        f"warning: IVF8,PQ4x4 reaches recall@10 {recall:.2f} at best (nprobe 8), below the 0.97"
    )
    assert (
        "; faiss: clustering 320 points to 16 centroids: please provide at least 624 training points (4 times)"
        in (warning)
    )
    assert warning.endswith(
        "For more recall: more vectors, a larger m (e.g. --index IVF8,PQ8x4), or --index flat (exact)"
    )

    Index.build(
        x, out=tmp_path / "flat.idx", index="flat", texts=[str(i) for i in range(400)], log=notes.append
    )
    search = json.loads((tmp_path / "flat.idx" / "manifest.json").read_text(encoding="utf-8"))["search"]
    assert (search["target_reached"], search["warning"]) == (True, None)


# -- no hint installs the unrelated PyPI package `simcli` ---------------------------------------------


def test_install_hints_use_the_source_folder() -> None:
    import re

    root = Path(__file__).resolve().parents[2]
    texts = {
        p: p.read_text(encoding="utf-8")
        for p in [
            root / "README.md",
            *sorted((root / "docs").glob("*.md")),
            *sorted((root / "simcli").rglob("*.py")),
        ]
    }
    # `pip install simcli` / `simcli[plot]` from PyPI is another project; the README may only warn about it
    wrong = [
        (p.name, m.group(0))
        for p, text in texts.items()
        for m in re.finditer(r"pip install (?:-U )?simcli\b(?:\[\w+\])?", text)
        if "unrelated" not in text[max(0, m.start() - 200) : m.end() + 100]
    ]
    assert wrong == []
    readme = " ".join((texts[root / "README.md"] + texts[root / "docs" / "install.md"]).split()).lower()
    assert "the name `simcli` on pypi belongs to an unrelated 2018 package" in readme
    assert "pip install -e '.[plot]'" in readme
