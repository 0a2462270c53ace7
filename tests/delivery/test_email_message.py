"""CampaignMail output, read back with the stdlib parser as a mail client would."""

from __future__ import annotations

import email
import email.policy
import os
import re
from email.message import EmailMessage
from typing import cast

import pytest
from markupsafe import Markup

from services.delivery.email_message import (
    PREHEADER_STYLE,
    Attachment,
    CampaignMail,
    encode_header,
    make_message_id,
    text_to_html,
)
from services.delivery.email_wire import WireChunk

UNSUBSCRIBE = "https://bot.clinic.example/unsubscribe/tok_123"
ADDRESS = "Av. Reforma 222, piso 3\nCiudad de México, CDMX 06600"
PDF = b"%PDF-1.7\n" + os.urandom(20_000) + b"\n%%EOF\n"


def parse(raw: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(raw, policy=email.policy.default))


def part_text(msg: EmailMessage, kind: str) -> str:
    """One part's decoded text, with the canonical CRLF line breaks as plain newlines."""
    part = msg.get_body((kind,))
    assert part is not None
    return cast(str, part.get_content()).replace("\r\n", "\n")


def make_mail(**overrides: object) -> CampaignMail:
    options: dict[str, object] = {
        "sender": "Clínica Sonrisa <hola@sonrisa.example>",
        "postal_address": ADDRESS,
        "clinic_name": "Clínica Sonrisa",
        "preview_text": "Only this week: 20% off cleanings",
        "attachment": Attachment("promoción.pdf", PDF, "application/pdf"),
    }
    options.update(overrides)
    return CampaignMail(**options)  # type: ignore[arg-type]


def render(mail: CampaignMail, **overrides: object) -> bytes:
    options: dict[str, object] = {
        "to": "maria@patients.example",
        "message_id": mail.new_message_id(),
        "subject": "¡Hola María! Tu revisión anual 🦷",
        "text_body": "Hola María,\n\nIt's time for your check-up.\nBook at https://sonrisa.example/book.",
        "unsubscribe_url": UNSUBSCRIBE,
    }
    options.update(overrides)
    return mail.render(**options)  # type: ignore[arg-type]


def test_headers_parse_and_round_trip() -> None:
    mail = make_mail()
    message_id = mail.new_message_id()
    raw = render(mail, message_id=message_id, unsubscribe_mailto="unsubscribe@sonrisa.example")
    msg = parse(raw)

    assert msg.defects == []
    assert msg["From"].addresses[0].display_name == "Clínica Sonrisa"
    assert msg["From"].addresses[0].addr_spec == "hola@sonrisa.example"
    assert msg["To"] == "maria@patients.example"
    assert msg["Subject"] == "¡Hola María! Tu revisión anual 🦷"
    assert msg["Message-ID"] == message_id
    assert re.fullmatch(r"<[^<>@\s]+@sonrisa\.example>", message_id)
    assert msg["Date"].datetime.tzinfo is not None
    assert msg["MIME-Version"] == "1.0"
    assert msg["List-Unsubscribe"] == (
        f"<{UNSUBSCRIBE}>, <mailto:unsubscribe@sonrisa.example>"
    )
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_wire_format_is_crlf_7bit_with_short_lines() -> None:
    raw = render(make_mail(), subject="Una promoción " * 12)
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert parse(raw)["Subject"] == ("Una promoción " * 12).strip()


def test_list_unsubscribe_without_mailto_is_https_only() -> None:
    msg = parse(render(make_mail()))
    assert msg["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    for bad in ("http://bot.clinic.example/unsubscribe/x", f"{UNSUBSCRIBE}>, <https://evil.example",
                "https://bot.clinic.example/a b", "javascript:alert(1)"):
        with pytest.raises(ValueError, match="https"):
            render(make_mail(), unsubscribe_url=bad)
    local = "http://localhost:3000/unsubscribe/x"  # a developer's PUBLIC_BASE_URL
    assert parse(render(make_mail(), unsubscribe_url=local))["List-Unsubscribe"] == f"<{local}>"


def test_structure_is_mixed_with_alternative_and_the_attachment() -> None:
    msg = parse(render(make_mail()))
    assert msg.get_content_type() == "multipart/mixed"
    alternative, attachment = msg.get_payload()  # type: ignore[misc]
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.get_payload()] == ["text/plain", "text/html"]
    for part in alternative.get_payload():
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "promoción.pdf"
    assert attachment.get_content() == PDF


def test_without_attachment_the_message_is_multipart_alternative() -> None:
    msg = parse(render(make_mail(attachment=None)))
    assert msg.get_content_type() == "multipart/alternative"
    assert list(msg.iter_attachments()) == []


def test_non_ascii_text_and_html_decode_correctly() -> None:
    msg = parse(render(make_mail()))
    text = part_text(msg, "plain")
    html = part_text(msg, "html")
    assert text.startswith("Hola María,\n\nIt's time for your check-up.\n")
    assert "Hola María," in html
    assert "<title>¡Hola María! Tu revisión anual 🦷</title>" in html


def test_html_paragraphs_line_breaks_and_links() -> None:
    html = part_text(parse(render(make_mail())), "html")
    assert '<p style="margin:0 0 1em 0;">Hola María,</p>' in html
    assert "It&#39;s time for your check-up.<br>\nBook at " in html
    assert ('<a href="https://sonrisa.example/book">https://sonrisa.example/book</a>.</p>'
            in html)


def test_preheader_is_first_in_the_body_and_hidden() -> None:
    html = part_text(parse(render(make_mail())), "html")
    body = html.split("<body", 1)[1].split(">", 1)[1].lstrip()
    assert body.startswith(f'<div style="{PREHEADER_STYLE}">Only this week: 20% off cleanings')
    assert "display:none" in PREHEADER_STYLE and "mso-hide:all" in PREHEADER_STYLE
    text = part_text(parse(render(make_mail())), "plain")
    assert "Only this week" not in text
    assert "display:none" not in part_text(parse(render(make_mail(preview_text=None))), "html")


def test_footer_with_postal_address_and_unsubscribe_link_in_both_parts() -> None:
    msg = parse(render(make_mail()))
    text = part_text(msg, "plain")
    html = part_text(msg, "html")
    assert text.endswith(
        "\n-- \nClínica Sonrisa\nAv. Reforma 222, piso 3\nCiudad de México, CDMX 06600\n"
        f"Unsubscribe: {UNSUBSCRIBE}\n"
    )
    assert "Av. Reforma 222, piso 3<br>\nCiudad de México, CDMX 06600<br>" in html
    assert f'Unsubscribe: <a href="{UNSUBSCRIBE}"' in html


def test_message_text_and_patient_values_are_escaped_in_html_only() -> None:
    body = "Hi <b>Tom & Jerry</b>,\n\n<script>alert('x')</script> see https://x.example/?a=1&b=2"
    msg = parse(render(make_mail(), text_body=body, subject="Offers <script>"))
    text = part_text(msg, "plain")
    html = part_text(msg, "html")
    assert text.startswith(body)
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "Hi &lt;b&gt;Tom &amp; Jerry&lt;/b&gt;," in html
    assert "<title>Offers &lt;script&gt;</title>" in html
    assert '<a href="https://x.example/?a=1&amp;b=2">' in html


def test_html_body_must_be_markup() -> None:
    mail = make_mail()
    with pytest.raises(TypeError, match="Markup"):
        render(mail, html_body="<p>unescaped</p>")
    html = part_text(parse(render(mail, html_body=Markup("<p>Custom <i>HTML</i></p>"))), "html")
    assert "<p>Custom <i>HTML</i></p>" in html


def test_header_injection_is_impossible() -> None:
    msg = parse(render(make_mail(), subject="Hello\r\nBcc: victim@example.com"))
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Hello  Bcc: victim@example.com"
    with pytest.raises(ValueError):
        render(make_mail(), to="a@b.example\r\nBcc: victim@example.com")


def test_render_chunks_join_to_the_message_and_share_the_attachment() -> None:
    mail = make_mail()
    options: dict[str, object] = {
        "to": "maria@patients.example", "message_id": "<1@sonrisa.example>", "subject": "Hi",
        "text_body": "Hello there, patient.", "unsubscribe_url": UNSUBSCRIBE}
    first = mail.render_chunks(**options)  # type: ignore[arg-type]
    second = mail.render_chunks(**{**options, "to": "jose@patients.example"})  # type: ignore[arg-type]
    assert len(first) == 2 and first[1] is second[1] and isinstance(first[1], WireChunk)

    def without_date(raw: bytes) -> list[bytes]:
        return [line for line in raw.split(b"\r\n") if not line.startswith(b"Date:")]

    assert without_date(b"".join(first)) == without_date(mail.render(**options))  # type: ignore[arg-type]
    assert len(make_mail(attachment=None).render_chunks(**options)) == 1  # type: ignore[arg-type]


def test_text_to_html() -> None:
    html = text_to_html("One & two\nthree\n\n\n  \nfour (see https://a.example/x_(y)).")
    assert isinstance(html, Markup)
    assert html == (
        '<p style="margin:0 0 1em 0;">One &amp; two<br>\nthree</p>\n'
        '<p style="margin:0 0 1em 0;">four (see '
        '<a href="https://a.example/x_(y)">https://a.example/x_(y)</a>).</p>'
    )


def test_encode_header_folds_and_encodes() -> None:
    assert encode_header("Subject", "Plain") == b"Subject: Plain\r\n"
    long = encode_header("Subject", "word " * 30)
    assert all(len(line) <= 78 for line in long.split(b"\r\n"))
    value = "ñ" * 100
    encoded = encode_header("Subject", value)
    assert all(len(line) <= 78 for line in encoded.split(b"\r\n"))
    assert parse(encoded + b"\r\n")["Subject"] == value


def test_make_message_id_is_unique_and_on_the_domain() -> None:
    ids = {make_message_id("sonrisa.example") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"<[0-9a-f.]+@sonrisa\.example>", i) for i in ids)
    assert make_message_id("clínica.example").endswith("@xn--clnica-4va.example>")


def test_sender_without_display_name_and_missing_address() -> None:
    mail = make_mail(sender="hola@sonrisa.example", attachment=None)
    assert parse(render(mail))["From"] == "hola@sonrisa.example"
    assert mail.envelope_sender == "hola@sonrisa.example"
    with pytest.raises(ValueError, match="EMAIL_FROM"):
        make_mail(sender="Clínica")
    with pytest.raises(ValueError, match="CLINIC_POSTAL_ADDRESS"):
        make_mail(postal_address="  \n ")
