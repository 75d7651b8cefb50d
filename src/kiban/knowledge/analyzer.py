"""The one text analyzer, used at ingestion and at query time (Japanese, English, and both mixed).

Text is NFKC-normalized and lowercased. Text with Japanese in it goes through SudachiPy (core
dictionary): each morpheme becomes its *normalized form* (so 附属 and 付属 meet)
and morphemes are dropped by part of speech (particles, auxiliary verbs, symbols, blanks), not by a
hand list. Latin words (whether alone or inside Japanese text) drop English stopwords and are
stemmed with Snowball; numbers and other scripts are kept as they are.

Every token consists only of Unicode letters and digits, which is exactly what the SQLite FTS5
tokenizer (``unicode61 categories 'L* N*'``) treats as one token, so FTS5 and our own term
statistics count the same terms.

The Sudachi dictionary takes a while to load: it is loaded once per process, lazily, under a lock;
each thread gets its own tokenizer (a Sudachi tokenizer must not be shared between threads).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import snowballstemmer

# Parts of speech (prefixes of Sudachi's POS) that carry no topic: particles, auxiliary verbs,
# symbols, supplementary symbols (punctuation, brackets), blanks, pronouns (これ, 何, どこ: a
# question word never appears in its answer), conjunctions, interjections, and the function uses
# of verbs and adjectives (する, いる, ある, なる, ない as 非自立可能).
DROPPED_POS: tuple[tuple[str, ...], ...] = (
    ("助詞",),
    ("助動詞",),
    ("補助記号",),
    ("記号",),
    ("空白",),
    ("代名詞",),
    ("接続詞",),
    ("感動詞",),
    ("動詞", "非自立可能"),
    ("形容詞", "非自立可能"),
)

# Snowball's English stopword list (snowballstem.org/algorithms/english/stop.txt).
ENGLISH_STOPWORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself it its itself they them their theirs themselves what which who whom
    this that these those am is are was were be been being have has had having do does did
    doing would should could ought i'm you're he's she's it's we're they're i've you've we've
    they've i'd you'd he'd she'd we'd they'd i'll you'll he'll she'll we'll they'll isn't
    aren't wasn't weren't hasn't haven't hadn't doesn't don't didn't won't wouldn't shan't
    shouldn't can't cannot couldn't mustn't let's that's who's what's here's there's when's
    where's why's how's a an the and but if or because as until while of at by for with about
    against between into through during before after above below to from up down in out on off
    over under again further then once here there when where why how all any both each few more
    most other some such no nor not only own same so than too very s t can will just don should
    now
    """.split()  # noqa: SIM905
)

# Longer words are cut (a term column is bounded; such "words" are rarely what anyone asks for).
MAX_TERM_CHARS = 64
# A token: a run of Unicode letters and digits (no underscore, no marks, no punctuation).
_WORD = re.compile(r"[^\W_]+")
_JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
_ASCII_ALPHA = re.compile(r"[a-z]+")
# Sudachi refuses very long inputs (about 49,000 bytes); analyze long text in pieces.
_MAX_PIECE_CHARS = 4000
_PIECE_BREAK = re.compile(r"(?<=[\n。！？!?])")


class Analyzer:
    """Turns text into index terms. Thread-safe; one per process is enough (see `analyzer()`)."""

    def __init__(self, split_mode: str = "C") -> None:
        self._split_mode = split_mode
        self._dictionary: Any = None
        self._load_lock = threading.Lock()
        self._local = threading.local()

    def analyze(self, text: str) -> list[str]:
        """The index terms of `text`, in order (duplicates kept, for term frequencies)."""
        text = unicodedata.normalize("NFKC", text).lower()
        if not _JAPANESE.search(text):
            return self._latin_terms(text)
        terms: list[str] = []
        for piece in _pieces(text):
            terms.extend(self._japanese_terms(piece))
        return terms

    def warm_up(self) -> None:
        """Load the dictionary now (it is otherwise loaded on first Japanese text)."""
        self._tokenizer()

    # --- internals ------------------------------------------------------------------------------

    def _latin_terms(self, text: str) -> list[str]:
        terms: list[str] = []
        for word in _WORD.findall(text):
            terms.extend(self._word_terms(word))
        return terms

    def _word_terms(self, word: str) -> list[str]:
        word = word[:MAX_TERM_CHARS]
        if _ASCII_ALPHA.fullmatch(word):
            if word in ENGLISH_STOPWORDS:
                return []
            return [_stem(word)]
        return [word]

    def _japanese_terms(self, text: str) -> Iterator[str]:
        from sudachipy import SplitMode

        tokenizer = self._tokenizer()
        mode = getattr(SplitMode, self._split_mode)
        for morpheme in tokenizer.tokenize(text, mode):
            if _dropped(morpheme.part_of_speech()):
                continue
            surface = morpheme.surface()
            # Latin words take the English path: Sudachi would "normalize" running to ランニング.
            form = surface if _ASCII_ALPHA.search(surface) else morpheme.normalized_form().lower()
            for word in _WORD.findall(form):
                yield from self._word_terms(word)

    def _tokenizer(self) -> Any:
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            with self._load_lock:
                if self._dictionary is None:
                    from sudachipy import Dictionary

                    self._dictionary = Dictionary(dict="core")
                tokenizer = self._dictionary.tokenizer()
            self._local.tokenizer = tokenizer
        return tokenizer


def is_japanese(text: str) -> bool:
    """Whether `text` holds Japanese script (kana or kanji)."""
    return _JAPANESE.search(unicodedata.normalize("NFKC", text)) is not None


def _dropped(pos: tuple[str, ...]) -> bool:
    return any(pos[: len(prefix)] == prefix for prefix in DROPPED_POS)


def _pieces(text: str) -> Iterator[str]:
    """`text` cut at line and sentence ends into pieces Sudachi accepts."""
    if len(text) <= _MAX_PIECE_CHARS:
        yield text
        return
    buffer = ""
    for part in _PIECE_BREAK.split(text):
        while len(part) > _MAX_PIECE_CHARS:
            yield part[:_MAX_PIECE_CHARS]
            part = part[_MAX_PIECE_CHARS:]
        if len(buffer) + len(part) > _MAX_PIECE_CHARS:
            yield buffer
            buffer = ""
        buffer += part
    if buffer:
        yield buffer


_stemmers = threading.local()


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    # Snowball stemmers keep state between calls: one per thread.
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:
        stemmer = snowballstemmer.stemmer("english")
        _stemmers.english = stemmer
    result: str = stemmer.stemWord(word)
    return result


_default: dict[str, Analyzer] = {}
_default_lock = threading.Lock()


def analyzer() -> Analyzer:
    """The process-wide analyzer."""
    with _default_lock:
        if "analyzer" not in _default:
            _default["analyzer"] = Analyzer()
        return _default["analyzer"]


def analyze(text: str) -> list[str]:
    """The index terms of `text` with the process-wide analyzer."""
    return analyzer().analyze(text)
