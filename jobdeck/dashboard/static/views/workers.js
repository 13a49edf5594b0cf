// Workers (GET /worker): alive, slots, running jobs, heartbeat age, tags. Heartbeats are not in the
// event stream: re-read every 5 s, and soon after jobs start or end.

import * as api from "../api.js";
import * as stream from "../stream.js";
import {el, fill, notice, throttle, when} from "../dom.js";

export function render(root) {
  let gone = false;
  const message = el("div", {role: "alert"});
  const count = el("p", {className: "count", role: "status", "aria-live": "polite"});
  const body = el("tbody");
  root.append(el("h1", {}, "Workers"), count, message, el("div", {className: "table-wrap"},
    el("table", {className: "workers"}, el("caption", {className: "sr-only"}, "Workers"),
      el("thead", {}, el("tr", {}, ["Worker", "Alive", "Slots", "Running", "Heartbeat", "Started", "Tags", "Pool",
                                     "Job classes"].map((t) => el("th", {scope: "col"}, t)))), body)));

  async function load() {
    try {
      const workers = (await api.get("/worker")).data;
      if (gone) return;
      notice(message, "");
      const now = Date.now();
      const alive = workers.filter((w) => w.alive).length;
      count.textContent = `${alive} alive, ${workers.length - alive} not`;
      fill(body, workers.length ? workers.map((w) => {
        const age = w.heartbeat ? (now - new Date(w.heartbeat).getTime()) / 1000 : null;
        const running = w.running || [];
        return el("tr", {className: w.alive ? "" : "dead", dataset: {id: w._id}},
          el("td", {className: "mono"}, w._id, w.host ? el("div", {className: "muted small"}, `${w.host} pid ${w.pid}`) : null),
          el("td", {}, el("span", {className: `badge ${w.alive ? "state-complete" : "state-error"}`}, w.alive ? "alive" : "gone")),
          el("td", {className: "num"}, `${running.length} / ${w.slots ?? "?"}`),
          el("td", {}, running.length ? el("ul", {className: "plain"},
            running.map((id) => el("li", {}, el("a", {href: `#/job/${id}`, className: "mono"}, id.slice(-8))))) : "none"),
          el("td", {}, age === null ? "" : `${Math.max(0, age).toFixed(1)} s ago`),
          el("td", {}, when(w.started)),
          el("td", {}, (w.tags || []).join(", ")),
          el("td", {}, w.pool || "", w.max_running ? ` (max ${w.max_running})` : ""),
          el("td", {className: "small"}, (w.jobs || []).join(", ")));
      }) : el("tr", {}, el("td", {colSpan: 9, className: "empty"}, "No workers. Start one with: jobdeck worker")));
    } catch (error) {
      if (!gone) notice(message, error.message, "error");
    }
  }
  const refresh = throttle(load, 1000);
  const timer = setInterval(load, 5000);
  const offJob = stream.subscribe("job", (job) => { if (job.state === "running" || job.journal) refresh(); });
  const offReset = stream.subscribe("reset", refresh);
  load();
  return () => { gone = true; clearInterval(timer); offJob(); offReset(); };
}
