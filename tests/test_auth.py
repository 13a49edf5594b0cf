"""core.auth: password checks, the verification cache, throttling and tokens."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from bson import ObjectId

from core import audit, users
from core.auth import MAX_NAME, Authenticator, Throttle
from core.errors import TooManyRequests, Unauthorized


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """An ``asyncio.sleep`` that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
async def auth(db, sleeps):
    return Authenticator(db, sleep=sleeps)


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
    auth = Authenticator(db, cache_seconds=10, clock=clock)
    await auth.password("admin", "hans", address="a")
    clock.now += 11
    await auth.password("admin", "hans", address="a")
    assert auth.stats["verifications"] == 2


async def test_repeated_failures_refuse_the_pair_then_release_it(db, admin, sleeps):
    clock = FakeClock()
    auth = Authenticator(db, throttle=Throttle(free_failures=3, clock=clock),
                         clock=clock, sleep=sleeps)
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await auth.password("admin", "bad", address="a")
    with pytest.raises(TooManyRequests) as refused:
        await auth.password("admin", "hans", address="a")  # from there, even the right password waits
    assert refused.value.retry_after == 2
    assert "admin" in str(refused.value)
    clock.now += 2.5
    assert (await auth.password("admin", "hans", address="a"))["name"] == "admin"
    # success forgets the pair's failures
    with pytest.raises(Unauthorized):
        await auth.password("admin", "bad", address="a")


def retry_after(throttle: Throttle, name: str, address: str) -> int:
    try:
        throttle.check(name, address)
    except TooManyRequests as refused:
        return refused.retry_after
    return 0


async def test_backoff_doubles_with_each_further_failure():
    clock = FakeClock()
    throttle = Throttle(free_failures=2, max_backoff=5, clock=clock)
    for expected in (0, 0, 2, 4, 5, 5):
        assert retry_after(throttle, "x", "a") == expected
        clock.now += expected  # each attempt as soon as it is allowed
        throttle.admit("x", "a")
        throttle.fail("x", "a")
    assert retry_after(throttle, "x", "a") == 5
    assert retry_after(throttle, "x", "b") == retry_after(throttle, "y", "a") == 0


async def test_refused_attempts_are_not_counted():
    clock = FakeClock()
    throttle = Throttle(free_failures=1, clock=clock)
    throttle.admit("x", "a")
    for _ in range(100):
        with pytest.raises(TooManyRequests):
            throttle.admit("x", "a")
    clock.now += 2
    throttle.admit("x", "a")  # the backoff after one failure, not after 101


async def test_delay_grows_with_failures_of_a_name_up_to_max_delay():
    clock = FakeClock()
    throttle = Throttle(free_failures=2, delay_step=0.25, max_delay=1.0, clock=clock)
    delays = []
    for address in range(7):  # a new address each time: never hard-limited
        delays.append(throttle.admit("x", f"10.0.0.{address}"))
        throttle.fail("x", f"10.0.0.{address}")
    assert delays == [0, 0, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert throttle.admit("y", "10.0.0.99") == 0  # another name from another address


async def test_failures_from_one_address_slow_it_down_across_names_but_do_not_refuse(db, admin, sleeps):
    clock = FakeClock()
    auth = Authenticator(db, throttle=Throttle(free_failures=3, clock=clock),
                         clock=clock, sleep=sleeps)
    for name in ("u1", "u2", "u3"):
        with pytest.raises(Unauthorized):
            await auth.password(name, "bad", address="10.0.0.9")
    assert sleeps.delays == []
    assert (await auth.password("admin", "hans", address="10.0.0.9"))["name"] == "admin"
    assert sleeps.delays == [0.25]


async def test_error_during_verification_takes_the_attempt_back():
    throttle = Throttle(free_failures=1)
    throttle.admit("x", "a")
    throttle.release("x", "a")
    throttle.admit("x", "a")  # not refused: the first attempt was never checked
    assert len(throttle.pairs) == 1


# --- the throttle cannot be turned against the victim -------------------------------------

async def test_concurrent_guesses_are_counted_before_any_is_verified(db, admin, sleeps):
    auth = Authenticator(db, clock=FakeClock(), sleep=sleeps)
    results = await asyncio.gather(*(auth.password("admin", f"guess{i}", address="6.6.6.6")
                                     for i in range(20)), return_exceptions=True)
    assert sum(isinstance(r, Unauthorized) for r in results) == auth.throttle.free_failures
    assert sum(isinstance(r, TooManyRequests) for r in results) == 20 - auth.throttle.free_failures
    assert auth.stats["verifications"] == auth.throttle.free_failures


async def test_attacker_at_one_address_leaves_the_victim_in_from_another(db, admin, sleeps):
    clock = FakeClock()
    auth = Authenticator(db, clock=clock, sleep=sleeps)
    await auth.password("admin", "hans", address="10.0.0.1")  # the victim, now cached
    for _ in range(30):
        with pytest.raises((Unauthorized, TooManyRequests)):
            await auth.password("admin", "guess", address="6.6.6.6")
        clock.now += 1
    with pytest.raises(TooManyRequests):
        await auth.password("admin", "hans", address="6.6.6.6")  # the attacker's pair stays refused
    verified, delays = auth.stats["verifications"], len(sleeps.delays)
    assert (await auth.password("admin", "hans", address="10.0.0.1"))["name"] == "admin"
    assert auth.stats["verifications"] == verified and len(sleeps.delays) == delays  # cache, at once
    auth.forget("admin")
    assert (await auth.password("admin", "hans", address="10.0.0.2"))["name"] == "admin"
    assert auth.stats["verifications"] == verified + 1
    assert 0 < sleeps.delays[-1] <= auth.throttle.max_delay  # slowed down, never refused


async def test_one_failure_a_minute_cannot_keep_the_user_out(db, admin, sleeps):
    clock = FakeClock()
    auth = Authenticator(db, clock=clock, sleep=sleeps)
    for minute in range(20):  # longer than forget_after: the failures never get forgotten
        with pytest.raises(Unauthorized):  # one guess a minute stays within the backoff: admitted
            await auth.password("admin", f"guess{minute}", address="6.6.6.6")
        if minute % 5 == 4:
            auth.forget("admin")  # no cache: a full check each time
            assert (await auth.password("admin", "hans", address="10.0.0.1"))["name"] == "admin"
        clock.now += 60
    assert max(sleeps.delays) <= auth.throttle.max_delay


async def test_tables_stay_bounded_after_50000_distinct_failures():
    clock = FakeClock()
    throttle = Throttle(max_entries=10_000, clock=clock)
    for i in range(50_000):
        name, address = f"user{i}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        throttle.admit(name, address)
        throttle.fail(name, address)
        clock.now += 0.001
    assert len(throttle.pairs) == len(throttle.users) == len(throttle.addresses) == 10_000
    clock.now += throttle.pairs.forget_after + 1
    throttle.admit("x", "a")
    assert len(throttle.pairs) == 1 and len(throttle.users) == 0  # stale entries forgotten


async def test_ipv6_addresses_count_by_their_64_network():
    throttle = Throttle(free_failures=2)
    throttle.admit("x", "2001:db8:1:2::1")
    throttle.admit("x", "2001:db8:1:2:ffff::7")
    with pytest.raises(TooManyRequests, match="2001:db8:1:2::/64"):
        throttle.admit("x", "2001:db8:1:2::99")
    throttle.admit("x", "2001:db8:1:3::1")  # another network
    throttle.admit("x", "::ffff:10.0.0.1")
    throttle.admit("x", "10.0.0.1")
    with pytest.raises(TooManyRequests):
        throttle.admit("x", "10.0.0.1")  # the mapped address is the IPv4 one


async def test_huge_user_name_is_cut_in_throttle_keys_and_audit_entry(db, sleeps):
    auth = Authenticator(db, sleep=sleeps)
    name = "n" * 65536
    with pytest.raises(Unauthorized):
        await auth.password(name, "pw", address="6.6.6.6")
    entry = await db.audit.find_one({"action": "login.failed"})
    assert entry["actor"] == entry["target"] == "n" * audit.MAX_NAME
    assert entry["detail"] == {"address": "6.6.6.6", "actor_length": 65536, "target_length": 65536}
    assert list(auth.throttle.pairs) == [("n" * MAX_NAME, "6.6.6.6")]
    assert list(auth.throttle.users) == ["n" * MAX_NAME]


async def test_failed_logins_expire_and_the_ttl_index_deletes_them(db, admin, auth):
    with pytest.raises(Unauthorized):
        await auth.password("admin", "nope", address="1.2.3.4")
    entry = await db.audit.find_one({"action": "login.failed"})
    kept = entry["expires"] - entry["at"]
    assert kept == timedelta(days=30)
    index = (await db.audit.index_information())["expires"]
    assert index["key"] == [("expires", 1)] and index["expireAfterSeconds"] == 0
    # The embedded server sweeps TTL indexes every 60 s; this runs a sweep now.
    await audit.record(db, "login.failed", actor="x", target="x", keep_for=timedelta(seconds=-1))
    await db.client.admin.command("secantusAdmin.pruneTtl")
    left = {(e["actor"], e["action"]) for e in await db.audit.find().to_list()}
    assert ("admin", "login.failed") in left and ("test", "user.add") in left and ("x", "login.failed") not in left


async def test_password_no_user_can_have_is_wrong_not_an_error(db, admin, auth):
    for password in ("x" * 5000, "\ud800"):
        with pytest.raises(Unauthorized, match="wrong user name or password"):
            await auth.password("admin", password, address="a")
    with pytest.raises(Unauthorized, match="wrong user name or password"):
        await auth.password("\ud800", "pw", address="a")


# --- rechecks of long-lived requests ------------------------------------------------------

async def test_recheck_uses_the_cache_and_ignores_the_throttle(db, admin, sleeps):
    auth = Authenticator(db, clock=FakeClock(), sleep=sleeps)
    await auth.password("admin", "hans", address="a")
    for _ in range(10):
        with pytest.raises((Unauthorized, TooManyRequests)):
            await auth.password("admin", "guess", address="a")
    audited = await db.audit.count_documents({})
    assert (await auth.password("admin", "hans", address="a", recheck=True))["name"] == "admin"
    with pytest.raises(Unauthorized):
        await auth.password("admin", "guess", address="a", recheck=True)
    assert await db.audit.count_documents({}) == audited
    assert auth.stats == {"verifications": 1 + auth.throttle.free_failures + 1, "cache_hits": 1}
    assert sleeps.delays == []


async def test_recheck_refuses_a_changed_disabled_or_removed_user(db, auth):
    await users.add(db, "root", "pw", roles=["admin"], actor="test")
    await users.add(db, "bob", "pw", actor="test")
    await auth.password("bob", "pw", address="a")
    await users.change_access(db, "bob", grant=["job:x.*:r"], actor="test")
    assert (await auth.password("bob", "pw", address="a", recheck=True))["perms"] == ["job:x.*:r"]
    assert auth.stats["verifications"] == 2  # the user changed: verified again
    await users.set_active(db, "bob", False, actor="test")
    with pytest.raises(Unauthorized, match="disabled"):
        await auth.password("bob", "pw", address="a", recheck=True)
    await users.set_active(db, "bob", True, actor="test")
    await users.set_password(db, "bob", "new", actor="test")
    with pytest.raises(Unauthorized, match="password"):
        await auth.password("bob", "pw", address="a", recheck=True)
    await users.remove(db, "bob", actor="test")
    with pytest.raises(Unauthorized, match="no longer exists"):
        await auth.password("bob", "new", address="a", recheck=True)


async def test_token_identifies_its_user(db, admin, auth):
    token, expires = await auth.issue_token(await users.get(db, "admin"), address="10.0.0.1", agent="curl/8")
    assert (await auth.token(token))["name"] == "admin"
    assert expires > datetime.now(timezone.utc) + timedelta(hours=1)
    stored = await db.token.find_one({})
    assert stored["address"] == "10.0.0.1" and stored["agent"] == "curl/8"
    assert token[-43:] not in str(stored), "only the secret's hash is stored"


async def test_tampered_or_foreign_token_is_refused(db, admin, auth):
    user = await users.get(db, "admin")
    token, _ = await auth.issue_token(user)
    with pytest.raises(Unauthorized, match="invalid token"):
        await auth.token(token[:-1] + ("A" if token[-1] != "A" else "B"))  # another secret, same id
    with pytest.raises(Unauthorized, match="invalid token"):
        await auth.token("garbage")
    with pytest.raises(Unauthorized, match="invalid token"):
        await auth.token(f"jd_{ObjectId()}_{token[-43:]}")  # the secret under an id it is not
    assert (await auth.token(token))["name"] == "admin"  # the real one still is


@pytest.mark.parametrize("token", ["é", "é.é", "eyJ1Ijoi.ü", "abc.déf", "\ud800.x", "jd_" + "0" * 24 + "_" + "é" * 43])
async def test_non_ascii_token_is_an_invalid_token(db, admin, auth, token):
    with pytest.raises(Unauthorized, match="invalid token"):
        await auth.token(token)


async def test_expired_token_is_refused(db, admin):
    auth = Authenticator(db, token_seconds=-1)
    token, _ = await auth.issue_token(await users.get(db, "admin"))
    with pytest.raises(Unauthorized, match="expired"):
        await auth.token(token)


async def test_password_change_revokes_tokens(db, admin, auth):
    token, _ = await auth.issue_token(await users.get(db, "admin"))
    await users.set_password(db, "admin", "new", actor="test")
    with pytest.raises(Unauthorized, match="invalid token"):
        await auth.token(token)
    assert await db.token.count_documents({}) == 0


async def test_token_made_while_the_password_changed_is_refused(db, admin, auth):
    """A session started from the user as it was before a password change (a race) does not outlive it."""
    before = await users.get(db, "admin")
    await users.set_password(db, "admin", "new", actor="test")
    token, _ = await auth.issue_token(before)
    with pytest.raises(Unauthorized, match="password change"):
        await auth.token(token)


async def test_token_of_disabled_or_removed_user_is_refused(db, admin, auth):
    await users.add(db, "bob", "pw", actor="test")
    token, _ = await auth.issue_token(await users.get(db, "bob"))
    await users.set_active(db, "bob", False, actor="test")
    with pytest.raises(Unauthorized, match="invalid token"):
        await auth.token(token)
    await users.set_active(db, "bob", True, actor="test")
    with pytest.raises(Unauthorized, match="invalid token"):
        await auth.token(token)  # enabling again does not bring the ended session back
    token, _ = await auth.issue_token(await users.get(db, "bob"))
    await users.remove(db, "bob", actor="test")
    with pytest.raises(Unauthorized, match="invalid token"):
        await auth.token(token)


@pytest.mark.parametrize("damage", [{"$unset": {"hash": ""}}, {"$set": {"hash": "text"}}, {"$unset": {"user": ""}},
                                    {"$set": {"user": 7}}, {"$set": {"expires": "soon"}}, {"$unset": {"stamp": ""}}])
async def test_a_malformed_token_document_is_an_invalid_token_not_an_error(db, admin, auth, damage):
    token, _ = await auth.issue_token(await users.get(db, "admin"))
    await db.token.update_one({}, damage)
    with pytest.raises(Unauthorized):
        await auth.token(token)
