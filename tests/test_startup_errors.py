"""Start-up errors: the ``jobdeck`` console script says what keeps it from starting in one line.

Each case runs the real command as a subprocess with a clean environment and
checks what an operator sees: exit code 2, exactly one line on stderr (no
notice comes before it: each check runs before anything starts), the setting
to change named in it, no traceback and no password. ``--debug`` (or log
level DEBUG) adds the traceback.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.startup import redact_url
from tests.conftest import clean_env, free_port

JOBDECK = [sys.executable, "-m", "jobdeck"]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(JOBDECK + args, env=clean_env(**env), cwd=cwd, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def one_line(done: subprocess.CompletedProcess[str], *names: str) -> str:
    """The one line of stderr of a command that failed to start, checked; it names each of ``names``."""
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert done.stdout == ""
    return lines[0]


@pytest.fixture
def taken_port() -> int:
    """A port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# --- redact_url -------------------------------------------------------------------------


@pytest.mark.parametrize("url, shown", [
    ("mongodb://bob:s3cret@db.example:27017/jobdeck", "mongodb://bob:***@db.example:27017/jobdeck"),
    ("mongodb+srv://bob:s3cret@cluster0.example.net/?retryWrites=true&w=majority",
     "mongodb+srv://bob:***@cluster0.example.net/?retryWrites=true&w=majority"),
    ("mongodb://bob:s3cret@db1:27017,db2:27017,db3/?replicaSet=rs0&authSource=admin",
     "mongodb://bob:***@db1:27017,db2:27017,db3/?replicaSet=rs0&authSource=admin"),
    # Written unescaped, a password may hold "@", "/" or ":": all of it is hidden.
    ("mongodb://bob:p@ss/w:rd@db/", "mongodb://bob:***@db/"),
    ("mongodb://bob:p%40ss@db/?authMechanism=SCRAM-SHA-256", "mongodb://bob:***@db/?authMechanism=SCRAM-SHA-256"),
    ("mongodb://bob:@db/", "mongodb://bob:***@db/"),
    # Nothing to hide.
    ("mongodb://db1,db2/?replicaSet=rs0", "mongodb://db1,db2/?replicaSet=rs0"),
    ("mongodb://bob@db/?authMechanism=MONGODB-X509", "mongodb://bob@db/?authMechanism=MONGODB-X509"),
    ("mongodb://127.0.0.1:27017/?directConnection=true", "mongodb://127.0.0.1:27017/?directConnection=true"),
    ("", ""),
])
def test_redact_url_hides_the_password_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- a taken port, a bad host -------------------------------------------------------------


@pytest.mark.parametrize("command", ["up", "serve"])
def test_taken_port_is_one_line_naming_port_and_nothing_starts(command: str, taken_port: int,
                                                               tmp_path: Path) -> None:
    done = run([command], tmp_path, JOBDECK_PORT=str(taken_port), JOBDECK_DATA_DIR=str(tmp_path / "var"))
    line = one_line(done, f"port {taken_port} on 127.0.0.1 is already in use", "set port", "JOBDECK_PORT")
    assert "Errno" not in line
    # Checked before the embedded database starts: its data_dir was not even made.
    assert not (tmp_path / "var").exists()


def test_debug_flag_adds_the_traceback(taken_port: int, tmp_path: Path) -> None:
    done = run(["--debug", "up"], tmp_path, JOBDECK_PORT=str(taken_port), JOBDECK_DATA_DIR=str(tmp_path / "var"))
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert "OSError: [Errno 98] Address already in use" in done.stderr
    # The same one line still comes last.
    assert done.stderr.splitlines()[-1].startswith(f"Error: port {taken_port} on 127.0.0.1 is already in use")


def test_log_level_debug_adds_the_traceback(tmp_path: Path) -> None:
    done = run(["user", "list", "--config", str(tmp_path / "missing.toml")], tmp_path, JOBDECK_LOG_LEVEL="debug")
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"Error: configuration file {tmp_path / 'missing.toml'}")


def test_host_not_of_this_machine_is_one_line_naming_host(tmp_path: Path) -> None:
    # 192.0.2.0/24 is reserved for documentation (RFC 5737): no machine has it.
    done = run(["serve"], tmp_path, JOBDECK_HOST="192.0.2.1", JOBDECK_PORT=str(free_port()),
               JOBDECK_DATA_DIR=str(tmp_path / "var"))
    one_line(done, "cannot listen on host '192.0.2.1'", "set host", "JOBDECK_HOST")


@pytest.mark.parametrize("cert, reason", [("missing.pem", "No such file or directory"), ("garbage.pem", "PEM lib")])
def test_a_tls_certificate_that_cannot_be_loaded_is_one_line_naming_tls_cert(cert: str, reason: str,
                                                                             tmp_path: Path) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    done = run(["serve"], tmp_path, JOBDECK_TLS_CERT=str(tmp_path / cert), JOBDECK_TLS_KEY=str(tmp_path / "garbage.pem"),
               JOBDECK_PORT=str(free_port()), JOBDECK_DATA_DIR=str(tmp_path / "var"))
    one_line(done, f"cannot load the TLS certificate {tmp_path / cert}", reason, "set tls_cert", "JOBDECK_TLS_KEY")
    assert not (tmp_path / "var").exists()  # checked before the embedded database starts


# --- the configuration file ------------------------------------------------------------


@pytest.mark.parametrize("args, content, names", [
    (["up"], None, ["missing.toml does not exist", "set --config"]),
    (["serve"], "directory", ["is a directory", "set JOBDECK_CONFIG"]),
    (["worker"], "port = 5001\nhost = \n", ["is not valid TOML", "(at line 2, column 8)"]),
    (["enqueue", "jobs.example.Hello"], "prot = 5002\n", ["key 'prot': unknown setting", "did you mean port?"]),
    (["user", "list"], 'port = "high"\n', ["key 'port': expected an integer, got 'high'"]),
    (["db"], "worker_slots = 0\n", ["key 'worker_slots': must be greater than 0"]),
    (["jobs"], "mongo_url = \"postgres://bob:s3cret@db/\"\n", ["key 'mongo_url'", "got 'postgres://bob:***@db/'"]),
])
def test_bad_config_file_is_one_line_naming_file_and_key(args: list[str], content: str | None, names: list[str],
                                                          tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    env = {"JOBDECK_DATA_DIR": str(tmp_path / "var")}
    if content == "directory":
        path = tmp_path / "conf.d"
        path.mkdir()
        env["JOBDECK_CONFIG"] = str(path)
    else:
        if content is not None:
            path = tmp_path / "jobdeck.toml"
            path.write_text(content)
        args = [*args, "--config", str(path)]
    line = one_line(run(args, tmp_path, **env), str(path.resolve() if path.exists() else path), *names)
    assert "s3cret" not in line


# --- the database -----------------------------------------------------------------------


def test_database_not_answering_is_one_line_naming_mongo_url_without_password(tmp_path: Path) -> None:
    url = f"mongodb://bob:s3cret@127.0.0.1:{free_port()}/?authSource=admin"  # nothing listens there
    env = clean_env(JOBDECK_MONGO_URL=url, JOBDECK_PORT=str(free_port()), JOBDECK_DATA_DIR=str(tmp_path / "var"))
    # Each waits for the driver's server selection timeout (5 s): run side by side.
    runs = [subprocess.Popen(JOBDECK + args, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in (["up"], ["user", "list"])]
    for process in runs:
        stdout, stderr = process.communicate(timeout=60)
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        one_line(done, "cannot reach the database at mongodb://bob:***@127.0.0.1:", "within 5 s",
                        "set mongo_url", "JOBDECK_MONGO_URL")
        assert "s3cret" not in stderr


def test_malformed_database_url_is_one_line_naming_mongo_url_without_password(tmp_path: Path) -> None:
    done = run(["queue"], tmp_path, JOBDECK_MONGO_URL="mongodb://bob:s3@cret@127.0.0.1/")
    one_line(done, "the database URL mongodb://bob:***@127.0.0.1/ is not valid", "set mongo_url")
    assert "cret" not in done.stderr


# --- the data directory ------------------------------------------------------------------


@pytest.mark.parametrize("args", [["up"], ["user", "list"]])
def test_unwritable_data_dir_is_one_line_naming_data_dir(args: list[str], tmp_path: Path) -> None:
    # Tests run as root, whom permissions do not stop: a path under a regular file cannot be made by anyone.
    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / "a-file" / "var"
    done = run(args, tmp_path, JOBDECK_DATA_DIR=str(data_dir), JOBDECK_PORT=str(free_port()))
    one_line(done, f"data_dir {data_dir} cannot be written: Not a directory", "set data_dir", "JOBDECK_DATA_DIR")
