"""Campaign validation: each form rule at its boundary, and every error reported at once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.attachments import AttachmentInput
from services.campaign_validation import check_form, normalise_tags
from services.models import Channel
from tests.campaign_fixtures import LIMITS, MESSAGE, NOW, form, jpeg_bytes, pdf_bytes


def errors_of(**overrides: Any) -> dict[str, str]:
    return check_form(form(**overrides), LIMITS, NOW)[1]


def test_a_valid_form_has_no_errors_and_is_normalised() -> None:
    valid, errors = check_form(
        form(subject="  Your check-up  ", message=f"\n{MESSAGE}  ", preview_text="  ",
             channel=" email_sms ", tags="Promo, promo ,  Spring Sale,"),
        LIMITS, NOW,
    )
    assert errors == {}
    assert valid.subject == "Your check-up"
    assert valid.message == MESSAGE
    assert valid.preview_text is None
    assert valid.channel is Channel.EMAIL_SMS
    assert valid.tags == ["promo", "spring sale"]
    assert valid.send_at == NOW + timedelta(days=2)


@pytest.mark.parametrize(("subject", "ok"), [("abcd", False), ("abcde", True),
                                              ("  abcd  ", False), ("a" * 200, True),
                                              ("a" * 201, False)])
def test_subject_is_5_to_200_characters_after_trimming(subject: str, ok: bool) -> None:
    errors = errors_of(subject=subject)
    assert ("subject" not in errors) is ok
    if not ok:
        assert "characters" in errors["subject"]


def test_subject_must_be_one_line() -> None:
    assert errors_of(subject="Hello\nBcc: x@example.com")["subject"] == "must be one line"


@pytest.mark.parametrize(("message", "ok"), [("a" * 19, False), ("a" * 20, True),
                                              (" " + "a" * 19 + "\n", False)])
def test_message_is_at_least_20_characters_after_trimming(message: str, ok: bool) -> None:
    errors = errors_of(message=message)
    assert ("message" not in errors) is ok
    if not ok:
        assert errors["message"] == "must be at least 20 characters (it has 19)"


@pytest.mark.parametrize(("preview", "ok"), [("p" * 150, True), ("p" * 151, False), (None, True)])
def test_preview_text_is_optional_and_at_most_150(preview: str | None, ok: bool) -> None:
    errors = errors_of(preview_text=preview)
    assert ("preview_text" not in errors) is ok
    if not ok:
        assert errors["preview_text"] == "must be at most 150 characters (it has 151)"


@pytest.mark.parametrize("channel", ["EMAIL", "SMS", "EMAIL_SMS", "sms"])
def test_channel_accepts_the_three_channels(channel: str) -> None:
    assert "channel" not in errors_of(channel=channel)


@pytest.mark.parametrize("channel", ["", "FAX", "EMAIL+SMS"])
def test_channel_rejects_anything_else(channel: str) -> None:
    assert errors_of(channel=channel)["channel"] == "must be EMAIL, SMS or EMAIL_SMS"


@pytest.mark.parametrize(
    ("ahead", "reason"),
    [
        (timedelta(seconds=-1), "is in the past; pick a time at least 1 minute from now"),
        (timedelta(0), "is in the past; pick a time at least 1 minute from now"),
        (timedelta(seconds=59), "must be at least 1 minute from now"),
        (timedelta(seconds=60), None),
        (timedelta(seconds=61), None),
        (timedelta(days=365), None),
        (timedelta(days=366), "must be at most 365 days from now"),
    ],
)
def test_send_at_is_1_minute_to_365_days_ahead(ahead: timedelta, reason: str | None) -> None:
    assert errors_of(send_at=NOW + ahead).get("send_at") == reason


def test_send_at_in_another_zone_is_the_same_instant() -> None:
    local = (NOW + timedelta(seconds=61)).astimezone(ZoneInfo("America/Mexico_City"))
    assert "send_at" not in errors_of(send_at=local)


def test_a_naive_send_at_is_rejected_not_guessed() -> None:
    naive = datetime(2030, 6, 3, 9, 0)
    assert errors_of(send_at=naive)["send_at"].startswith("must include a time zone")


def test_when_is_send_now_or_a_time_exactly() -> None:
    assert "send_at" in errors_of(send_at=None)
    assert "not both" in errors_of(send_now=True)["send_at"]
    valid, errors = check_form(form(send_now=True, send_at=None), LIMITS, NOW)
    assert errors == {}
    assert valid.send_now and valid.send_at == NOW


def test_tags_are_split_trimmed_lower_cased_and_deduplicated_in_order() -> None:
    assert normalise_tags(" VIP, promo,vip ,, Spring  Sale ") == ["vip", "promo", "spring sale"]
    assert normalise_tags(["A,b", "B", " c "]) == ["a", "b", "c"]
    assert normalise_tags(None) == normalise_tags("") == []


def test_at_most_10_tags() -> None:
    ten = ",".join(f"t{i}" for i in range(10))
    assert "tags" not in errors_of(tags=ten)
    assert errors_of(tags=ten + ",t10")["tags"] == "at most 10 tags (there are 11)"
    assert "tags" not in errors_of(tags=ten + ",T0")  # a duplicate after lower-casing


def test_each_tag_at_most_30_characters() -> None:
    assert "tags" not in errors_of(tags="x" * 30)
    assert "at most 30 characters" in errors_of(tags="ok," + "x" * 31)["tags"]


def test_templates_are_checked_on_their_field() -> None:
    errors = errors_of(
        subject="Hello {{ first_name ", message="Dear {{ frist_name }}, your check-up is due."
    )
    assert errors["subject"].startswith("has a template error on line 1:")
    assert errors["message"].startswith("uses unknown variable {{ frist_name }}")
    assert "first_name" in errors["message"]


def test_attachment_errors_are_on_the_attachment_field() -> None:
    errors = errors_of(attachment=AttachmentInput("notes.pdf", b"just some text, not a PDF"))
    assert "PDF, PNG or JPEG" in errors["attachment"]
    valid, errors = check_form(
        form(attachment=AttachmentInput("photo.jpeg", jpeg_bytes())), LIMITS, NOW
    )
    assert errors == {}
    assert valid.attachment is not None and valid.attachment.content_type == "image/jpeg"


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of(
        subject="Hey", preview_text="p" * 151, message="Too short", channel="FAX",
        send_at=NOW + timedelta(seconds=59), tags=",".join(f"t{i}" for i in range(11)),
        attachment=AttachmentInput("scan.pdf", pdf_bytes()[:-7]),
    )
    assert list(errors) == [
        "subject", "preview_text", "message", "channel", "send_at", "tags", "attachment"
    ]


def test_an_sms_over_1600_characters_with_the_opt_out_line_is_refused() -> None:
    from services.campaign_validation import check_form

    limits = LIMITS
    fits = "x" * (1600 - len("\nReply STOP to opt out"))
    _, errors = check_form(form(channel="SMS", message=fits), limits, NOW)
    assert "message" not in errors
    _, errors = check_form(form(channel="SMS", message=fits + "x"), limits, NOW)
    assert "1,601 characters" in errors["message"] and "1,600" in errors["message"]
    _, errors = check_form(form(channel="EMAIL", message=fits + "x"), limits, NOW)
    assert "message" not in errors


# Sized so that the unbounded renders of before answered fast (and wrongly): 300,000
# characters, 22,500 loop steps. The hostile, gigabyte-sized ones are in
# test_campaign_personalisation.py, each in a child process.
GROWS = '{{ "x"|center(300000) }}'
LOOPS = '{% for a in "x" * 150 %}{% for b in "x" * 150 %}{% endfor %}{% endfor %}'


@pytest.mark.parametrize(
    ("field", "template", "problem"),
    [
        ("subject", GROWS, "would grow too long when personalised "
                           f"({GROWS} makes text of more than 200,000 characters)"),
        ("message", f"Dear patient, {GROWS}", "would grow too long when personalised "
                                              f"({GROWS} makes text of more than 200,000 "
                                              "characters)"),
        ("subject", LOOPS, "takes too much work to personalise (line 1 loops or calls more "
                           "than 10,000 times); simplify it"),
        ("message", "Dear patient,\n" + LOOPS, "takes too much work to personalise (line 2 "
                                               "loops or calls more than 10,000 times)"),
    ],
)
def test_a_template_that_grows_or_works_too_much_is_refused_on_its_field(
    field: str, template: str, problem: str
) -> None:
    assert errors_of(**{field: template})[field].startswith(problem)


def test_everyday_personalisation_passes_validation() -> None:
    valid, errors = check_form(form(
        channel="EMAIL_SMS",
        subject="{{ first_name|default('Hello', true)|title }}, your check-up",
        message="Dear {{ first_name|trim|capitalize }} {{ last_name|upper }},\n"
                "{% if patient_type == 'child' %}bring your parents.{% else %}see you soon."
                "{% endif %} {{ clinic_name|lower }}",
    ), LIMITS, NOW)
    assert errors == {}
    assert valid.subject.startswith("{{ first_name")
