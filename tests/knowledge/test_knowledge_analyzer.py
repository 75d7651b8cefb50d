"""The analyzer: Japanese by part of speech and normalized form, English stemmed, never crashing."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from hypothesis import given, settings
from hypothesis import strategies as st

from kiban.knowledge.analyzer import Analyzer, analyze, is_japanese

TOKEN = re.compile(r"[^\W_]+")


def test_variant_spellings_meet_through_normalized_forms() -> None:
    assert analyze("附属病院") == analyze("付属病院")
    assert "付属" in analyze("大学の附属図書館")


def test_particles_auxiliaries_and_symbols_are_dropped_by_part_of_speech() -> None:
    terms = analyze("日本で梅雨がないのは北海道とどこか。")
    assert terms == ["日本", "梅雨", "北海道"]
    for dropped in ("で", "が", "の", "は", "と", "か", "。", "どこ"):
        assert dropped not in terms


def test_verbs_are_reduced_to_their_dictionary_form() -> None:
    assert "返す" in analyze("APIがエラーを返した")


def test_english_drops_stopwords_and_stems() -> None:
    assert analyze("The tokens were expiring after running the tests") == [
        "token",
        "expir",
        "run",
        "test",
    ]


def test_nfkc_and_lowercase_apply_to_full_width_latin() -> None:
    assert analyze("ＡＰＩ　ＫＥＹ") == analyze("api key") == ["api", "key"]


def test_mixed_japanese_and_english_text() -> None:
    terms = analyze("Stripe の webhook が 401 Unauthorized を返す")
    assert terms == ["stripe", "webhook", "401", "unauthor", "返す"]


def test_script_detection() -> None:
    assert is_japanese("梅雨とは")
    assert is_japanese("ｶﾀｶﾅ")
    assert not is_japanese("What is kiban?")


def test_concurrent_threads_analyze_alike() -> None:
    texts = ["附属病院の案内です。", "Running tests in parallel", "梅雨前線が停滞する。"] * 20
    expected = [analyze(t) for t in texts]
    fresh = Analyzer()
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(fresh.analyze, texts)) == expected


def test_very_long_japanese_text_is_analyzed_in_pieces() -> None:
    text = "梅雨前線が停滞する。" * 3000  # well over Sudachi's input limit
    assert analyze(text).count("梅雨") == 3000


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_text_yields_only_letter_and_digit_terms(text: str) -> None:
    for term in analyze(text):
        assert TOKEN.fullmatch(term), term
        assert len(term) <= 64


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from("あいうアイウ漢字附属付属。、！？ abcXYZ123\n")))
def test_analysis_is_deterministic(text: str) -> None:
    assert analyze(text) == analyze(text)
