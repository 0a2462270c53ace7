"""What an SMTP failure means for a message (SPEC §3), in words an operator can act on."""

from __future__ import annotations

import ssl

from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPConnectTimeoutError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from services.delivery.outcomes import Outcome, SendResult


def one_line(text: str) -> str:
    """A server's (possibly multi-line) text on one line."""
    return " ".join(text.split())


def reply_text(exc: SMTPResponseException) -> str:
    """`550 5.1.1 No such user`: the code and the server's words."""
    return f"{exc.code} {one_line(exc.message)}"


def _find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def classify_reply(code: int, message: str, phase: str) -> SendResult:
    """An SMTP reply that is not success: 4xx → RETRY, 5xx → FAILED, with code and text."""
    reason = f"{code} {one_line(message)}"
    if 400 <= code < 500:
        return SendResult(Outcome.RETRY, reason=reason, error_code=str(code))
    if 500 <= code < 600:
        return SendResult(Outcome.FAILED, reason=reason, error_code=str(code))
    return SendResult(Outcome.UNKNOWN, error_code=str(code),
                      reason=f"unexpected reply to {phase}: {reason}")


def open_failure(step: str, exc: Exception, *, where: str, security: str) -> SendResult:
    """What a failure at one step of opening a connection means, with the fix."""
    tls_error = _find_ssl_error(exc)
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        return SendResult(Outcome.CHANNEL_DOWN, reason=(
            f"the TLS certificate of {where} failed verification ({tls_error.verify_message})"
            ": set SMTP_HOST to the name on the server's certificate, or add the server's CA"
            " to the system trust store"))
    if tls_error is not None:
        fix = ("SMTP_SECURITY=tls needs the implicit-TLS port (usually 465); "
               "for port 587 use SMTP_SECURITY=starttls") if security == "tls" else (
               "check SMTP_PORT and SMTP_SECURITY (starttls on 587, tls on 465)")
        return SendResult(Outcome.CHANNEL_DOWN,
                          reason=f"the TLS handshake with {where} failed ({tls_error}): {fix}")
    if isinstance(exc, SMTPAuthenticationError):
        reason = (f"the SMTP server rejected the login ({reply_text(exc)}): "
                  "check SMTP_USERNAME and SMTP_PASSWORD")
        outcome = Outcome.RETRY if 400 <= exc.code < 500 else Outcome.CHANNEL_DOWN
        return SendResult(outcome, reason=reason, error_code=str(exc.code))
    if isinstance(exc, SMTPConnectTimeoutError):
        return SendResult(Outcome.RETRY, unreachable=True, reason=(
            f"timed out connecting to {where}: check SMTP_HOST, SMTP_PORT and the firewall"
            + ("; port 465 expects SMTP_SECURITY=tls" if security != "tls" else "")))
    if isinstance(exc, SMTPConnectResponseError | SMTPResponseException):
        outcome = Outcome.RETRY if 400 <= exc.code < 500 else Outcome.CHANNEL_DOWN
        # A 4xx greeting or EHLO (421 "too busy") turns every message away for now.
        return SendResult(outcome, error_code=str(exc.code), unreachable=outcome is Outcome.RETRY,
                          reason=f"{where} refused {step}: {reply_text(exc)}")
    if isinstance(exc, SMTPConnectError | SMTPServerDisconnected | SMTPTimeoutError | OSError):
        cause = one_line(str(exc.__cause__ or exc))
        return SendResult(Outcome.RETRY, unreachable=True, reason=(
            f"could not {'connect to' if step == 'connect' else step + ' with'} {where} "
            f"({cause}): check SMTP_HOST and SMTP_PORT, and that the server is running"))
    if step == "STARTTLS":
        return SendResult(Outcome.CHANNEL_DOWN, reason=(
            f"{where} does not offer STARTTLS ({exc}): use SMTP_SECURITY=tls with port 465,"
            " or SMTP_SECURITY=none only for a server on a trusted network"))
    if step == "AUTH":
        return SendResult(Outcome.CHANNEL_DOWN, reason=(
            f"{where} offers no login on this connection ({exc}): use SMTP_SECURITY=starttls"
            " or tls, or unset SMTP_USERNAME and SMTP_PASSWORD if it needs none"))
    return SendResult(Outcome.CHANNEL_DOWN, reason=f"{where} failed at {step}: {exc}")
