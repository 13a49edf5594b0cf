"""core.auth: password checks, the verification cache, throttling and tokens."""
from __future__ import annotations

import time

import pytest

from core import users
from core.auth import Authenticator, Throttle, load_secret
from core.errors import TooManyRequests, Unauthorized


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def auth(db):
    return Authenticator(db, await load_secret(db))


async def test_right_password_returns_the_user(db, admin, auth):
    user = await auth.password("admin", "hans", address="1.2.3.4")
    assert user["name"] == "admin"


async def test_wrong_password_and_unknown_user_get_the_same_answer(db, admin, auth):
    with pytest.raises(Unauthorized, match="wrong user name or password"):
        await auth.password("admin", "nope", address="1.2.3.4")
    with pytest.raises(Unauthorized, match="wrong user name or password"):
        await auth.password("ghost", "hans", address="1.2.3.5")


async def test_failed_login_is_audited(db, admin, auth):
    with pytest.raises(Unauthorized):
        await auth.password("admin", "nope", address="1.2.3.4")
    entry = await db.audit.find_one({"action": "login.failed"})
    assert entry["target"] == "admin" and entry["detail"]["address"] == "1.2.3.4"


async def test_disabled_user_is_refused_even_with_right_password(db, auth):
    await users.add(db, "bob", "pw", actor="test")
    await users.add(db, "root", "pw", roles=["admin"], actor="test")
    await users.set_active(db, "bob", False, actor="test")
    with pytest.raises(Unauthorized, match="disabled"):
        await auth.password("bob", "pw", address="a")


async def test_second_check_of_same_credentials_is_served_from_cache(db, admin, auth):
    await auth.password("admin", "hans", address="a")
    await auth.password("admin", "hans", address="a")
    assert auth.stats == {"verifications": 1, "cache_hits": 1}


async def test_password_change_drops_cached_verification(db, admin, auth):
    await auth.password("admin", "hans", address="a")
    # Another process (the CLI) changes the password: the cache must not
    # keep accepting the old one.
    await users.set_password(db, "admin", "new", actor="test")
    with pytest.raises(Unauthorized):
        await auth.password("admin", "hans", address="a")
    assert (await auth.password("admin", "new", address="a"))["name"] == "admin"


async def test_disabling_a_user_takes_effect_despite_the_cache(db, admin, auth):
    await users.add(db, "bob", "pw", actor="test")
    await auth.password("bob", "pw", address="a")
    await users.set_active(db, "bob", False, actor="test")
    with pytest.raises(Unauthorized, match="disabled"):
        await auth.password("bob", "pw", address="a")


async def test_cache_entry_expires(db, admin):
    clock = FakeClock()
    auth = Authenticator(db, await load_secret(db), cache_seconds=10, clock=clock)
    await auth.password("admin", "hans", address="a")
    clock.now += 11
    await auth.password("admin", "hans", address="a")
    assert auth.stats["verifications"] == 2


async def test_repeated_failures_throttle_the_user_then_release_it(db, admin):
    clock = FakeClock()
    auth = Authenticator(db, await load_secret(db), throttle=Throttle(free_failures=3, clock=clock),
                         clock=clock)
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await auth.password("admin", "bad", address="a")
    with pytest.raises(TooManyRequests) as refused:
        await auth.password("admin", "hans", address="b")  # even the right password waits
    assert refused.value.retry_after == 2
    assert "admin" in str(refused.value)
    clock.now += 2.5
    assert (await auth.password("admin", "hans", address="b"))["name"] == "admin"
    # success forgets the failures
    with pytest.raises(Unauthorized):
        await auth.password("admin", "bad", address="b")


async def test_backoff_doubles_with_each_further_failure(db, admin):
    clock = FakeClock()
    throttle = Throttle(free_failures=2, max_backoff=5, clock=clock)
    for expected in (0, 0, 2, 4, 5, 5):
        assert throttle.wait_for("user:x") == expected
        throttle.fail("user:x")
        clock.now += 0  # consecutive failures at the same moment
    assert throttle.wait_for("user:x") == 5


async def test_failures_from_one_address_throttle_it_across_user_names(db, admin):
    clock = FakeClock()
    auth = Authenticator(db, await load_secret(db), throttle=Throttle(free_failures=3, clock=clock),
                         clock=clock)
    for name in ("u1", "u2", "u3"):
        with pytest.raises(Unauthorized):
            await auth.password(name, "bad", address="10.0.0.9")
    with pytest.raises(TooManyRequests, match="address '10.0.0.9'"):
        await auth.password("admin", "hans", address="10.0.0.9")
    assert (await auth.password("admin", "hans", address="10.0.0.10"))["name"] == "admin"


async def test_token_identifies_its_user(db, admin, auth):
    token, expires = auth.issue_token(await users.get(db, "admin"))
    assert (await auth.token(token))["name"] == "admin"
    assert expires > time.time() + 3600


async def test_tampered_or_foreign_token_is_refused(db, admin, auth):
    user = await users.get(db, "admin")
    token, _ = auth.issue_token(user)
    body, _, signature = token.partition(".")
    with pytest.raises(Unauthorized, match="invalid token"):
        await auth.token(body + "." + signature[::-1])
    with pytest.raises(Unauthorized, match="invalid token"):
        await auth.token("garbage")
    other = Authenticator(db, b"another secret" * 3)
    with pytest.raises(Unauthorized, match="invalid token"):
        await other.token(token)


async def test_expired_token_is_refused(db, admin):
    auth = Authenticator(db, await load_secret(db), token_seconds=-1)
    token, _ = auth.issue_token(await users.get(db, "admin"))
    with pytest.raises(Unauthorized, match="expired"):
        await auth.token(token)


async def test_password_change_revokes_tokens(db, admin, auth):
    token, _ = auth.issue_token(await users.get(db, "admin"))
    await users.set_password(db, "admin", "new", actor="test")
    with pytest.raises(Unauthorized, match="password change"):
        await auth.token(token)


async def test_token_of_disabled_or_removed_user_is_refused(db, admin, auth):
    await users.add(db, "bob", "pw", actor="test")
    token, _ = auth.issue_token(await users.get(db, "bob"))
    await users.set_active(db, "bob", False, actor="test")
    with pytest.raises(Unauthorized, match="disabled"):
        await auth.token(token)
    await users.remove(db, "bob", actor="test")
    with pytest.raises(Unauthorized, match="no longer exists"):
        await auth.token(token)


async def test_token_secret_is_shared_through_the_database(db):
    assert await load_secret(db) == await load_secret(db)
