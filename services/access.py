"""Who may do what: read < write < admin. Grants live in the database; env admins are admins."""

from __future__ import annotations

import getpass
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit
from services.errors import PermissionDenied, ValidationFailed
from services.models import AccessGrant, AccessLevel


@dataclass(frozen=True)
class Actor:
    """The person acting: a Slack user, or the local operator at the command line."""

    id: str
    is_env_admin: bool = False

    @classmethod
    def slack_user(cls, user_id: str, admins: Collection[str]) -> Actor:
        return cls(id=user_id, is_env_admin=user_id in set(admins))

    @classmethod
    def local_operator(cls) -> Actor:
        """Whoever has a shell on the bot's machine already has its database: an admin."""
        try:
            user = getpass.getuser()
        except Exception:
            user = "unknown"
        return cls(id=f"cli:{user}", is_env_admin=True)

    @property
    def is_slack_user(self) -> bool:
        return not self.id.startswith("cli:")


def parse_level(value: str) -> AccessLevel:
    try:
        return AccessLevel[value.strip().lower()]
    except KeyError:
        raise ValidationFailed({"level": "must be read, write or admin"}) from None


async def level_of(session: AsyncSession, actor: Actor) -> AccessLevel | None:
    if actor.is_env_admin:
        return AccessLevel.admin
    grant = await session.get(AccessGrant, actor.id)
    return AccessLevel[grant.level] if grant else None


async def require(
    session: AsyncSession, actor: Actor, needed: AccessLevel, action: str
) -> AccessLevel:
    """The actor's level, or PermissionDenied naming the level `action` needs."""
    level = await level_of(session, actor)
    if level is None or level < needed:
        raise PermissionDenied(needed.name, action)
    return level


async def grant(
    *, session: AsyncSession, actor: Actor, user_id: str, level: AccessLevel
) -> None:
    """Give `user_id` exactly `level` (replacing any earlier grant). Needs admin."""
    await require(session, actor, AccessLevel.admin, "grant access")
    user_id = _check_user_id(user_id)
    existing = await session.get(AccessGrant, user_id)
    previous = existing.level if existing else None
    if existing:
        existing.level = level.name
        existing.granted_by = actor.id
    else:
        session.add(AccessGrant(slack_user_id=user_id, level=level.name, granted_by=actor.id))
    await audit.record(
        session, actor, "access.granted", user=user_id, level=level.name, previous=previous
    )


async def revoke(*, session: AsyncSession, actor: Actor, user_id: str) -> bool:
    """Remove `user_id`'s grant; False when there was none. Needs admin."""
    await require(session, actor, AccessLevel.admin, "revoke access")
    user_id = _check_user_id(user_id)
    result = await session.execute(
        delete(AccessGrant).where(AccessGrant.slack_user_id == user_id).returning(
            AccessGrant.level
        )
    )
    previous = result.scalar_one_or_none()
    if previous is not None:
        await audit.record(session, actor, "access.revoked", user=user_id, previous=previous)
    return previous is not None


async def list_grants(*, session: AsyncSession) -> list[AccessGrant]:
    result = await session.execute(select(AccessGrant).order_by(AccessGrant.slack_user_id))
    return list(result.scalars())


def _check_user_id(user_id: str) -> str:
    cleaned = user_id.strip().removeprefix("<@").removesuffix(">").split("|")[0].strip()
    if not cleaned or not cleaned[0] in "UW" or not cleaned.isalnum() or not cleaned.isupper():
        raise ValidationFailed({"user": f"{user_id!r} is not a Slack user id such as U012ABCDEF"})
    return cleaned
