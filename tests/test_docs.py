"""The README, docs/*.md and the bench results as a reader follows them: every relative link
reaches a file, every `#anchor` a heading of its page (GitHub's heading ids), and the README
stays a landing page of at most 15 KiB. Parsed with markdown-it (CommonMark and tables), so
links inside code are not links."""

from __future__ import annotations

import urllib.parse
from functools import cache
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from mdit_py_plugins.anchors import anchors_plugin

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "tests" / "bench" / "RESULTS.md",
]
README_LIMIT = 15 * 1024

_MD = MarkdownIt("commonmark").enable("table").use(anchors_plugin, max_level=6)


@cache
def _parsed(page: Path) -> tuple[frozenset[str], tuple[str, ...]]:
    """A page's heading ids and the targets of its links and images."""
    ids: set[str] = set()
    targets: list[str] = []
    for token in _MD.parse(page.read_text()):
        if token.type == "heading_open":
            ids.add(str(token.attrs["id"]))
        for child in token.children or ():
            if child.type == "link_open":
                targets.append(str(child.attrs["href"]))
            elif child.type == "image":
                targets.append(str(child.attrs["src"]))
    return frozenset(ids), tuple(targets)


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` that lead nowhere, each with the reason."""
    broken = []
    for target in _parsed(page)[1]:
        parts = urllib.parse.urlsplit(target)
        if parts.scheme or parts.netloc:
            continue  # a web address: not ours to check offline
        path, anchor = urllib.parse.unquote(parts.path), parts.fragment
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _parsed(dest)[0]:
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_check_sees_a_broken_file_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#a-code-heading) [ok](#page) [web](https://example.com/x#y)\n"
        "[gone](missing.md) [bad anchor](other.md#nothing) [here](#nowhere)\n\n"
        "    [in code](also-missing.md)\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nothing: no heading #nothing in other.md",
        "#nowhere: no heading #nowhere in page.md",
    ]


def test_the_readme_is_a_landing_page() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes: reference text goes in docs/"
