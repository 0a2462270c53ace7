"""Each patient's marketing email as RFC 5322 bytes, built fast from one per-campaign template.

`CampaignMail` is built once per campaign: it parses the sender, base64-encodes the attachment
(76-character lines, CRLF) and prepares every byte shared by all recipients. `render()` then
only encodes what differs per patient (To, Subject, Message-ID, the two text parts) and joins
ready-made byte strings; the stdlib `EmailMessage` + generator costs ~10 ms per 200 KB message.

Escaping contract: `text_body` is plain text exactly as the patient should read it, with
patient values inserted as plain text (render the template with HTML escaping off). The HTML
part is derived from it by `text_to_html`, which escapes every character: the message's own
text and the patient's values alike. A caller with its own HTML must pass it as
`markupsafe.Markup` (what Jinja2's autoescape and `text_to_html` produce); a plain `str` is
refused, so unescaped HTML cannot slip in by accident.

The output has CRLF line endings and is 7-bit clean; dot-stuffing is the SMTP client's job.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, formataddr, parseaddr
from urllib.parse import quote

from markupsafe import Markup, escape

from services.delivery.email_wire import WireChunk

CRLF = b"\r\n"
_URL = re.compile(r"""https?://[^\s<>"']+""", re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ATEXT_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")
# Printable ASCII without the characters that would end `<URL>` in List-Unsubscribe: " < > \\
_URL_PATH = r"(/[!#-;=?-\[\]-~]*)?"
_UNSUBSCRIBE_URL = re.compile(r"https://[A-Za-z0-9.-]+(:\d+)?" + _URL_PATH)
_LOCAL_HTTP_URL = re.compile(r"http://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?" + _URL_PATH)
_HEADER_WIDTH = 78
_WORD_BYTES = 39  # a utf-8 chunk whose base64 form keeps an encoded-word line under 78

PREHEADER_STYLE = (
    "display:none;font-size:1px;color:#ffffff;line-height:1px;max-height:0;max-width:0;"
    "opacity:0;overflow:hidden;mso-hide:all;"
)
# Invisible filler after the preview text, so clients don't pad the inbox preview with body text.
_PREHEADER_FILLER = "&#847;&zwnj;&nbsp;" * 40


@dataclass(frozen=True)
class Attachment:
    """One file attached to every email of a campaign."""

    filename: str
    data: bytes
    content_type: str | None = None  # guessed from the filename when None


def make_message_id(domain: str) -> str:
    """A new globally unique Message-ID, angle brackets included: `<…@domain>`."""
    domain = _ascii_domain(domain)
    return f"<{time.time_ns():x}.{secrets.token_hex(8)}@{domain}>"


def text_to_html(text: str, link_targets: Mapping[str, str] | None = None) -> Markup:
    """Plain text as safe HTML: escaped; blank lines → <p>, newlines → <br>, bare URLs → links.

    `link_targets` maps a URL of the text to the href its link gets instead (click tracking);
    the link's visible text stays the original URL.
    """
    text = _lf(text).strip()
    targets = link_targets or {}
    paragraphs = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        if paragraph.strip():
            lines = "<br>\n".join(_linkify(line, targets) for line in paragraph.split("\n"))
            paragraphs.append(f'<p style="margin:0 0 1em 0;">{lines}</p>')
    return Markup("\n".join(paragraphs))


def links_in(text: str) -> list[str]:
    """The distinct http(s) URLs of a text, in order of first appearance, as `text_to_html`
    links them (click tracking numbers them by this order)."""
    found = (_trim_url(match.group()) for match in _URL.finditer(_lf(text)))
    return list(dict.fromkeys(url for url in found if url))


def _linkify(line: str, targets: Mapping[str, str]) -> str:
    """Escape one line of text, turning each bare http(s) URL into a link."""
    out: list[str] = []
    position = 0
    for match in _URL.finditer(line):
        url = _trim_url(match.group())
        out.append(escape(line[position : match.start()]))
        out.append(f'<a href="{escape(targets.get(url, url))}">{escape(url)}</a>')
        position = match.start() + len(url)
    out.append(escape(line[position:]))
    return "".join(out)


def _trim_url(url: str) -> str:
    """Drop sentence punctuation that ends a URL in running text ("see https://x.org/a.")."""
    while url and (url[-1] in ".,;:!?'\"" or (url[-1] == ")" and url.count("(") < url.count(")"))):
        url = url[:-1]
    return url


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _crlf(text: str) -> str:
    return _lf(text).replace("\n", "\r\n")


def _qp(text: str) -> bytes:
    """Quoted-printable utf-8 with CRLF hard and soft line breaks (text must end in CRLF)."""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True)


def _one_line(value: str) -> str:
    """A header value without control characters (no header injection, no stray folding)."""
    return _CONTROL.sub(" ", value).strip()


def _ascii_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".")
    if not domain or _CONTROL.search(domain) or any(c in domain for c in " <>@,;"):
        raise ValueError(f"not a mail domain: {domain!r}")
    return domain if domain.isascii() else domain.encode("idna").decode("ascii")


def ascii_address(address: str) -> str:
    """A bare address usable in a header and an envelope: IDNA domain; non-ASCII mailbox refused."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or _CONTROL.search(address) or any(c in address for c in " <>,;"):
        raise ValueError(f"not an email address: {address!r}")
    if not local.isascii():
        raise ValueError(f"{address!r} has a non-ASCII mailbox name (needs SMTPUTF8)")
    return f"{local}@{_ascii_domain(domain)}"


def encode_header(name: str, value: str) -> bytes:
    """One header line (folded, CRLF-terminated); RFC 2047 encoded-words when not plain ASCII."""
    value = _one_line(value)
    if value.isascii():
        folded = _fold_ascii(name, value)
        if folded is not None:
            return folded
    data = value.encode("utf-8")
    words: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never split a character
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[start:end]).decode('ascii')}?=")
        start = end
    body = "\r\n ".join(words or ["=?utf-8?b??="])
    return f"{name}: {body}\r\n".encode("ascii")


def _fold_ascii(name: str, value: str) -> bytes | None:
    """Fold at spaces to ≤78 columns where possible; None when a word cannot fit in 998."""
    lines: list[str] = []
    current = f"{name}:"
    for index, word in enumerate(value.split(" ")):
        piece = f" {word}"
        if word and index and len(current) + len(piece) > _HEADER_WIDTH and current.strip():
            lines.append(current)
            current = piece
        else:
            current += piece
    lines.append(current)
    if any(len(line) > 998 for line in lines):
        return None
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _mime_param(name: str, value: str) -> str:
    """A Content-Type/Content-Disposition parameter; RFC 2231 when the value isn't plain ASCII."""
    value = _one_line(value)
    if value.isascii() and '"' not in value and "\\" not in value:
        return f'{name}="{value}"'
    return f"{name}*=utf-8''{quote(value, safe='')}"


def _check_unsubscribe_url(url: str) -> str:
    url = url.strip()
    if not _UNSUBSCRIBE_URL.fullmatch(url):
        if _LOCAL_HTTP_URL.fullmatch(url):  # a developer's PUBLIC_BASE_URL
            return url
        raise ValueError(f"the unsubscribe URL must be an https:// URL (RFC 8058): {url!r}")
    return url


class CampaignMail:
    """Everything a campaign's emails share, prepared once; `render()` makes one patient's email."""

    def __init__(
        self,
        *,
        sender: str,
        postal_address: str,
        clinic_name: str | None = None,
        preview_text: str | None = None,
        attachment: Attachment | None = None,
        language: str = "en",
    ) -> None:
        display_name, address = parseaddr(sender)
        if not address or "@" not in address:
            raise ValueError(f"EMAIL_FROM is not an email address: {sender!r}")
        self.envelope_sender = ascii_address(address)
        self.domain = self.envelope_sender.rpartition("@")[2]
        self.preview_text = preview_text
        # formataddr quotes specials and RFC 2047-encodes a non-ASCII name: always ASCII.
        from_value = formataddr((_one_line(display_name), self.envelope_sender), charset="utf-8")
        self._from = f"From: {from_value}\r\n".encode("ascii")
        token = secrets.token_hex(12)
        self._mixed = f"=_mixed_{token}"  # "=_" never occurs in base64 or quoted-printable
        self._alt = f"=_alt_{token}"
        self._head_tail = (
            b"MIME-Version: 1.0\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        )
        self._attachment: WireChunk | None = (
            self._attachment_part(attachment) if attachment else None
        )
        if self._attachment is not None:
            self._head_tail += (
                f'Content-Type: multipart/mixed; boundary="{self._mixed}"\r\n\r\n'
                f"--{self._mixed}\r\n"
                f'Content-Type: multipart/alternative; boundary="{self._alt}"\r\n\r\n'
            ).encode("ascii")
        else:
            self._head_tail += (
                f'Content-Type: multipart/alternative; boundary="{self._alt}"\r\n\r\n'
            ).encode("ascii")
        self._text_head = (
            f"--{self._alt}\r\n"
            'Content-Type: text/plain; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode("ascii")
        self._html_head = (
            f"\r\n--{self._alt}\r\n"
            'Content-Type: text/html; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode("ascii")
        self._alt_end = f"\r\n--{self._alt}--\r\n".encode("ascii")
        address_lines = [line.strip() for line in _lf(postal_address).split("\n") if line.strip()]
        if not address_lines:
            raise ValueError("CLINIC_POSTAL_ADDRESS is empty: every marketing email must carry it")
        signature = ([clinic_name] if clinic_name else []) + address_lines
        # Quoted-printable is line-local: the parts that are the same for every patient, each
        # ending in a line break, are encoded here once; render() encodes only the rest.
        self._qp_text_footer = _qp("\r\n-- \r\n" + "\r\n".join(signature) + "\r\n")
        self._qp_html_open = _qp(
            f'<!DOCTYPE html>\r\n<html lang="{escape(language)}">\r\n<head>\r\n'
            '<meta charset="utf-8">\r\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\r\n'
        )
        self._qp_body_open = self._body_open(preview_text)
        self._qp_html_footer = _qp(
            '<hr style="border:none;border-top:1px solid #dddddd;margin:24px 0 12px 0;">\r\n'
            '<p style="font-size:12px;line-height:1.4;color:#666666;margin:0;">'
            + "<br>\r\n".join(str(escape(line)) for line in signature) + "<br>\r\n"
        )
        self._qp_html_close = _qp("</div>\r\n</body>\r\n</html>\r\n")
        self._date = (0, b"")

    @staticmethod
    def _body_open(preview_text: str | None) -> bytes:
        """From </head> to the message's container, with the hidden preheader when there is one."""
        html = '</head>\r\n<body style="margin:0;padding:0;background:#ffffff;">\r\n'
        if preview_text and _one_line(preview_text):
            html += (f'<div style="{PREHEADER_STYLE}">{escape(_one_line(preview_text))}'
                     f"{_PREHEADER_FILLER}</div>\r\n")
        return _qp(html + (
            '<div style="max-width:600px;margin:0 auto;padding:16px;font-family:Arial,Helvetica,'
            'sans-serif;font-size:16px;line-height:1.5;color:#222222;">\r\n'))

    def _attachment_part(self, attachment: Attachment) -> WireChunk:
        """The attachment's whole MIME part, closing boundary included, encoded once."""
        content_type = attachment.content_type or (
            mimetypes.guess_type(attachment.filename)[0] or "application/octet-stream"
        )
        if _CONTROL.search(content_type) or content_type.count("/") != 1:
            raise ValueError(f"not a content type: {content_type!r}")
        encoded = base64.encodebytes(attachment.data).replace(b"\n", CRLF)
        head = (
            f"--{self._mixed}\r\n"
            f"Content-Type: {content_type}; {_mime_param('name', attachment.filename)}\r\n"
            f"Content-Disposition: attachment; {_mime_param('filename', attachment.filename)}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode("ascii")
        return WireChunk(b"".join((CRLF, head, encoded, f"--{self._mixed}--\r\n".encode())))

    def new_message_id(self) -> str:
        """A fresh Message-ID on the sender's domain."""
        return f"<{time.time_ns():x}.{secrets.token_hex(8)}@{self.domain}>"

    def _date_header(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:  # one formatdate per second, not per message
            date = format_datetime(datetime.fromtimestamp(now, UTC))
            self._date = (now, f"Date: {date}\r\n".encode("ascii"))
        return self._date[1]

    def render(
        self,
        *,
        to: str,
        message_id: str,
        subject: str,
        text_body: str,
        unsubscribe_url: str,
        unsubscribe_mailto: str | None = None,
        html_body: Markup | None = None,
        preview_text: str | None = None,
        link_targets: Mapping[str, str] | None = None,
        open_pixel_url: str | None = None,
    ) -> bytes:
        """One patient's complete email: RFC 5322 bytes, CRLF line endings, 7-bit clean."""
        return b"".join(self.render_chunks(
            to=to, message_id=message_id, subject=subject, text_body=text_body,
            unsubscribe_url=unsubscribe_url, unsubscribe_mailto=unsubscribe_mailto,
            html_body=html_body, preview_text=preview_text, link_targets=link_targets,
            open_pixel_url=open_pixel_url))

    def render_chunks(
        self,
        *,
        to: str,
        message_id: str,
        subject: str,
        text_body: str,
        unsubscribe_url: str,
        unsubscribe_mailto: str | None = None,
        html_body: Markup | None = None,
        preview_text: str | None = None,
        link_targets: Mapping[str, str] | None = None,
        open_pixel_url: str | None = None,
    ) -> tuple[bytes, ...]:
        """`render()` unjoined: the patient's part, then the campaign's shared `WireChunk`.

        Senders take either form; this one spares a copy of the attachment per message and
        lets the SMTP sender skip scanning it (it was checked once, when the campaign began).
        Tracking (HTML part only; the plain text keeps the original links): `link_targets`
        rewrites the links of `text_body`, `open_pixel_url` adds a 1×1 image.
        """
        if html_body is not None and not isinstance(html_body, Markup):
            raise TypeError("html_body must be markupsafe.Markup (escaped HTML); pass text_body")
        message_id = _one_line(message_id)
        if not (message_id.startswith("<") and message_id.endswith(">") and "@" in message_id):
            raise ValueError(f"a Message-ID looks like <id@domain>: {message_id!r}")
        url = _check_unsubscribe_url(unsubscribe_url)
        unsubscribe = f"List-Unsubscribe: <{url}>"
        if unsubscribe_mailto:
            mailto = _one_line(unsubscribe_mailto)
            mailto = mailto if mailto.startswith("mailto:") else f"mailto:{mailto}"
            unsubscribe += f",\r\n <{mailto}>"
        body_open = self._qp_body_open if preview_text is None else self._body_open(preview_text)
        content = html_body if html_body is not None else text_to_html(text_body, link_targets)
        if open_pixel_url:
            pixel = f'<img src="{escape(open_pixel_url)}" width="1" height="1" alt="">'
            content = Markup(f"{content}\r\n{pixel}")
        link = f'<a href="{escape(url)}" style="color:#666666;">{escape(url)}</a>'
        personal = b"".join((
            self._from,
            f"To: {ascii_address(to)}\r\n".encode("ascii"),
            encode_header("Subject", subject),
            self._date_header(),
            f"Message-ID: {message_id}\r\n{unsubscribe}\r\n".encode("ascii"),
            self._head_tail,
            self._text_head,
            _qp(_crlf(text_body.strip("\r\n")) + "\r\n"),
            self._qp_text_footer,
            _qp(f"Unsubscribe: {url}\r\n"),
            self._html_head,
            self._qp_html_open,
            _qp(f"<title>{escape(_one_line(subject))}</title>\r\n"),
            body_open,
            _qp(_crlf(content) + "\r\n"),
            self._qp_html_footer,
            _qp(f"Unsubscribe: {link}</p>\r\n"),
            self._qp_html_close,
            self._alt_end,
        ))
        return (personal,) if self._attachment is None else (personal, self._attachment)


EmailTemplate = CampaignMail  # the name the delivery brief uses
