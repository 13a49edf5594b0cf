// The queue (live jobs, next to run first) and the journal (finished jobs, newest first):
// search, state and class filters, cursor pagination, kept live by the event stream's "job" events.

import * as api from "../api.js";
import * as stream from "../stream.js";
import {badge, debounce, duration, el, fill, notice, when} from "../dom.js";

const STATES = {
  queue: ["pending", "running", "deferred", "failed"],
  journal: ["complete", "error", "inactive", "killed"],
};
const PAGE_SIZES = [25, 50, 100, 200];

export function render(root, ctx, {mode, query}) {
  const states = STATES[mode];
  const filters = {
    search: query.get("search") || "",
    state: (query.get("state") || "").split(",").filter((s) => states.includes(s)),
    qualName: query.get("qual_name") || "",
    perPage: PAGE_SIZES.includes(Number(query.get("per_page"))) ? Number(query.get("per_page")) : 25,
  };
  let cursor = {}; // {after} or {before}: the page shown; {} the first
  let items = [];
  let rows = new Map();
  let reply = null;
  let gone = false;
  let loading = null;

  const heading = el("h1", {}, mode === "queue" ? "Queue" : "Journal");
  const search = el("input", {id: `${mode}-search`, type: "search", value: filters.search,
                              placeholder: "class name; * and ? wildcards"});
  const qualName = el("input", {id: `${mode}-class`, value: filters.qualName, list: `${mode}-classes`,
                                placeholder: "all classes", autocomplete: "off"});
  const classes = el("datalist", {id: `${mode}-classes`});
  const perPage = el("select", {id: `${mode}-per-page`},
    PAGE_SIZES.map((n) => el("option", {value: String(n), selected: n === filters.perPage}, String(n))));
  const stateBoxes = states.map((state) => el("label", {className: "check"},
    el("input", {type: "checkbox", value: state, checked: filters.state.includes(state),
                 onchange: () => { filters.state = stateBoxes.map((l) => l.firstChild).filter((b) => b.checked)
                   .map((b) => b.value); changed(); }}), " ", state));
  const form = el("form", {className: "filters", role: "search", "aria-label": `Filter the ${mode}`},
    el("div", {className: "field"}, el("label", {for: search.id}, "Search"), search),
    el("div", {className: "field"}, el("label", {for: qualName.id}, "Class"), qualName, classes),
    el("fieldset", {className: "field states"}, el("legend", {}, "States"), stateBoxes),
    el("div", {className: "field"}, el("label", {for: perPage.id}, "Per page"), perPage));
  form.addEventListener("submit", (event) => { event.preventDefault(); changed(); });
  let typing = null;
  search.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(changed, 300); });
  qualName.addEventListener("change", changed);
  perPage.addEventListener("change", changed);

  const count = el("p", {className: "count", role: "status", "aria-live": "polite"});
  const message = el("div", {role: "alert"});
  const body = el("tbody");
  const table = el("table", {className: "jobs", "aria-describedby": `${mode}-count`},
    el("caption", {className: "sr-only"}, mode === "queue" ? "Live jobs" : "Finished jobs"),
    el("thead", {}, el("tr", {},
      ["Job", "Class", "State", "Progress", "Priority",
       mode === "queue" ? "Enqueued" : "Finished", "By", mode === "queue" ? "Worker" : "Runtime"]
        .map((title) => el("th", {scope: "col"}, title)))),
    body);
  count.id = `${mode}-count`;
  const prev = el("button", {type: "button", onclick: () => { cursor = {before: reply.prev}; load(); }},
    mode === "queue" ? "Previous" : "Newer");
  const next = el("button", {type: "button", onclick: () => { cursor = {after: reply.next}; load(); }},
    mode === "queue" ? "Next" : "Older");
  const first = el("button", {type: "button", onclick: () => { cursor = {}; load(); }}, "First page");
  const pager = el("nav", {className: "pager", "aria-label": "Pages"}, first, prev, next);

  root.append(heading, form, count, message, el("div", {className: "table-wrap"}, table), pager);

  api.get("/job/list", {per_page: 1000}).then((page) => {
    fill(classes, page.data.map((entry) => el("option", {value: entry.qual_name})));
  }).catch(() => {});

  function changed() {
    filters.search = search.value.trim();
    filters.qualName = qualName.value.trim();
    filters.perPage = Number(perPage.value);
    const params = new URLSearchParams();
    if (filters.search) params.set("search", filters.search);
    if (filters.state.length) params.set("state", filters.state.join(","));
    if (filters.qualName) params.set("qual_name", filters.qualName);
    if (filters.perPage !== 25) params.set("per_page", String(filters.perPage));
    const text = params.toString();
    history.replaceState(null, "", `#/${mode}${text ? "?" + text : ""}`);
    cursor = {};
    load();
  }

  function requestQuery() {
    const q = {per_page: filters.perPage, search: filters.search || undefined,
               state: filters.state.length ? filters.state.join(",") : undefined, ...cursor};
    if (filters.qualName) {
      if (mode === "journal") q.qual_name = filters.qualName;
      else q.filter = {qual_name: filters.qualName};
    }
    return q;
  }

  async function load() {
    if (loading) { loading.again = true; return; }
    loading = {again: false};
    try {
      const page = await api.get(`/job/${mode}`, requestQuery());
      if (gone) return;
      reply = page;
      items = page.data;
      notice(message, "");
      draw();
    } catch (error) {
      if (!gone) notice(message, error.message, "error");
    } finally {
      const again = loading.again;
      loading = null;
      if (again && !gone) load();
    }
  }
  // Changes are shown at once; the page is re-read once they quieten down (for order and membership).
  const refresh = debounce(load, 300, 1500);

  function draw() {
    rows = new Map();
    fill(body, items.map((job) => {
      const row = jobRow(job, mode);
      rows.set(job._id, {row, job});
      return row;
    }));
    if (!items.length) body.append(el("tr", {className: "empty"}, el("td", {colSpan: 8, className: "empty"},
      mode === "queue" ? "No live jobs." : "No finished jobs.")));
    drawCount();
  }

  function drawCount() {
    const total = `${reply.total_count}${reply.total_exact === false ? "+" : ""}`;
    count.textContent = `${total} ${mode === "queue" ? "live" : "finished"} job${reply.total_count === 1 ? "" : "s"}` +
      (reply.page !== null && reply.page !== undefined && reply.page_count > 1
        ? `, page ${reply.page + 1} of ${reply.page_count}${reply.total_exact === false ? "+" : ""}` : "");
    prev.disabled = !reply.prev;
    next.disabled = !reply.next;
    first.disabled = !cursor.after && !cursor.before;
  }

  function matches(job) {
    if (filters.state.length && !filters.state.includes(job.state)) return false;
    if (filters.qualName && job.qual_name !== filters.qualName) return false;
    return true;
  }

  const offJob = stream.subscribe("job", (job) => {
    const known = rows.get(job._id);
    if (!reply) return;
    if (mode === "queue") {
      if (known) {
        if (job.journal || !matches(job) || job.removed_at) {
          known.row.remove();
          rows.delete(job._id);
          items = items.filter((item) => item._id !== job._id);
          reply.total_count = Math.max(0, reply.total_count - 1);
          drawCount();
          refresh();
        } else if ((job.version ?? 0) >= (known.job.version ?? 0)) {
          Object.assign(known.job, job);
          const row = jobRow(known.job, mode);
          known.row.replaceWith(row);
          known.row = row;
          if (filters.search) refresh();
        }
      } else if (!job.journal && matches(job)) {
        // A new job: shown at once where the page has room (the re-read puts it in its place).
        if (job.version === 1 && !cursor.after && !cursor.before && !filters.search) {
          reply.total_count += 1;
          if (items.length < filters.perPage) {
            items.push(job);
            const row = jobRow(job, mode);
            rows.set(job._id, {row, job});
            body.querySelector("tr.empty")?.remove();
            body.append(row);
          }
          drawCount();
        }
        refresh();
      }
    } else if (job.journal && matches(job) && !cursor.after && !cursor.before) {
      refresh();
    } else if (known && (job.version ?? 0) > (known.job.version ?? 0)) {
      refresh(); // restarted or removed: its journal entry changed
    }
  });
  const offReset = stream.subscribe("reset", refresh);
  load();
  return () => { gone = true; offJob(); offReset(); clearTimeout(typing); };
}

/** One job as a table row (shared by the queue, the journal and the worker view). */
export function jobRow(job, mode = "queue") {
  const prog = job.prog || {};
  const value = typeof prog.value === "number" ? prog.value : 0;
  const progress = el("td", {className: "progress"},
    el("progress", {max: 1, value, "aria-label": `progress ${Math.round(value * 100)}%`}),
    el("span", {className: "prog-message"}, prog.message ? ` ${prog.message}` : ` ${Math.round(value * 100)}%`));
  const enqueued = job.enqueued || {};
  return el("tr", {dataset: {id: job._id, state: job.state}},
    el("td", {}, el("a", {href: `#/job/${job._id}`, className: "mono"}, job._id.slice(-8))),
    el("td", {className: "class"}, job.qual_name),
    el("td", {}, badge(job.state), job.removed_at ? el("span", {className: "badge removed"}, "removed") : null),
    progress,
    el("td", {className: "num"}, job.priority ?? ""),
    el("td", {}, when(mode === "queue" ? enqueued.at : job.finished_at)),
    el("td", {}, enqueued.username || ""),
    el("td", {className: mode === "queue" ? "mono" : "num"},
      mode === "queue" ? (job.locked && job.locked.worker) || "" : duration(job.runtime)));
}
