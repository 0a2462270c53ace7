"""Channel drivers: turn one claimed delivery into a personalised message and hand it to a
sender. The engine (engine.py) owns claiming, rates, retries and the ledger."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from services.delivery.email_message import Attachment, CampaignMail, links_in
from services.delivery.email_sender import EmailSender
from services.delivery.jobs import CampaignContent, Job
from services.delivery.outcomes import Outcome, SendResult
from services.delivery.sms_sender import SmsSender
from services.delivery.sms_text import check_length, compose
from services.models import DeliveryChannel, Patient
from services.personalisation import PersonalisationError, render_text, variables_for
from services.tokens import TokenSigner

log = logging.getLogger(__name__)

UNSUBSCRIBE_PURPOSE = "unsubscribe"
ATTACHMENT_PURPOSE = "attachment"
OPEN_PURPOSE = "open"
CLICK_PURPOSE = "click"


@dataclass(frozen=True)
class Links:
    """Signed links in messages, on the bot's base URL (PUBLIC_BASE_URL, else local)."""

    base_url: str
    signer: TokenSigner
    public: bool = True  # False: the base is this machine; no link can reach a patient's phone

    def unsubscribe(self, delivery_id: int) -> str:
        return f"{self.base_url}/unsubscribe/{self.signer.sign(UNSUBSCRIBE_PURPOSE, delivery_id)}"

    def attachment(self, campaign_id: int) -> str:
        return f"{self.base_url}/media/{self.signer.sign(ATTACHMENT_PURPOSE, campaign_id)}"

    def open_pixel(self, delivery_id: int) -> str:
        return f"{self.base_url}/t/o/{self.signer.sign(OPEN_PURPOSE, delivery_id)}"

    def click(self, delivery_id: int, link_index: int) -> str:
        """The tracked form of the campaign message's link number `link_index` (`links_in`)."""
        return f"{self.base_url}/t/c/{self.signer.sign(CLICK_PURPOSE, delivery_id, link_index)}"


def _failed(reason: str) -> SendResult:
    return SendResult(Outcome.FAILED, reason=reason)


def _not_made(job: Job, exc: Exception) -> SendResult:
    """A message that could not be made certainly was not sent: a failure, never `unknown`."""
    if isinstance(exc, PersonalisationError):
        return _failed(f"the message {exc}")
    # Not the exception's own words: they may carry patient data, and reasons reach Slack.
    log.error("delivery %s: its message could not be made", job.delivery_id, exc_info=exc)
    return _failed(f"the message could not be made ({type(exc).__name__}; see the bot's log)")


@dataclass
class SmsDriver:
    """Marketing SMS: the personalised message, an attachment link, the opt-out line."""

    sender: SmsSender
    links: Links
    clinic_name: str
    opt_out_text: str
    concurrency: int = 8
    channel: DeliveryChannel = DeliveryChannel.sms

    @property
    def can_ask_provider(self) -> bool:
        return self.sender.can_ask

    def address_of(self, patient: Patient) -> str | None:
        return patient.phone

    async def ask_provider(self, job: Job) -> SendResult | None:
        """Whether Twilio holds the message an unclear earlier hand-over may have left."""
        if job.attempted_at is None:
            return None
        try:
            text = self.text_for(job.campaign, job.patient)
        except Exception as exc:
            return _not_made(job, exc)
        return await self.sender.find_sent(to=job.address, body=text, since=job.attempted_at)

    def text_for(self, content: CampaignContent, patient: Patient) -> str:
        body = render_text(content.message, variables_for(patient, self.clinic_name))
        link = (
            self.links.attachment(content.id)
            if content.attachment is not None and self.links.public else None
        )
        return compose(body, opt_out_text=self.opt_out_text, attachment_link=link)

    async def send(self, job: Job) -> SendResult:
        try:
            text = self.text_for(job.campaign, job.patient)
        except Exception as exc:
            return _not_made(job, exc)
        problem = check_length(text)
        if problem:
            return _failed(problem)
        return await self.sender.send(to=job.address, body=text)

    async def close(self) -> None:
        await self.sender.close()


@dataclass
class EmailDriver:
    """Marketing email: one `CampaignMail` per campaign, one render per patient."""

    sender: EmailSender
    links: Links
    email_from: str
    postal_address: str
    clinic_name: str
    # Four times the SMTP pool: the next messages are marked and rendered while four send.
    concurrency: int = 16
    channel: DeliveryChannel = DeliveryChannel.email
    can_ask_provider: bool = False  # SMTP has no way to ask whether a message arrived
    tracking: bool = True  # EMAIL_TRACKING; only with a public base URL a patient can reach
    _mails: dict[int, CampaignMail] = field(default_factory=dict)
    _links: dict[int, list[str]] = field(default_factory=dict)

    def address_of(self, patient: Patient) -> str | None:
        return patient.email

    async def ask_provider(self, job: Job) -> SendResult | None:
        return SendResult(Outcome.UNKNOWN, reason="an SMTP server cannot be asked")

    def mail_for(self, content: CampaignContent) -> CampaignMail:
        mail = self._mails.get(content.id)
        if mail is None:
            attachment = content.attachment
            mail = CampaignMail(
                sender=self.email_from,
                postal_address=self.postal_address,
                clinic_name=self.clinic_name,
                preview_text=content.preview_text,
                attachment=Attachment(attachment.filename, attachment.content,
                                      attachment.content_type) if attachment else None,
            )
            if len(self._mails) > 16:
                self._mails.clear()
            self._mails[content.id] = mail
        return mail

    def _tracked_links(self, delivery_id: int, content: CampaignContent) -> dict[str, str]:
        """The message's own links → their signed click links (numbered as `links_in`)."""
        links = self._links.get(content.id)
        if links is None:
            if len(self._links) > 16:
                self._links.clear()
            links = self._links[content.id] = links_in(content.message)
        return {url: self.links.click(delivery_id, i) for i, url in enumerate(links)}

    def render(self, job: Job, message_id: str) -> tuple[bytes, ...]:
        mail = self.mail_for(job.campaign)
        values = variables_for(job.patient, self.clinic_name)
        track = self.tracking and self.links.public
        return mail.render_chunks(
            to=job.address,
            message_id=message_id,
            subject=render_text(job.campaign.subject, values),
            text_body=render_text(job.campaign.message, values),
            unsubscribe_url=self.links.unsubscribe(job.delivery_id),
            preview_text=job.campaign.preview_text,
            link_targets=self._tracked_links(job.delivery_id, job.campaign) if track else None,
            open_pixel_url=self.links.open_pixel(job.delivery_id) if track else None,
        )

    async def send(self, job: Job) -> SendResult:
        try:
            mail = self.mail_for(job.campaign)
            message_id = mail.new_message_id()
            message = self.render(job, message_id)
        except Exception as exc:
            return _not_made(job, exc)
        return await self.sender.send(
            sender=mail.envelope_sender, recipient=job.address, message=message,
            message_id=message_id,
        )

    async def close(self) -> None:
        await self.sender.close()
