"""Every file the repository's code, comments and docs point at is in the repository.

Users have only the repository: design notes and specifications kept beside it (in ../shared)
must not be cited, every ``docs/NAME.md`` named must exist, every ``docs/model.md §N`` must be
a section of that page, and relative links in Markdown must resolve. The fixtures folder
../shared/fixtures is the one outside path some code may name, because it looks there and falls
back when it is absent (the tests, the C test/fuzz programs, the demo and its notebook).
"""

import json
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
THIS = pathlib.Path(__file__).resolve()

TEXT_SUFFIXES = {
    ".py",
    ".c",
    ".h",
    ".md",
    ".ipynb",
    ".toml",
    ".cfg",
    ".txt",
    ".sh",
    ".in",
    ".yml",
    ".yaml",
    ".supp",
    ".json",
}
TEXT_NAMES = {"Makefile", "run"}
SKIP_DIRS = {
    ".git",
    "build",
    "dist",
    "__pycache__",
    "bench-results",
    ".pytest_cache",
    ".hypothesis",
    "data",
}
# Code that looks for the fixtures beside the checkout and copes when they are absent.
FIXTURE_USERS = ("tests/", "csrc/tests/", "csrc/fuzz/", "rwkv5/demo.py", "notebooks/")

# Spelled in pieces so this file does not match itself.
FORBIDDEN = [re.compile(p) for p in (r"DESIGN" + r"\.md", r"rwkv5" + r"-spec", r"\bspec" + r" §")]
SHARED = re.compile(r"\.\./" + r"shared(/[\w./-]*)?")
DOC_REF = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)")
MODEL_SECTIONS = re.compile(
    r"docs/model\.md(?:\]\(docs/model\.md\))?((?:\s*(?:,|/|and|or)?\s*§\d+(?:\.\d+)?)+)"
)
MD_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def repo_files():
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = pathlib.Path(dirpath).relative_to(ROOT)
        dirnames[:] = [
            d
            for d in dirnames
            if d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not (rel_dir == pathlib.Path(".") and d == "shared")
        ]
        for name in filenames:
            p = pathlib.Path(dirpath) / name
            if p.suffix in TEXT_SUFFIXES or name in TEXT_NAMES:
                if p.resolve() != THIS:
                    out.append(p)
    return sorted(out)


def read_text(p):
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix == ".ipynb":  # the cells' text (outputs included), one line per source line
        nb = json.loads(text)
        parts = []
        for cell in nb.get("cells", []):
            parts.append("".join(cell.get("source", [])))
            for o in cell.get("outputs", []):
                parts.append("".join(o.get("text", [])))
        text = "\n".join(parts)
    return text


def model_sections():
    heads = re.findall(
        r"^#{2,3} (\d+(?:\.\d+)?)\.? ",
        (ROOT / "docs" / "model.md").read_text(encoding="utf-8"),
        re.M,
    )
    return set(heads)


def test_scan_sees_the_repository():
    files = {p.relative_to(ROOT).as_posix() for p in repo_files()}
    # the scan must cover code, C, docs and notebooks, or it would pass by looking at nothing
    for must in (
        "rwkv5/reference.py",
        "csrc/model/kernels.h",
        "docs/model.md",
        "README.md",
        "setup.py",
        "notebooks/make_notebooks.py",
    ):
        assert must in files
    assert len(files) > 80


def test_model_page_has_numbered_sections():
    secs = model_sections()
    for s in (
        "1",
        "2",
        "2.1",
        "2.2",
        "3",
        "4",
        "4.3",
        "4.4",
        "5",
        "6",
        "6.1",
        "6.2",
        "7.1",
        "7.2",
        "7.3",
        "7.4",
        "8",
    ):
        assert s in secs, s


def dangling_in(rel, text, secs=None):
    """(rel:line, what) for every reference in `text` (the content of repository file `rel`) to
    something the repository does not hold."""
    secs = model_sections() if secs is None else secs
    base = (ROOT / rel).parent
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{rel}:{n}"
        for pat in FORBIDDEN:
            if pat.search(line):
                bad.append((where, f"cites {pat.pattern!r}, which is not in the repository"))
        for m in SHARED.finditer(line):
            if not (m.group(0).startswith("../shared/fixtures") and rel.startswith(FIXTURE_USERS)):
                bad.append((where, f"names {m.group(0)!r}, outside the repository"))
        for m in DOC_REF.finditer(line):
            if not (ROOT / "docs" / m.group(1)).is_file():
                bad.append((where, f"names docs/{m.group(1)}, which does not exist"))
        for m in MODEL_SECTIONS.finditer(line):
            for s in re.findall(r"§(\d+(?:\.\d+)?)", m.group(1)):
                if s not in secs:
                    bad.append((where, f"cites docs/model.md §{s}, which has no such section"))
        if rel == "docs/model.md":
            for s in re.findall(r"§(\d+(?:\.\d+)?)", line):
                if s not in secs:
                    bad.append((where, f"cites its own §{s}, which does not exist"))
        if rel.endswith(".md"):
            for m in MD_LINK.finditer(line):
                target = m.group(1)
                if not re.match(r"[a-z]+:", target) and not (base / target).exists():
                    bad.append((where, f"links {target}, which does not exist"))
    return bad


def test_no_dangling_references():
    secs = model_sections()
    bad = [
        b
        for p in repo_files()
        for b in dangling_in(p.relative_to(ROOT).as_posix(), read_text(p), secs)
    ]
    assert not bad, "\n".join(f"{w}: {what}" for w, what in bad)


@pytest.mark.parametrize(
    "line, rel, flagged",
    [
        ("see DESIGN" + ".md", "rwkv5/x.py", True),
        ("follows docs/rwkv5" + "-spec.md §2.2", "rwkv5/x.py", True),
        ("(spec" + " §1.3)", "docs/formats.md", True),
        ("from ../shared" + "/docs/notes.md", "README.md", True),
        ("../shared" + "/fixtures/tiny.pth", "rwkv5/model.py", True),
        ("../shared" + "/fixtures/tiny.pth", "tests/test_x.py", False),
        ("docs/no-such-page.md", "README.md", True),
        ("docs/model.md §99", "rwkv5/x.py", True),
        ("docs/model.md §2.1, §42", "rwkv5/x.py", True),
        ("[model](docs/model.md) §6", "README.md", False),
        ("docs/model.md §4.4 / §6", "csrc/x.h", False),
        ("[gone](docs/gone.md)", "README.md", True),
    ],
)
def test_the_scan_flags_what_it_should(line, rel, flagged):
    """The checker itself: each kind of dangling reference is caught, legitimate ones are not."""
    assert bool(dangling_in(rel, line)) is flagged
