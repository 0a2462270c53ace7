"""Who may do what: read < write < admin. Grants live in the database; env admins are admins."""

from __future__ import annotations

import getpass
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit
from services.errors import PermissionDenied, ValidationFailed
from services.models import AccessGrant, AccessLevel, utcnow


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


@dataclass(frozen=True)
class Revoked:
    """What a revoke did: the user's level before and after (None: no access)."""

    user_id: str
    previous: AccessLevel | None
    remaining: AccessLevel | None

    @property
    def changed(self) -> bool:
        return self.previous != self.remaining


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
) -> str:
    """Give `user_id` exactly `level` (replacing any earlier grant); its cleaned id. Needs admin."""
    await require(session, actor, AccessLevel.admin, "grant access")
    user_id = _check_user_id(user_id)
    existing = await session.get(AccessGrant, user_id)
    previous = existing.level if existing else None
    if existing:
        existing.level = level.name
        existing.granted_by = actor.id
        existing.granted_at = utcnow()
    else:
        session.add(AccessGrant(slack_user_id=user_id, level=level.name, granted_by=actor.id))
    await audit.record(
        session, actor, "access.granted", user=user_id, level=level.name, previous=previous
    )
    await session.flush()
    return user_id


async def revoke(
    *,
    session: AsyncSession,
    actor: Actor,
    user_id: str,
    level: AccessLevel | None = None,
) -> Revoked:
    """Take access away from `user_id` (the levels before and after). Needs admin.

    Without `level` the grant is removed. With it, the user keeps only what is below it:
    revoking `write` from a writer or an admin leaves `read`; revoking `read` removes all.
    A user already below `level` is left as they are.
    """
    await require(session, actor, AccessLevel.admin, "revoke access")
    user_id = _check_user_id(user_id)
    existing = await session.get(AccessGrant, user_id, with_for_update=True)
    if existing is None:
        return Revoked(user_id, None, None)
    previous = AccessLevel[existing.level]
    if level is not None and previous < level:
        return Revoked(user_id, previous, previous)
    remaining = AccessLevel(level - 1) if level is not None and level > AccessLevel.read else None
    if remaining is None:
        await session.delete(existing)
    else:
        existing.level = remaining.name
        existing.granted_by = actor.id
        existing.granted_at = utcnow()
    await audit.record(
        session, actor, "access.revoked", user=user_id, previous=previous.name,
        level=remaining.name if remaining else None,
    )
    await session.flush()
    return Revoked(user_id, previous, remaining)


async def list_grants(*, session: AsyncSession, actor: Actor | None = None) -> list[AccessGrant]:
    """Every grant, by user id. With an `actor`, needs admin."""
    if actor is not None:
        await require(session, actor, AccessLevel.admin, "see who has access")
    result = await session.execute(select(AccessGrant).order_by(AccessGrant.slack_user_id))
    return list(result.scalars())


def _check_user_id(user_id: str) -> str:
    cleaned = user_id.strip().removeprefix("<@").removesuffix(">").split("|")[0].strip().upper()
    if not cleaned or cleaned[0] not in "UW" or not cleaned.isalnum() or not cleaned.isupper():
        raise ValidationFailed({"user": f"{user_id!r} is not a Slack user id such as U012ABCDEF"})
    return cleaned
