"""`campaign-bot campaigns create|list|show|cancel|send-now`: the same service as Slack."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bot import db
from bot.settings import Settings
from services import campaigns, segments
from services.access import Actor
from services.attachments import AttachmentInput, too_large_text
from services.campaign_summary import COUNTED
from services.campaign_validation import CampaignInput
from services.errors import ValidationFailed
from services.models import Campaign, CampaignStatus

EMPTY = "—"


def register(commands: Any) -> None:
    group = commands.add_parser("campaigns", help="create, list, show and cancel campaigns")
    sub = group.add_subparsers(dest="campaigns_command", metavar="ACTION", required=True)

    create = sub.add_parser(
        "create",
        help="create a campaign and schedule it (or queue it to send now)",
        description="Create a campaign with the same validation as Slack. Prints the new "
        "campaign's id alone on stdout; on invalid input exits 2 with one `field: reason` "
        "line per error on stderr. The running bot (`campaign-bot run`) sends it.",
    )
    audience = create.add_mutually_exclusive_group(required=True)
    audience.add_argument("--segment", metavar="SLUG", help="a smart segment, e.g. all")
    audience.add_argument(
        "--patients", type=Path, metavar="FILE",
        help="a text file of external_ids, one a line (blank lines are ignored)",
    )
    create.add_argument("--subject", required=True, metavar="S")
    create.add_argument("--message", required=True, metavar="M")
    create.add_argument("--channel", required=True, metavar="EMAIL|SMS|EMAIL_SMS")
    create.add_argument("--preview-text", metavar="T")
    create.add_argument("--tags", metavar="a,b", help="comma-separated tags")
    create.add_argument(
        "--attachment", type=Path, metavar="FILE", help="one PDF, PNG or JPEG file"
    )
    when = create.add_mutually_exclusive_group(required=True)
    when.add_argument("--send-now", action="store_true", help="queue it to send at once")
    when.add_argument(
        "--at", metavar="ISO-8601",
        help="when to send it, e.g. 2030-01-31T09:00-06:00; a time without an offset "
        "(2030-01-31T09:00) is read in CLINIC_TIMEZONE",
    )
    create.set_defaults(handler=_create)

    listing = sub.add_parser("list", help="the newest campaigns: id, status, channel, …")
    listing.add_argument(
        "--status", action="append", choices=[s.value for s in CampaignStatus],
        help="only campaigns in this status (repeatable)",
    )
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="default 50")
    listing.set_defaults(handler=_list)

    show = sub.add_parser("show", help="a campaign's status, audience and delivery counts")
    show.add_argument("id", type=int, metavar="ID")
    show.add_argument("--json", action="store_true", help="one JSON object (for scripts)")
    show.set_defaults(handler=_show)

    cancel = sub.add_parser("cancel", help="cancel a scheduled or sending campaign")
    cancel.add_argument("id", type=int, metavar="ID")
    cancel.set_defaults(handler=_cancel)

    send_now = sub.add_parser(
        "send-now", help="send a scheduled or missed campaign now (the running bot sends it)"
    )
    send_now.add_argument("id", type=int, metavar="ID")
    send_now.set_defaults(handler=_send_now)


def parse_at(text: str, clinic_timezone: str) -> datetime:
    """An ISO-8601 time; without an offset it is the clinic's local time."""
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(clinic_timezone))
    return value


def _read_external_ids(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8-sig")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _campaign_input(
    args: argparse.Namespace, settings: Settings
) -> tuple[CampaignInput, dict[str, str]]:
    """The input for the service, and the errors only the command line can see (files, time)."""
    errors: dict[str, str] = {}
    external_ids: list[str] | None = None
    if args.patients is not None:
        try:
            external_ids = _read_external_ids(args.patients)
        except UnicodeDecodeError:
            errors["patients"] = f"{args.patients} is not a UTF-8 text file"
        except OSError as exc:
            errors["patients"] = f"cannot read {args.patients}: {exc.strerror or exc}"
    attachment: AttachmentInput | None = None
    if args.attachment is not None:
        max_bytes = settings.limits.attachment_max_bytes
        try:
            size = args.attachment.stat().st_size
            if size > max_bytes:  # don't read a huge file only to refuse it
                errors["attachment"] = too_large_text(size, max_bytes)
            else:
                attachment = AttachmentInput(args.attachment.name, args.attachment.read_bytes())
        except OSError as exc:
            errors["attachment"] = f"cannot read {args.attachment}: {exc.strerror or exc}"
    send_at: datetime | None = None
    if args.at is not None:
        try:
            send_at = parse_at(args.at, settings.clinic_timezone)
        except ValueError:
            errors["send_at"] = (
                f"{args.at!r} is not an ISO-8601 date and time such as 2030-01-31T09:00"
            )
    campaign_in = CampaignInput(
        subject=args.subject,
        message=args.message,
        channel=args.channel,
        preview_text=args.preview_text,
        tags=args.tags or (),
        segment_slug=args.segment,
        external_ids=external_ids,
        attachment=attachment,
        send_now=bool(args.send_now),
        send_at=send_at,
        slack_channel_id=settings.slack_notify_channel,
    )
    return campaign_in, errors


def _merge(service: dict[str, str], edge: dict[str, str]) -> dict[str, str]:
    """The service's errors in form order, with the command line's own in their place."""
    merged: dict[str, str] = {}
    for field, reason in service.items():
        if field == "audience" and "patients" in edge:
            merged["patients"] = edge["patients"]  # the audience is unknown without the file
        else:
            merged[field] = edge.get(field, reason)
    merged.update((field, reason) for field, reason in edge.items() if field not in merged)
    return merged


async def _create(args: argparse.Namespace, settings: Settings) -> int:
    campaign_in, edge_errors = _campaign_input(args, settings)
    actor = Actor.local_operator()
    async with db.migrated(settings.database_url) as database:
        if campaign_in.attachment is not None and settings.public_base_url:
            from bot.senders import links  # the senders' imports are for this case only

            # SMS carry a link to the attachment: its length counts in the SMS check.
            campaign_in.sms_attachment_link = (await links(settings, database)).attachment(0)
        if args.segment and settings.segments_file.exists():
            definitions = segments.load_segments_file(settings.segments_file)
            async with database.transaction() as session:
                await segments.sync_segments(session, definitions)
        async with database.transaction() as session:
            if edge_errors:
                # Report every error at once, but create nothing.
                service_errors: dict[str, str] = {}
                try:
                    await campaigns.validate(
                        session=session, campaign_in=campaign_in, limits=settings.limits,
                        clinic_tz=settings.clinic_timezone,
                    )
                except ValidationFailed as exc:
                    service_errors = exc.errors
                raise ValidationFailed(_merge(service_errors, edge_errors))
            campaign = await campaigns.create(
                session=session, actor=actor, campaign_in=campaign_in, limits=settings.limits,
                clinic_tz=settings.clinic_timezone,
            )
    print(campaign.id)
    when = "to send now" if campaign.send_now else f"for {_local(campaign.send_at, settings)}"
    print(
        f"campaign {campaign.id} scheduled {when}, audience {campaign.audience_size}; "
        "`campaign-bot run` sends it",
        file=sys.stderr,
    )
    return 0


def _local(value: datetime | None, settings: Settings) -> str:
    if value is None:
        return EMPTY
    local = value.astimezone(ZoneInfo(settings.clinic_timezone))
    return f"{local:%Y-%m-%d %H:%M} {settings.clinic_timezone}"


def _when(campaign: Campaign, settings: Settings) -> str:
    if campaign.send_now and campaign.status is CampaignStatus.scheduled:
        return "now (queued)"
    return _local(campaign.send_at, settings)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    async with db.migrated(settings.database_url) as database, database.transaction() as session:
        found = await campaigns.list_campaigns(
            session=session, statuses=args.status, limit=max(1, args.limit),
            actor=Actor.local_operator(),
        )
    if not found:
        print("no campaigns yet", file=sys.stderr)
        return 0
    rows = [("ID", "STATUS", "CHANNEL", "AUDIENCE", "WHEN", "SUBJECT")]
    rows += [
        (str(c.id), c.status.value, c.channel.value, str(c.audience_size),
         _when(c, settings), _shorten(c.subject, 60))
        for c in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.rjust(w) if i in (0, 3) else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=False))]
        print("  ".join([*cells, row[-1]]))
    return 0


async def _show(args: argparse.Namespace, settings: Settings) -> int:
    async with db.migrated(settings.database_url) as database, database.transaction() as session:
        data = await campaigns.summary(
            session=session, campaign_id=args.id, actor=Actor.local_operator()
        )
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(_human_summary(data, settings))
    return 0


def _human_summary(data: dict[str, Any], settings: Settings) -> str:
    def when(key: str) -> str:
        value = data[key]
        return _local(datetime.fromisoformat(value), settings) if value else EMPTY

    attachment = data["attachment"]
    audience = f"{data['audience']} patients" + (
        f" (segment {data['segment']})" if data["segment"] else " (selected patients)"
    )
    lines = [
        f"Campaign {data['id']}: {data['status']}"
        + (f" ({data['status_reason']})" if data["status_reason"] else ""),
        f"  Subject:     {data['subject']}",
        f"  Preview:     {data['preview_text'] or EMPTY}",
        f"  Channel:     {data['channel']}",
        f"  Audience:    {audience}",
        f"  Send at:     {'now' if data['send_now'] else when('send_at')}",
        f"  Started:     {when('started_at')}",
        f"  Finished:    {when('finished_at')}",
        f"  Tags:        {', '.join(data['tags']) or EMPTY}",
        "  Attachment:  " + (
            f"{attachment['filename']} ({attachment['type']}, {attachment['size']:,} bytes)"
            if attachment else EMPTY
        ),
        f"  Created:     {when('created_at')} by {data['created_by']}",
        "Deliveries",
    ]
    for channel, counts in data["deliveries"].items():
        shown = ", ".join(
            f"{name} {counts[name]}" for name in COUNTED if counts[name]
        )
        lines.append(f"  {channel}: {shown or 'none yet'}")
        for kind in ("skipped", "failed"):
            for reason, count in counts[f"{kind}_reasons"].items():
                lines.append(f"    {kind}: {reason}: {count}")
    waiting = data["waiting"]
    if waiting["count"]:
        until = _local(datetime.fromisoformat(waiting["until"]), settings)
        lines.append(f"  {waiting['count']} SMS waiting for quiet hours to end (until {until})")
    unknown = data["unknown_deliveries"]
    if unknown:
        lines.append("May or may not have been sent (not retried; check with the provider):")
        lines += [f"  {u['external_id']} ({u['channel']}): {u['reason']}" for u in unknown]
    return "\n".join(lines)


async def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    async with db.migrated(settings.database_url) as database, database.transaction() as session:
        campaign = await campaigns.cancel(
            session=session, actor=Actor.local_operator(), campaign_id=args.id
        )
    print(f"campaign {campaign.id} cancelled")
    return 0


async def _send_now(args: argparse.Namespace, settings: Settings) -> int:
    async with db.migrated(settings.database_url) as database, database.transaction() as session:
        campaign = await campaigns.send_now(
            session=session, actor=Actor.local_operator(), campaign_id=args.id
        )
    print(f"campaign {campaign.id} queued to send now; `campaign-bot run` sends it")
    return 0
