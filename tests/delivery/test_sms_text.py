"""SMS encoding, segments, the opt-out line and STOP/START replies."""

from __future__ import annotations

import pytest

from services.delivery.sms_text import (
    DEFAULT_OPT_OUT_TEXT,
    GSM7_BASIC,
    GSM7_EXTENSION,
    MAX_SMS_CHARS,
    analyse,
    check_length,
    classify_reply,
    compose,
)


def test_the_gsm_tables_have_the_standard_sizes() -> None:
    # 128 positions, less the escape; nine printable extension characters plus form feed.
    assert len(GSM7_BASIC) == 127
    assert set("\f^{}\\[~]|€") == GSM7_EXTENSION


@pytest.mark.parametrize(
    ("char", "in_gsm"),
    [
        ("é", True), ("É", True), ("ñ", True), ("Ñ", True), ("ü", True), ("à", True),
        ("¿", True), ("¡", True), ("Ç", True), ("ß", True), ("Δ", True), ("@", True),
        ("á", False), ("í", False), ("ó", False), ("ú", False), ("ç", False), ("ê", False),
        ("Á", False), ("`", False), ("’", False), ("😀", False),
    ],
)
def test_which_characters_are_gsm7(char: str, in_gsm: bool) -> None:
    assert (analyse(f"Hola {char}").encoding == "GSM-7") is in_gsm


@pytest.mark.parametrize(
    ("length", "segments", "per_segment"),
    [(1, 1, 160), (160, 1, 160), (161, 2, 153), (153 * 2, 2, 153), (153 * 2 + 1, 3, 153)],
)
def test_gsm7_segment_boundaries(length: int, segments: int, per_segment: int) -> None:
    result = analyse("a" * length)
    assert (result.encoding, result.segments, result.characters, result.per_segment) == (
        "GSM-7", segments, length, per_segment)
    assert result.non_gsm_chars == []


@pytest.mark.parametrize(
    ("length", "segments"), [(70, 1), (71, 2), (67 * 2, 2), (67 * 2 + 1, 3)]
)
def test_ucs2_segment_boundaries(length: int, segments: int) -> None:
    result = analyse("á" * length)
    assert (result.encoding, result.segments, result.characters) == ("UCS-2", segments, length)


def test_one_non_gsm_character_switches_the_whole_message() -> None:
    result = analyse("a" * 100 + "á")
    assert result.encoding == "UCS-2"
    assert result.segments == 2  # 101 units > 70
    assert result.non_gsm_chars == ["á"]
    assert result.warning is not None and "'á' is not in the GSM-7 alphabet" in result.warning


def test_non_gsm_characters_are_listed_once_in_order() -> None:
    assert analyse("ó á ó ú").non_gsm_chars == ["ó", "á", "ú"]


def test_extension_characters_count_two_septets() -> None:
    assert analyse("€").characters == 2
    assert analyse("a" * 158 + "€").segments == 1  # 160 septets
    assert analyse("a" * 159 + "€").segments == 2  # 161 septets
    assert analyse("[]{}^~|\\").characters == 16


def test_an_escape_pair_is_not_split_across_parts() -> None:
    # 152 septets, then '€' (2) would straddle the first part's 153: it moves to the next.
    body = "a" * 152 + "€" + "a" * 152
    assert analyse(body).characters == 306
    assert analyse(body).segments == 3


def test_emoji_count_two_utf16_units() -> None:
    assert analyse("😀").characters == 2
    assert analyse("😀" * 35).segments == 1  # 70 units
    assert analyse("😀" * 35 + "a").segments == 2
    # 134 units would fill two parts exactly, but the pair is not split at unit 67.
    assert analyse("a" * 66 + "😀" + "a" * 66).segments == 3


def test_compose_appends_the_link_and_the_opt_out_line() -> None:
    text = compose("Hola Ana, te esperamos.", opt_out_text=DEFAULT_OPT_OUT_TEXT,
                   attachment_link="https://clinic.example/m/abc")
    assert text == "Hola Ana, te esperamos.\nhttps://clinic.example/m/abc\nReply STOP to opt out"


def test_compose_uses_the_configured_opt_out_text() -> None:
    text = compose("Hola Ana", opt_out_text="Responde BAJA para no recibir más")
    assert text == "Hola Ana\nResponde BAJA para no recibir más"


@pytest.mark.parametrize(
    "body", ["Hi Ana. Reply STOP to opt out", "Hi Ana. reply stop to opt out.  ",
             "Hi Ana.\nReply STOP to opt out!"],
)
def test_compose_does_not_repeat_the_opt_out_line(body: str) -> None:
    text = compose(body, opt_out_text=DEFAULT_OPT_OUT_TEXT)
    assert text.casefold().count("reply stop to opt out") == 1
    assert text == body.strip()


def test_compose_keeps_the_opt_out_line_last_after_a_link() -> None:
    text = compose("Hi Ana. Reply STOP to opt out.", opt_out_text=DEFAULT_OPT_OUT_TEXT,
                   attachment_link="https://clinic.example/m/abc")
    assert text == "Hi Ana.\nhttps://clinic.example/m/abc\nReply STOP to opt out."


def test_check_length_is_twilios_limit() -> None:
    assert check_length("a" * MAX_SMS_CHARS) is None
    reason = check_length("a" * (MAX_SMS_CHARS + 1))
    assert reason is not None and "1,601" in reason and "1,600" in reason


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("STOP", "opt_out"), (" Stop! ", "opt_out"), ("STOP.", "opt_out"), ("stop", "opt_out"),
        ("¡Stop!", "opt_out"), ("\tunsubscribe\n", "opt_out"), ("StopAll", "opt_out"),
        ("cancel", "opt_out"), ("END", "opt_out"), ("quit", "opt_out"), ("Revoke", "opt_out"),
        ("optout", "opt_out"), ("ＳＴＯＰ", "opt_out"),
        ("START", "opt_in"), ("yes", "opt_in"), ("Unstop.", "opt_in"), (" Yes! ", "opt_in"),
        ("stop please", None), ("please stop", None), ("opt out", None), ("", None),
        ("!!!", None), ("STOPP", None), ("no", None), ("st op", None),
    ],
)
def test_classify_reply(reply: str, kind: str | None) -> None:
    assert classify_reply(reply) == kind
