"""Attachment file names: no path parts, no control or bidirectional characters (SPEC §7)."""

from __future__ import annotations

import unicodedata

import pytest

from services.attachments import PDF, PNG, AttachmentInput, check, clean_filename
from tests.campaign_fixtures import pdf_bytes


@pytest.mark.parametrize(("given", "stored"), [
    ("invoice\u202efdp.exe", "invoicefdp.exe.pdf"),  # reads as "invoiceexe.pdf" with the RLO
    ("invoice\u202efdp.pdf", "invoicefdp.pdf"),
    ("\u2067evil\u2069.pdf", "evil.pdf"),  # isolates
    ("report\u200b\u200d\ufeff.pdf", "report.pdf"),  # zero-width characters and a BOM
    ("scan\u200f\u200e.pdf", "scan.pdf"),  # right- and left-to-right marks
    ("a\u0085b\u009b.pdf", "ab.pdf"),  # C1 controls
    ("line\u2028para\u2029.pdf", "linepara.pdf"),
    ("..\u202e/..\u202e/etc/passwd", "passwd.pdf"),  # hidden path parts are still path parts
    ("C:\\\u202eUsers\\ana\\flyer.pdf", "flyer.pdf"),
    ("\u202e\u202e", "attachment.pdf"),
    ("a\r\nb.pdf", "a_b.pdf"),
    ("Cita médica 2025.pdf", "Cita médica 2025.pdf"),  # accents are kept
])
def test_names_lose_invisible_and_path_characters(given: str, stored: str) -> None:
    assert clean_filename(given, PDF) == stored


def test_no_stored_name_holds_a_control_or_format_character() -> None:
    for code in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *range(0x200B, 0x2010),
                 *range(0x202A, 0x202F), *range(0x2060, 0x206A), 0xFEFF, 0x061C]:
        name = clean_filename(f"a{chr(code)}b.png", PNG)
        assert all(unicodedata.category(c)[0] != "C" for c in name), (hex(code), name)
        assert "/" not in name and "\\" not in name


def test_the_checked_attachment_carries_the_clean_name() -> None:
    checked = check(AttachmentInput("invoice\u202efdp.exe", pdf_bytes()), 5 * 1024 * 1024)
    assert checked.filename == "invoicefdp.exe.pdf"
