"""The built-in extractive engine: answers only with sentences quoted verbatim from the context.

No model, no download, no invention: it scores every sentence of the retrieved chunks against the
question (term overlap weighted by rarity, with character bigrams for Japanese and other scripts
written without spaces), and answers with the best few of the best passage (a chunk, or the part
of it under one Markdown heading, whose words count for the sentences below it), in their
documents' order, streamed word by word. With no context it says so. The same input always gives
the same answer.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Sequence

from kiban.gateway.catalog import ModelSpec
from kiban.gateway.providers.base import (
    Completion,
    CompletionStream,
    ProviderRequest,
    StreamChunk,
    TokenUsage,
)
from kiban.gateway.tokenizer import count_text
from kiban.knowledge import RetrievedChunk

NO_ANSWER = "No relevant information found."
MAX_SENTENCES = 3
# A sentence must score at least this share of the best one to be quoted alongside it.
RELATIVE_CUTOFF = 0.5

# A Markdown heading labels the sentences under it: it is matched with them, never quoted alone.
_HEADING = re.compile(r"^#{1,6}\s")
_SENTENCE_END = re.compile(r"(?<=[。！？!?])|(?<=[.;])(?=\s)|\n{1,}")
_LATIN_WORD = re.compile(r"[0-9a-z]+(?:['’][a-z]+)?")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f々〆ー]+")
# Stream units: a Latin word with its trailing space, or a run of one Japanese script
# (kanji with their okurigana, katakana, hiragana), or any other single character.
_PIECES = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff々〆]+[\u3040-\u309f]*|[\u30a0-\u30ffー]+|[\u3040-\u309f]+"
    r"|[^\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]+\s*|\s+"
)
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "me",
        "my",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "about",
        "tell",
        "please",
    ]
)


def terms(text: str) -> list[str]:
    """Matching units of a text: lowercase Latin words (minus stopwords) and CJK bigrams."""
    text = unicodedata.normalize("NFKC", text).lower()
    found = [w for w in _LATIN_WORD.findall(text) if w not in _STOPWORDS]
    for run in _CJK.findall(text):
        if len(run) == 1:
            found.append(run)
        found.extend(run[i : i + 2] for i in range(len(run) - 1))
    return found


def sentences(text: str) -> list[str]:
    """The sentences of a text, stripped, in order."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def best_sentences(question: str, context: Sequence[RetrievedChunk]) -> list[str]:
    """The sentences of the context that best answer the question, in reading order."""
    wanted = Counter(terms(question))
    if not wanted:
        return []
    # (position, section, sentence, terms): a section is a chunk, or a heading's part of one.
    candidates: list[tuple[int, int, str, Counter[str]]] = []
    # Rarer question terms weigh more: document frequency over the sentences, where a heading
    # counts once (not once per sentence under it).
    df: Counter[str] = Counter()
    seen: set[str] = set()
    section = 0
    for chunk in context:
        section += 1
        heading: Counter[str] = Counter()
        for sentence in sentences(chunk.text):
            own = Counter(terms(sentence))
            df.update(t for t in own if t in wanted)
            if _HEADING.match(sentence):
                section += 1
                heading = own
                continue
            if sentence in seen:
                continue
            seen.add(sentence)
            candidates.append((len(candidates), section, sentence, own | heading))
    if not candidates:
        return []
    n = len(candidates)
    weight = {t: math.log(1 + n / df[t]) for t in wanted if df[t]}
    scored = []
    for position, part, sentence, bag in candidates:
        score = sum(weight.get(t, 0.0) for t in wanted if t in bag)
        if score > 0:
            # Prefer focused sentences: a mild length normalization.
            score /= 1 + 0.1 * math.log(1 + sum(bag.values()))
            scored.append((score, position, part, sentence))
    if not scored:
        return []
    scored.sort(key=lambda item: (-item[0], item[1]))
    top, _, best_part, _ = scored[0]
    # Quote from the best passage only, so the answer reads as one coherent excerpt.
    passage = [item for item in scored if item[2] == best_part and item[0] >= top * RELATIVE_CUTOFF]
    chosen = passage[:MAX_SENTENCES]
    return [sentence for _, _, _, sentence in sorted(chosen, key=lambda item: item[1])]


def answer(question: str, context: Sequence[RetrievedChunk]) -> str:
    """The extractive answer: quoted sentences, or ``NO_ANSWER``."""
    chosen = best_sentences(question, context)
    if not chosen:
        return NO_ANSWER
    joined = ""
    for sentence in chosen:
        if joined and not _CJK.match(sentence[:1]) and not joined.endswith(("。", "！", "？")):
            joined += " "
        joined += sentence
    return joined


def pieces(text: str) -> list[str]:
    """The text cut into words (Latin) or script runs (Japanese), for streaming."""
    return _PIECES.findall(text)


def fixed_stream(text: str, model: ModelSpec) -> CompletionStream:
    """A stream of a fixed text, word by word, that used no tokens (the "nothing found" answer)."""
    stream = CompletionStream(model=model, chunks=_empty(), usage=TokenUsage())

    async def chunks() -> AsyncIterator[StreamChunk]:
        for piece in pieces(text):
            stream.text_parts.append(piece)
            yield StreamChunk(piece)
        stream.finish_reason = "stop"

    stream.chunks = chunks()
    return stream


class ExtractiveProvider:
    """Quotes the context; costs nothing; never calls out."""

    name = "extractive"

    async def complete(self, request: ProviderRequest) -> Completion:
        """The whole answer at once."""
        text = answer(request.question, request.context)
        usage = TokenUsage(request.prompt_tokens, count_text(text, request.model.encoding))
        return Completion(text=text, usage=usage, finish_reason="stop", model=request.model)

    async def stream(self, request: ProviderRequest) -> CompletionStream:
        """The same answer, word by word."""
        text = answer(request.question, request.context)
        stream = CompletionStream(model=request.model, chunks=_empty())

        async def chunks() -> AsyncIterator[StreamChunk]:
            try:
                for piece in pieces(text):
                    stream.text_parts.append(piece)
                    yield StreamChunk(piece)
                stream.finish_reason = "stop"
            finally:
                stream.usage = TokenUsage(
                    request.prompt_tokens, count_text(stream.text, request.model.encoding)
                )

        stream.chunks = chunks()
        return stream

    async def aclose(self) -> None:
        return None


async def _empty() -> AsyncIterator[StreamChunk]:
    return
    yield  # pragma: no cover
