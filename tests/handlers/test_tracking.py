"""Open and click tracking over real HTTP, with the pixel and links the engine put in emails."""

from __future__ import annotations

import html
import re
from email.message import EmailMessage

import aiohttp
from yarl import URL

from services.models import Delivery
from tests.campaign_fixtures import add_patients
from tests.handlers.bot_server import Bot, ledger, outbox, send_now

BOOK = "https://clinic.example/book?when=june&who=you"
FAQ = "https://clinic.example/faq"
MESSAGE = (f"Hello {{{{ first_name }}}}, book your check-up at {BOOK} today.\n\n"
           f"Questions? Read {FAQ}. See you soon at {BOOK}")


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    page = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    return text, page


def hrefs(page: str) -> list[str]:
    """The message's links (not the footer's unsubscribe link)."""
    found = (html.unescape(h) for h in re.findall(r'<a href="([^"]+)"', page))
    return [h for h in found if "/unsubscribe/" not in h]


async def campaign(bot: Bot, count: int = 2, **settings: object) -> tuple[int, list[Delivery],
                                                                            list[EmailMessage]]:
    if settings:
        bot.configure(**settings)
    await add_patients(bot.db, count, email_opt_in=True)
    campaign_id = await send_now(bot.db, message=MESSAGE,
                                 external_ids=[f"P{n:04d}" for n in range(1, count + 1)])
    await (await bot.engine()).drain()
    mails = sorted(outbox(bot), key=lambda m: str(m["To"]))
    return campaign_id, await ledger(bot.db, campaign_id), mails


async def test_the_pixel_and_clicks_are_counted_once_per_delivery_with_totals(bot: Bot) -> None:
    campaign_id, _, mails = await campaign(bot)
    text, page = parts(mails[0])
    # The plain text keeps the original links; the HTML part's go through this service.
    assert BOOK in text and FAQ in text and "/t/c/" not in text
    links = hrefs(page)
    tracked = [h for h in links if h.startswith(bot.url("/t/c/"))]
    assert len(tracked) == 3  # BOOK, FAQ, BOOK again (the same link number)
    assert tracked[0] == tracked[2] != tracked[1]
    assert html.escape(BOOK) in page  # the link's text is still the real address
    [pixel] = re.findall(r'<img src="([^"]+)" width="1" height="1" alt="">', page)
    assert pixel.startswith(bot.url("/t/o/"))
    _, other_page = parts(mails[1])
    assert pixel not in other_page and tracked[0] not in hrefs(other_page)

    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(pixel) as response:
                assert response.status == 200
                assert response.content_type == "image/gif"
                assert (await response.read()).startswith(b"GIF89a")
                assert "no-store" in response.headers["Cache-Control"]
        first_open = {r.address: r for r in await ledger(bot.db, campaign_id)}[str(mails[0]["To"])]
        for link, target in ((tracked[0], BOOK), (tracked[1], FAQ), (tracked[2], BOOK)):
            async with http.get(link, allow_redirects=False) as response:
                assert response.status == 302
                assert response.headers["Location"] == target
                assert "no-store" in response.headers["Cache-Control"]
        async with http.head(pixel) as response:  # a link checker is not a reader
            assert response.status == 405
    rows = {r.address: r for r in await ledger(bot.db, campaign_id)}
    reader, other = rows[str(mails[0]["To"])], rows[str(mails[1]["To"])]
    assert (reader.open_count, reader.click_count) == (3, 3)
    assert reader.opened_at == first_open.opened_at is not None  # the first time, kept
    assert reader.clicked_at is not None
    assert (other.open_count, other.click_count, other.opened_at, other.clicked_at) == (
        0, 0, None, None)
    assert bot.notifier.changed == [{campaign_id}] * 6


async def test_a_click_without_the_pixel_counts_as_an_open(bot: Bot) -> None:
    campaign_id, _, mails = await campaign(bot, 1)
    link = next(h for h in hrefs(parts(mails[0])[1]) if "/t/c/" in h)
    async with aiohttp.ClientSession() as http, http.get(link, allow_redirects=False) as response:
        assert response.status == 302
    [row] = await ledger(bot.db, campaign_id)
    assert row.opened_at is not None and row.clicked_at is not None
    assert (row.open_count, row.click_count) == (0, 1)


async def test_forged_tracking_tokens_get_404_and_never_redirect_elsewhere(bot: Bot) -> None:
    campaign_id, [row], mails = await campaign(bot, 1)
    page = parts(mails[0])[1]
    link = next(h for h in hrefs(page) if "/t/c/" in h)
    token = link.rsplit("/", 1)[1]
    signer = bot.context.signer
    forged_clicks = [
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        signer.sign("click", row.id, 7),  # a link number the message does not have
        signer.sign("click", row.id + 1000, 0),  # a delivery that does not exist
        signer.sign("open", row.id),
        signer.sign("unsubscribe", row.id),
        "x",
    ]
    async with aiohttp.ClientSession() as http:
        for bad in forged_clicks:
            async with http.get(bot.url(f"/t/c/{bad}"), allow_redirects=False) as response:
                assert response.status == 404, bad
                assert "Location" not in response.headers
            # Whatever is appended, the target comes from the campaign's message only.
            async with http.get(URL(bot.url(f"/t/c/{token}")).with_query(
                    url="https://evil.example/"), allow_redirects=False) as response:
                assert response.headers["Location"] == BOOK
        for bad in (signer.sign("click", row.id, 0), signer.sign("open", row.id + 1000), "x"):
            async with http.get(bot.url(f"/t/o/{bad}")) as response:
                assert response.status == 404, bad
    [after] = await ledger(bot.db, campaign_id)
    assert after.open_count == 0 and after.click_count == len(forged_clicks)  # only the real one


async def test_tracking_off_sends_the_original_links_and_no_pixel(bot: Bot) -> None:
    _, _, mails = await campaign(bot, 1, email_tracking=False)
    page = parts(mails[0])[1]
    assert hrefs(page) == [BOOK, FAQ, BOOK]
    assert "/t/o/" not in page and "<img" not in page


async def test_no_tracking_without_a_public_base_url(bot: Bot) -> None:
    """Links to this machine would break the patient's links: without PUBLIC_BASE_URL, no
    tracking."""
    _, _, mails = await campaign(bot, 1, public_base_url=None)
    page = parts(mails[0])[1]
    assert hrefs(page) == [BOOK, FAQ, BOOK]
    assert "/t/o/" not in page
