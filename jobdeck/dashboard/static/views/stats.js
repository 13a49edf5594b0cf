// Statistics (GET /job/stats): the jobs per state as a bar chart, the jobs finished in each of the
// last 60 minutes (the server's counts), the pause switches, and the schedules.

import * as api from "../api.js";
import * as stream from "../stream.js";
import {duration, el, fill, notice, svg, throttle} from "../dom.js";
import {isAdmin, may} from "../perms.js";
import * as schedules from "./schedules.js";

const QUEUE = ["pending", "running", "deferred", "failed"];
const JOURNAL = ["complete", "error", "inactive", "killed"];

export function render(root, ctx) {
  let gone = false;
  let stats = null;
  const message = el("div", {role: "alert"});
  const figures = el("dl", {className: "figures", "aria-live": "polite"});
  const stateChart = el("figure", {className: "chart"});
  const rateChart = el("figure", {className: "chart"});
  const pause = el("section", {className: "card pause", "aria-labelledby": "pause-title"});
  const scheduleBox = el("section", {className: "card"});
  root.append(el("h1", {}, "Stats"), message,
    el("section", {className: "card"}, figures),
    el("div", {className: "columns"},
      el("section", {className: "card"}, el("h2", {}, "Jobs by state"), stateChart),
      el("section", {className: "card"}, el("h2", {}, "Finished per minute"), rateChart)),
    pause, scheduleBox);
  const stopSchedules = schedules.render(scheduleBox, ctx);
  let registry = [];
  if (isAdmin(ctx.user) || (ctx.user.perms || []).some((p) => p.endsWith(":x"))) {
    api.get("/job/list", {per_page: 1000}).then((page) => { registry = page.data; drawPause(); }).catch(() => {});
  }

  async function load() {
    try {
      stats = (await api.get("/job/stats")).data;
      if (gone) return;
      notice(message, "");
      draw();
    } catch (error) {
      if (!gone) notice(message, error.message, "error");
    }
  }

  function draw() {
    const fact = (term, value) => [el("dt", {}, term), el("dd", {}, value)];
    const sum = (group, names) => names.reduce((total, name) => total + (group?.[name] || 0), 0);
    fill(figures,
      fact("Live jobs", String(sum(stats.queue, QUEUE))),
      fact("Finished jobs", String(sum(stats.journal, JOURNAL))),
      fact("Workers alive", String(stats.workers_alive)),
      fact("Oldest pending", stats.oldest_pending_seconds === null ? "none pending" : duration(stats.oldest_pending_seconds)),
      fact("Finished in the last minute", String(stats.finished_per_minute?.last_minute ?? 0)),
      fact("Per minute over the last hour", (stats.finished_per_minute?.last_hour ?? 0).toFixed(1)),
      stats.paused?.all ? fact("Paused", "the whole queue") : null,
      stats.paused?.classes?.length ? fact("Paused classes", stats.paused.classes.join(", ")) : null,
      (stats.unrunnable || []).length ? fact("Unrunnable", stats.unrunnable.map((u) => `${u.jobs}: ${u.reason}`).join("; ")) : null);
    const bars = [...QUEUE.map((s) => [s, stats.queue?.[s] || 0]), ...JOURNAL.map((s) => [s, stats.journal?.[s] || 0])];
    fill(stateChart, barChart(bars, "Jobs by state"),
         el("figcaption", {}, bars.map(([s, n]) => `${s} ${n}`).join(", ")));
    // The last 60 minutes, the current one (so far) on the right.
    const minutes = stats.finished_per_minute?.minutes || [];
    const rate = minutes.map((n, i) => [`${minutes.length - 1 - i} min ago`, n]);
    fill(rateChart, barChart(rate, "Jobs finished in each of the last 60 minutes", {labels: false}),
         el("figcaption", {}, `the last 60 minutes: ${minutes.reduce((a, b) => a + b, 0)} jobs; ` +
            `this minute so far ${minutes[minutes.length - 1] ?? 0}`));
    drawPause();
  }

  function drawPause() {
    if (!stats) return;
    const admin = isAdmin(ctx.user);
    const paused = new Set(stats.paused?.classes || []);
    const classes = registry.filter((entry) => may(ctx.user, entry.qual_name, "x"));
    if (!admin && !classes.length) {
      fill(pause);
      pause.hidden = true;
      return;
    }
    pause.hidden = false;
    const whole = stats.paused?.all;
    fill(pause, el("h2", {id: "pause-title"}, "Pause and limits"),
      el("p", {className: "muted"}, "Paused jobs stay pending; running ones finish."),
      admin ? el("p", {}, el("button", {type: "button", className: whole ? "primary" : "", "aria-pressed": String(Boolean(whole)),
        onclick: (e) => change(e, whole ? "resume" : "pause")}, whole ? "Resume the whole queue" : "Pause the whole queue")) : null,
      classes.length ? el("ul", {className: "plain pause-list"}, classes.map((entry) => {
        const on = paused.has(entry.qual_name);
        const limit = entry.defaults?.max_parallel;
        return el("li", {}, el("span", {className: "class"}, entry.qual_name,
                                limit ? el("span", {className: "muted small"}, ` at most ${limit} at once`) : null), " ",
          el("button", {type: "button", "aria-pressed": String(on), "aria-label": `${on ? "Resume" : "Pause"} ${entry.qual_name}`,
                        onclick: (e) => change(e, on ? "resume" : "pause", entry.qual_name)}, on ? "Resume" : "Pause"));
      })) : null);
  }

  async function change(event, action, qualName) {
    event.currentTarget.disabled = true;
    try {
      await api.put(`/job/${action}`, qualName ? {qual_name: qualName} : {});
    } catch (error) {
      notice(message, error.message, "error");
    }
    load();
  }

  const refresh = throttle(load, 1000);
  const timer = setInterval(load, 5000);
  const offJob = stream.subscribe("job", refresh);
  const offReset = stream.subscribe("reset", refresh);
  load();
  return () => { gone = true; clearInterval(timer); offJob(); offReset(); stopSchedules && stopSchedules(); };
}

/** A bar chart of [label, value] pairs as SVG, with a text alternative. */
export function barChart(pairs, title, {labels = true} = {}) {
  const width = 480;
  const height = 180;
  const bottom = labels ? 34 : 8;
  const top = 14;
  const max = Math.max(1, ...pairs.map(([, v]) => v));
  const step = pairs.length ? width / pairs.length : width;
  const bar = Math.max(2, step * 0.7);
  const scale = (height - bottom - top) / max;
  const named = pairs.filter(([label]) => label !== "");
  const chart = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title}: ` +
                            (named.map(([l, v]) => `${l} ${v}`).join(", ") || "no data"), class: "bars"},
    svg("title", {}, title),
    svg("line", {x1: 0, x2: width, y1: height - bottom, y2: height - bottom, class: "axis"}));
  pairs.forEach(([label, value], i) => {
    const x = i * step + (step - bar) / 2;
    const h = value * scale;
    if (label === "") return;
    chart.append(svg("rect", {x, y: height - bottom - h, width: bar, height: Math.max(h, value ? 1 : 0),
                              class: `bar bar-${label}`}, svg("title", {}, `${label}: ${value}`)));
    if (labels || (value && (i === pairs.length - 1 || value !== pairs[i + 1][1]))) {
      chart.append(svg("text", {x: x + bar / 2, y: height - bottom - h - 3, class: "value"}, String(value)));
    }
    if (labels) chart.append(svg("text", {x: x + bar / 2, y: height - bottom + 14, class: "label"}, label));
  });
  return chart;
}
