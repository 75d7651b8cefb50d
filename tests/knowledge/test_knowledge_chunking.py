"""Chunking: offsets map back, chunks cover the text, breaks follow paragraphs and sentences."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from kiban.knowledge.chunking import chunk_text


def _covered(text: str, chunks: list) -> bool:  # type: ignore[type-arg]
    seen = [False] * len(text)
    for chunk in chunks:
        for i in range(chunk.start, chunk.end):
            seen[i] = True
    return all(seen[i] or text[i].isspace() for i in range(len(text)))


@settings(max_examples=300, deadline=None)
@given(
    st.text(),
    st.integers(min_value=1, max_value=300),
    st.integers(min_value=0, max_value=200),
)
def test_offsets_map_back_and_chunks_cover_the_text(text: str, target: int, overlap: int) -> None:
    chunks = chunk_text(text, target_chars=target, overlap_chars=overlap)
    for number, chunk in enumerate(chunks):
        assert chunk.ordinal == number
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text.strip() == chunk.text != ""
    assert _covered(text, chunks)
    starts = [c.start for c in chunks]
    assert starts == sorted(starts)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(["梅雨前線が停滞する。", "It rains. ", "\n\n", "長い文" * 30]), max_size=40
    )
)
def test_chunks_stay_near_the_target(parts: list[str]) -> None:
    text = "".join(parts)
    for chunk in chunk_text(text, target_chars=120, overlap_chars=30):
        assert len(chunk.text) <= 120


def test_short_paragraphs_become_their_own_chunks_when_large_enough() -> None:
    first = "梅雨は東アジアの気象現象である。" * 8
    second = "Rainy season. It is long." * 6
    chunks = chunk_text(f"{first}\n\n{second}", target_chars=200)
    assert [c.text for c in chunks] == [first, second]


def test_breaks_fall_at_japanese_sentence_ends_with_overlap() -> None:
    sentences = [f"これは{i}番目の文です。" for i in range(30)]
    text = "".join(sentences)
    chunks = chunk_text(text, target_chars=100, overlap_chars=30)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.endswith("。")
    for before, after in itertools.pairwise(chunks):
        assert after.start < before.end  # the last sentence is repeated


def test_over_long_sentence_is_cut_at_spaces() -> None:
    text = " ".join(["word"] * 200)
    chunks = chunk_text(text, target_chars=50)
    assert all(len(c.text) <= 50 for c in chunks)
    assert all(not c.text.endswith("wor") for c in chunks)


def test_blank_text_has_no_chunks() -> None:
    assert chunk_text(" \n\n\t　") == []
