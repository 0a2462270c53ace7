"""Access: read < write < admin, grants in the database, env admins, every change audited."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.db import Database
from services import access
from services.access import Actor, Revoked
from services.errors import PermissionDenied, ValidationFailed
from services.models import AccessGrant, AccessLevel, AuditEntry
from tests.campaign_fixtures import grant_level

L = AccessLevel
ENV_ADMIN = Actor.slack_user("U0BOSS", admins=["U0BOSS", "U0OTHER"])


async def level(db: Database, user_id: str) -> AccessLevel | None:
    async with db.transaction() as session:
        return await access.level_of(session, Actor(id=user_id))


async def audit_log(db: Database) -> list[tuple[str, str, dict[str, object]]]:
    async with db.transaction() as session:
        rows = await session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        return [(e.actor, e.action, e.details) for e in rows]


async def test_env_admins_are_admins_without_a_grant(db: Database) -> None:
    assert ENV_ADMIN.is_env_admin
    assert not Actor.slack_user("U0SOMEONE", admins=["U0BOSS"]).is_env_admin
    assert Actor.local_operator().is_env_admin
    async with db.transaction() as session:
        assert await access.level_of(session, ENV_ADMIN) is L.admin
        assert await access.level_of(session, Actor(id="U0SOMEONE")) is None


async def test_an_env_admin_grants_and_the_grant_is_audited(db: Database) -> None:
    async with db.transaction() as session:
        user = await access.grant(
            session=session, actor=ENV_ADMIN, user_id="<@u0ana|ana>", level=L.write
        )
    assert user == "U0ANA"
    assert await level(db, "U0ANA") is L.write
    assert await audit_log(db) == [
        ("U0BOSS", "access.granted", {"user": "U0ANA", "level": "write"})
    ]
    async with db.transaction() as session:
        await access.grant(session=session, actor=ENV_ADMIN, user_id="U0ANA", level=L.read)
    assert await level(db, "U0ANA") is L.read  # exactly the level given
    assert (await audit_log(db))[-1][2] == {"user": "U0ANA", "level": "read", "previous": "write"}


async def test_a_granted_admin_can_grant_but_a_writer_cannot(db: Database) -> None:
    admin = await grant_level(db, "U0ADMIN", "admin")
    writer = await grant_level(db, "U0WRITER", "write")
    async with db.transaction() as session:
        await access.grant(session=session, actor=admin, user_id="U0NEW", level=L.read)
    assert await level(db, "U0NEW") is L.read
    async with db.transaction() as session:
        with pytest.raises(PermissionDenied, match="you need admin access to grant access"):
            await access.grant(session=session, actor=writer, user_id="U0X", level=L.admin)
        with pytest.raises(PermissionDenied, match="admin access to revoke access"):
            await access.revoke(session=session, actor=writer, user_id="U0NEW")
    assert await level(db, "U0X") is None


async def test_require_compares_levels(db: Database) -> None:
    reader = await grant_level(db, "U0READER", "read")
    async with db.transaction() as session:
        assert await access.require(session, reader, L.read, "see campaigns") is L.read
        with pytest.raises(PermissionDenied) as denied:
            await access.require(session, reader, L.write, "send campaigns")
    assert (denied.value.needed, denied.value.action) == ("write", "send campaigns")


async def test_revoke_removes_the_grant(db: Database) -> None:
    await grant_level(db, "U0ANA", "write")
    async with db.transaction() as session:
        result = await access.revoke(session=session, actor=ENV_ADMIN, user_id="U0ANA")
    assert result == Revoked("U0ANA", L.write, None) and result.changed
    assert await level(db, "U0ANA") is None
    assert (await audit_log(db))[-1] == (
        "U0BOSS", "access.revoked", {"user": "U0ANA", "previous": "write"}
    )
    async with db.transaction() as session:
        again = await access.revoke(session=session, actor=ENV_ADMIN, user_id="U0ANA")
    assert again == Revoked("U0ANA", None, None) and not again.changed
    assert len(await audit_log(db)) == 1  # nothing changed, nothing audited


@pytest.mark.parametrize(
    ("had", "revoked", "left"),
    [("admin", L.admin, L.write), ("admin", L.write, L.read), ("write", L.write, L.read),
     ("write", L.read, None), ("read", L.write, L.read)],
)
async def test_revoke_a_level_keeps_what_is_below_it(
    db: Database, had: str, revoked: AccessLevel, left: AccessLevel | None
) -> None:
    await grant_level(db, "U0ANA", had)
    async with db.transaction() as session:
        result = await access.revoke(
            session=session, actor=ENV_ADMIN, user_id="U0ANA", level=revoked
        )
    assert result.remaining is left
    assert await level(db, "U0ANA") is left


async def test_user_ids_are_checked(db: Database) -> None:
    async with db.transaction() as session:
        with pytest.raises(ValidationFailed) as failed:
            await access.grant(session=session, actor=ENV_ADMIN, user_id="ana", level=L.read)
    assert failed.value.errors == {"user": "'ana' is not a Slack user id such as U012ABCDEF"}
    assert access.parse_level(" Write ") is L.write
    with pytest.raises(ValidationFailed, match="level: must be read, write or admin"):
        access.parse_level("owner")


async def test_list_grants_needs_admin(db: Database) -> None:
    await grant_level(db, "U0B", "read")
    await grant_level(db, "U0A", "write")
    reader = Actor(id="U0B")
    async with db.transaction() as session:
        grants = await access.list_grants(session=session, actor=ENV_ADMIN)
        assert [(g.slack_user_id, g.level) for g in grants] == [("U0A", "write"), ("U0B", "read")]
        with pytest.raises(PermissionDenied):
            await access.list_grants(session=session, actor=reader)
        assert (await session.scalars(select(AccessGrant))).all()
