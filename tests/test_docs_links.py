"""Every relative link in README.md and docs/ points at a file that exists, and at a heading in it.

Anchors follow GitHub's slugs: the heading's text, lowercased, punctuation dropped, spaces as
hyphens, and ``-1``, ``-2``… for repeated headings. Code (fenced or inline) is not parsed.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without fenced code blocks (headings and links in examples are not real)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link texts kept, lowercased, punctuation dropped."""
    text = LINK.sub(r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for heading in HEADING.findall(prose(page.read_text(encoding="utf-8"))):
        base = slug(heading)
        found.add(f"{base}-{counts[base]}" if base in counts else base)
        counts[base] = counts.get(base, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    text = CODE.sub("", prose(page.read_text(encoding="utf-8")))
    for _, target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …: not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{target}: no such heading")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_slugs_follow_github() -> None:
    assert slug("The `kiban` command for auth") == "the-kiban-command-for-auth"
    assert slug('"No relevant information found."') == "no-relevant-information-found"
    assert slug("Plans, quotas and rate limits") == "plans-quotas-and-rate-limits"
    assert slug("kiban (基盤)") == "kiban-基盤"


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n```sh\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[ok](#title) [ok](other.md#other-page) `[code](gone.md)`\n"
        "[gone](gone.md) [no anchor](other.md#not-a-heading) [web](https://example.com/x)\n"
    )
    assert [problem.split(":")[0] for problem in broken_links(page)] == [
        "gone.md",
        "other.md#not-a-heading",
    ]
