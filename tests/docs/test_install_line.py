"""The torch install lines of the README, docs/ and CI agree: one exact pin, inside pyproject's torch requirement,
each on a pip command that carries PyTorch's CPU wheel index (PyPI's Linux torch is the CUDA build), except the
GPU line of docs/install.md, which names a CUDA index instead of PyPI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX = re.compile(r"https://download\.pytorch\.org/whl/cu\d+$")


def code(markdown: str) -> str:
    """What a reader copies from a Markdown file: its fenced blocks and inline code spans, one a line."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.DOTALL | re.MULTILINE)
    return "\n".join([*fenced, *re.findall(r"`([^`\n]+)`", prose)])


def torch_installs(text: str) -> list[list[str]]:
    """The arguments of every `pip install` command of `text` that installs torch (commands split at `&&`,
    `;` and newlines; a trailing backslash continues a line)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        for command in re.split(r"&&|;", line):
            if not re.search(r"\bpip\b.*\binstall\b", command):
                continue
            words = shlex.split(command, comments=True)
            if "install" not in words or "pip" not in words[: words.index("install")]:
                continue
            args = words[words.index("install") + 1 :]
            if any(re.match(r"torch(\W|$)", a) for a in args):
                out.append(args)
    return out


def check(sources: dict[str, str]) -> str:
    """The one torch version `sources` (name -> text) pin, or AssertionError naming what disagrees."""
    pins: dict[str, str] = {}
    for name, text in sources.items():
        installs = torch_installs(text)
        assert installs, f"{name}: no torch install line"
        for args in installs:
            (torch,) = [a for a in args if re.match(r"torch(\W|$)", a)]
            assert torch.startswith("torch=="), f"{name}: {torch!r} is not an exact pin"
            gpu = "--index-url" in args and CUDA_INDEX.match(args[args.index("--index-url") + 1])
            assert gpu or (
                "--extra-index-url" in args and args[args.index("--extra-index-url") + 1] == CPU_INDEX
            ), f"{name}: {shlex.join(args)} lacks --extra-index-url {CPU_INDEX}"
            pins[f"{name}: {shlex.join(args)}"] = torch.removeprefix("torch==")
    assert len(set(pins.values())) == 1, f"torch pins differ: {pins}"
    return next(iter(pins.values()))


def sources() -> dict[str, str]:
    """The commands of the README (its code) and of CI (the whole script)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = {str(p.relative_to(ROOT)): code(p.read_text(encoding="utf-8")) for p in pages}
    found = {name: text for name, text in found.items() if torch_installs(text)}
    return {**found, ".ci/run": (ROOT / ".ci/run").read_text(encoding="utf-8")}


def test_readme_and_ci_pin_one_cpu_torch_inside_pyproject_bounds() -> None:
    found = sources()
    version = check(found)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (torch,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"]
    assert torch.specifier.contains(Version(version)), f"torch=={version} is outside pyproject's {torch}"
    # where a newcomer reads them: both quick-start commands; the install page (CPU and GPU), the container, the
    # test setup; and CI
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert len(torch_installs(quick_start)) == 2
    counts = {name: len(torch_installs(text)) for name, text in found.items()}
    assert counts == {
        "README.md": 2, "docs/install.md": 2, "docs/serve.md": 1, "docs/testing.md": 1, ".ci/run": 1
    }  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("torch==2.13.0", "torch==2.14.0", "torch pins differ"),
        (f" --extra-index-url {CPU_INDEX}", "", "lacks --extra-index-url"),
        ("torch==2.13.0", "torch>=2.13", "is not an exact pin"),
        ("torch==2.13.0 --extra-index-url", "torch==2.13.0 --index-url", "lacks --extra-index-url"),
    ],
    ids=["another version", "no CPU index", "a range", "the index replaces PyPI"],
)
@pytest.mark.parametrize("where", ["README.md", ".ci/run"])
def test_editing_one_install_line_alone_fails(where: str, old: str, new: str, message: str) -> None:
    """The check above catches one line changed alone, in the README or in CI."""
    found = sources()
    assert old in found[where], "premise: the line to edit is there"
    found[where] = found[where].replace(old, new, 1)
    with pytest.raises(AssertionError, match=message):
        check(found)
