"""``jobdeck token create|list|revoke``: the real command, its token used over HTTP by a running server."""
from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx

from tests.conftest import clean_env


async def jobdeck(cli_env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobdeck", *args, env=clean_env(**cli_env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_a_token_made_on_the_command_line_works_until_revoked_there(server, team, cli_env, db, job_classes):
    code, out, err = await jobdeck(cli_env, "token", "create", "report", "--user", "reader", "--read-only",
                                   "--expires-in-days", "7")
    assert code == 0, err
    token = out.strip()
    assert token.startswith("jd_") and "shown only now" in err and "(read-only)" in err
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as script:
        assert (await script.get("/whoami")).json()["data"]["name"] == "reader"
        assert (await script.post("/job/enqueue", json={"qual_name": "jobs.example.DummyJob"})).status_code == 403

        code, out, err = await jobdeck(cli_env, "token", "list", "--json")
        assert code == 0, err
        [listed] = json.loads(out)
        assert listed["name"] == "report" and listed["user"] == "reader" and listed["read_only"] is True
        assert token[-43:] not in out
        code, out, _ = await jobdeck(cli_env, "token", "list", "--user", "reader")
        assert "report" in out and listed["_id"] in out

        code, out, err = await jobdeck(cli_env, "token", "revoke", listed["_id"])
        assert code == 0, err
        assert f"revoked token 'report' {listed['_id']} of reader" in out
        reply = await script.get("/whoami")
        deadline = asyncio.get_running_loop().time() + 1
        while reply.status_code != 401 and asyncio.get_running_loop().time() < deadline:
            reply = await script.get("/whoami")
        assert reply.status_code == 401
    entries: list[dict[str, Any]] = await db.audit.find({"action": {"$in": ["token.create", "token.revoke"]}}).to_list()
    assert [(e["action"], e["target"], e["actor"].startswith("cli")) for e in entries] == [
        ("token.create", "reader", True), ("token.revoke", "reader", True)]


async def test_bad_token_commands_say_what_is_wrong(server, team, cli_env, db):
    await db.user.update_one({"name": "stranger"}, {"$set": {"active": False}})
    for args, message in ((("token", "create", "x", "--user", "stranger"), "user 'stranger' is disabled"),
                          (("token", "create", "x", "--user", "nobody"), "no user 'nobody'"),
                          (("token", "create", "x", "--user", "reader", "--expires-in-days", "0"),
                           "0 is not in the range 1<=x<=3650"),
                          (("token", "revoke", "0123456789abcdef01234567"), "no token '0123456789abcdef01234567'"),
                          (("token", "list", "--user", "no body"), "bad user name 'no body'")):
        code, out, err = await jobdeck(cli_env, *args)
        assert code != 0 and message in err, (args, code, out, err)
        assert "Traceback" not in err
