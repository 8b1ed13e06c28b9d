"""`simcli --help` must start fast: the CLI imports no heavy library at module level."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.invoke import simcli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "torch",
    "transformers",
    "faiss",
    "jieba",
    "scipy",
    "safetensors",
    "tokenizers",
    "fastapi",
    "uvicorn",
    "ray",
    "pyarrow",
)


def test_cli_import_loads_no_heavy_module() -> None:
    code = f"import sys, simcli, simcli.cli\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"


def test_encoding_imports_no_transformers(tmp_path: Path, roformer_sim_dir: Path, wobert_dir: Path) -> None:
    """A cold `simcli query` and library encoding (RoFormer and BERT) run on simcli's native engine:
    transformers' modeling stack (~3 s of imports, simcli/models/native.py) and huggingface_hub (only for
    hub downloads) stay unloaded. Forcing the transformers engine at the end shows the check can fail."""

    corpus = tmp_path / "faq.txt"
    corpus.write_text("花呗怎么还款\n借呗额度怎么提升\n今天天气很好\n", encoding="utf-8")
    index = tmp_path / "faq.idx"
    built = simcli("index", "build", str(corpus), "--model", str(roformer_sim_dir), "--out", str(index))
    assert built.exit_code == 0, built.output
    code = f"""
import sys
from simcli.cli import main
sys.argv = ["simcli", "query", {str(index)!r}, "花呗还款", "-k", "2"]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
from simcli.models.encoder import load_encoder
from simcli.models.loading import open_checkpoint
for model in ({str(roformer_sim_dir)!r}, {str(wobert_dir)!r}):
    open_checkpoint(model)
    enc = load_encoder(model, pooling="first-last-avg")
    assert enc.engine == "native", enc.engine
    enc.encode(["今天天气怎么样"])
print("LOADED", ",".join(m for m in ("transformers", "huggingface_hub") if m in sys.modules))
load_encoder({str(wobert_dir)!r}, engine="transformers")
print("FORCED", ",".join(m for m in ("transformers",) if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "花呗还款" and "花呗怎么还款" in lines[1], out.stdout
    assert lines[-2:] == ["LOADED ", "FORCED transformers"], out.stdout


def test_generation_imports_no_transformers(tmp_path: Path, roformer_sim_dir: Path) -> None:
    """`simcli generate` (sentences and batch mode) and the library's `generate` decode with simcli's native
    layers and KV cache: transformers stays unloaded. The SimBERT layout (BERT positions) too. Importing it
    at the end shows the check can fail."""
    from tests.checkpoints import build_simbert

    simbert = build_simbert(tmp_path / "simbert")
    table = tmp_path / "in.tsv"
    table.write_text("text\tlabel\n花呗怎么还款\t1\n今天天气\t0\n", encoding="utf-8")
    code = f"""
import sys
from simcli.cli import main

def run(*args):
    sys.argv = ["simcli", "generate", *args]
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code

run("花呗怎么还款", "-m", {str(roformer_sim_dir)!r}, "-n", "8", "-k", "3", "--seed", "1", "--max-new-tokens", "6")
run("--input", {str(table)!r}, "--out", {str(tmp_path / "out.tsv")!r}, "-m", {str(roformer_sim_dir)!r}, "-n", "4",
    "-k", "2", "--seed", "1", "--max-new-tokens", "5")
import simcli
found = simcli.generate("今天天气", model={str(simbert)!r}, n=6, k=2, seed=1, max_new_tokens=5, dtype="float32")
assert found and all(p.text for p in found), found
print("LOADED", ",".join(m for m in ("transformers", "huggingface_hub") if m in sys.modules))
import transformers
print("FORCED", ",".join(m for m in ("transformers",) if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "花呗怎么还款" and lines[1].split()[0] == "1", out.stdout
    assert (tmp_path / "out.tsv").read_text(encoding="utf-8").startswith("text\tlabel\tsource_row\tscore\n")
    assert lines[-2:] == ["LOADED ", "FORCED transformers"], out.stdout


def test_without_ray_flag_nothing_imports_ray(tmp_path: Path, wobert_dir: Path) -> None:
    """encode, whiten fit and index build without --ray import neither Ray nor pyarrow (simcli.scale is
    only for --ray); importing simcli.scale.runtime at the end shows the check can fail."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"今天天气很好{i}\n" for i in range(40)), encoding="utf-8")
    store, whiten, index = tmp_path / "c.vec", tmp_path / "c.whiten", tmp_path / "c.idx"
    code = f"""
import sys
from simcli.cli import main

def run(*args):
    sys.argv = ["simcli", *args]
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code

run("encode", {str(corpus)!r}, "-m", {str(wobert_dir)!r}, "--out", {str(store)!r}, "--shard-size", "16")
run("whiten", "fit", {str(store)!r}, "--dim", "8", "--out", {str(whiten)!r})
run("index", "build", {str(store)!r}, "--whitening", {str(whiten)!r}, "--out", {str(index)!r})
print("LOADED", ",".join(m for m in ("ray", "pyarrow", "simcli.scale") if m in sys.modules))
import simcli.scale.runtime
print("FORCED", ",".join(m for m in ("simcli.scale",) if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-2:] == ["LOADED ", "FORCED simcli.scale"], out.stdout


def test_ray_flag_without_ray_is_one_line_naming_the_extra(
    tmp_path: Path, wobert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when not installed
    corpus = tmp_path / "c.txt"
    corpus.write_text("今天天气很好\n", encoding="utf-8")
    for args in (
        ["encode", str(corpus), "-m", str(wobert_dir), "--out", str(tmp_path / "o.vec"), "--ray", "local"],
        ["whiten", "fit", str(tmp_path), "--out", str(tmp_path / "w"), "--ray", "auto"],
    ):
        result = simcli(*args)
        assert result.exit_code == 1, result.output
        assert (
            result.output.strip().splitlines()[-1]
            == "simcli: error: --ray needs Ray: pip install -e '.[ray]'"
        )


def test_help_lists_every_command() -> None:

    result = simcli("--help")
    assert result.exit_code == 0
    for command in (
        "encode",
        "info",
        "whiten",
        "eval",
        "index",
        "query",
        "similar",
        "generate",
        "serve",
        "demo-model",
    ):
        assert command in result.output, command


def test_readme_documents_every_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in (
        "simcli encode",
        "simcli info",
        "simcli whiten fit",
        "simcli eval sts",
        "simcli index build",
        "simcli index add",
        "simcli index info",
        "simcli index check",
        "simcli query",
        "simcli similar",
        "simcli generate",
        "simcli serve",
        "simcli demo-model",
    ):
        assert command in readme, command
    assert "pytest" in readme
