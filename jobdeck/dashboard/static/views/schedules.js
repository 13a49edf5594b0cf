// The schedules (GET /schedule) with pause and resume buttons for users who may execute the class.

import * as api from "../api.js";
import {el, fill, notice, when} from "../dom.js";
import {may} from "../perms.js";

export function render(root, ctx) {
  let gone = false;
  const message = el("div", {role: "alert"});
  const body = el("tbody");
  root.append(el("h2", {id: "schedules-title"}, "Schedules"), message, el("div", {className: "table-wrap"},
    el("table", {className: "schedules", "aria-labelledby": "schedules-title"},
      el("thead", {}, el("tr", {}, ["Class", "Cron", "Time zone", "Next run", "Last tick", "Last job", "Source", ""]
        .map((t) => el("th", {scope: "col"}, t)))), body)));

  async function load() {
    try {
      const list = (await api.get("/schedule", {per_page: 200})).data;
      if (gone) return;
      fill(body, list.length ? list.map(row) : el("tr", {}, el("td", {colSpan: 8, className: "empty"}, "No schedules.")));
    } catch (error) {
      if (!gone) notice(message, error.message, "error");
    }
  }

  function row(schedule) {
    const control = may(ctx.user, schedule.qual_name, "x")
      ? el("button", {type: "button", "aria-pressed": String(!schedule.enabled),
                      onclick: (e) => toggle(e, schedule)}, schedule.enabled ? "Pause" : "Resume")
      : null;
    return el("tr", {className: schedule.enabled ? "" : "paused"},
      el("td", {className: "class"}, schedule.qual_name, schedule.enabled ? "" : el("span", {className: "badge state-deferred"}, "paused")),
      el("td", {className: "mono"}, schedule.cron ?? ""),
      el("td", {}, schedule.tz),
      el("td", {}, schedule.error ? el("span", {className: "error-text"}, schedule.error) : when(schedule.next_run)),
      el("td", {}, when(schedule.last_tick)),
      el("td", {}, schedule.last_job_id ? el("a", {href: `#/job/${schedule.last_job_id}`, className: "mono"},
                                              schedule.last_job_id.slice(-8)) : ""),
      el("td", {}, schedule.source),
      el("td", {}, control));
  }

  async function toggle(event, schedule) {
    event.currentTarget.disabled = true;
    try {
      await api.put(`/schedule/${encodeURIComponent(schedule._id)}/${schedule.enabled ? "pause" : "resume"}`);
    } catch (error) {
      notice(message, error.message, "error");
    }
    load();
  }

  load();
  const timer = setInterval(load, 15000);
  return () => { gone = true; clearInterval(timer); };
}
