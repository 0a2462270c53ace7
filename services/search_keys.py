"""Search keys for the lazy table: lower-cased, accent-folded text that sorts the same everywhere.

Stored beside each patient (and recomputed on every import), so that a search is an index
range scan (`key >= q AND key < q || U+FFFF`) on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import re
import unicodedata

PREFIX_END = "\uffff"
_SPACES = re.compile(r"\s+")
_NON_DIGITS = re.compile(r"\D+")


def fold(text: str | None) -> str:
    """'  José  ÁLVAREZ ' → 'jose alvarez'."""
    if not text:
        return ""
    if text.isascii():  # most names and every email: no accents to fold
        return _SPACES.sub(" ", text.lower()).strip()
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACES.sub(" ", stripped.casefold()).strip()


def digits(text: str | None) -> str:
    return _NON_DIGITS.sub("", text or "")


def patient_keys(
    *,
    first_name: str | None,
    last_name: str | None,
    email: str | None,
    phone: str | None,
    external_id: str,
) -> dict[str, str | None]:
    """The key columns of `Patient` for these values."""
    first, last = fold(first_name), fold(last_name)
    return {
        "sort_key": f"{last} {first}".strip(),
        "first_name_key": first,
        "last_name_key": last,
        "email_key": fold(email) or None,
        "phone_key": digits(phone) or None,
        "external_id_key": fold(external_id),
    }
