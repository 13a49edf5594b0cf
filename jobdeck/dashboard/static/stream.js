// The one event stream of the dashboard: GET /api/v1/job/events (Server-Sent Events).
//
// Views never open a connection: they subscribe here to "job", "log" and "reset" events.
// A view that wants a job's log records asks for them with followLogs(id); the stream then
// reopens its one connection with ids=...&logs=true. If the stream cannot be opened at all
// (an older server without /job/events), it falls back to a "reset" every 2 s, upon which
// the views re-read what they show from the REST API, and tries the stream again later.

import {BASE} from "./api.js";

const POLL_MS = 2000;
const RETRY_STREAM_MS = 30000;
const subscribers = {job: new Set(), log: new Set(), reset: new Set(), status: new Set()};
const logIds = new Map(); // job id -> number of views following its log
let source = null;
let running = false;
let everOpened = false;
let pollTimer = null;
let retryTimer = null;
let status = "off";

/** Subscribe fn to events of kind ("job", "log", "reset", "status"); returns the unsubscribe function. */
export function subscribe(kind, fn) {
  subscribers[kind].add(fn);
  if (kind === "status") fn(status);
  return () => subscribers[kind].delete(fn);
}

function emit(kind, data) {
  for (const fn of [...subscribers[kind]]) {
    try {
      fn(data);
    } catch (error) {
      console.error(`jobdeck: a ${kind} subscriber failed`, error);
    }
  }
}

function setStatus(value) {
  if (value === status) return;
  status = value;
  emit("status", value);
}

export function currentStatus() {
  return status;
}

/** Start the stream (after login). */
export function start() {
  running = true;
  open();
}

/** Stop it (logout). */
export function stop() {
  running = false;
  close();
  setStatus("off");
}

/** Receive log events of job id (until unfollowLogs). */
export function followLogs(id) {
  logIds.set(id, (logIds.get(id) || 0) + 1);
  if (logIds.get(id) === 1) reopen();
}

export function unfollowLogs(id) {
  const count = (logIds.get(id) || 0) - 1;
  if (count > 0) {
    logIds.set(id, count);
    return;
  }
  logIds.delete(id);
  reopen();
}

function url() {
  const params = new URLSearchParams();
  if (logIds.size) {
    params.set("ids", [...logIds.keys()].join(","));
    params.set("logs", "true");
  }
  const query = params.toString();
  return `${BASE}/job/events${query ? "?" + query : ""}`;
}

function reopen() {
  if (!running) return;
  if (pollTimer) return; // polling: the next stream attempt takes the new ids
  close();
  open();
}

function close() {
  if (source) {
    source.close();
    source = null;
  }
  clearInterval(pollTimer);
  pollTimer = null;
  clearTimeout(retryTimer);
  retryTimer = null;
}

function parse(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return null;
  }
}

function open() {
  if (!running) return;
  setStatus("connecting");
  const es = new EventSource(url());
  source = es;
  es.addEventListener("open", () => {
    if (source !== es) return;
    setStatus("live");
    // A new connection may have missed changes (a reopen sends no Last-Event-ID): re-read.
    if (everOpened) emit("reset", {reason: "reconnected"});
    everOpened = true;
  });
  es.addEventListener("job", (event) => {
    const data = parse(event);
    if (data) emit("job", data);
  });
  es.addEventListener("log", (event) => {
    const data = parse(event);
    if (data) emit("log", data);
  });
  es.addEventListener("reset", (event) => emit("reset", parse(event) || {reason: "reset"}));
  es.addEventListener("error", () => {
    if (source !== es) return;
    if (es.readyState === EventSource.CONNECTING) {
      setStatus("reconnecting");
      return;
    }
    // Closed for good (not an event stream: 404 on an older server, 401, 429): poll instead.
    es.close();
    source = null;
    poll();
  });
}

function poll() {
  if (!running || pollTimer) return;
  setStatus("polling");
  emit("reset", {reason: "polling"});
  pollTimer = setInterval(() => emit("reset", {reason: "polling"}), POLL_MS);
  retryTimer = setTimeout(() => {
    if (!running) return;
    close();
    open();
  }, RETRY_STREAM_MS);
}
