"""Split a document into chunks along paragraphs and sentences, keeping offsets for citations.

A chunk is ``text[start:end]`` of the decoded document. Chunks follow the text's own structure:
paragraphs (blank lines) are the preferred breaks, then sentence ends (Japanese 。！？, English
``. ! ?`` followed by a space, line breaks); only a sentence longer than the target is cut inside.
Consecutive chunks of one paragraph overlap by up to ``overlap_chars`` of whole sentences, so an
answer that straddles a break is still found whole in one of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_TARGET_CHARS = 400
DEFAULT_OVERLAP_CHARS = 80

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v\u3000]*\n\s*")
# A sentence ends after Japanese 。！？ (and closing brackets), after . ! ? before a space, or at a
# line break.
_SENTENCE_END = re.compile(r"[。！？!?．][」』）)\]\"'”’]*|[.][」』）)\]\"'”’]*(?=\s)|\n")


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    opens_paragraph: bool


def chunk_text(
    text: str,
    *,
    target_chars: int = DEFAULT_TARGET_CHARS,
    overlap_chars: int = DEFAULT_OVERLAP_CHARS,
) -> list[Chunk]:
    """The chunks of `text` (empty when it has no visible characters)."""
    if target_chars < 1:
        raise ValueError("target_chars must be positive")
    overlap_chars = max(0, min(overlap_chars, target_chars // 2))
    spans: list[tuple[int, int]] = []
    current: list[_Unit] = []
    for unit in _units(text, target_chars):
        if current:
            length = unit.end - current[0].start
            if unit.opens_paragraph:
                if length > target_chars or current[-1].end - current[0].start >= target_chars // 2:
                    spans.append((current[0].start, current[-1].end))
                    current = []
            elif length > target_chars:
                spans.append((current[0].start, current[-1].end))
                current = _overlap(current, overlap_chars, unit, target_chars)
        current.append(unit)
    if current:
        spans.append((current[0].start, current[-1].end))
    return [Chunk(i, start, end, text[start:end]) for i, (start, end) in enumerate(spans)]


def _overlap(
    previous: list[_Unit], overlap_chars: int, following: _Unit, limit: int
) -> list[_Unit]:
    """The previous chunk's trailing sentences (same paragraph) to repeat before `following`."""
    kept: list[_Unit] = []
    for unit in reversed(previous):
        if previous[-1].end - unit.start > overlap_chars or following.end - unit.start > limit:
            break
        kept.insert(0, unit)
        if unit.opens_paragraph:
            break
    return kept


def _units(text: str, target_chars: int) -> Iterator[_Unit]:
    """Sentences (or pieces of over-long sentences), each marked when it opens a paragraph."""
    for p_start, p_end in _paragraphs(text):
        first = True
        for s_start, s_end in _sentences(text, p_start, p_end):
            for start, end in _pieces(text, s_start, s_end, target_chars):
                yield _Unit(start, end, first)
                first = False


def _paragraphs(text: str) -> Iterator[tuple[int, int]]:
    position = 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        yield from _trimmed(text, position, match.start())
        position = match.end()
    yield from _trimmed(text, position, len(text))


def _sentences(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    position = start
    for match in _SENTENCE_END.finditer(text, start, end):
        yield from _trimmed(text, position, match.end())
        position = match.end()
    yield from _trimmed(text, position, end)


def _pieces(text: str, start: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    """Cut an over-long sentence near `size`, at a space when one is close to the cut."""
    while end - start > size:
        cut = start + size
        space = text.rfind(" ", start + size // 2, cut)
        if space > start:
            cut = space
        yield from _trimmed(text, start, cut)
        start = cut
    yield from _trimmed(text, start, end)


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end
