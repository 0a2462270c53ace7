"""Attachments: one PDF, PNG or JPEG, recognised by content and checked for basic structure."""

from __future__ import annotations

import hashlib

import pytest

from services.attachments import (
    PDF,
    AttachmentInput,
    AttachmentRejected,
    check,
    clean_filename,
    detect,
)
from tests.campaign_fixtures import jpeg_bytes, pdf_bytes, png_bytes

MB = 1024 * 1024
LIMIT = 5 * MB


@pytest.mark.parametrize(
    ("name", "content", "content_type", "stored_as"),
    [
        ("leaflet.pdf", pdf_bytes(), "application/pdf", "leaflet.pdf"),
        ("logo.PNG", png_bytes(), "image/png", "logo.png"),
        ("photo.jpeg", jpeg_bytes(), "image/jpeg", "photo.jpeg"),
        ("photo.jpg", jpeg_bytes(), "image/jpeg", "photo.jpg"),
    ],
)
def test_each_accepted_type(name: str, content: bytes, content_type: str, stored_as: str) -> None:
    checked = check(AttachmentInput(name, content), LIMIT)
    assert (checked.content_type, checked.filename) == (content_type, stored_as)
    assert checked.size == len(content)
    assert checked.sha256 == hashlib.sha256(content).hexdigest()
    assert checked.content == content


def test_a_pdf_renamed_png_is_accepted_as_a_pdf_and_its_name_corrected() -> None:
    checked = check(AttachmentInput("scan.png", pdf_bytes()), LIMIT)
    assert checked.content_type == "application/pdf"
    assert checked.filename == "scan.pdf"


def test_a_pdf_that_is_really_text_is_rejected() -> None:
    with pytest.raises(AttachmentRejected) as rejected:
        check(AttachmentInput("notes.pdf", b"Meeting notes\nnot a PDF at all\n"), LIMIT)
    assert str(rejected.value) == (
        "it is named like a PDF but its content is not a PDF, PNG or JPEG file (the content "
        "is checked, not the name); attach a PDF, PNG or JPEG, at most 5 MB"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (pdf_bytes()[:-8], "the PDF is incomplete or damaged"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "the PNG is damaged"),
        (jpeg_bytes()[:-2], "the JPEG is incomplete or damaged"),
    ],
)
def test_magic_bytes_alone_are_not_enough(content: bytes, problem: str) -> None:
    with pytest.raises(AttachmentRejected, match=problem):
        check(AttachmentInput("file", content), LIMIT)


def test_an_empty_file_is_rejected() -> None:
    with pytest.raises(AttachmentRejected) as rejected:
        check(AttachmentInput("empty.pdf", b""), LIMIT)
    assert str(rejected.value) == "the file is empty; attach a PDF, PNG or JPEG, at most 5 MB"


def test_size_limit_at_its_boundary_names_formats_and_megabytes() -> None:
    head = pdf_bytes()
    exact = head[:-6] + b" " * (LIMIT - len(head)) + head[-6:]
    assert len(exact) == LIMIT
    assert check(AttachmentInput("big.pdf", exact), LIMIT).size == LIMIT
    with pytest.raises(AttachmentRejected) as rejected:
        check(AttachmentInput("big.pdf", exact + b"\n"), LIMIT)
    assert str(rejected.value) == (
        "the file is 5.0 MB, too large; attach a PDF, PNG or JPEG, at most 5 MB"
    )


def test_filenames_lose_paths_and_control_characters() -> None:
    assert clean_filename("../../etc/passwd", PDF) == "passwd.pdf"
    assert clean_filename("C:\\Users\\ana\\flyer.pdf", PDF) == "flyer.pdf"
    assert clean_filename("a\r\nb.pdf", PDF) == "a_b.pdf"
    assert clean_filename("report.v2", PDF) == "report.v2.pdf"
    assert clean_filename("", PDF) == "attachment.pdf"


def test_detect_uses_magic_bytes_only() -> None:
    assert detect(pdf_bytes()) is PDF
    assert detect(b"GIF89a") is None
