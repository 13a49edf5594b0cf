"""The user API: ``/user`` and ``/user/<name>``, for admins only, audited with the admin's name."""
from __future__ import annotations

import httpx
import pytest

from core import users

NEW_USER = {"name": "alice", "password": "alice-pw", "perms": ["job:jobs.example.*:r"]}


def error(reply: httpx.Response) -> str:
    return reply.json()["error"]


async def test_an_admin_adds_lists_reads_changes_and_removes_a_user(db, team_clients):
    http = team_clients["admin"]
    added = await http.post("/user", json=NEW_USER)
    assert added.status_code == 200, added.text
    made = added.json()["data"]
    assert (made["name"], made["roles"], made["perms"], made["active"]) == (
        "alice", [], ["job:jobs.example.*:r"], True)
    listed = (await http.get("/user")).json()["data"]
    assert [u["name"] for u in listed] == ["admin", "alice", "executor", "reader", "stranger"]
    assert (await http.get("/user/alice")).json()["data"]["perms"] == ["job:jobs.example.*:r"]

    changed = await http.put("/user/alice", json={"grant": ["job:reports.*:x"], "revoke": ["job:jobs.example.*:r"],
                                                  "admin": True, "active": False, "password": "new-pw"})
    assert changed.status_code == 200, changed.text
    data = changed.json()["data"]
    assert (data["roles"], data["perms"], data["active"]) == (["admin"], ["job:reports.*:x"], False)
    assert await users.verify_password(db, await users.get(db, "alice"), "new-pw")
    again = (await http.put("/user/alice", json={"admin": False, "active": True})).json()["data"]
    assert (again["roles"], again["active"]) == ([], True)

    removed = await http.delete("/user/alice")
    assert removed.status_code == 200 and removed.json()["data"] is None
    assert (await http.get("/user/alice")).status_code == 404
    assert (await http.delete("/user/alice")).status_code == 404

    entries = await db.audit.find({"target": "alice"}).sort("at", 1).to_list()
    assert [e["action"] for e in entries] == ["user.add", "user.access", "user.disable", "user.passwd",
                                              "user.access", "user.enable", "user.remove"]
    assert {e["actor"] for e in entries} == {"admin"}


async def test_no_reply_ever_holds_a_password(team_clients):
    http = team_clients["admin"]
    replies = [await http.post("/user", json=NEW_USER), await http.get("/user"), await http.get("/user/alice"),
               await http.put("/user/alice", json={"password": "other-pw"}), await http.delete("/user/alice")]
    for reply in replies:
        assert reply.status_code == 200, reply.text
        assert "password" not in reply.text and "alice-pw" not in reply.text and "$argon2" not in reply.text


@pytest.mark.parametrize("name", ["executor", "reader", "stranger"])
async def test_everyone_but_admins_gets_403_and_changes_nothing(db, team_clients, name):
    http = team_clients[name]
    requests = [("GET", "/user", None), ("POST", "/user", NEW_USER), ("GET", "/user/admin", None),
                ("GET", "/user/nobody", None), ("PUT", "/user/admin", {"active": False}),
                ("PUT", f"/user/{name}", {"grant": ["job:*:x"]}), ("PUT", f"/user/{name}", {"password": "mine"}),
                ("DELETE", "/user/admin", None), ("DELETE", f"/user/{name}", None)]
    for method, path, body in requests:
        reply = await http.request(method, path, json=body)
        assert reply.status_code == 403, (method, path, reply.text)
        assert error(reply) == f"user {name!r} is not an admin"
    assert await db.user.count_documents({}) == 4
    assert not await db.audit.count_documents({"action": {"$regex": "^user"}, "actor": {"$ne": "test"}})


async def test_a_user_reads_its_own_record(team_clients):
    reply = await team_clients["reader"].get("/user/reader")
    assert reply.status_code == 200
    assert reply.json()["data"]["perms"] == ["job:jobs.example.*:r"]


async def test_anonymous_callers_get_401(team_clients):
    http = team_clients[None]
    for method, path in (("GET", "/user"), ("POST", "/user"), ("GET", "/user/admin"), ("PUT", "/user/admin"),
                         ("DELETE", "/user/admin")):
        reply = await http.request(method, path, json=NEW_USER)
        assert reply.status_code == 401, (method, path, reply.text)


@pytest.mark.parametrize("body, message", [
    ({"name": "bad name", "password": "pw"}, "bad user name 'bad name'"),
    ({"name": "alice", "password": ""}, "the password must not be empty"),
    ({"name": "alice", "password": "pw", "perms": ["job:*"]}, "bad permission 'job:*'"),
    ({"name": "alice", "password": "pw", "perms": "job:*:r"}, "argument 'perms': expected"),
    ({"name": "alice"}, "argument 'password' is required"),
])
async def test_bad_new_users_are_400_with_the_reason(db, team_clients, body, message):
    reply = await team_clients["admin"].post("/user", json=body)
    assert reply.status_code == 400 and error(reply).startswith(message), reply.text
    assert await db.user.count_documents({}) == 4


@pytest.mark.parametrize("body, message", [
    ({}, "nothing to change"),
    ({"grant": ["job:*:w"], "active": False}, "bad permission 'job:*:w'"),
    ({"revoke": [1]}, "bad permission 1"),
    ({"password": "", "admin": True}, "the password must not be empty"),
    ({"active": "perhaps"}, "argument 'active': expected"),
])
async def test_bad_changes_are_400_and_change_nothing(db, team_clients, body, message):
    before = await db.user.find_one({"name": "reader"})
    reply = await team_clients["admin"].put("/user/reader", json=body)
    assert reply.status_code == 400 and error(reply).startswith(message), reply.text
    assert await db.user.find_one({"name": "reader"}) == before


async def test_a_taken_name_is_409(team_clients):
    reply = await team_clients["admin"].post("/user", json={"name": "reader", "password": "pw"})
    assert reply.status_code == 409 and error(reply) == "user 'reader' exists already"


async def test_the_last_admin_cannot_be_removed_demoted_or_disabled(db, team_clients):
    http = team_clients["admin"]
    for method, body, action in (("DELETE", None, "remove"), ("PUT", {"admin": False}, "drop the admin role of"),
                                 ("PUT", {"active": False}, "disable"),
                                 ("PUT", {"grant": ["job:*:r"], "active": False}, "disable")):
        reply = await http.request(method, "/user/admin", json=body)
        assert reply.status_code == 409, reply.text
        assert error(reply).startswith(f"cannot {action} 'admin': it is the last active admin")
    admin = await db.user.find_one({"name": "admin"})
    assert (admin["roles"], admin["perms"], admin["active"]) == (["admin"], [], True)
    # With a second admin, the first may go.
    assert (await http.put("/user/reader", json={"admin": True})).status_code == 200
    assert (await http.put("/user/admin", json={"admin": False})).status_code == 200


async def test_a_disabled_users_token_stops_working_for_good(team_clients):
    reader = team_clients["reader"]
    assert (await reader.get("/whoami")).status_code == 200
    assert (await team_clients["admin"].put("/user/reader", json={"active": False})).status_code == 200
    refused = await reader.get("/whoami")
    assert refused.status_code == 401 and "disabled" in error(refused)
    assert (await team_clients["admin"].put("/user/reader", json={"active": True})).status_code == 200
    assert (await reader.get("/whoami")).status_code == 401  # enabled again, it logs in anew
    assert (await reader.get("/whoami", auth=("reader", "read-pw"))).status_code == 200


async def test_a_new_password_ends_the_users_tokens_and_logs_in(server, team_clients):
    reader = team_clients["reader"]
    assert (await team_clients["admin"].put("/user/reader", json={"password": "fresh-pw"})).status_code == 200
    assert (await reader.get("/whoami")).status_code == 401
    async with httpx.AsyncClient(base_url=server.url, auth=("reader", "fresh-pw")) as http:
        assert (await http.get("/user/reader")).json()["data"]["name"] == "reader"


async def test_a_new_user_may_do_what_it_was_granted(server, job_classes, team_clients):
    added = await team_clients["admin"].post("/user", json={**NEW_USER, "perms": ["job:jobs.example.*:x"]})
    assert added.status_code == 200
    async with httpx.AsyncClient(base_url=server.url, auth=("alice", "alice-pw")) as http:
        reply = await http.post("/job", json={"qual_name": "jobs.example.DummyJob", "follow": False})
        assert reply.status_code == 200, reply.text
        assert (await http.get("/user")).status_code == 403
