// The dashboard's entry: who is logged in, the hash router (#/queue, #/job/<id>, ...), the header.

import * as api from "./api.js";
import * as stream from "./stream.js";
import {el, fill} from "./dom.js";
import {isAdmin} from "./perms.js";
import * as login from "./views/login.js";
import * as queue from "./views/queue.js";
import * as job from "./views/job.js";
import * as enqueue from "./views/enqueue.js";
import * as workers from "./views/workers.js";
import * as stats from "./views/stats.js";
import * as users from "./views/users.js";
import * as account from "./views/account.js";

const VIEWS = {
  queue: (root, ctx, rest, query) => queue.render(root, ctx, {mode: "queue", query}),
  journal: (root, ctx, rest, query) => queue.render(root, ctx, {mode: "journal", query}),
  job: (root, ctx, rest) => job.render(root, ctx, {id: rest}),
  enqueue: (root, ctx, rest) => enqueue.render(root, ctx, {qualName: rest}),
  workers: (root, ctx) => workers.render(root, ctx),
  stats: (root, ctx) => stats.render(root, ctx),
  users: (root, ctx) => users.render(root, ctx),
  account: (root, ctx) => account.render(root, ctx),
};
const TITLES = {queue: "Queue", journal: "Journal", job: "Job", enqueue: "Enqueue", workers: "Workers",
                stats: "Stats", users: "Users", account: "Account", login: "Log in"};

const main = document.getElementById("main");
const ctx = {user: null, navigate, logout};
let cleanup = null;
let wanted = null; // where to go after logging in

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = hash.split("?");
  const [name, ...rest] = path.split("/");
  return {name: name || "queue", rest: rest.map(decodeURIComponent).join("/"), query: new URLSearchParams(search)};
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function showUser() {
  const user = ctx.user;
  document.getElementById("nav").hidden = !user;
  document.getElementById("who").hidden = !user;
  document.getElementById("nav-users").hidden = !isAdmin(user);
  const name = document.getElementById("user");
  if (!user) {
    fill(name); // nothing of the last user stays in the page
    return;
  }
  const rights = isAdmin(user) ? "admin" : (user.perms || []).join(", ") || "no permissions";
  fill(name, el("span", {className: "name"}, user.name), " ", el("span", {className: "rights"}, `(${rights})`));
  name.title = `Your account: sessions and API tokens. Roles: ${(user.roles || []).join(", ") || "none"}; ` +
    `permissions: ${(user.perms || []).join(", ") || "none"}`;
}

function route() {
  if (cleanup) {
    try { cleanup(); } catch (error) { console.error(error); }
    cleanup = null;
  }
  const {name, rest, query} = parseHash();
  fill(main);
  const root = el("div", {className: `view view-${name}`});
  main.append(root);
  for (const link of document.querySelectorAll("#nav a[data-view], #user")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!ctx.user || name === "login") {
    if (name !== "login") wanted = location.hash;
    document.title = "Log in - jobdeck";
    cleanup = login.render(root, ctx, {onLogin: loggedIn});
    return;
  }
  const view = VIEWS[name];
  document.title = `${TITLES[name] || "Not found"} - jobdeck`;
  if (!view) {
    root.append(el("h1", {}, "Not found"), el("p", {}, "No such view. ", el("a", {href: "#/queue"}, "Go to the queue")));
    return;
  }
  cleanup = view(root, ctx, rest, query) || null;
}

async function loggedIn(user) {
  ctx.user = user;
  showUser();
  stream.start();
  const target = wanted && !wanted.startsWith("#/login") ? wanted : "#/queue";
  wanted = null;
  navigate(target);
}

async function logout() {
  try {
    await api.post("/logout");
  } catch (error) {
    console.warn("logout:", error.message);
  }
  loggedOut();
}

function loggedOut() {
  stream.stop();
  ctx.user = null;
  showUser();
  navigate("#/login");
}

async function boot() {
  document.getElementById("logout").addEventListener("click", logout);
  const status = document.getElementById("stream-status");
  const LABELS = {off: "", connecting: "connecting...", live: "live", reconnecting: "reconnecting...",
                  polling: "polling every 2 s"};
  stream.subscribe("status", (value) => {
    status.textContent = LABELS[value] ?? value;
    status.className = `stream stream-${value}`;
  });
  api.onUnauthorized(() => {
    if (ctx.user) loggedOut();
  });
  window.addEventListener("hashchange", route);
  try {
    ctx.user = (await api.get("/whoami")).data;
    showUser();
    stream.start();
  } catch (error) {
    ctx.user = null;
    if (error.status !== 401) console.warn("whoami:", error.message);
  }
  route();
}

boot();
