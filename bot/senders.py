"""Builds the channel drivers and the delivery engine from the settings (real or outbox)."""

from __future__ import annotations

from bot.db import Database
from bot.settings import Settings
from services.delivery.channels import EmailDriver, Links, SmsDriver
from services.delivery.config import EngineConfig
from services.delivery.email_sender import FileEmailSender, SmtpEmailSender
from services.delivery.engine import DeliveryEngine, EventListener
from services.delivery.sms_outbox import FileSmsSender
from services.delivery.sms_sender import TwilioSmsSender
from services.models import DeliveryChannel
from services.tokens import TokenSigner, load_signer

FILE_SENDER = "campaign-bot@localhost"
FILE_POSTAL_ADDRESS = "(CLINIC_POSTAL_ADDRESS is not set)"


def email_sender(settings: Settings) -> SmtpEmailSender | FileEmailSender:
    if settings.effective_email_backend == "smtp":
        return SmtpEmailSender(
            host=str(settings.smtp_host),
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout=settings.smtp_timeout.total_seconds(),
        )
    return FileEmailSender(settings.outbox_dir)


def sms_sender(settings: Settings) -> TwilioSmsSender | FileSmsSender:
    if settings.effective_sms_backend == "twilio":
        return TwilioSmsSender(
            account_sid=str(settings.twilio_account_sid),
            auth_token=str(settings.twilio_auth_token),
            from_number=settings.twilio_from_number,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            api_url=settings.twilio_api_url,
            public_base_url=settings.public_base_url,
        )
    return FileSmsSender(
        settings.outbox_dir,
        from_number=settings.twilio_from_number,
        messaging_service_sid=settings.twilio_messaging_service_sid,
        public_base_url=settings.public_base_url,
    )


async def links(settings: Settings, db: Database, signer: TokenSigner | None = None) -> Links:
    if signer is None:
        async with db.transaction() as session:
            signer = await load_signer(session)
    return Links(settings.link_base_url, signer, public=settings.public_base_url is not None)


async def build_engine(
    settings: Settings,
    db: Database,
    *,
    signer: TokenSigner | None = None,
    on_event: EventListener | None = None,
) -> DeliveryEngine:
    link_maker = await links(settings, db, signer)
    email = EmailDriver(
        sender=email_sender(settings),
        links=link_maker,
        email_from=settings.email_from or FILE_SENDER,
        postal_address=settings.clinic_postal_address or FILE_POSTAL_ADDRESS,
        clinic_name=settings.clinic_name,
        tracking=settings.email_tracking,
    )
    sms = SmsDriver(
        sender=sms_sender(settings),
        links=link_maker,
        clinic_name=settings.clinic_name,
        opt_out_text=settings.sms_opt_out_text,
    )
    config = EngineConfig(
        rates={DeliveryChannel.email: settings.email_rate, DeliveryChannel.sms: settings.sms_rate},
        grace=settings.schedule_grace,
        retry_for=settings.retry_for,
        quiet_hours=settings.quiet_hours,
        clinic_timezone=settings.clinic_timezone,
    )
    return DeliveryEngine(db=db, config=config, drivers=[email, sms], on_event=on_event)
