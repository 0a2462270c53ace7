"""The attachment link an SMS carries: served for a signed token, 404 for anything else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.context import AppContext
from bot.db import Database
from bot.server import build_web_app
from bot.settings import load_settings
from services import campaigns
from services.attachments import AttachmentInput
from services.delivery.channels import ATTACHMENT_PURPOSE
from services.tokens import load_signer
from tests.campaign_fixtures import LIMITS, NOW, OPERATOR, add_patients, form, pdf_bytes


@pytest.fixture
async def server(db: Database, tmp_path: Path) -> AsyncIterator[tuple[TestServer, AppContext]]:
    async with db.transaction() as session:
        signer = await load_signer(session)
    settings = load_settings(database_url=db.url, outbox_dir=tmp_path)
    context = AppContext(settings=settings, db=db, signer=signer)
    test_server = TestServer(build_web_app(context))
    await test_server.start_server()
    try:
        yield test_server, context
    finally:
        await test_server.close()


async def test_the_signed_link_serves_the_attachment_and_forgeries_get_404(
    db: Database, server: tuple[TestServer, AppContext]
) -> None:
    test_server, context = server
    await add_patients(db, 1)
    document = pdf_bytes()
    async with db.transaction() as session:
        campaign = await campaigns.create(
            session=session, actor=OPERATOR, limits=LIMITS, now=NOW,
            campaign_in=form(external_ids=["P0001"],
                             attachment=AttachmentInput("results.pdf", document)),
        )
    token = context.signer.sign(ATTACHMENT_PURPOSE, campaign.id)
    other = context.signer.sign("unsubscribe", campaign.id)  # signed, but for another purpose
    async with aiohttp.ClientSession() as http:
        async with http.get(test_server.make_url(f"/media/{token}")) as response:
            assert response.status == 200
            assert response.content_type == "application/pdf"
            assert await response.read() == document
            assert "results.pdf" in response.headers["Content-Disposition"]
        for forged in (token[:-2] + "AA", other, "x", f"{campaign.id}"):
            async with http.get(test_server.make_url(f"/media/{forged}")) as response:
                assert response.status == 404
        missing = context.signer.sign(ATTACHMENT_PURPOSE, campaign.id + 1000)
        async with http.get(test_server.make_url(f"/media/{missing}")) as response:
            assert response.status == 404
