// Users and permissions (admins): the users of GET /user, added with POST /user, changed with
// PUT /user/<name> (grant, revoke, admin, active, password) and removed with DELETE /user/<name>.
// A server without these routes (404) is managed with the command line (jobdeck user ...), which
// the page then says. The server checks every request: the page only hides what it would refuse.

import * as api from "../api.js";
import {el, fill, notice, when} from "../dom.js";
import {isAdmin} from "../perms.js";

/** A labelled input in a .field block. */
function field(label, input, hint) {
  return el("div", {className: "field"}, el("label", {for: input.id}, label), input,
    hint ? el("span", {className: "hint"}, hint) : null);
}

/** The permissions written in a text field: separated by spaces or commas. */
function perms(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

const path = (name) => `/user/${encodeURIComponent(name)}`;

export function render(root, ctx) {
  let gone = false;
  let selected = null; // the name of the user shown in the editor
  const message = el("div", {role: "alert"});
  const status = el("div", {"aria-live": "polite"});
  const body = el("div");
  const editor = el("section", {className: "card", hidden: true, "aria-labelledby": "user-edit-title"});
  const adding = el("section", {className: "card", hidden: true}, el("h2", {}, "Add a user"));
  root.append(el("h1", {}, "Users and permissions"), message, status,
    el("section", {className: "card"}, el("h2", {}, "You"), el("dl", {className: "facts"},
      el("dt", {}, "Name"), el("dd", {}, ctx.user.name),
      el("dt", {}, "Roles"), el("dd", {}, (ctx.user.roles || []).join(", ") || "none"),
      el("dt", {}, "Permissions"), el("dd", {}, (ctx.user.perms || []).join(", ") || "none"))),
    el("section", {className: "card"}, el("h2", {}, "All users"), body), editor, adding,
    el("section", {className: "card"}, el("h2", {}, "How permissions read"),
      el("p", {}, el("code", {}, "job:<glob>:r"), " lets a user see and follow the jobs whose class matches the glob; ",
        el("code", {}, "job:<glob>:x"), " also enqueue, kill, restart and remove them; the role ",
        el("code", {}, "admin"), " may do everything. For example ", el("code", {}, "job:jobs.example.*:x"), "."),
      el("p", {}, "Admins change them here, or with the command line, e.g. ",
        el("code", {}, "jobdeck user perm alice --grant 'job:reports.*:r'"), " or ",
        el("code", {}, "jobdeck user add bob --perm 'job:*:r'"), ".")));
  if (!isAdmin(ctx.user)) {
    fill(body, el("p", {}, "Only admins see the other users."));
    return null;
  }

  /** Run a change; say what happened, and show the users as they are now. */
  async function change(button, work, done) {
    if (button) button.disabled = true;
    notice(message, "");
    try {
      await work();
      if (gone) return;
      notice(status, done);
    } catch (error) {
      if (!gone) notice(message, error.message, "error");
    } finally {
      if (button) button.disabled = false;
    }
    load();
  }

  // -- adding ---------------------------------------------------------------
  const newName = el("input", {id: "new-user-name", required: true, autocomplete: "off", maxLength: 64});
  const newPassword = el("input", {id: "new-user-password", type: "password", required: true,
                                   autocomplete: "new-password"});
  const newPerms = el("input", {id: "new-user-perms", autocomplete: "off", placeholder: "job:jobs.example.*:x"});
  const newAdmin = el("input", {id: "new-user-admin", type: "checkbox"});
  adding.append(el("form", {onsubmit: (event) => {
    event.preventDefault();
    const name = newName.value.trim();
    change(event.submitter, async () => {
      await api.post("/user", {name, password: newPassword.value, admin: newAdmin.checked, perms: perms(newPerms.value)});
      newName.value = newPassword.value = newPerms.value = "";
      newAdmin.checked = false;
    }, `user ${name} added`);
  }},
  field("New user's name", newName, "1-64 letters, digits, _ . @ -"),
  field("New user's password", newPassword),
  field("New user's permissions", newPerms, "separated by spaces, e.g. job:jobs.example.*:x job:reports.*:r"),
  el("div", {className: "field"}, el("label", {}, newAdmin, " Admin (may do everything, users included)")),
  el("button", {type: "submit", className: "primary"}, "Add user")));

  // -- the list ---------------------------------------------------------------
  function table(list) {
    return el("div", {className: "table-wrap"}, el("table", {className: "users"},
      el("thead", {}, el("tr", {}, ["Name", "Active", "Roles", "Permissions", "Created", ""].map((t) => el("th", {scope: "col"}, t)))),
      el("tbody", {}, list.map((u) => el("tr", {dataset: {name: u.name}},
        el("td", {}, u.name), el("td", {}, u.active === false ? "disabled" : "yes"),
        el("td", {}, (u.roles || []).join(", ")), el("td", {className: "mono"}, (u.perms || []).join(" ")),
        el("td", {}, when(u.created)),
        el("td", {}, el("button", {type: "button", "aria-label": `Edit ${u.name}`,
                                   onclick: () => { selected = u.name; edit(u); editor.scrollIntoView?.(); }},
                        "Edit")))))));
  }

  // -- one user -------------------------------------------------------------
  function edit(user) {
    if (!user) {
      editor.hidden = true;
      selected = null;
      return;
    }
    const put = (button, body, done) => change(button, () => api.put(path(user.name), body), done);
    const grant = el("input", {id: "user-grant", autocomplete: "off", placeholder: "job:reports.*:r"});
    const password = el("input", {id: "user-password", type: "password", autocomplete: "new-password"});
    const admin = (user.roles || []).includes("admin");
    const active = user.active !== false;
    fill(editor, el("h2", {id: "user-edit-title"}, `User ${user.name}`),
      el("h3", {}, "Permissions"),
      (user.perms || []).length
        ? el("ul", {className: "perms"}, user.perms.map((perm) => el("li", {}, el("code", {}, perm), " ",
            el("button", {type: "button", className: "danger", "aria-label": `Revoke ${perm}`,
                          onclick: (e) => put(e.currentTarget, {revoke: [perm]}, `${perm} revoked from ${user.name}`)},
               "Revoke"))))
        : el("p", {}, "None."),
      el("form", {onsubmit: (event) => {
        event.preventDefault();
        const wanted = perms(grant.value);
        put(event.submitter, {grant: wanted}, `${wanted.join(" ")} granted to ${user.name}`);
      }}, field("Grant permissions", grant, "separated by spaces"), el("button", {type: "submit"}, "Grant")),
      el("h3", {}, "Access"),
      el("div", {className: "controls", role: "group", "aria-label": `Access of ${user.name}`},
        el("button", {type: "button", "aria-pressed": String(admin),
                      onclick: (e) => put(e.currentTarget, {admin: !admin},
                                          `${user.name} ${admin ? "is no longer" : "is now"} an admin`)},
           admin ? "Take the admin role" : "Make admin"),
        el("button", {type: "button", className: active ? "danger" : "",
                      onclick: (e) => put(e.currentTarget, {active: !active},
                                          `${user.name} ${active ? "disabled" : "enabled"}`)},
           active ? "Disable" : "Enable"),
        el("button", {type: "button", className: "danger", onclick: (e) => {
          if (!window.confirm(`Remove user ${user.name} for good?`)) return;
          change(e.currentTarget, () => api.request("DELETE", path(user.name)), `user ${user.name} removed`);
        }}, "Remove user")),
      el("form", {onsubmit: (event) => {
        event.preventDefault();
        put(event.submitter, {password: password.value}, `password of ${user.name} changed; its tokens stop working`);
      }}, field("New password", password, "the user's login tokens stop working"),
      el("button", {type: "submit"}, "Set password")));
    editor.hidden = false;
  }

  async function load() {
    try {
      const users = (await api.get("/user")).data || [];
      if (gone) return;
      adding.hidden = false;
      fill(body, table(users));
      if (selected !== null) edit(users.find((u) => u.name === selected));
    } catch (error) {
      if (gone) return;
      if (error.status === 404 && !body.querySelector("table")) {
        adding.hidden = true;
        fill(body, el("p", {}, "This server has no HTTP route for users; ",
                       el("code", {}, "jobdeck user list"), " shows them and ",
                       el("code", {}, "jobdeck user ..."), " manages them."));
      } else notice(message, error.message, "error");
    }
  }

  load();
  return () => { gone = true; };
}
