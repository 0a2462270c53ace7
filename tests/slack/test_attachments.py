"""Attachments from the Slack form: read to the end of Slack's chunked download, checked by
content, stored and sent byte for byte; too large or too slow is said beside the field."""

from __future__ import annotations

import random
import struct
import time
import zlib
from email import message_from_bytes, policy
from typing import Any

import aiohttp

from bot.senders import build_engine
from modals import ids
from services.models import CampaignAttachment
from tests.campaign_fixtures import add_patients, pdf_bytes
from tests.delivery.test_engine import drain
from tests.slack.conftest import Stand
from tests.slack.helpers import campaigns_in, form_values, open_modal, texts

MB = 1024 * 1024


def big_pdf(size: int) -> bytes:
    """A well-formed PDF of about `size` bytes whose stream holds every byte value."""
    data = random.Random(size).randbytes(size)
    stream = b"3 0 obj\n<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream\nendobj\n"
    return pdf_bytes(stream)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def big_png(size: int) -> bytes:
    """A valid RGB PNG of noise (incompressible), about `size` bytes."""
    side = int((size / 3) ** 0.5)
    noise = random.Random(side).randbytes(side * side * 3)
    rows = b"".join(b"\x00" + noise[y * side * 3:(y + 1) * side * 3] for y in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows, 1)) + _chunk(b"IEND", b""))


async def _submit(stand: Stand, name: str, content: bytes, mimetype: str,
                  *, file: dict[str, Any] | None = None) -> tuple[Any, float]:
    """The form submitted with this file attached; Slack's answer and how long it took."""
    slack, sr = stand.slack, stand.sr
    view = await open_modal(slack, sr)
    await sr.view_submission(view, {"segment_select": "all"})
    form = slack.views[view["id"]]
    added = slack.add_file("F0FILE", name, content, mimetype)
    started = time.monotonic()
    answer = await sr.view_submission(form, form_values(**{
        "attachment/value": [file if file is not None else added]}))
    return answer, time.monotonic() - started


async def _stored(stand: Stand) -> CampaignAttachment:
    answer = await stand.sr.view_submission(stand.slack.latest_view())  # Confirm: Send
    assert answer.body["response_action"] == "update"
    [campaign] = await campaigns_in(stand.db)
    async with stand.db.sessions() as session:
        found = await session.get(CampaignAttachment, campaign.id)
    assert found is not None
    return found


async def test_a_pdf_of_1_5_mb_reaches_the_patient_byte_for_byte(stand: Stand) -> None:
    await add_patients(stand.db, 1, email_opt_in=True)
    pdf = big_pdf(3 * MB // 2)
    assert len(pdf) > 40 * stand.slack.download_chunk  # arrives in many pieces
    answer, seconds = await _submit(stand, "flyer.pdf", pdf, "application/pdf")
    assert answer.body["response_action"] == "update", answer.body
    assert seconds < 3  # within Slack's budget for a view submission
    assert "flyer.pdf" in texts(stand.slack.latest_view())
    stored = await _stored(stand)
    assert stored.content == pdf and stored.size == len(pdf)

    engine = await build_engine(stand.settings, stand.db)
    try:
        await drain(engine)
    finally:
        for driver in engine.drivers:
            await driver.close()
    [eml] = list(stand.outbox.glob("*.eml"))
    mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
    [part] = list(mail.iter_attachments())
    assert part.get_content_type() == "application/pdf"
    assert part.get_filename() == "flyer.pdf"
    assert part.get_content() == pdf


async def test_a_png_of_1_mb_is_stored_byte_for_byte(stand: Stand) -> None:
    await add_patients(stand.db, 1, email_opt_in=True)
    png = big_png(MB)
    assert MB * 0.9 < len(png) < MB * 1.2
    answer, _ = await _submit(stand, "poster.png", png, "image/png")
    assert answer.body["response_action"] == "update", answer.body
    stored = await _stored(stand)
    assert stored.content == png and stored.content_type == "image/png"


async def test_a_6_mb_file_is_too_large_not_damaged(stand: Stand) -> None:
    await add_patients(stand.db, 1)
    assert stand.settings.attachment_max_mb == 5
    answer, _ = await _submit(stand, "flyer.pdf", big_pdf(6 * MB), "application/pdf")
    assert answer.body["response_action"] == "errors"
    error = answer.body["errors"][ids.ATTACHMENT_BLOCK]
    assert "6.0 MB, too large" in error and "PDF, PNG or JPEG, at most 5 MB" in error
    assert "damaged" not in error
    assert await campaigns_in(stand.db) == []


async def test_the_download_stops_one_byte_past_the_limit(stand: Stand) -> None:
    """File objects without their size: the download itself is what is measured."""
    await add_patients(stand.db, 1)
    stand.settings.attachment_max_mb = 1
    exact = big_pdf(MB - 1000)
    exact += b" " * (MB - len(exact))  # exactly 1 MB (spaces after %%EOF are allowed)

    def sizeless(content: bytes) -> dict[str, Any]:
        added = stand.slack.add_file("F0FILE", "flyer.pdf", content, "application/pdf")
        return {k: v for k, v in added.items() if k != "size"}

    answer, _ = await _submit(stand, "flyer.pdf", exact, "application/pdf",
                              file=sizeless(exact))
    assert answer.body["response_action"] == "update", answer.body

    answer, _ = await _submit(stand, "flyer.pdf", exact + b" ", "application/pdf",
                              file=sizeless(exact + b" "))
    assert answer.body["response_action"] == "errors"
    error = answer.body["errors"][ids.ATTACHMENT_BLOCK]
    assert "over 1 MB, too large" in error and "PDF, PNG or JPEG" in error


async def test_a_download_too_slow_for_slack_is_refused_in_time(stand: Stand) -> None:
    await add_patients(stand.db, 1)
    stand.slack.download_pause = 0.2  # about 160 KB/s: 1.5 MB would take 9 s
    answer, seconds = await _submit(stand, "flyer.pdf", big_pdf(3 * MB // 2), "application/pdf")
    assert seconds < 3
    assert answer.body["response_action"] == "errors"
    error = answer.body["errors"][ids.ATTACHMENT_BLOCK]
    assert error.startswith("The file could not be fetched from Slack in time"), error
    assert "attach it again" in error


async def test_the_stand_in_serves_files_chunked_in_pieces(stand: Stand) -> None:
    """A kinder stand-in (one piece, a Content-Length) would hide a client's single read."""
    content = big_pdf(MB)
    added = stand.slack.add_file("F0CHUNKS", "flyer.pdf", content, "application/pdf")
    headers = {"Authorization": "Bearer xoxb-test"}
    async with aiohttp.ClientSession() as http, \
            http.get(added["url_private_download"], headers=headers) as response:
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert response.content_length is None
        first = await response.content.read(len(content) + 1)  # what one read returns
        rest = await response.read()
    assert len(first) < len(content) // 4 and first + rest == content
