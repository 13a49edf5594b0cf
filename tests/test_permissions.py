"""The permission model: the admin role, ``job:<glob>:r|x``, and the readable filter in real queries."""
from __future__ import annotations

from typing import Any

import pytest

from core import permissions
from core.db import Database
from core.errors import BadArgument, Forbidden
from core.permissions import check_permission, may, readable_filter, require, require_admin

DUMMY = "jobs.example.DummyJob"
OTHER = "other.Job"


def make_user(name: str = "bob", *, roles: tuple[str, ...] = (), perms: tuple[str, ...] = (),
              active: bool = True) -> dict[str, Any]:
    return {"name": name, "roles": list(roles), "perms": list(perms), "active": active}


ADMIN = make_user("root", roles=("admin",))
EXECUTOR = make_user("exe", perms=("job:jobs.example.*:x",))
READER = make_user("reader", perms=("job:jobs.example.*:r",))
NOBODY = make_user("nobody")


@pytest.mark.parametrize("qual_name", [DUMMY, OTHER, "anything.at.All"])
@pytest.mark.parametrize("action", ["r", "x"])
def test_admin_may_do_everything(qual_name: str, action: str) -> None:
    assert may(ADMIN, qual_name, action)
    require(ADMIN, qual_name, action)
    require_admin(ADMIN)


def test_execute_permission_gives_read_and_execute_on_matching_jobs_only() -> None:
    assert may(EXECUTOR, DUMMY, "r")
    assert may(EXECUTOR, DUMMY, "x")
    assert not may(EXECUTOR, OTHER, "r")
    assert not may(EXECUTOR, OTHER, "x")


def test_read_permission_gives_read_but_not_execute() -> None:
    assert may(READER, DUMMY, "r")
    assert not may(READER, DUMMY, "x")
    assert not may(READER, OTHER, "r")


def test_glob_matches_the_whole_qual_name_not_a_part_of_it() -> None:
    assert not may(READER, "evil.jobs.example.DummyJob", "r")
    assert not may(make_user(perms=("job:jobs.example.DummyJob:r",)), "jobs.example.DummyJobX", "r")


def test_glob_matching_is_case_sensitive() -> None:
    assert not may(READER, "Jobs.Example.DummyJob", "r")


def test_user_without_permissions_may_nothing() -> None:
    assert not may(NOBODY, DUMMY, "r")
    assert not may(NOBODY, DUMMY, "x")


@pytest.mark.parametrize("user", [
    make_user("was_admin", roles=("admin",), active=False),
    make_user("was_exe", perms=("job:*:x",), active=False),
    {"name": "no_active_key", "roles": ["admin"], "perms": ["job:*:x"]},
])
def test_disabled_user_may_nothing_even_if_admin(user: dict[str, Any]) -> None:
    assert not may(user, DUMMY, "r")
    assert not may(user, DUMMY, "x")
    assert not permissions.is_admin(user)
    with pytest.raises(Forbidden):
        require(user, DUMMY, "r")
    with pytest.raises(Forbidden):
        require_admin(user)


def test_require_raises_forbidden_naming_user_and_qual_name() -> None:
    with pytest.raises(Forbidden) as caught:
        require(READER, DUMMY, "x")
    message = str(caught.value)
    assert "reader" in message and DUMMY in message and "execute" in message
    assert caught.value.status == 403

    with pytest.raises(Forbidden) as caught:
        require(READER, OTHER, "r")
    assert "reader" in str(caught.value) and OTHER in str(caught.value)


def test_require_passes_silently_when_allowed() -> None:
    assert require(EXECUTOR, DUMMY, "x") is None
    assert require(READER, DUMMY, "r") is None


def test_require_admin_rejects_non_admin_naming_the_user() -> None:
    with pytest.raises(Forbidden, match="exe"):
        require_admin(EXECUTOR)


@pytest.mark.parametrize("permission", [
    "job:*:r", "job:*:x", "job:jobs.example.*:x", "job:jobs.example.DummyJob:r",
    "job:jobs.?xample.[A-Z]*:r", "job:jobs.[!x]*:x",
])
def test_good_permission_strings_are_accepted(permission: str) -> None:
    assert check_permission(permission) == permission


@pytest.mark.parametrize("permission", [
    "job:*", "job:a:w", "foo:a:r", "job::r", "", "job:a:r ", " job:a:r", "job:a b:r",
    "job:a:r:x", "JOB:a:r", "job:a:R", None, 3,
])
def test_bad_permission_strings_are_rejected(permission: Any) -> None:
    with pytest.raises(BadArgument, match="bad permission"):
        check_permission(permission)


def test_unknown_role_is_rejected() -> None:
    assert permissions.check_role("admin") == "admin"
    with pytest.raises(BadArgument, match="unknown role"):
        permissions.check_role("superuser")


def test_malformed_stored_permission_grants_nothing() -> None:
    user = make_user(perms=("job:*", "foo:*:x", "job:*:w"))
    assert not may(user, DUMMY, "r")
    assert readable_filter(user) == {"qual_name": {"$in": []}}


QUAL_NAMES = [
    DUMMY,
    "jobs.example.Sleep",
    "jobs.reports.Daily",
    "jobs.reports.Weekly",
    OTHER,
    "evil.jobs.example.DummyJob",
    "xjobs.reports.Daily",
    "jobs.examplesX.Job",
]


async def readable(db: Database, user: dict[str, Any], action: str = "r") -> set[str]:
    docs = await db.queue.find(readable_filter(user, action), {"qual_name": 1}).to_list()
    return {doc["qual_name"] for doc in docs}


@pytest.fixture
async def queued(db: Database) -> Database:
    await db.queue.insert_many([{"qual_name": name, "state": "waiting"} for name in QUAL_NAMES])
    return db


async def test_readable_filter_for_admin_matches_everything(queued: Database) -> None:
    assert readable_filter(ADMIN) == {}
    assert await readable(queued, ADMIN) == set(QUAL_NAMES)
    assert await readable(queued, ADMIN, "x") == set(QUAL_NAMES)


async def test_readable_filter_with_two_read_globs_returns_exactly_the_matching_jobs(
        queued: Database) -> None:
    user = make_user(perms=("job:jobs.example.*:r", "job:jobs.reports.D*:r"))
    expected = {DUMMY, "jobs.example.Sleep", "jobs.reports.Daily"}
    assert await readable(queued, user) == expected
    assert {name for name in QUAL_NAMES if may(user, name, "r")} == expected


async def test_execute_filter_ignores_read_only_permissions(queued: Database) -> None:
    user = make_user(perms=("job:jobs.example.*:r", "job:jobs.reports.*:x"))
    assert await readable(queued, user, "x") == {"jobs.reports.Daily", "jobs.reports.Weekly"}
    assert await readable(queued, user, "r") == {
        DUMMY, "jobs.example.Sleep", "jobs.reports.Daily", "jobs.reports.Weekly"}


async def test_readable_filter_for_user_without_permissions_matches_nothing(queued: Database) -> None:
    assert await readable(queued, NOBODY) == set()
    assert await readable(queued, NOBODY, "x") == set()


async def test_readable_filter_for_disabled_admin_matches_nothing(queued: Database) -> None:
    user = make_user("gone", roles=("admin",), perms=("job:*:x",), active=False)
    assert await readable(queued, user) == set()


async def test_readable_filter_agrees_with_may_for_character_classes(queued: Database) -> None:
    user = make_user(perms=("job:jobs.reports.[DW]*:r", "job:?ther.Job:r"))
    expected = {name for name in QUAL_NAMES if may(user, name, "r")}
    assert expected == {"jobs.reports.Daily", "jobs.reports.Weekly", OTHER}
    assert await readable(queued, user) == expected


async def test_readable_filter_can_target_another_field(queued: Database) -> None:
    await queued.journal.insert_many([{"job": {"qual_name": DUMMY}}, {"job": {"qual_name": OTHER}}])
    docs = await queued.journal.find(readable_filter(READER, field="job.qual_name")).to_list()
    assert [doc["job"]["qual_name"] for doc in docs] == [DUMMY]
