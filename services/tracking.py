"""Email open and click tracking: counted per delivery (first time, and totals).

Nothing about the reader is kept (no IP address, no user agent): only when the delivery
was first opened / clicked and how many times. A click's destination is never taken from
the link itself: the token names a delivery and a link number, and the URL is the
campaign message's link of that number (`links_in`), so no link can redirect anywhere else.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.delivery.email_message import links_in
from services.models import Campaign, Delivery, DeliveryChannel


async def record_open(session: AsyncSession, *, delivery_id: int, now: datetime) -> int | None:
    """Count one open of an email delivery; its campaign id, or None when there is none."""
    result = await session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.channel == DeliveryChannel.email)
        .values(opened_at=func.coalesce(Delivery.opened_at, now),
                open_count=Delivery.open_count + 1)
        .returning(Delivery.campaign_id)
        .execution_options(synchronize_session=False)
    )
    return result.scalar_one_or_none()


async def click_target(
    session: AsyncSession, *, delivery_id: int, link_index: int
) -> tuple[int, str] | None:
    """(campaign id, URL) of link number `link_index` of the delivery's message, or None."""
    row = (
        await session.execute(
            select(Campaign.id, Campaign.message)
            .join(Delivery, Delivery.campaign_id == Campaign.id)
            .where(Delivery.id == delivery_id, Delivery.channel == DeliveryChannel.email)
        )
    ).one_or_none()
    if row is None:
        return None
    links = links_in(row.message)
    if not 0 <= link_index < len(links):
        return None
    return row.id, links[link_index]


async def record_click(
    session: AsyncSession, *, delivery_id: int, link_index: int, now: datetime
) -> tuple[int, str] | None:
    """Count one click (a click implies an open): (campaign id, where it goes), or None."""
    target = await click_target(session, delivery_id=delivery_id, link_index=link_index)
    if target is None:
        return None
    await session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(clicked_at=func.coalesce(Delivery.clicked_at, now),
                click_count=Delivery.click_count + 1,
                opened_at=func.coalesce(Delivery.opened_at, now))
        .execution_options(synchronize_session=False)
    )
    return target
