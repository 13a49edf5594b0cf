// One job: state, progress, arguments, times, worker, result, last error, parent and child,
// its live log (the tail, followed through the event stream, older records by seq on demand),
// and kill / restart / remove for users who may execute its class.

import * as api from "../api.js";
import * as stream from "../stream.js";
import {badge, duration, el, fill, notice, when} from "../dom.js";
import {may} from "../perms.js";

const LIVE = ["pending", "running", "deferred", "failed"];
const RESTARTABLE = ["failed", "deferred", "killed", "error", "inactive"];
const LOG_PAGE = 200;

export function render(root, ctx, {id}) {
  let job = null;
  let gone = false;
  const records = new Map(); // seq -> record
  let older = null; // how to load the page before the oldest shown: {before} or {page}
  let follow = true;

  const heading = el("h1", {}, "Job ", el("span", {className: "mono"}, id));
  const message = el("div", {role: "alert"});
  const summary = el("section", {className: "card summary", "aria-live": "polite", "aria-label": "State"});
  const controls = el("div", {className: "controls", role: "group", "aria-label": "Control this job"});
  const facts = el("dl", {className: "facts"});
  const argsBox = el("pre", {className: "json"});
  const resultBox = el("section", {className: "result"});
  const errorBox = el("section", {className: "last-error"});
  const logList = el("ol", {className: "log", role: "log", "aria-live": "polite", "aria-label": "Log",
                             tabIndex: 0});
  const olderButton = el("button", {type: "button", onclick: loadOlder}, "Load older records");
  const followBox = el("input", {type: "checkbox", id: "log-follow", checked: true,
                                 onchange: () => { follow = followBox.checked; if (follow) scrollDown(); }});
  const logStatus = el("span", {className: "muted"});

  root.append(
    heading, message, summary, controls,
    el("div", {className: "columns"},
      el("section", {className: "card"}, el("h2", {}, "Details"), facts),
      el("section", {className: "card"}, el("h2", {}, "Arguments"), argsBox, resultBox, errorBox)),
    el("section", {className: "card log-card", "aria-labelledby": "log-title"},
      el("div", {className: "log-head"}, el("h2", {id: "log-title"}, "Log"), olderButton,
         el("label", {className: "check", for: "log-follow"}, followBox, " Follow (scroll to new lines)"), logStatus),
      logList));

  async function loadJob() {
    try {
      const reply = await api.get(`/job/${encodeURIComponent(id)}`);
      if (gone) return;
      job = reply.data;
      draw();
    } catch (error) {
      if (!gone) notice(message, error.status === 404 ? `No job ${id} (or you may not read it).` : error.message,
                        "error");
    }
  }

  function draw() {
    document.title = `${job.qual_name} ${job.state} - jobdeck`;
    fill(heading, el("span", {className: "class"}, job.qual_name), " ", el("span", {className: "mono small"}, job._id));
    const prog = job.prog || {};
    const value = typeof prog.value === "number" ? prog.value : 0;
    fill(summary,
      el("div", {className: "state-line"}, "State ", badge(job.state),
         job.removed_at ? el("span", {className: "badge removed"}, "removed") : null,
         job.journal ? el("span", {className: "muted"}, " (in the journal)") : el("span", {className: "muted"}, " (live)")),
      el("label", {for: "job-progress", className: "progress-label"}, `Progress ${Math.round(value * 100)}%`),
      el("progress", {id: "job-progress", max: 1, value}),
      el("p", {className: "prog-message", id: "prog-message"}, prog.message || ""),
      job.waiting_for && job.waiting_for.length
        ? el("p", {className: "notice info"}, "Waiting for: " + job.waiting_for.join("; ")) : null);
    drawControls();
    const enqueued = job.enqueued || {};
    const locked = job.locked || {};
    const fact = (term, ...value) => [el("dt", {}, term), el("dd", {}, ...value)];
    const link = (other) => other ? el("a", {href: `#/job/${other}`, className: "mono"}, other) : "none";
    fill(facts,
      fact("Class", job.qual_name),
      fact("Trial", `${job.trial ?? 0}`, job.attempts_left !== undefined
        ? ` (${job.attempts_left} attempt${job.attempts_left === 1 ? "" : "s"} left)` : ""),
      fact("Priority", String(job.priority ?? "")),
      fact("Enqueued", when(enqueued.at), enqueued.username ? ` by ${enqueued.username}` : "",
           enqueued.hostname ? ` from ${enqueued.hostname}` : ""),
      job.query_at && enqueued.at && new Date(job.query_at) - new Date(enqueued.at) > 1000 && !job.started_at
        ? fact("Not before", when(job.query_at)) : null,
      fact("Started", when(job.started_at) || "not yet"),
      fact("Finished", when(job.finished_at) || "not yet"),
      fact("Runtime", duration(job.runtime) || "-"),
      fact("Worker", locked.worker ? el("span", {className: "mono"}, locked.worker) : "none"),
      job.killed_at ? fact("Killed", when(job.killed_at)) : null,
      job.removed_at ? fact("Removed", when(job.removed_at)) : null,
      job.requires && job.requires.length ? fact("Requires", job.requires.join(", ")) : null,
      fact("Parent", link(enqueued.parent_id)),
      fact("Child (its restart)", link(enqueued.child_id)));
    argsBox.textContent = JSON.stringify(job.args ?? {}, null, 2);
    fill(resultBox, "result" in job && (job.journal || job.result !== null)
      ? [el("h2", {}, "Result"), el("pre", {className: "json"}, JSON.stringify(job.result, null, 2))] : null);
    const error = job.last_error;
    fill(errorBox, error ? [
      el("h2", {}, "Last error"),
      el("p", {className: "error-text"}, `${error.exception}: ${error.message ?? ""}`),
      error.at ? el("p", {className: "muted"}, when(error.at)) : null,
      error.traceback ? el("details", {}, el("summary", {}, "Traceback"), el("pre", {className: "traceback"}, error.traceback))
        : null] : null);
  }

  function drawControls() {
    if (!job || !may(ctx.user, job.qual_name, "x")) {
      fill(controls);
      return;
    }
    const live = LIVE.includes(job.state) && !job.journal;
    fill(controls,
      live ? el("button", {type: "button", className: "danger", onclick: (e) => act(e, "kill")}, "Kill") : null,
      RESTARTABLE.includes(job.state) && !(job.journal && job.enqueued?.child_id)
        ? el("button", {type: "button", onclick: (e) => act(e, "restart")}, "Restart") : null,
      live ? el("button", {type: "button", className: "danger", onclick: (e) => act(e, "remove")}, "Remove") : null);
  }

  async function act(event, action) {
    const button = event.currentTarget;
    for (const b of controls.querySelectorAll("button")) b.disabled = true;
    button.textContent = {kill: "Killing...", restart: "Restarting...", remove: "Removing..."}[action];
    notice(message, "");
    try {
      if (action === "restart") {
        const reply = await api.put(`/job/restart/${job._id}`, {follow: false});
        if (reply.data !== job._id) {
          ctx.navigate(`#/job/${reply.data}`);
          return;
        }
        notice(message, "Restarted.");
      } else {
        const reply = await api.put(`/job/${action}/${job._id}`, {});
        if (!gone && reply.data) {
          job = reply.data;
          draw();
        }
        notice(message, action === "kill" ? "Killed." : "Removed.");
      }
    } catch (error) {
      if (!gone) notice(message, error.message, "error");
    } finally {
      if (!gone) {
        drawControls();
        loadJob();
      }
    }
  }

  // -- the log ---------------------------------------------------------------

  function logLine(record) {
    return el("li", {className: `level-${String(record.level).toLowerCase()}`, dataset: {seq: record.seq}},
      el("span", {className: "seq"}, String(record.seq)),
      el("time", {dateTime: record.created}, when(record.created)),
      el("span", {className: "level"}, record.level),
      el("span", {className: "msg"}, record.message),
      record.exception ? el("pre", {className: "traceback"}, record.exception) : null);
  }

  function add(list) {
    let appended = false;
    const newest = logList.lastElementChild ? Number(logList.lastElementChild.dataset.seq) : 0;
    for (const record of list) {
      if (records.has(record.seq)) continue;
      records.set(record.seq, record);
      const line = logLine(record);
      if (record.seq > newest) {
        logList.append(line);
        appended = true;
      } else {
        const after = [...logList.children].find((li) => Number(li.dataset.seq) > record.seq);
        logList.insertBefore(line, after || null);
      }
    }
    logStatus.textContent = `${records.size} record${records.size === 1 ? "" : "s"} shown`;
    if (appended && follow) scrollDown();
  }

  function scrollDown() {
    logList.scrollTop = logList.scrollHeight;
  }

  async function loadTail() {
    try {
      const page = await api.get(`/job/log/${encodeURIComponent(id)}`, {page: -1, per_page: LOG_PAGE});
      if (gone) return;
      if (!older) setOlder(page);
      add(page.data);
    } catch (error) {
      if (!gone && error.status !== 404) notice(message, error.message, "error");
    }
  }

  function setOlder(page) {
    older = page.prev ? {before: page.prev} : page.page > 0 ? {page: page.page - 1} : null;
    olderButton.hidden = !older;
  }

  async function loadOlder() {
    if (!older) return;
    olderButton.disabled = true;
    try {
      const page = await api.get(`/job/log/${encodeURIComponent(id)}`, {per_page: LOG_PAGE, ...older});
      if (gone) return;
      setOlder(page);
      const top = logList.scrollHeight - logList.scrollTop;
      const keep = follow;
      follow = false;
      add(page.data);
      follow = keep;
      logList.scrollTop = logList.scrollHeight - top;
    } catch (error) {
      notice(message, error.message, "error");
    } finally {
      olderButton.disabled = false;
    }
  }

  const offJob = stream.subscribe("job", (change) => {
    if (change._id !== id || !job || (change.version ?? 0) < (job.version ?? 0)) return;
    const final = change.journal && !job.journal;
    const newError = change.last_error && JSON.stringify(change.last_error) !==
      JSON.stringify({exception: job.last_error?.exception, message: job.last_error?.message});
    const {enqueued, last_error: lastError, ...rest} = change; // a summary: keep what it leaves out
    Object.assign(job, rest, {enqueued: {...job.enqueued, ...enqueued}});
    draw();
    if (final || newError) loadJob(); // the result and the traceback are not in the event
  });
  const offLog = stream.subscribe("log", (record) => {
    if (record.job_id === id) add([record]);
  });
  const offReset = stream.subscribe("reset", () => { loadJob(); loadTail(); });
  const followed = /^[0-9a-f]{24}$/.test(id);
  if (followed) stream.followLogs(id);
  olderButton.hidden = true;
  loadJob();
  loadTail();
  return () => {
    gone = true;
    offJob();
    offLog();
    offReset();
    if (followed) stream.unfollowLogs(id);
  };
}
