"""Decoding and format extraction, with real encoded Japanese bytes."""

from __future__ import annotations

import pytest

from kiban.knowledge import exceptions as exc
from kiban.knowledge.parsing import decode, parse

JAPANESE = "附属病院の案内：受付は午前九時から。梅雨の時期は混雑します。"


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("utf-8", "utf-8"),
        ("utf-8-sig", "utf-8-sig"),
        ("cp932", "cp932"),
        ("shift_jis", "cp932"),
        ("euc_jp", "euc"),
    ],
)
def test_japanese_bytes_decode_in_every_encoding(encoding: str, expected: str) -> None:
    text, detected = decode(JAPANESE.encode(encoding))
    assert text == JAPANESE
    assert detected.replace("_", "-").startswith(expected.replace("_", "-")) or (
        expected == "euc" and detected.startswith("euc")
    )


def test_short_euc_jp_csv_is_not_mistaken_for_korean() -> None:
    parsed = parse("名前,値\nりんご,100\nみかん,200\n".encode("euc_jp"), "fruit.csv")
    assert parsed.text == "名前: りんご; 値: 100\n名前: みかん; 値: 200"


def test_cp932_specific_characters_survive() -> None:
    text = "①番窓口　髙橋様（ﾃｽﾄ）"
    assert decode(text.encode("cp932"))[0] == text


def test_html_keeps_visible_text_as_paragraphs() -> None:
    markup = (
        "<html><head><title>Guide</title><style>p{}</style><script>x()</script></head>"
        "<body><h1>見出し</h1><p>本文です。<br>次の行</p><p>Second &amp; last</p></body></html>"
    )
    parsed = parse(markup.encode("cp932"), "guide.html")
    assert parsed.text == "Guide\n\n見出し\n\n本文です。\n次の行\n\nSecond & last"
    assert parsed.encoding == "cp932"


def test_pdf_text_layer_is_extracted(minimal_pdf: bytes) -> None:
    parsed = parse(minimal_pdf, "refunds.pdf")
    assert parsed.text == "Refunds are processed within 14 days of the request."
    assert parsed.content_type == "application/pdf"


def test_broken_pdf_is_a_422() -> None:
    with pytest.raises(exc.UnreadablePdf):
        parse(b"%PDF-1.4 garbage", "broken.pdf")


def test_binary_is_undecodable() -> None:
    with pytest.raises(exc.UndecodableDocument):
        parse(bytes(range(256)) * 4, "blob.txt")


def test_unknown_extension_is_unsupported() -> None:
    with pytest.raises(exc.UnsupportedFileType):
        parse(b"MZ...", "setup.exe")


def test_declared_type_is_used_without_extension() -> None:
    assert parse(b"hello", "notes", "text/plain; charset=utf-8").text == "hello"
    with pytest.raises(exc.UnsupportedFileType):
        parse(b"hello", "notes", "image/png")


def test_whitespace_only_is_empty() -> None:
    with pytest.raises(exc.EmptyDocument):
        parse(b" \n\n ", "blank.md")
    with pytest.raises(exc.EmptyDocument):
        parse(b"", "blank.md")


def test_bom_with_invalid_utf8_is_undecodable() -> None:
    with pytest.raises(exc.UndecodableDocument):
        parse(b"\xef\xbb\xbfok \xff\xfe", "broken.txt")


def test_csv_with_an_unclosed_quote_is_a_422() -> None:
    with pytest.raises(exc.UnreadableCsv):
        parse(b'name,note\nx,"' + b"a" * 200_000, "big.csv")
