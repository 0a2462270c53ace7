"""Link tokens decode strictly: one spelling per token; every other spelling is refused
(and a link's endpoint answers 404), however the base64 decoder would have read it."""

from __future__ import annotations

import string

import aiohttp
import pytest

from services.tokens import TokenSigner
from tests.handlers.bot_server import Bot
from tests.handlers.test_unsubscribe import opted_out, sent_emails, unsubscribe_url

SIGNER = TokenSigner(b"k" * 32)
_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def spellings(token: str) -> list[str]:
    """Strings a lenient decoder reads as the same bytes as `token`."""
    last = _ALPHABET.index(token[-1])
    same_bytes = [_ALPHABET[(last & ~0b11) | low] for low in range(4)]  # 2 unused bits
    variants = [
        *(token[:-1] + c for c in same_bytes if c != token[-1]),  # non-canonical last char
        token + "=", token + "==", token + "=" * 3,  # padding, right or wrong
        token[:5] + "=" + token[5:],  # padding inside
        token + "A", token + "AAAA", token + "\n", " " + token,  # trailing or leading junk
        token[:4] + "!" + token[4:], token[:4] + "." + token[4:],  # characters it skips
        token.replace("-", "+").replace("_", "/"),  # the standard alphabet
    ]
    return [v for v in variants if v != token]


@pytest.mark.parametrize("count", [1, 2])
def test_only_the_signed_spelling_verifies(count: int) -> None:
    numbers = tuple(range(41, 41 + count))
    token = SIGNER.sign("unsubscribe", *numbers)
    assert SIGNER.verify("unsubscribe", token, count) == numbers
    others = spellings(token)
    assert len(others) >= 12
    for other in others:
        assert SIGNER.verify("unsubscribe", other, count) is None, repr(other)


def test_shapes_and_types_that_are_not_tokens() -> None:
    token = SIGNER.sign("open", 7)
    for bad in ("", "A" * 27, token[:-1], token * 2, "é" * 27, "\x00" * 27):
        assert SIGNER.verify("open", bad, 1) is None, repr(bad)
    assert SIGNER.verify("open", token, 2) is None  # another shape
    assert SIGNER.verify("click", token, 1) is None  # another purpose


async def test_a_non_canonical_spelling_of_a_real_link_is_404(bot: Bot) -> None:
    _, mails = await sent_emails(bot, 1)
    url = unsubscribe_url(mails["p0001@example.com"])
    base, token = url.rsplit("/", 1)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 200
        for other in spellings(token):
            if other.strip() != other:
                continue  # a URL cannot carry it as typed
            target = f"{base}/{other}"
            async with http.get(target) as response:
                assert response.status == 404, other
            async with http.post(target, data=b"List-Unsubscribe=One-Click", headers={
                    "Content-Type": "application/x-www-form-urlencoded"}) as response:
                assert response.status == 404, other
    assert await opted_out(bot.db) == {"p0001@example.com": False}
