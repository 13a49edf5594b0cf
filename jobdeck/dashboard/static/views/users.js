// Users and permissions (admins). Lists GET /user when the server offers it; users are managed
// with the command line (jobdeck user ...), which the page says.

import * as api from "../api.js";
import {el, fill, notice, when} from "../dom.js";
import {isAdmin} from "../perms.js";

export function render(root, ctx) {
  let gone = false;
  const message = el("div", {role: "alert"});
  const body = el("div");
  root.append(el("h1", {}, "Users and permissions"), message,
    el("section", {className: "card"}, el("h2", {}, "You"), el("dl", {className: "facts"},
      el("dt", {}, "Name"), el("dd", {}, ctx.user.name),
      el("dt", {}, "Roles"), el("dd", {}, (ctx.user.roles || []).join(", ") || "none"),
      el("dt", {}, "Permissions"), el("dd", {}, (ctx.user.perms || []).join(", ") || "none"))),
    el("section", {className: "card"}, el("h2", {}, "All users"), body),
    el("section", {className: "card"}, el("h2", {}, "How permissions read"),
      el("p", {}, el("code", {}, "job:<glob>:r"), " lets a user see and follow the jobs whose class matches the glob; ",
        el("code", {}, "job:<glob>:x"), " also enqueue, kill, restart and remove them; the role ",
        el("code", {}, "admin"), " may do everything. For example ", el("code", {}, "job:jobs.example.*:x"), "."),
      el("p", {}, "Change them with the command line, e.g. ",
        el("code", {}, "jobdeck user perm alice --grant 'job:reports.*:r'"), " or ",
        el("code", {}, "jobdeck user add bob --perm 'job:*:r'"), ".")));
  if (!isAdmin(ctx.user)) {
    fill(body, el("p", {}, "Only admins see the other users."));
    return null;
  }
  api.get("/user", {per_page: 1000}).then((reply) => {
    if (gone) return;
    const users = Array.isArray(reply.data) ? reply.data : [];
    fill(body, el("div", {className: "table-wrap"}, el("table", {},
      el("thead", {}, el("tr", {}, ["Name", "Active", "Roles", "Permissions", "Created"].map((t) => el("th", {scope: "col"}, t)))),
      el("tbody", {}, users.map((u) => el("tr", {},
        el("td", {}, u.name), el("td", {}, u.active === false ? "disabled" : "yes"),
        el("td", {}, (u.roles || []).join(", ")), el("td", {}, (u.perms || []).join(", ")),
        el("td", {}, when(u.created))))))));
  }).catch((error) => {
    if (gone) return;
    if (error.status === 404) {
      fill(body, el("p", {}, "This server has no HTTP route for the user list; ",
                     el("code", {}, "jobdeck user list"), " shows them."));
    } else notice(message, error.message, "error");
  });
  return () => { gone = true; };
}
