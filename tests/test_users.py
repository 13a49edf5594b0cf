"""Users: adding, changing and removing them, password hashing, the last admin, the audit trail."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import pytest
from passlib.hash import bcrypt, pbkdf2_sha256

from core import audit, users
from core.db import Database
from core.errors import BadArgument, Conflict, NotFound


async def audit_actions(db: Database, target: str) -> list[dict[str, Any]]:
    """Audit entries about ``target`` (via ``audit.recent``), in the order they were written.

    ``recent`` orders by time, and entries written within one millisecond tie,
    so the insertion order comes from the ``_id`` of the stored entries.
    """
    entries = await audit.recent(db, target=target)
    written = await db.audit.find({"target": target}, {"_id": 0}).sort("_id", 1).to_list()
    assert sorted(entries, key=repr) == sorted(written, key=repr)
    return written


async def verifies(db: Database, name: str, password: str) -> bool:
    return await users.verify_password(db, await users.get(db, name), password)


# --- add, get, list -----------------------------------------------------------------------

async def test_add_creates_an_active_user_and_returns_it_without_the_hash(db: Database) -> None:
    created = await users.add(db, "alice", "secret", perms=["job:jobs.example.*:x"], actor="test")
    assert created["name"] == "alice"
    assert created["roles"] == []
    assert created["perms"] == ["job:jobs.example.*:x"]
    assert created["active"] is True
    assert isinstance(created["created"], datetime)
    assert "password" not in created

    stored = await users.get(db, "alice")
    assert stored["password"].startswith("$argon2")
    assert stored["password"] != "secret"
    assert stored["version"] == 1
    assert await users.verify_password(db, stored, "secret")
    assert not await users.verify_password(db, stored, "wrong")


async def test_add_deduplicates_and_sorts_roles_and_perms(db: Database) -> None:
    created = await users.add(db, "bob", "pw", roles=["admin", "admin"],
                              perms=["job:b.*:r", "job:a.*:x", "job:b.*:r"], actor="test")
    assert created["roles"] == ["admin"]
    assert created["perms"] == ["job:a.*:x", "job:b.*:r"]


async def test_find_returns_none_and_get_raises_not_found_for_unknown_user(db: Database) -> None:
    assert await users.find(db, "ghost") is None
    with pytest.raises(NotFound, match="ghost"):
        await users.get(db, "ghost")


async def test_list_users_is_sorted_by_name_and_never_contains_password_hashes(db: Database) -> None:
    for name in ("carol", "alice", "bob"):
        await users.add(db, name, "pw", actor="test")
    listed = await users.list_users(db)
    assert [user["name"] for user in listed] == ["alice", "bob", "carol"]
    for user in listed:
        assert "password" not in user
        assert "_id" not in user
        assert "version" not in user
        assert set(user) == {"name", "roles", "perms", "active", "created", "updated"}


async def test_list_users_of_empty_database_is_empty(db: Database) -> None:
    assert await users.list_users(db) == []


async def test_adding_a_taken_name_is_a_conflict(db: Database) -> None:
    await users.add(db, "alice", "pw", actor="test")
    with pytest.raises(Conflict, match="alice"):
        await users.add(db, "alice", "other", actor="test")
    assert len(await users.list_users(db)) == 1


@pytest.mark.parametrize("name", ["", "a:b", "a b", " alice", "x" * 65, "-dash", ".dot", "ümlaut", None])
async def test_add_rejects_bad_user_names(db: Database, name: Any) -> None:
    with pytest.raises(BadArgument, match="bad user name"):
        await users.add(db, name, "pw", actor="test")
    assert await users.list_users(db) == []


async def test_add_accepts_names_of_64_characters_and_allowed_punctuation(db: Database) -> None:
    await users.add(db, "x" * 64, "pw", actor="test")
    await users.add(db, "a.b_c-d@example.org", "pw", actor="test")
    assert len(await users.list_users(db)) == 2


async def test_add_rejects_empty_and_overlong_passwords(db: Database) -> None:
    with pytest.raises(BadArgument, match="empty"):
        await users.add(db, "alice", "", actor="test")
    with pytest.raises(BadArgument, match="longer"):
        await users.add(db, "alice", "p" * 1025, actor="test")
    assert await users.find(db, "alice") is None


@pytest.mark.parametrize("perm", ["job:*", "job:a:w", "foo:a:r", "job::r", "admin"])
async def test_add_rejects_bad_permission_strings(db: Database, perm: str) -> None:
    with pytest.raises(BadArgument, match="bad permission"):
        await users.add(db, "alice", "pw", perms=[perm], actor="test")
    assert await users.find(db, "alice") is None


async def test_add_rejects_unknown_role(db: Database) -> None:
    with pytest.raises(BadArgument, match="unknown role"):
        await users.add(db, "alice", "pw", roles=["root"], actor="test")
    assert await users.find(db, "alice") is None


# --- set_password -------------------------------------------------------------------------

async def test_set_password_replaces_the_password_and_bumps_version_and_password_set(db: Database) -> None:
    await users.add(db, "alice", "old-pw", actor="test")
    before = await users.get(db, "alice")

    await users.set_password(db, "alice", "new-pw", actor="admin")

    after = await users.get(db, "alice")
    assert after["version"] > before["version"]
    assert after["password_set"] != before["password_set"]
    assert after["password_set"] > before["password_set"]
    assert after["password"] != before["password"]
    assert not await users.verify_password(db, after, "old-pw")
    assert await users.verify_password(db, after, "new-pw")


async def test_set_password_rejects_empty_password_and_keeps_the_old_one(db: Database) -> None:
    await users.add(db, "alice", "old-pw", actor="test")
    with pytest.raises(BadArgument):
        await users.set_password(db, "alice", "", actor="test")
    assert await verifies(db, "alice", "old-pw")
    assert (await users.get(db, "alice"))["version"] == 1


# --- change_access ------------------------------------------------------------------------

async def test_change_access_grants_and_revokes_permissions(db: Database) -> None:
    await users.add(db, "alice", "pw", perms=["job:a.*:r", "job:b.*:r"], actor="test")
    changed = await users.change_access(db, "alice", grant=["job:c.*:x"], revoke=["job:a.*:r"],
                                        actor="admin")
    assert changed["perms"] == ["job:b.*:r", "job:c.*:x"]
    assert "password" not in changed
    stored = await users.get(db, "alice")
    assert stored["perms"] == ["job:b.*:r", "job:c.*:x"]
    assert stored["version"] == 2


async def test_change_access_adds_and_drops_the_admin_role(db: Database, admin: dict[str, Any]) -> None:
    await users.add(db, "alice", "pw", actor="test")
    assert (await users.change_access(db, "alice", add_roles=["admin"], actor="admin"))["roles"] == ["admin"]
    assert (await users.change_access(db, "alice", drop_roles=["admin"], actor="admin"))["roles"] == []
    assert (await users.get(db, "alice"))["version"] == 3


async def test_change_access_rejects_bad_permissions_and_unknown_roles_without_changing(
        db: Database) -> None:
    await users.add(db, "alice", "pw", perms=["job:a.*:r"], actor="test")
    with pytest.raises(BadArgument, match="bad permission"):
        await users.change_access(db, "alice", grant=["job:*"], actor="test")
    with pytest.raises(BadArgument, match="bad permission"):
        await users.change_access(db, "alice", revoke=["job:a:w"], actor="test")
    with pytest.raises(BadArgument, match="unknown role"):
        await users.change_access(db, "alice", add_roles=["root"], actor="test")
    with pytest.raises(BadArgument, match="unknown role"):
        await users.change_access(db, "alice", drop_roles=["root"], actor="test")
    stored = await users.get(db, "alice")
    assert stored["perms"] == ["job:a.*:r"]
    assert stored["version"] == 1


# --- set_active ---------------------------------------------------------------------------

async def test_set_active_disables_and_enables_a_user(db: Database) -> None:
    await users.add(db, "alice", "pw", actor="test")
    disabled = await users.set_active(db, "alice", False, actor="admin")
    assert disabled["active"] is False
    assert (await users.get(db, "alice"))["active"] is False
    enabled = await users.set_active(db, "alice", True, actor="admin")
    assert enabled["active"] is True
    assert (await users.get(db, "alice"))["version"] == 3


# --- the last active admin ----------------------------------------------------------------

async def test_last_active_admin_cannot_be_disabled(db: Database, admin: dict[str, Any]) -> None:
    with pytest.raises(Conflict, match="last active admin"):
        await users.set_active(db, "admin", False, actor="admin")
    assert (await users.get(db, "admin"))["active"] is True


async def test_last_active_admin_cannot_be_removed(db: Database, admin: dict[str, Any]) -> None:
    with pytest.raises(Conflict, match="last active admin"):
        await users.remove(db, "admin", actor="admin")
    assert await users.find(db, "admin") is not None


async def test_last_active_admin_cannot_lose_the_admin_role(db: Database, admin: dict[str, Any]) -> None:
    with pytest.raises(Conflict, match="last active admin"):
        await users.change_access(db, "admin", drop_roles=["admin"], actor="admin")
    assert (await users.get(db, "admin"))["roles"] == ["admin"]


async def test_a_disabled_second_admin_does_not_count(db: Database, admin: dict[str, Any]) -> None:
    await users.add(db, "alice", "pw", roles=["admin"], actor="test")
    await users.set_active(db, "alice", False, actor="admin")
    with pytest.raises(Conflict):
        await users.remove(db, "admin", actor="admin")


async def test_last_admin_can_be_disabled_removed_or_demoted_once_another_active_admin_exists(
        db: Database, admin: dict[str, Any]) -> None:
    await users.add(db, "alice", "pw", actor="test")
    await users.change_access(db, "alice", add_roles=["admin"], actor="admin")

    await users.change_access(db, "admin", drop_roles=["admin"], actor="alice")
    assert (await users.get(db, "admin"))["roles"] == []
    await users.change_access(db, "admin", add_roles=["admin"], actor="alice")

    await users.set_active(db, "admin", False, actor="alice")
    assert (await users.get(db, "admin"))["active"] is False
    # alice is now the last active admin
    with pytest.raises(Conflict):
        await users.set_active(db, "alice", False, actor="alice")
    await users.set_active(db, "admin", True, actor="alice")

    await users.remove(db, "admin", actor="alice")
    assert await users.find(db, "admin") is None
    with pytest.raises(Conflict):
        await users.remove(db, "alice", actor="alice")


async def test_non_admins_can_be_disabled_and_removed_while_a_single_admin_exists(
        db: Database, admin: dict[str, Any]) -> None:
    await users.add(db, "alice", "pw", actor="test")
    await users.set_active(db, "alice", False, actor="admin")
    await users.remove(db, "alice", actor="admin")
    assert await users.find(db, "alice") is None


# --- remove -------------------------------------------------------------------------------

async def test_remove_deletes_the_user(db: Database) -> None:
    await users.add(db, "alice", "pw", actor="test")
    await users.add(db, "bob", "pw", actor="test")
    assert await users.remove(db, "alice", actor="admin") is None
    assert await users.find(db, "alice") is None
    assert [user["name"] for user in await users.list_users(db)] == ["bob"]


# --- unknown users ------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda db: users.get(db, "ghost"),
    lambda db: users.set_password(db, "ghost", "pw", actor="test"),
    lambda db: users.change_access(db, "ghost", grant=["job:a:r"], actor="test"),
    lambda db: users.change_access(db, "ghost", add_roles=["admin"], actor="test"),
    lambda db: users.change_access(db, "ghost", drop_roles=["admin"], actor="test"),
    lambda db: users.set_active(db, "ghost", True, actor="test"),
    lambda db: users.set_active(db, "ghost", False, actor="test"),
    lambda db: users.remove(db, "ghost", actor="test"),
], ids=["get", "set_password", "grant", "add_role", "drop_role", "enable", "disable", "remove"])
async def test_unknown_user_is_not_found(db: Database, admin: dict[str, Any], call: Any) -> None:
    with pytest.raises(NotFound, match="ghost"):
        await call(db)
    assert await audit.recent(db, target="ghost") == []


# --- audit --------------------------------------------------------------------------------

async def test_every_change_writes_an_audit_entry_with_action_actor_and_target(
        db: Database, admin: dict[str, Any]) -> None:
    await users.add(db, "alice", "pw", perms=["job:a.*:r"], actor="root")
    await users.set_password(db, "alice", "pw2", actor="root")
    await users.change_access(db, "alice", grant=["job:b.*:x"], revoke=["job:a.*:r"], actor="ops")
    await users.set_active(db, "alice", False, actor="ops")
    await users.set_active(db, "alice", True, actor="ops")
    await users.remove(db, "alice", actor="root")

    entries = await audit_actions(db, "alice")
    assert [(e["action"], e["actor"], e["target"]) for e in entries] == [
        ("user.add", "root", "alice"),
        ("user.passwd", "root", "alice"),
        ("user.access", "ops", "alice"),
        ("user.disable", "ops", "alice"),
        ("user.enable", "ops", "alice"),
        ("user.remove", "root", "alice"),
    ]
    assert all(isinstance(e["at"], datetime) for e in entries)
    assert entries[0]["detail"] == {"roles": [], "perms": ["job:a.*:r"]}
    assert entries[2]["detail"]["grant"] == ["job:b.*:x"]
    assert entries[2]["detail"]["revoke"] == ["job:a.*:r"]
    # neither passwords nor hashes end up in the audit trail
    for entry in entries:
        assert "pw2" not in str(entry) and "$argon2" not in str(entry)


async def test_rejected_changes_write_no_audit_entry(db: Database, admin: dict[str, Any]) -> None:
    before = len(await audit.recent(db))
    with pytest.raises(Conflict):
        await users.add(db, "admin", "pw", actor="test")
    with pytest.raises(Conflict):
        await users.remove(db, "admin", actor="test")
    with pytest.raises(BadArgument):
        await users.add(db, "bad name", "pw", actor="test")
    assert len(await audit.recent(db)) == before


# --- old hash schemes ---------------------------------------------------------------------

async def insert_with_hash(db: Database, name: str, hashed: str) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    await db.user.insert_one({"name": name, "password": hashed, "roles": [], "perms": [],
                              "active": True, "created": now, "updated": now,
                              "password_set": now, "version": 7})
    return await users.get(db, name)


@pytest.mark.parametrize("scheme", [pbkdf2_sha256, bcrypt], ids=["pbkdf2_sha256", "bcrypt"])
async def test_old_scheme_hash_verifies_and_is_rehashed_with_argon2(db: Database, scheme: Any) -> None:
    old_hash = scheme.hash("legacy-pw")
    user = await insert_with_hash(db, "old", old_hash)

    assert await users.verify_password(db, user, "legacy-pw")

    stored = await users.get(db, "old")
    assert stored["password"].startswith("$argon2")
    # not a change of the user: caches and tokens stay valid
    assert stored["version"] == 7
    assert stored["password_set"] == user["password_set"]
    assert await users.verify_password(db, stored, "legacy-pw")
    assert not await users.verify_password(db, stored, "wrong")


@pytest.mark.parametrize("scheme", [pbkdf2_sha256, bcrypt], ids=["pbkdf2_sha256", "bcrypt"])
async def test_wrong_password_on_old_scheme_is_rejected_and_hash_kept(db: Database, scheme: Any) -> None:
    old_hash = scheme.hash("legacy-pw")
    user = await insert_with_hash(db, "old", old_hash)

    assert not await users.verify_password(db, user, "wrong")
    assert (await users.get(db, "old"))["password"] == old_hash


async def test_verify_password_without_user_is_false(db: Database) -> None:
    assert await users.verify_password(db, None, "anything") is False


# --- bootstrap_admin ----------------------------------------------------------------------

async def test_bootstrap_admin_creates_admin_with_the_given_password(db: Database) -> None:
    assert await users.bootstrap_admin(db, "given-pw") is None
    admin = await users.get(db, "admin")
    assert admin["roles"] == ["admin"]
    assert admin["active"] is True
    assert await users.verify_password(db, admin, "given-pw")
    [entry] = await audit.recent(db, target="admin")
    assert (entry["action"], entry["actor"]) == ("user.add", "bootstrap")


async def test_second_bootstrap_admin_returns_none_and_changes_nothing(db: Database) -> None:
    await users.bootstrap_admin(db, "given-pw")
    before = await users.get(db, "admin")

    assert await users.bootstrap_admin(db, "other-pw") is None
    assert await users.bootstrap_admin(db) is None

    after = await users.get(db, "admin")
    assert after == before
    assert await users.verify_password(db, after, "given-pw")
    assert len(await users.list_users(db)) == 1


async def test_bootstrap_admin_without_password_returns_a_generated_one_that_verifies(db: Database) -> None:
    generated = await users.bootstrap_admin(db)
    assert isinstance(generated, str) and len(generated) >= 12
    assert await verifies(db, "admin", generated)


async def test_bootstrap_admin_does_nothing_when_an_admin_exists_under_another_name(db: Database) -> None:
    await users.add(db, "root", "pw", roles=["admin"], actor="test")
    assert await users.bootstrap_admin(db, "given-pw") is None
    assert await users.bootstrap_admin(db) is None
    assert await users.find(db, "admin") is None
    assert [user["name"] for user in await users.list_users(db)] == ["root"]


# --- hashing runs off the event loop ------------------------------------------------------

async def test_hashing_does_not_block_the_event_loop(db: Database) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0)  # let the ticker start
        start = ticks
        await users.add(db, "alice", "a-password", actor="test")
        during = ticks - start
    finally:
        stop.set()
        await task
    assert during >= 3, f"the event loop ticked only {during} times while hashing"
