"""SMS text: encoding and segments (GSM 03.38), the opt-out line, and STOP/START replies.

Pure functions, no I/O: the preview shows `analyse()`, the engine sends `compose()`, and the
inbound webhook asks `classify_reply()` whether a patient opted out or back in.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Literal

# GSM 03.38 default alphabet (3GPP TS 23.038 §6.2.1), one septet each, in table order.
# Position 0x09 is the capital Ç; the lower-case ç is not in the alphabet.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
) - {"\x1b"}  # the escape itself is not a character anyone types

# The default extension table: each costs two septets (ESC + the character).
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_PART = 160, 153  # septets; a part loses 7 to the concatenation header
UCS2_SINGLE, UCS2_PART = 70, 67  # UTF-16 code units

MAX_SMS_CHARS = 1600  # Twilio refuses a longer body (error 21617)
DEFAULT_OPT_OUT_TEXT = "Reply STOP to opt out"

# Twilio's default opt-out and opt-in keywords (Advanced Opt-Out off).
OPT_OUT_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})

Encoding = Literal["GSM-7", "UCS-2"]
ReplyKind = Literal["opt_out", "opt_in"]


@dataclass(frozen=True)
class SmsAnalysis:
    """How a body travels: its encoding, length in that encoding's units, and segments."""

    encoding: Encoding
    segments: int
    characters: int  # septets for GSM-7 (extension characters count 2), UTF-16 units for UCS-2
    per_segment: int  # units per segment at this length: 160/70 for one, 153/67 for several
    non_gsm_chars: list[str] = field(default_factory=list)  # what forced UCS-2, first seen first

    @property
    def warning(self) -> str | None:
        """A sentence for the preview when some characters forced UCS-2, else None."""
        if not self.non_gsm_chars:
            return None
        shown = ", ".join(repr(c) for c in self.non_gsm_chars[:10])
        return (
            f"{shown} {'is' if len(self.non_gsm_chars) == 1 else 'are'} not in the GSM-7 "
            f"alphabet, so the whole message is sent as UCS-2: {UCS2_SINGLE} characters per "
            f"SMS instead of {GSM7_SINGLE}"
        )


def _gsm7_cost(char: str) -> int:
    """Septets for one character: 1 (basic), 2 (extension) or 0 (not GSM-7)."""
    if char in GSM7_BASIC:
        return 1
    if char in GSM7_EXTENSION:
        return 2
    return 0


def _utf16_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def _segments(costs: list[int], single: int, part: int) -> int:
    """Segments for characters of these unit costs; a character is never split across parts."""
    if sum(costs) <= single:
        return 1
    segments, used = 1, 0
    for cost in costs:
        if used + cost > part:
            segments, used = segments + 1, 0
        used += cost
    return segments


def analyse(body: str) -> SmsAnalysis:
    """Encoding, length and number of segments of an SMS body, as the carrier will count it."""
    non_gsm = list(dict.fromkeys(c for c in body if not _gsm7_cost(c)))
    if not non_gsm:
        costs = [_gsm7_cost(c) for c in body]
        single, part, encoding = GSM7_SINGLE, GSM7_PART, "GSM-7"
    else:
        costs = [_utf16_units(c) for c in body]
        single, part, encoding = UCS2_SINGLE, UCS2_PART, "UCS-2"
    segments = _segments(costs, single, part)
    return SmsAnalysis(
        encoding=encoding,
        segments=segments,
        characters=sum(costs),
        per_segment=single if segments == 1 else part,
        non_gsm_chars=non_gsm,
    )


def compose(
    body: str, *, opt_out_text: str = DEFAULT_OPT_OUT_TEXT, attachment_link: str | None = None
) -> str:
    """The SMS as sent: personalised body, the attachment link if any, then how to opt out."""
    opt_out = opt_out_text.strip()
    text = body.rstrip()
    core, tail = _trim_end(text), _trim_end(opt_out)
    if tail and core[-len(tail):].casefold() == tail.casefold():
        # The writer already ended with the opt-out line: keep theirs, last, not repeated.
        if not attachment_link:
            return text
        text, opt_out = core[: -len(tail)].rstrip(), text[len(core) - len(tail):].strip()
    lines = [text, (attachment_link or "").strip(), opt_out]
    return "\n".join(line for line in lines if line)


def check_length(text: str) -> str | None:
    """Why Twilio would refuse this body (over 1,600 characters), or None."""
    if len(text) <= MAX_SMS_CHARS:
        return None
    return (
        f"the SMS is {len(text):,} characters after personalisation; "
        f"Twilio accepts at most {MAX_SMS_CHARS:,}"
    )


def _trim_end(text: str) -> str:
    """Drop trailing whitespace and punctuation."""
    end = len(text)
    while end and _is_padding(text[end - 1]):
        end -= 1
    return text[:end]


def _strip_punctuation(text: str) -> str:
    """Trim whitespace and punctuation (any script's: '¡', '¿', '!', '.') from both ends."""
    start = 0
    text = _trim_end(text)
    while start < len(text) and _is_padding(text[start]):
        start += 1
    return text[start:]


def _is_padding(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith(("P", "Cf"))


def classify_reply(text: str) -> ReplyKind | None:
    """'opt_out' or 'opt_in' when the reply is a single Twilio keyword, else None."""
    word = _strip_punctuation(unicodedata.normalize("NFKC", text)).upper()
    if word in OPT_OUT_WORDS:
        return "opt_out"
    if word in OPT_IN_WORDS:
        return "opt_in"
    return None
