"""From uploaded bytes to text: detect the encoding, then take the text out of the format.

Encodings: UTF-8 (with or without a BOM) is recognized by decoding strictly; anything else is
detected with charset-normalizer (Shift_JIS/CP932, EUC-JP, and the rest it knows), never guessed.
Bytes that decode to nothing readable (binary, control characters) are refused.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser

import charset_normalizer

from kiban.knowledge import exceptions as exc

# Extension → kind; the extension decides (browsers and curl send unreliable content types).
KINDS = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".pdf": "application/pdf",
    ".html": "text/html",
    ".htm": "text/html",
    ".csv": "text/csv",
}
_BY_CONTENT_TYPE = {kind: kind for kind in KINDS.values()}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class ParsedDocument:
    text: str
    content_type: str
    encoding: str


def media_type(filename: str, declared: str | None) -> str:
    """The kind of the upload, from its extension (or its declared type when it has none)."""
    name = filename.lower()
    dot = name.rfind(".")
    if dot >= 0:
        kind = KINDS.get(name[dot:])
        if kind:
            return kind
        raise exc.UnsupportedFileType(
            f"{filename!r}: files ending in {name[dot:]!r} are not supported."
        )
    declared_kind = (declared or "").split(";")[0].strip().lower()
    if declared_kind in _BY_CONTENT_TYPE:
        return declared_kind
    raise exc.UnsupportedFileType(f"{filename!r}: the file type could not be determined.")


def decode(data: bytes, filename: str = "") -> tuple[str, str]:
    """The text of `data` and the encoding it was in."""
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            text, encoding = data[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError:
            raise exc.UndecodableDocument(
                f"{filename!r} starts with a UTF-8 byte order mark but is not valid UTF-8."
            ) from None
    else:
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = _detect(data, filename)
    if len(_CONTROL.findall(text)) > max(2, len(text) // 100):
        raise exc.UndecodableDocument(f"{filename!r} does not look like text.")
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")), encoding


_KANA = re.compile(r"[\u3040-\u30ff]")


def _kana_share(text: str) -> float:
    wide = sum(1 for ch in text if ord(ch) > 0x7F)
    return len(_KANA.findall(text)) / wide if wide else 0.0


def _detect(data: bytes, filename: str) -> tuple[str, str]:
    matches = list(charset_normalizer.from_bytes(data))
    if not matches:
        raise exc.UndecodableDocument(f"{filename!r}: the text encoding could not be recognized.")
    best = matches[0]
    # Short Japanese texts are byte-wise just as plausible in Korean or Chinese encodings (the
    # detector scores them alike); Japanese is full of kana, their misreadings are not. Among the
    # equally clean readings, take the one with the most kana.
    clean = [m for m in matches if m.chaos <= best.chaos + 0.05]
    shares = [(_kana_share(str(m)), -i, m) for i, m in enumerate(clean)]
    share, _, chosen = max(shares, key=lambda item: item[:2])
    if share < 0.2:
        chosen = best
    return str(chosen), chosen.encoding


def parse(data: bytes, filename: str, declared_type: str | None = None) -> ParsedDocument:
    """The text of an uploaded file (raises a 415/422 error with the reason when there is none)."""
    kind = media_type(filename, declared_type)
    if not data:
        raise exc.EmptyDocument(f"{filename!r} is empty.")
    if kind == "application/pdf":
        text, encoding = _pdf_text(data, filename), "pdf"
    else:
        text, encoding = decode(data, filename)
        if kind == "text/html":
            text = html_text(text)
        elif kind == "text/csv":
            try:
                text = csv_text(text)
            except csv.Error as error:  # e.g. an unclosed quote makes one field too large
                raise exc.UnreadableCsv(f"{filename!r} could not be read as CSV: {error}") from None
    text = text.strip()
    if not text:
        raise exc.EmptyDocument(f"{filename!r} has no text to index.")
    return ParsedDocument(text=text, content_type=kind, encoding=encoding)


def _pdf_text(data: bytes, filename: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise exc.UnreadablePdf(f"{filename!r} is encrypted.")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as error:
        raise exc.UnreadablePdf(f"{filename!r} could not be read as a PDF: {error}") from None
    return _CONTROL.sub("", "\n\n".join(p.strip() for p in pages if p.strip()))


def csv_text(text: str) -> str:
    """Each row as one line of ``header: value`` pairs, so a row is found by its headers too."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    if not body:
        return " | ".join(header)
    lines = []
    for row in body:
        cells = [
            f"{header[i].strip()}: {value.strip()}"
            if i < len(header) and header[i].strip()
            else value
            for i, value in enumerate(row)
            if value.strip()
        ]
        if cells:
            lines.append("; ".join(cells))
    return "\n".join(lines)


_BLOCK_TAGS = frozenset(
    """
    p div section article header footer aside main nav li ul ol table tr h1 h2 h3 h4 h5 h6 pre
    blockquote dt dd figcaption title
    """.split()  # noqa: SIM905
)
_SKIPPED_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "head"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._title: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIPPED_TAGS:
            self._skipping += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIPPED_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title.append(data)
        elif not self._skipping:
            self.parts.append(data)

    def text(self) -> str:
        body = "".join(self.parts)
        title = " ".join("".join(self._title).split())
        if title and title not in body:
            body = title + "\n\n" + body
        # Collapse runs of spaces and of blank lines that the markup left behind.
        lines = [" ".join(line.split()) for line in body.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_text(markup: str) -> str:
    """The visible text of an HTML page, with block elements as paragraphs."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return parser.text()
