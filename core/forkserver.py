"""The fork server: one launcher process per worker that forks a job's process in a few milliseconds.

Starting ``python -m core.runner`` for each job costs an interpreter start and
the imports of the job's package (~50 ms and more). Instead the worker starts
one launcher (``python -m core.forkserver MODULE...``) that imports
``core.runner`` and the worker's job modules once, then forks a child per job::

    launcher = ForkServer(modules)
    await launcher.start()
    pid = await launcher.launch(stdin_r, channel_w, output_w)   # the child's end of its three pipes
    ...                                                         # supervise pid (core.process)
    returncode = await launcher.release(pid)                    # after the group is killed

Each child calls ``setsid()``, so it leads a session and process group of its
own (pid = process group id), takes the three descriptors as fds 0, 1 and 2,
closes every other one, and runs the job exactly as the spawn path does
(``core.runner.main``): so kill, wall_time, output capture and dying with the
worker (end of file on stdin, whose write end only the worker holds) are the
same for both paths.

The launcher never reaps a child before the worker says so (``release``): it
learns of an exit with ``waitid(WNOWAIT)`` and reports the status, but the
child stays a zombie, so its pid -- the group's id -- cannot be reused while
the worker still kills the group by it.

Protocol: a ``SOCK_SEQPACKET`` socket pair, one JSON object a packet.

- worker -> launcher: ``{"t": "launch", "id": n}`` with the three descriptors
  attached (``SCM_RIGHTS``); ``{"t": "reap", "pid": p}`` (reap now, or as soon
  as it exits).
- launcher -> worker: ``{"t": "ready"}``; ``{"t": "launched", "id": n, "pid": p}``
  or ``{"t": "launched", "id": n, "error": "..."}``;
  ``{"t": "exited", "pid": p, "status": code}`` (negative: the signal).

The launcher blocks SIGINT and SIGTERM: it ends when the worker closes its
socket (or dies). If the launcher dies, the worker says so in its log and
starts a new one at the next launch; a launch cut short by its death is tried
once more with the new one, and fails with ``OSError`` (the job then ends with
a clear error) if that fails too. Jobs already running are not affected: the
worker watches them through pidfds, and only their exit status is unknown.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import traceback
from typing import Any

__all__ = ["ForkServer", "is_available"]

log = logging.getLogger(__name__)

_PACKET = 64 * 1024
_READY_SECONDS = 120.0   # for the launcher's imports (a job package may be heavy)
_STATUS_SECONDS = 5.0    # for the exit status, once the pidfd said the child exited
_HELD = {signal.SIGINT, signal.SIGTERM}


def is_available() -> bool:
    """Whether this platform can run the fork server (fork, pidfds and descriptor passing)."""
    return (hasattr(os, "fork") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")
            and hasattr(os, "waitid") and hasattr(socket, "SOCK_SEQPACKET"))


class LauncherDied(OSError):
    """Raised when the launcher process ended before it answered."""


class ForkServer:
    """The worker's side of the fork server: starts the launcher, asks it for children; ``start()``/``stop()``."""

    def __init__(self, modules: list[str]) -> None:
        self.modules = sorted(set(modules))
        self.python = sys.executable
        self.process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        self._launches: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._stopping = False
        self.starts = 0  # how many launchers were started (1 + restarts)

    @property
    def pid(self) -> int | None:
        """The launcher's pid while it runs."""
        return self.process.pid if self.process is not None and self._sock is not None else None

    async def start(self) -> None:
        """Start the launcher and wait until it has imported the job modules.

        Raises ``OSError`` if it cannot be started or dies before it is ready.
        """
        async with self._lock:
            await self._start()

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.process is not None:
            self.process.poll()  # reap a launcher that died
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [self.python, "-m", "core.forkserver", str(theirs.fileno()), *self.modules],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._ready = self._loop.create_future()
        self._loop.add_reader(ours.fileno(), self._on_readable)
        self.starts += 1
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), _READY_SECONDS)
        except asyncio.TimeoutError:
            self._died(f"not ready after {_READY_SECONDS:g} s")
            raise LauncherDied("the job launcher did not get ready") from None
        log.info("job launcher %d ready (%d job modules imported)", self.process.pid, len(self.modules))

    async def stop(self) -> None:
        """Close the launcher's socket (it then exits) and reap it."""
        self._stopping = True
        if self._sock is not None:
            self._died(None)
        process = self.process
        if process is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(process.wait), 5.0)
            if process.poll() is None:
                process.kill()
                await asyncio.to_thread(process.wait)

    async def launch(self, stdin: int, channel: int, output: int) -> int:
        """Fork a child that runs a job with these descriptors as fds 0, 1 and 2; return its pid.

        The descriptors are the child's ends of its pipes; the caller still
        owns (and closes) its copies. Raises ``OSError`` when no child could be
        started, also after starting a new launcher once.
        """
        for attempt in (1, 2):
            async with self._lock:
                if self._sock is None:
                    if self._stopping:
                        raise OSError("the worker is stopping; no job is started")
                    if self.starts:
                        log.warning("starting a new job launcher")
                    await self._start()
                sock = self._sock
                assert sock is not None and self._loop is not None
                request = next(self._ids)
                reply = self._loop.create_future()
                self._launches[request] = reply
                try:
                    await self._send(sock, {"t": "launch", "id": request}, [stdin, channel, output])
                except OSError:
                    self._launches.pop(request, None)
                    self._died("its socket failed")
                    if attempt == 2:
                        raise
                    continue
            try:
                return await reply
            except LauncherDied:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def release(self, pid: int) -> int | None:
        """The exit status of child ``pid`` (which has exited, or is being killed); let the launcher reap it.

        None when the launcher did not say within a few seconds (it died, or
        a new launcher does not know the child).
        """
        waiter = self._exit_waiter(pid)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), _STATUS_SECONDS)
        except asyncio.TimeoutError:
            return None
        finally:
            self._exits.pop(pid, None)
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    await self._send(self._sock, {"t": "reap", "pid": pid})

    def forget(self, pid: int) -> None:
        """Let the launcher reap child ``pid`` whenever it exits (nobody waits for its status)."""
        self._exits.pop(pid, None)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(json.dumps({"t": "reap", "pid": pid}).encode())

    def _exit_waiter(self, pid: int) -> asyncio.Future[int | None]:
        assert self._loop is not None
        waiter = self._exits.get(pid)
        if waiter is None:
            waiter = self._exits[pid] = self._loop.create_future()
            if self._sock is None:
                waiter.set_result(None)
        return waiter

    async def _send(self, sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
        assert self._loop is not None
        data = json.dumps(message).encode()
        while True:
            try:
                if fds:
                    socket.send_fds(sock, [data], fds)
                else:
                    sock.send(data)
                return
            except BlockingIOError:
                ready = self._loop.create_future()
                self._loop.add_writer(sock.fileno(), _resolve, ready)
                try:
                    await ready
                finally:
                    self._loop.remove_writer(sock.fileno())

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                packet = sock.recv(_PACKET)
            except BlockingIOError:
                return
            except OSError as exc:
                self._died(str(exc))
                return
            if not packet:
                self._died(None if self._stopping else "it exited")
                return
            try:
                self._dispatch(json.loads(packet))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable message from the job launcher (%r): %s", packet[:200], exc)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif kind == "launched":
            reply = self._launches.pop(message["id"], None)
            if reply is None or reply.done():
                if "pid" in message:  # nobody waits: do not leave it unreaped
                    self.forget(message["pid"])
            elif "pid" in message:
                reply.set_result(int(message["pid"]))
            else:
                reply.set_exception(OSError(f"the job launcher could not fork: {message.get('error')}"))
        elif kind == "exited":
            waiter = self._exit_waiter(int(message["pid"]))
            if not waiter.done():
                waiter.set_result(int(message["status"]))

    def _died(self, why: str | None) -> None:
        """The launcher is gone (or being stopped): fail what waits on it."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(sock.fileno())
        sock.close()
        if why is not None:
            code = self.process.poll() if self.process is not None else None
            log.warning("the job launcher (pid %s) died (%s%s); a new one starts with the next job",
                        self.process.pid if self.process else "?", why,
                        f", exit code {code}" if code is not None else "")
        error = LauncherDied(f"the job launcher died ({why or 'stopped'})")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: start() raises its own
        for reply in self._launches.values():
            if not reply.done():
                reply.set_exception(error)
        self._launches.clear()
        for waiter in self._exits.values():
            if not waiter.done():
                waiter.set_result(None)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# -- the launcher process ------------------------------------------------------


class _Launcher:
    """The launcher's loop: fork on request, report exits, reap when told. Single-threaded, no asyncio."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.running: set[int] = set()   # children that have not exited
        self.exited: set[int] = set()    # exited, reported, not reaped yet
        self.reap_on_exit: set[int] = set()

    def serve(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self._send({"t": "ready"})
        while True:
            readable, _, _ = select.select([self.sock, wake_r], [], [])
            if wake_r in readable:
                os.read(wake_r, 4096)
                self._check_children()
            if self.sock in readable and not self._receive():
                break
        for pid in self.exited | self.running:  # the worker is gone: reap what we can
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def _receive(self) -> bool:
        """Handle one request; False when the worker closed the socket."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, _PACKET, 3)
        except ConnectionResetError:
            return False
        if not data:
            return False
        try:
            message = json.loads(data)
            if message["t"] == "launch":
                self._launch(message["id"], fds)
                fds = []
            elif message["t"] == "reap":
                self._reap(int(message["pid"]))
        except Exception:  # noqa: BLE001 - a bad request must not end the launcher
            traceback.print_exc()
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _launch(self, request: int, fds: list[int]) -> None:
        try:
            if len(fds) != 3:
                raise OSError(f"expected 3 descriptors, got {len(fds)}")
            session_r, session_w = os.pipe()
            try:
                pid = os.fork()
            except OSError:
                os.close(session_r)
                os.close(session_w)
                raise
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self._send({"t": "launched", "id": request, "error": str(exc)})
            return
        if pid == 0:
            os.close(session_r)
            _child(fds, session_w)  # never returns
        for fd in (*fds, session_w):
            os.close(fd)
        # The pid is the process group's id only once the child has its session:
        # a kill sent to the group before that would find no group.
        os.read(session_r, 1)
        os.close(session_r)
        self.running.add(pid)
        self._send({"t": "launched", "id": request, "pid": pid})
        self._check_children()  # it may have exited already (its SIGCHLD came before we knew it)

    def _check_children(self) -> None:
        for pid in list(self.running):
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info, status = None, None
                self.running.discard(pid)
                continue
            if info is None:
                continue
            self.running.discard(pid)
            status = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            self._send({"t": "exited", "pid": pid, "status": status})
            if pid in self.reap_on_exit:
                self._reap(pid)
            else:
                self.exited.add(pid)

    def _reap(self, pid: int) -> None:
        if pid in self.running:
            self.reap_on_exit.add(pid)
            return
        self.exited.discard(pid)
        self.reap_on_exit.discard(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def _send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the worker is gone: the loop ends at the socket's end
            self.sock.send(json.dumps(message).encode())


def _child(fds: list[int], session_w: int) -> None:
    """In the forked child: become a session leader with the job's pipes as fds 0-2, run the job, exit.

    Closing ``session_w`` tells the launcher the session exists.
    """
    code = 1
    try:
        os.setsid()
        os.close(session_w)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # Held back since the launcher started: a kill sent before the job is set up still counts.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
        from core import runner
        runner.main()
        logging.shutdown()
        code = 0
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the launcher
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


def main(argv: list[str]) -> None:
    """``python -m core.forkserver FD MODULE...``: import the modules, then serve the worker on socket FD."""
    # The worker decides when we end (it closes the socket): a Ctrl-C or a
    # service manager's SIGTERM to the whole group waits, blocked, unseen.
    # Blocked, not ignored: a child inherits the mask and unblocks, so a
    # SIGTERM sent to it before it was set up is not lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    import core.runner  # noqa: F401 - what every child needs, imported once here
    import importlib
    for name in argv[1:]:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the job's own import then fails with a clear error
            print(f"job launcher: cannot import {name}:", file=sys.stderr)
            traceback.print_exc()
    _Launcher(sock).serve()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
