"""`simcli --help` must start fast: the CLI imports no heavy library at module level (STYLE.md 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "faiss", "jieba", "scipy", "safetensors", "tokenizers")


def test_cli_import_loads_no_heavy_module() -> None:
    code = f"import sys, simcli, simcli.cli\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"


def test_help_lists_every_command() -> None:
    from simcli.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("encode", "info", "whiten", "eval", "index", "query", "similar", "generate"):
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
    ):
        assert command in readme, command
    assert "pytest" in readme
