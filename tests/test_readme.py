"""Every code example in README.rst runs, against one live ``jobdeck up`` (issue #8).

The test reads README.rst itself, so what runs here cannot drift from what the
README shows. Each literal block (the indented text after ``::``) is one of:

* **A shell session** (``$ `` lines). Each command runs with bash in a
  terminal (a pty, as a reader would see it: ``--follow`` draws its progress
  bar, curl shows no progress meter), in a temporary directory, with
  ``jobdeck`` pointed at the live server's data directory. It must exit 0
  (non-zero when the README shows an ``Error:``), and its output must have the
  shape shown: every line shown appears, in order (lines not shown may come
  between); ids, times and figures may differ; ``...`` stands for anything; a
  JSON reply has the keys and values shown, and no others unless ``...`` says
  more follow; Server-Sent Events compare event by event. An id or an
  ``eyJ1Ijoi...`` token shown by one command and used by a later one of the
  same section is replaced by the real one. A command shown without output
  must not answer an error.
* **Python client code** (requests, httpx, httpx-sse). The blocks of a section
  run in one namespace, in a subprocess; ``print(x)  # value`` must print the
  value (or the variable named).
* **A job class.** Its option attributes and ``self.`` names must exist on
  ``core.job.Job``; the README's ``Report`` also runs through the live worker,
  from a temporary job package.
* **Command lines of jobdeck** without ``$``: run, with ``ID`` filled in
  (``ID_POLICY``) and optional ``[...]`` parts given.
* **TOML**: parsed, and loaded through ``core.config.load``.
* A few blocks checked in their own way (``SPECIAL``), and the blocks that
  cannot run (``NOT_RUNNABLE``), each named by a unique substring.

A block that is none of these fails ``test_every_readme_example_is_exercised_or_listed``:
a new example needs a test, or a reason in ``NOT_RUNNABLE``.
"""
from __future__ import annotations

import ast
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from core import config as configuration
from core.job import Job
from tests.conftest import clean_env, free_port, wait_until
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_embedded import processes_using

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.rst"
VENV_BIN = Path(sys.executable).parent
#: The README's address and credentials; the address gets the live port.
README_ADDRESS = "127.0.0.1:5001"
AUTH = ("admin", "hans")
JOB_PACKAGE = "readme_jobs"

#: Blocks that cannot run here, by a unique substring, with the reason.
NOT_RUNNABLE = {
    "pending ──claim──▶ running": "a diagram of the job states",
    "$ .venv/bin/python bench/engine.py": "benchmark output: the scripts take minutes, and the figures are "
                                          "those of one machine on one day",
    "$ .venv/bin/python bench/scale.py --sizes": "benchmark output: populating 100,000 jobs takes minutes, and "
                                                 "the figures are those of one machine on one day",
    "apt-get install redis-server": "installs system and Python packages (redis-server, the bench extra)",
    "batch2:777:1a2b": "needs live workers on several hosts with different job packages; tests/test_registry.py "
                       "runs two real workers with different packages",
    '"locked": {"worker"} or null': "the fields of an event's job summary, not code; tests/test_api_events.py "
                                    "checks them",
    "no embedded database runs for data_dir /home/ops/var": "a message whose second sentence depends on which other "
                                                           "embedded databases run on the machine; "
                                                           "tests/test_embedded.py checks it",
    "port 5001 on 127.0.0.1 is already in use": "needs another program on the port jobdeck up would take; "
                                                "tests/test_startup_errors.py holds one and checks the message",
}

#: Output lines (and events, by their data line) the README shows that a run may leave out, and why.
MAY_BE_MISSING = {
    re.compile(r"--- [0-9a-f]{24} pending"): "the worker may claim the job before --follow reads it",
    re.compile(r'data: \{.*"state": "pending".*'): "the worker may claim the job before the stream reads it",
}

#: Which job a ``jobdeck <command> ID`` line of the README gets: ``earlier`` is
#: the last job an earlier example of the section showed, ``live`` a new
#: waiting or running job, ``killed`` the job the ``kill`` line killed.
ID_POLICY = {"show": "earlier", "log": "earlier", "kill": "live", "remove": "live", "restart": "killed"}

#: Job classes of the README that run through the live worker, by a substring
#: of their block: the module they become and the arguments they get.
RUN_JOBS = {"class Report(Job):": ("report", "Report", {"month": "2026-11"})}

#: Passwords for the commands that prompt for one (twice: the confirmation).
PROMPT_INPUT = "readme-pw-1\nreadme-pw-1\n"
COMMAND_TIMEOUT = 60

ID = re.compile(r"[0-9a-f]{24}")
WORKER_ID = re.compile(r"[\w.-]+:\d+:[0-9a-f]+")  # host:pid:suffix
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
MORE = "\u2026"  # what an elided "..." member of a README JSON object becomes


# --- the README's literal blocks ----------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """One literal block: its section, README line, dedented text and introducing paragraph."""

    section: str
    line: int
    text: str
    intro: str

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0].strip()

    def __str__(self) -> str:
        return f"README.rst line {self.line}: {self.first_line}"


def literal_blocks(text: str) -> list[Block]:
    """The literal blocks of an reStructuredText document, in order, with their (sub)section titles."""
    lines = text.splitlines()
    blocks: list[Block] = []
    section, paragraph = "", []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line[:1].strip() and i + 1 < len(lines) and re.fullmatch(r"=+|-+", lines[i + 1]) \
                and not re.fullmatch(r"=+|-+", line):
            section = line.strip()
        paragraph = paragraph + [line.strip()] if line.strip() else []
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".. "):
            indent = len(line) - len(line.lstrip())
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            start, body = j, []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                body.append(lines[j])
                j += 1
            while body and not body[-1].strip():
                body.pop()
            if body:
                width = min(len(b) - len(b.lstrip()) for b in body if b.strip())
                blocks.append(Block(section, start + 1, "\n".join(b[width:] for b in body), " ".join(paragraph)))
            paragraph, i = [], j
            continue
        i += 1
    return blocks


BLOCKS = literal_blocks(README.read_text(encoding="utf-8"))


def _is_toml(block: Block) -> bool:
    try:
        parsed = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError:
        # Meant as TOML but broken: still TOML, so that loading it says what is wrong.
        return bool(re.search(r"\btoml\b", block.intro, re.I)) and bool(re.search(r"^\w+\s*=", block.text, re.M))
    return bool(parsed)


def _is_command_list(block: Block) -> bool:
    lines = [_strip_comment(line).strip() for line in block.text.splitlines()]
    return all(re.match(r"(echo .*\| *)?jobdeck\s", line) for line in lines if line)


def classify(block: Block) -> str:
    """How a block is exercised: ``not runnable``, ``special`` or the kind of code it is."""
    if any(key in block.text for key in NOT_RUNNABLE):
        return "not runnable"
    if any(key in block.text for key in SPECIAL):
        return "special"
    if any(line.startswith("$ ") for line in block.text.splitlines()):
        return "shell"
    if re.search(r"^from jobs import Job$", block.text, re.M) and re.search(r"^class \w+\(Job\):", block.text, re.M):
        return "job class"
    if re.search(r"^import (requests|httpx)\b", block.text, re.M):
        return "python"
    if _is_command_list(block):
        return "commands"
    if _is_toml(block):
        return "toml"
    return "unknown"


def _strip_comment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line)


# --- README JSON (with "...") and what it must match --------------------------------------

_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\.\.\.|[{}\[\]:,]|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null|\S')


def readme_json(text: str) -> Any:
    """Parse JSON as the README writes it: ``...`` for elided members or values, commas optional around it."""
    out: list[str] = []
    stack: list[str] = []
    for token in _JSON_TOKEN.findall(text):
        if token == "...":
            if out and out[-1] == ":":
                token = '"..."'
            elif stack and stack[-1] == "[":
                token = json.dumps(MORE)
            else:
                token = json.dumps(MORE) + ": null"
        elif token in ("{", "["):
            stack.append(token)
        elif token in ("}", "]"):
            stack.pop()
            if out and out[-1] == ",":
                out.pop()
        elif token == "," and (not out or out[-1] in (",", "{", "[")):
            continue
        if out and out[-1] not in (",", ":", "{", "[") and token not in (",", ":", "}", "]"):
            out.append(",")
        out.append(token)
    return json.loads(" ".join(out))


def match_json(expected: Any, actual: Any, bindings: dict[str, str], where: str = "reply") -> None:
    """Check ``actual`` against a README value; raise AssertionError saying where it differs.

    Ids bind to the real ids (the same README id must stay the same real one),
    times and numbers may differ, ``"..."`` and ``"<...>"`` are anything,
    ``"abc..."`` is a prefix (bound for later commands), and an object has
    exactly the keys shown unless it elides some.
    """
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if key != MORE:
                assert key in actual, f"{where}: no key {key!r}; it has {sorted(actual)}"
                match_json(value, actual[key], bindings, f"{where}.{key}")
        extra = set(actual) - set(expected)
        assert MORE in expected or not extra, f"{where}: keys the README does not show: {sorted(extra)}"
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        shown = [value for value in expected if value != MORE]
        assert len(actual) == len(shown) or (MORE in expected and len(actual) >= len(shown)), \
            f"{where}: expected {len(shown)} items, got {actual!r}"
        for index, value in enumerate(shown):
            match_json(value, actual[index], bindings, f"{where}[{index}]")
    elif isinstance(expected, str):
        if expected == "..." or re.fullmatch(r"<[^<>]+>", expected):
            return
        assert isinstance(actual, str), f"{where}: expected a string, got {actual!r}"
        if expected.endswith("..."):
            assert actual.startswith(expected[:-3]), f"{where}: {actual!r} does not start with {expected[:-3]!r}"
            bindings[expected] = actual
        elif ID.fullmatch(expected):
            _bind_id(expected, actual, bindings, where)
        elif WORKER_ID.fullmatch(expected):
            assert WORKER_ID.fullmatch(actual), f"{where}: {actual!r} is not a worker id like {expected!r}"
        elif TIME.fullmatch(expected):
            assert TIME.fullmatch(actual), f"{where}: {actual!r} is not a time like {expected!r}"
        else:
            assert actual == expected, f"{where}: {actual!r}, the README shows {expected!r}"
    elif isinstance(expected, bool) or expected is None:
        assert actual is expected, f"{where}: {actual!r}, the README shows {json.dumps(expected)}"
    else:
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), \
            f"{where}: expected a number, got {actual!r}"


def _bind_id(shown: str, actual: str, bindings: dict[str, str], where: str) -> None:
    assert isinstance(actual, str) and ID.fullmatch(actual), f"{where}: {actual!r} is not an id"
    assert bindings.setdefault(shown, actual) == actual, \
        f"{where}: {actual}, but the README's {shown} was {bindings[shown]} before"


# --- output lines and what they must match ------------------------------------------------

_LINE_TOKEN = re.compile(r"(\.\.\.)|\b([0-9a-f]{24})\b|(\[[#-]+\])|(?<!\S)([\w.-]+:\d+:[0-9a-f]+)(?!\S)"
                         r"|(\d+(?:\.\d+)?)|(\s+)")


def line_matches(expected: str, actual: str, bindings: dict[str, str]) -> bool:
    """Whether an output line has the shape of a README line; binds the ids it shows."""
    parts, ids = [], []
    pos = 0
    for match in _LINE_TOKEN.finditer(expected):
        parts.append(re.escape(expected[pos:match.start()]))
        ellipsis, shown_id, bar, worker, number, _space = match.groups()
        if ellipsis:
            parts.append(".*")
        elif shown_id and shown_id in bindings:
            parts.append(re.escape(bindings[shown_id]))
        elif shown_id in ids:
            parts.append(f"(?P=id{ids.index(shown_id)})")
        elif shown_id:
            parts.append(f"(?P<id{len(ids)}>[0-9a-f]{{24}})")
            ids.append(shown_id)
        elif bar:
            parts.append(r"\[[#-]+\]")
        elif worker:
            parts.append(WORKER_ID.pattern)
        elif number:
            parts.append(r"\d+(?:\.\d+)?")
        else:
            parts.append(r"\s+")
        pos = match.end()
    parts.append(re.escape(expected[pos:]))
    found = re.fullmatch("".join(parts), actual.strip())
    if found:
        bindings.update({shown: found.group(f"id{index}") for index, shown in enumerate(ids)})
    return bool(found)


@dataclass
class Expected:
    """One thing a command's README output shows: a ``line``, a ``json`` reply or table ``columns``."""

    kind: str
    text: str
    optional: bool = False


def expected_items(lines: list[str]) -> list[Expected]:
    """What README output lines ask for; blank and ``...`` lines ask for nothing (lines may come between)."""
    items: list[Expected] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line == "...":
            continue
        if line.startswith("{"):
            while _depth(line) > 0 and i < len(lines):
                line += " " + lines[i].strip()
                i += 1
            items.append(Expected("json", line))
        elif re.fullmatch(r"[A-Z_]+(\s{2,}[A-Z_]+)+", line):
            items.append(Expected("columns", line))
        else:
            items.append(Expected("line", line, any(p.fullmatch(line) for p in MAY_BE_MISSING)))
    return items


def _depth(text: str) -> int:
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    return bare.count("{") + bare.count("[") - bare.count("}") - bare.count("]")


def _item_matches(item: Expected, actual: str, bindings: dict[str, str]) -> str | None:
    """None if ``actual`` matches, else why not."""
    if item.kind == "columns":
        return None if actual.split() == item.text.split() else f"columns {actual.split()}"
    if item.kind == "line":
        return None if line_matches(item.text, actual, bindings) else "no match"
    if not actual.lstrip().startswith("{"):
        return "not JSON"
    try:
        match_json(readme_json(item.text), json.loads(actual), bindings)
    except (ValueError, AssertionError) as exc:
        return str(exc)
    return None


def match_output(expected: list[str], actual: list[str], bindings: dict[str, str], command: str) -> None:
    """Check a command's output against the README's, in order; raise AssertionError naming what is missing."""
    if any(line.startswith("event: ") for line in expected):
        return match_events(expected, actual, bindings, command)
    pos = 0
    for item in expected_items(expected):
        reasons = []
        for index in range(pos, len(actual)):
            trial = dict(bindings)  # a line that does not match binds nothing
            reason = _item_matches(item, actual[index], trial)
            if reason is None:
                bindings.update(trial)
                pos = index + 1
                break
            if reason not in ("no match", "not JSON"):
                reasons.append(f"  line {index + 1}: {reason}")
        else:
            if item.optional:
                continue
            raise AssertionError(f"$ {command}\nthe README shows\n    {item.text}\nwhich is not in the output "
                                 f"after line {pos}:\n" + "\n".join(actual) + "\n" + "\n".join(reasons[:5]))


def _events(lines: list[str], *, readme: bool) -> list[list[tuple[str, str]]]:
    """Server-Sent Events as lists of (field, value); README continuation lines join the field before."""
    events: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in lines + [""]:
        if not line.strip() or (readme and line.strip() == "..."):
            if current:
                events.append(current)
            current = []
        elif readme and line[0].isspace() and current:
            current[-1] = (current[-1][0], current[-1][1] + " " + line.strip())
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current.append((name, value.strip()))
    return events


def _event_matches(shown: list[tuple[str, str]], got: list[tuple[str, str]], bindings: dict[str, str]) -> str | None:
    if [name for name, _ in shown] != [name for name, _ in got]:
        return f"fields {[name for name, _ in got]}"
    for (name, expected), (_, actual) in zip(shown, got):
        if name == "data" and expected.startswith("{"):
            try:
                match_json(readme_json(expected), json.loads(actual), bindings, "data")
            except (ValueError, AssertionError) as exc:
                return str(exc)
        elif not line_matches(expected, actual, bindings):
            return f"{name}: {actual}"
    return None


def match_events(expected: list[str], actual: list[str], bindings: dict[str, str], command: str) -> None:
    """Check an event stream against the README's, event by event, in order (events may come between)."""
    got, shown_events = _events(actual, readme=False), _events(expected, readme=True)
    # The stream's first event carries its retry, whichever event that is.
    retry = [(name, value) for name, value in shown_events[0] if name == "retry"] if shown_events else []
    assert got and [field for field in got[0] if field[0] == "retry"] == retry, \
        f"$ {command}\nthe README's stream starts with {retry}, this one with {got[:1]}"
    got = [[field for field in event if field[0] != "retry"] for event in got]
    pos = 0
    for event in shown_events:
        shown = [field for field in event if field[0] != "retry"]
        assert shown, f"$ {command}\nthe README shows {event} as an event of its own; it comes with an event"
        optional = any(p.fullmatch(f"{name}: {value}") for name, value in shown for p in MAY_BE_MISSING)
        reasons = []
        for index in range(pos, len(got)):
            trial = dict(bindings)
            reason = _event_matches(shown, got[index], trial)
            if reason is None:
                bindings.update(trial)
                pos = index + 1
                break
            reasons.append(f"  event {index + 1}: {reason}")
        else:
            if optional:
                continue
            raise AssertionError(f"$ {command}\nthe README shows the event {shown}\nwhich is not in the stream "
                                 f"after event {pos}:\n" + "\n".join(actual) + "\n" + "\n".join(reasons[:8]))


# --- the live service ---------------------------------------------------------------------

@dataclass
class Live:
    """The running ``jobdeck up``: its address, data directory, an admin client and the commands' environment."""

    port: int
    env: dict[str, str]
    api: httpx.Client
    marker: Path  # the README job's ``ready()`` is true once this exists
    log: Path  # what ``jobdeck up`` printed: its access log says which request failed, and how

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, qual_name: str, **args: Any) -> str:
        reply = self.api.post("/job", json={"qual_name": qual_name, "args": args, "follow": False})
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]

    def job(self, job_id: str) -> dict[str, Any]:
        reply = self.api.get(f"/job/{job_id}")
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]

    def wait_for_state(self, job_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            assert job["state"] == state or not job["journal"], f"job {job_id} ended {job['state']}: {job}"
            return job if job["state"] == state else None
        return wait_until(reached, timeout=timeout, interval=0.1, message=f"job {job_id} to be {state}")

    def kill_live_jobs(self) -> None:
        for job in self.api.get("/job", params={"per_page": 1000}).json()["data"]:
            self.api.put(f"/job/kill/{job['_id']}")


def _write_job_package(root: Path, marker: Path) -> None:
    package = root / JOB_PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text('"""The job classes of README.rst, as they stand there."""\n')
    for block in BLOCKS:
        for key, (module, _, _) in RUN_JOBS.items():
            if key in block.text:
                (package / f"{module}.py").write_text(
                    f'"""{block}: the README\'s code below; ``ready()`` is the reader\'s own, here a file."""\n'
                    f"import os\n\n\ndef ready() -> bool:\n    return os.path.exists({str(marker)!r})\n\n\n"
                    + block.text + "\n")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One ``jobdeck up`` for the module (admin password ``hans``), stopped with SIGINT, nothing left behind."""
    root = tmp_path_factory.mktemp("readme")
    data_dir, packages, marker = root / "var", root / "packages", root / "input-ready"
    packages.mkdir()
    _write_job_package(packages, marker)
    port = free_port()
    env = clean_env(JOBDECK_DATA_DIR=str(data_dir), JOBDECK_JOB_PACKAGES=JOB_PACKAGE,
                    PYTHONPATH=os.pathsep.join(filter(None, [str(packages), os.environ.get("PYTHONPATH")])),
                    PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    server_env = dict(env, JOBDECK_PORT=str(port), JOBDECK_ADMIN_PASSWORD="hans", JOBDECK_WORKER_SLOTS="2",
                      JOBDECK_KILL_GRACE_SECONDS="2", JOBDECK_SHUTDOWN_GRACE_SECONDS="2")
    log_path = root / "up.log"
    with open(log_path, "w") as log:
        up = subprocess.Popen([sys.executable, "-m", "jobdeck", "up"], env=server_env, cwd=root,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", auth=AUTH, timeout=30)
    try:
        def healthy() -> bool:
            assert up.poll() is None, f"jobdeck up exited with {up.returncode}:\n{log_path.read_text()}"
            try:
                return api.get("/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(healthy, timeout=60, interval=0.1, message="GET /health of jobdeck up")
        yield Live(port, env, api, marker, log_path)
    finally:
        api.close()
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
        try:
            code = up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
            raise AssertionError(f"jobdeck up did not stop on SIGINT:\n{log_path.read_text()}") from None
    assert code == 0, f"jobdeck up exited with {code}:\n{log_path.read_text()}"
    wait_until(lambda: not processes_using(data_dir), timeout=15, message="no process left using the data dir")


# --- running the examples -----------------------------------------------------------------

@dataclass
class Session:
    """One section's examples: the live service, a working directory, what earlier examples produced."""

    live: Live
    cwd: Path
    bindings: dict[str, str] = field(default_factory=dict)  # README placeholder -> real value
    killed: str | None = None
    skipped: list[str] = field(default_factory=list)

    def substitute(self, text: str) -> str:
        text = text.replace(README_ADDRESS, f"127.0.0.1:{self.live.port}")
        for shown in sorted(self.bindings, key=len, reverse=True):
            text = text.replace(shown, self.bindings[shown])
        return text

    def last_job_id(self) -> str:
        ids = [real for shown, real in self.bindings.items() if ID.fullmatch(shown)]
        assert ids, "no earlier example of this section showed a job"
        return ids[-1]


def run_in_terminal(command: str, *, cwd: Path, env: dict[str, str],
                    timeout: float = COMMAND_TIMEOUT) -> tuple[int, list[str]]:
    """Run ``command`` with bash on a pty (120 columns); its exit code and the lines it drew.

    A line redrawn with ``\\r`` (a progress bar) gives one line per drawing;
    terminal control sequences (curl's bold header names, erasing) are dropped.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(["bash", "-c", command], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                               cwd=cwd, env=env, start_new_session=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"$ {command}\ndid not end within {timeout} s:\n{b''.join(chunks).decode(errors='replace')}"
            if not select.select([master], [], [], min(left, 1))[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = []
    for line in b"".join(chunks).decode(errors="replace").replace("\r\n", "\n").split("\n"):
        drawn = [part for part in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).split("\r") if part]
        lines.extend(drawn or [""])
    while lines and not lines[-1]:
        lines.pop()
    return code, lines


def shell_commands(text: str) -> list[tuple[str, list[str]]]:
    """The ``$ `` commands of a session (continuation lines joined) with the output shown after each."""
    commands: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i < len(lines):
                command += "\n" + lines[i]
                i += 1
            commands.append((command, []))
        else:
            assert commands, f"output before the first command: {line}"
            commands[-1][1].append(line)
    for _, output in commands:
        while output and not output[-1].strip():
            output.pop()
    return commands


def run_shell(session: Session, block: Block) -> None:
    for shown, expected in shell_commands(block.text):
        unknown = [p for p in ID.findall(shown) + re.findall(r"[\w.]*\.\.\.", shown) if p not in session.bindings]
        assert not unknown, f"{block}\n$ {shown}\nuses {unknown}, which no earlier command of the section showed"
        command = session.substitute(shown)
        code, actual = run_in_terminal(command, cwd=session.cwd, env=session.live.env)
        output = "\n".join(actual)
        if any(line.startswith("Error:") for line in expected):
            assert code != 0, f"{block}\n$ {command}\nshows an error, but exited 0:\n{output}"
        else:
            assert code == 0, f"{block}\n$ {command}\nexited {code}:\n{output}"
        if expected:
            match_output(expected, actual, session.bindings, command)
        elif output.startswith("{"):  # shown without output: at least no error reply
            reply = json.loads(output)
            assert reply.get("code", 200) < 400, f"{block}\n$ {command}\nanswered {output}"


_PY_RUNNER = r'''
import json, sys
namespace = {"__name__": "__main__"}
checks = 0

def check(value, expected, line):
    global checks
    checks += 1
    if str(value) == expected or (expected in namespace and value == namespace[expected]):
        return
    raise AssertionError(f"README.rst line {line}: printed {value!r}, the README says {expected}")

namespace["__readme_check__"] = check
for block in json.load(sys.stdin):
    print(f"\x1eblock {block['line']}", flush=True)
    exec(compile("\n" * (block["line"] - 1) + block["code"], "README.rst", "exec"), namespace)
print(f"\x1echecks {checks}", flush=True)
'''

_COMMENTED_PRINT = re.compile(r"^(\s*)print\((.*)\)\s+#\s*(\S.*?)\s*$")


def run_python(session: Session, blocks: list[Block]) -> None:
    """Run client blocks in one namespace; ``print(x)  # value`` lines become checks."""
    sources, wanted = [], 0
    for block in blocks:
        lines = session.substitute(block.text).splitlines()
        for index, line in enumerate(lines):
            found = _COMMENTED_PRINT.match(line)
            if found:
                indent, expression, value = found.groups()
                lines[index] = f"{indent}__readme_check__(({expression}), {value!r}, {block.line + index})"
                wanted += 1
        sources.append({"line": block.line, "code": "\n".join(lines)})
    result = subprocess.run([sys.executable, "-c", _PY_RUNNER], input=json.dumps(sources), capture_output=True,
                            text=True, cwd=session.cwd, env=session.live.env, timeout=COMMAND_TIMEOUT)
    where = ", ".join(str(block) for block in blocks)
    assert result.returncode == 0, \
        f"{where}\n{result.stdout}\n{result.stderr}\njobdeck up's last lines:\n{session.live.log_tail()}"
    assert f"\x1echecks {wanted}" in result.stdout, f"{where}: not every commented print ran\n{result.stdout}"
    outputs = dict(re.findall(r"\x1eblock (\d+)\n(.*?)(?=\x1e)", result.stdout, re.S))
    for block in blocks:
        # A followed job: its stream ends with close (GET /job/events ends with its timeout instead).
        if re.search(r"\.iter_(lines|sse)\(", block.text) and "/job/events" not in block.text:
            assert re.search(r"^(event: )?close\b", outputs[str(block.line)], re.M), \
                f"{block}: the stream printed no close event:\n{outputs[str(block.line)]}"


def run_commands(session: Session, block: Block) -> None:
    """Run ``jobdeck`` command lines: optional parts given, ``ID`` filled in, prompts answered."""
    for offset, raw in enumerate(block.text.splitlines()):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        name = re.search(r"jobdeck\s+(\S+)", line).group(1)
        line = re.sub(r"\s*\[\w+\.\.\.\]", "", line)  # [ID...]: one is enough
        line = re.sub(r"\[([^\[\]]*)\]", r"\1", line)
        job_id = None
        if re.search(r"\bID\b", line):
            assert name in ID_POLICY, f"README.rst line {block.line + offset}: which job for `jobdeck {name} ID`?"
            policy = ID_POLICY[name]
            if policy == "live":
                job_id = session.live.enqueue("jobs.example.DummyJob", sleep=30)
            elif policy == "killed":
                assert session.killed, "no earlier line killed a job"
                job_id = session.killed
            else:
                job_id = session.last_job_id()
            line = re.sub(r"\bID\b", job_id, line)
        result = subprocess.run(["bash", "-c", line], input=PROMPT_INPUT, capture_output=True, text=True,
                                cwd=session.cwd, env=session.live.env, timeout=COMMAND_TIMEOUT,
                                start_new_session=True)  # no terminal: the prompts read stdin
        said = f"README.rst line {block.line + offset}: $ {line}\n{result.stdout}{result.stderr}"
        assert result.returncode == 0, said
        if name == "kill":
            assert session.live.job(job_id)["state"] == "killed", said
            session.killed = job_id
        elif name == "remove":
            assert session.live.job(job_id)["removed_at"], said
        elif name == "restart":
            assert re.fullmatch(rf"{job_id} -> [0-9a-f]{{24}}", result.stdout.strip()), said


def run_toml(session: Session, block: Block) -> None:
    """Load the block as a configuration file; its absolute paths are made, under the working directory."""
    tomllib.loads(block.text)

    def made(found: re.Match[str]) -> str:
        path = session.cwd / "root" / found.group(1).lstrip("/")
        path.mkdir(parents=True, exist_ok=True)  # job_paths must be directories that exist
        return f'"{path}"'
    path = session.cwd / f"readme-line-{block.line}.toml"
    path.write_text(re.sub(r'"(/[^"]*)"', made, block.text))
    configuration.load(path, env={})


def check_job_class(session: Session, block: Block) -> None:
    """The class's options and ``self.`` names exist on Job; a RUN_JOBS class also runs through the worker."""
    namespace: dict[str, Any] = {"__name__": JOB_PACKAGE + ".readme"}
    exec(compile("\n" * (block.line - 1) + block.text, "README.rst", "exec"), namespace)
    tree = ast.parse(block.text)
    for node in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        job = namespace[node.name]()
        for statement in node.body:
            for target in getattr(statement, "targets", [getattr(statement, "target", None)]):
                if isinstance(target, ast.Name):
                    assert hasattr(Job, target.id), f"{block}: {node.name}.{target.id} is not an option of Job"
        for used in ast.walk(node):
            if isinstance(used, ast.Attribute) and isinstance(used.value, ast.Name) and used.value.id == "self":
                assert hasattr(job, used.attr), f"{block}: self.{used.attr} is not an attribute of a Job"
    for key, (module, name, args) in RUN_JOBS.items():
        if key in block.text:
            run_readme_job(session, f"{JOB_PACKAGE}.{module}.{name}", namespace[name], args)


def run_readme_job(session: Session, qual_name: str, cls: type[Job], args: dict[str, Any]) -> None:
    """Run the README's job: it defers until its input is ready, then a restart completes it."""
    live = session.live
    listed = {entry["_id"]: entry for entry in live.api.get("/job/list", params={"per_page": 1000}).json()["data"]}
    assert qual_name in listed, f"{qual_name} is not registered: {sorted(listed)}"
    assert listed[qual_name]["doc"].split("\n")[0] == cls.__doc__.split("\n")[0]
    job_id = live.enqueue(qual_name, **args)
    deferred = live.wait_for_state(job_id, "deferred")
    assert (deferred["attempts"], deferred["error_time"]) == (cls.attempts, cls.error_time)
    assert deferred["prog"]["message"] == "loading %s" % args["month"]
    live.marker.touch()
    assert live.api.put(f"/job/restart/{job_id}", json={"follow": False}).json()["data"] == job_id
    done = live.wait_for_state(job_id, "complete")
    assert done["result"] == {"rows": 42} and done["trial"] == 2
    log = live.api.get(f"/job/log/{job_id}", params={"per_page": 1000}).json()["data"]
    messages = [record["message"] for record in log if record["trial"] == 2]
    assert messages == ["rows: 42", "stdout is captured too"], log


def check_make_targets(session: Session, block: Block) -> None:
    """``make up`` and ``make test`` exist and run jobdeck and pytest (a dry run: both install into .venv)."""
    for target, runs in (("up", "exec .venv/bin/jobdeck up"), ("test", ".venv/bin/python -m pytest")):
        result = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and runs in result.stdout, f"{block}\nmake -n {target}:\n{result.stdout}"


def check_up_is_the_fixture(session: Session, block: Block) -> None:
    """``make up`` is ``jobdeck up``, which the fixture runs with these variables: admin/hans on JOBDECK_PORT."""
    check_make_targets(session, block)
    assert "JOBDECK_ADMIN_PASSWORD=hans" in block.text and "JOBDECK_PORT=" in block.text
    who = httpx.get(f"{session.live.url}/api/v1/whoami", auth=AUTH)
    assert who.status_code == 200 and who.json()["data"]["name"] == "admin"


def check_reply_sample(session: Session, block: Block) -> None:
    reply = session.live.api.get("/whoami")
    match_json(readme_json(block.text), reply.json(), {})


def check_error_sample(session: Session, block: Block) -> None:
    reply = session.live.api.get("/job", params={"per_page": "abc"})
    assert reply.status_code == 400
    match_json(readme_json(block.text), reply.json(), {})


def check_run_commands(session: Session, block: Block) -> None:
    """Commands that run until stopped: the fixture runs ``up`` (test_embedded the others); they exist
    here, with the options shown."""
    for line in block.text.splitlines():
        name = line.split()[1]
        result = subprocess.run([str(VENV_BIN / "jobdeck"), name, "--help"], capture_output=True, text=True,
                                env=session.live.env, timeout=COMMAND_TIMEOUT)
        assert result.returncode == 0, f"{block}: jobdeck {name} --help\n{result.stderr}"
        for option in re.findall(r"--[a-z][a-z-]*", line):
            assert option in result.stdout, f"{block}: jobdeck {name} has no {option}"


def check_tree(session: Session, block: Block) -> None:
    """The folders, modules and files the layout names exist."""
    entries = re.split(r"^(?=\w+/\s)", block.text, flags=re.M)
    for entry in filter(None, entries):
        folder = entry.split("/")[0]
        assert (REPO / folder).is_dir(), f"{block}: no folder {folder}/"
        for name in re.findall(r"[\w/]+\.py", entry):
            assert (REPO / name).exists() or (REPO / folder / name).exists(), f"{block}: no {name}"
        if folder == "core":
            described = entry.split(":", 1)[1]
            for item in re.split(r"[,():]", described):
                if re.fullmatch(r"\w+", item.strip()):
                    assert (REPO / "core" / f"{item.strip()}.py").exists(), f"{block}: no core/{item.strip()}.py"


def check_import_error_line(session: Session, block: Block) -> None:
    """The ERROR line of a job package that cannot be imported, from ``core.registry.discover`` (log time left out)."""
    package = session.cwd / "packages" / "billing"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import stripe\n")
    script = ("import logging; logging.basicConfig(format='%(levelname)s %(name)s: %(message)s'); "
              "from core import registry; registry.discover(['billing'])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                            env=dict(session.live.env, PYTHONPATH=str(package.parent)), timeout=COMMAND_TIMEOUT)
    assert result.returncode == 0, result.stderr
    logged = result.stderr.splitlines()
    assert any(line_matches(block.text, line, {}) for line in logged), f"{block}\nlogged:\n{result.stderr}"


def check_nginx_snippet(session: Session, block: Block) -> None:
    """The README's nginx lines are those of etc/nginx.conf."""
    shipped = {line.strip() for line in (REPO / "etc" / "nginx.conf").read_text().splitlines()}
    for line in block.text.splitlines():
        assert line.strip() in shipped, f"{block}: etc/nginx.conf has no line {line.strip()!r}"


def run_in_browser(session: Session, block: Block) -> None:
    """The README's browser code, on the service's own origin in Chromium: login, then EventSource to the end."""
    if CHROMIUM is None:
        session.skipped.append(f"{block}: Chromium is not installed")
        return
    from playwright.sync_api import sync_playwright

    job_id = session.live.enqueue("jobs.example.DummyJob", sleep=0.3, loop_time=0.1)
    said: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda message: said.append(message.text))
            page.goto(f"{session.live.url}/api/v1/health")
            page.evaluate("async jid => {\n" + block.text + "\nwindow.readmeEvents = events;\n}", job_id)
            page.wait_for_function("window.readmeEvents.readyState === EventSource.CLOSED", timeout=30_000)
        finally:
            browser.close()
    assert "complete" in said and "dummy: sleeping 0.3 s in steps of 0.1 s" in said, said


#: Blocks checked in their own way, by a unique substring.
SPECIAL: dict[str, Callable[[Session, Block], None]] = {
    "make test    # creates .venv": check_make_targets,
    "JOBDECK_ADMIN_PASSWORD=hans make up": check_up_is_the_fixture,
    '{"_id": "<request id>", "code": 200': check_reply_sample,
    "expected an integer, got 'abc'": check_error_sample,
    "jobdeck db        # the embedded database alone": check_run_commands,
    "core/       the engine": check_tree,
    "ERROR core.registry: cannot import job package billing": check_import_error_line,
    "proxy_set_header X-Forwarded-Proto $scheme;": check_nginx_snippet,
    "new EventSource(": run_in_browser,
}

RUNNERS: dict[str, Callable[[Session, Block], None]] = {
    "shell": run_shell, "commands": run_commands, "toml": run_toml, "job class": check_job_class,
}


# --- the tests ----------------------------------------------------------------------------

def test_every_readme_example_is_exercised_or_listed() -> None:
    unknown = [f"README example not exercised: {block.first_line} (README.rst line {block.line})"
               for block in BLOCKS if classify(block) == "unknown"]
    assert not unknown, "\n".join(unknown) + "\nrun it in tests/test_readme.py, or list it in NOT_RUNNABLE"
    for key in [*NOT_RUNNABLE, *SPECIAL, *RUN_JOBS]:
        matching = [str(block) for block in BLOCKS if key in block.text]
        assert len(matching) == 1, f"{key!r} should name one README block, names {matching or 'none'}"


def test_readme_json_keeps_what_it_shows_and_marks_what_it_leaves_out() -> None:
    assert readme_json('{... "data": {"name": "admin", "token": "eyJ1Ijoi..."}}') == \
        {MORE: None, "data": {"name": "admin", "token": "eyJ1Ijoi..."}}
    assert readme_json('{"_id": "x", ..., "state": "running", ...}') == {"_id": "x", MORE: None, "state": "running"}
    assert readme_json('{"code": 200, "data": ...}') == {"code": 200, "data": "..."}
    bindings: dict[str, str] = {}
    match_json(readme_json('{"token": "eyJ1Ijoi...", "n": 2}'), {"token": "eyJ1IjoiXYZ", "n": 3.5}, bindings)
    assert bindings == {"eyJ1Ijoi...": "eyJ1IjoiXYZ"}
    with pytest.raises(AssertionError, match="keys the README does not show"):
        match_json(readme_json('{"a": 1}'), {"a": 1, "b": 2}, {})
    assert line_matches("=== 6b05044aed4453fc3db954e3 complete after 2.1 s",
                        "=== 6b146d7c509657a834d3878d complete after 2.0 s", bindings)
    assert not line_matches("--- 6b05044aed4453fc3db954e3 running", "--- 6b146d7c509657a834d3878e running", bindings)
    assert line_matches("a  web1:4711:9f3c  b ...", "a  vm:31305:823e  b c", bindings)


SECTIONS = list(dict.fromkeys(block.section for block in BLOCKS if classify(block) not in ("not runnable", "unknown")))


@pytest.mark.parametrize("section", SECTIONS)
def test_readme_examples_run(section: str, live: Live, tmp_path: Path) -> None:
    session = Session(live, tmp_path)
    python: list[Block] = []
    try:
        for block in (b for b in BLOCKS if b.section == section):
            kind = classify(block)
            if kind == "python":
                python.append(block)
                continue
            if python:
                run_python(session, python)
                python = []
            if kind == "special":
                next(check for key, check in SPECIAL.items() if key in block.text)(session, block)
            elif kind in RUNNERS:
                RUNNERS[kind](session, block)
        if python:
            run_python(session, python)
    finally:
        live.kill_live_jobs()
    if session.skipped:
        pytest.skip("; ".join(session.skipped))
