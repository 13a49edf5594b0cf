// Your account (every user): who you are (GET /whoami), your login sessions (GET /session, ended with
// DELETE /session/<id>) and your API tokens for scripts (GET /token, made with POST /token, revoked
// with DELETE /token/<id>). A new token's secret is in POST /token's reply only: it is shown once, in
// this view, and forgotten when the view is left. The server checks every request.

import * as api from "../api.js";
import {el, fill, notice, when} from "../dom.js";
import {isAdmin} from "../perms.js";

const MAX_DAYS = 3650;

/** A labelled input in a .field block. */
function field(label, input, hint) {
  return el("div", {className: "field"}, el("label", {for: input.id}, label), input,
    hint ? el("span", {className: "hint", id: `${input.id}-hint`}, hint) : null);
}

const list = (items) => (items || []).length ? items.join(", ") : "none";

export function render(root, ctx) {
  let gone = false;
  const who = el("dl", {className: "facts"});
  const whoMessage = el("div", {role: "alert"});
  const sessionsMessage = el("div", {role: "alert"});
  const sessionsStatus = el("div", {"aria-live": "polite"});
  const sessionsBody = el("tbody");
  const tokensMessage = el("div", {role: "alert"});
  const tokensStatus = el("div", {"aria-live": "polite"});
  const tokensBody = el("tbody");
  const secretBox = el("div", {className: "secret", hidden: true, "aria-labelledby": "new-token-title"});

  // -- making a token -----------------------------------------------------------
  const name = el("input", {id: "token-name", required: true, autocomplete: "off", maxLength: 64,
                            placeholder: "nightly-report", "aria-describedby": "token-name-hint"});
  const readOnly = el("input", {id: "token-read-only", type: "checkbox"});
  const days = el("input", {id: "token-days", type: "number", min: 1, max: MAX_DAYS, step: 1, value: "90",
                            required: true, inputMode: "numeric", "aria-describedby": "token-days-hint"});
  const never = el("input", {id: "token-never", type: "checkbox",
                             onchange: () => { days.disabled = never.checked; }});
  const create = el("button", {type: "submit", className: "primary"}, "Make token");
  const form = el("form", {className: "token-form", "aria-label": "Make an API token", onsubmit: async (event) => {
    event.preventDefault();
    hideSecret();
    notice(tokensMessage, "");
    notice(tokensStatus, "");
    create.disabled = true;
    const wanted = name.value.trim();
    try {
      const made = (await api.post("/token", {
        name: wanted, read_only: readOnly.checked,
        expires_in_days: never.checked ? null : Number(days.value),
      })).data;
      if (gone) return;
      name.value = "";
      readOnly.checked = false;
      showSecret(made);
      loadTokens();
    } catch (error) {
      if (!gone) {
        notice(tokensMessage, error.message, "error");
        name.focus();
      }
    } finally {
      create.disabled = false;
    }
  }},
  field("Name", name, "1-64 characters, unique among your tokens, e.g. what the script is"),
  el("div", {className: "field"}, el("label", {className: "check"}, readOnly,
    " Read-only (the token may read what you may, and change nothing)")),
  el("div", {className: "field-row"},
    field("Valid for (days)", days, `1 to ${MAX_DAYS}`),
    el("div", {className: "field"}, el("label", {className: "check"}, never, " Never expires (until revoked)"))),
  create, tokensMessage);

  /** The new token's secret, once: a read-only field to copy it from. */
  function showSecret(made) {
    const secret = el("input", {id: "new-token-secret", readOnly: true, value: made.token, className: "mono",
                                autocomplete: "off", "aria-describedby": "new-token-note",
                                onfocus: (event) => event.target.select()});
    secret.spellcheck = false;
    const copied = el("span", {className: "hint", "aria-live": "polite"});
    fill(secretBox,
      el("h3", {id: "new-token-title"}, `Token ${made.name}`),
      el("p", {id: "new-token-note", className: "notice info"},
        el("strong", {}, "Shown only now: "),
        "copy it to the script's secret store. jobdeck keeps only its hash and cannot show it again; ",
        "it disappears when you leave this page. Send it as ", el("code", {}, "Authorization: Bearer <token>"), "."),
      el("div", {className: "field"}, el("label", {for: "new-token-secret"}, "Your new token"),
        el("div", {className: "copy-row"}, secret,
          el("button", {type: "button", onclick: async () => {
            secret.select();
            try {
              await navigator.clipboard.writeText(secret.value);
              copied.textContent = "copied";
            } catch {
              copied.textContent = "select it and copy (Ctrl+C)";
            }
          }}, "Copy"),
          el("button", {type: "button", onclick: hideSecret}, "Done"))),
      copied);
    secretBox.hidden = false;
    secret.focus();
  }

  function hideSecret() {
    fill(secretBox);
    secretBox.hidden = true;
  }

  // -- the page -----------------------------------------------------------------
  root.append(el("h1", {}, "Your account"),
    el("section", {className: "card", "aria-labelledby": "account-who"},
      el("h2", {id: "account-who"}, "Who am I"), whoMessage, who),
    el("section", {className: "card", "aria-labelledby": "account-sessions"},
      el("h2", {id: "account-sessions"}, "Sessions"),
      el("p", {className: "muted"}, "Where you are logged in. End a session you do not recognise, or one left ",
        "open on a shared computer: it is refused at once."),
      sessionsMessage, sessionsStatus,
      el("div", {className: "table-wrap"}, el("table", {className: "sessions"},
        el("caption", {className: "sr-only"}, "Your login sessions"),
        el("thead", {}, el("tr", {}, ["Started", "Last used", "Expires", "From", "Browser", ""].map(
          (t) => el("th", {scope: "col"}, t)))), sessionsBody))),
    el("section", {className: "card", "aria-labelledby": "account-tokens"},
      el("h2", {id: "account-tokens"}, "API tokens"),
      el("p", {className: "muted"}, "Tokens let scripts use the API without your password, with at most your ",
        "rights. Send one as ", el("code", {}, "Authorization: Bearer <token>"), "."),
      tokensStatus,
      el("div", {className: "table-wrap"}, el("table", {className: "tokens"},
        el("caption", {className: "sr-only"}, "Your API tokens"),
        el("thead", {}, el("tr", {}, ["Name", "Access", "Created", "Last used", "Expires", ""].map(
          (t) => el("th", {scope: "col"}, t)))), tokensBody)),
      secretBox,
      el("h3", {}, "Make a token"), form));

  // -- loading --------------------------------------------------------------------
  async function loadWho() {
    try {
      const user = (await api.get("/whoami")).data;
      if (gone) return;
      notice(whoMessage, "");
      fill(who,
        el("dt", {}, "Name"), el("dd", {id: "account-name"}, user.name),
        el("dt", {}, "Admin"), el("dd", {}, isAdmin(user) ? "yes: may do everything" : "no"),
        el("dt", {}, "Roles"), el("dd", {}, list(user.roles)),
        el("dt", {}, "Permissions"), el("dd", {}, (user.perms || []).length
          ? el("ul", {className: "plain"}, user.perms.map((perm) => el("li", {}, el("code", {}, perm))))
          : "none"));
    } catch (error) {
      if (!gone) notice(whoMessage, error.message, "error");
    }
  }

  const notHere = (what, command) => el("td", {colSpan: 6, className: "empty"},
    `This server has no HTTP route for ${what}; `, el("code", {}, command), " shows them.");

  async function loadSessions() {
    try {
      const sessions = (await api.get("/session")).data || [];
      if (gone) return;
      notice(sessionsMessage, "");
      sessions.sort((a, b) => Number(b.current) - Number(a.current) || String(b.created).localeCompare(a.created));
      fill(sessionsBody, sessions.length ? sessions.map((s) => el("tr", {dataset: {id: s._id},
                                                                       className: s.current ? "current" : ""},
        el("td", {}, when(s.created), s.current ? el("span", {className: "badge state-complete current-mark"},
                                                        "this session") : null),
        el("td", {}, when(s.last_used) || "not since"),
        el("td", {}, when(s.expires)),
        el("td", {className: "mono"}, s.address || ""),
        el("td", {className: "small agent"}, s.agent || ""),
        el("td", {}, s.current
          ? el("button", {type: "button", className: "danger", "aria-label": "End this session (log out)",
                          onclick: () => ctx.logout()}, "Log out")
          : el("button", {type: "button", className: "danger",
                          "aria-label": `End the session from ${s.address || "an unknown address"} started ${when(s.created)}`,
                          onclick: (event) => endSession(event.currentTarget, s)}, "End"))))
        : el("tr", {}, el("td", {colSpan: 6, className: "empty"}, "No sessions.")));
    } catch (error) {
      if (gone) return;
      if (error.status === 404) fill(sessionsBody, el("tr", {}, notHere("sessions", "jobdeck token list --sessions")));
      else notice(sessionsMessage, error.message, "error");
    }
  }

  async function endSession(button, session) {
    button.disabled = true;
    notice(sessionsMessage, "");
    try {
      await api.request("DELETE", `/session/${encodeURIComponent(session._id)}`);
      if (gone) return;
      notice(sessionsStatus, `the session from ${session.address || "an unknown address"} ended`);
    } catch (error) {
      if (!gone) notice(sessionsMessage, error.message, "error");
      button.disabled = false;
    }
    loadSessions();
  }

  async function loadTokens() {
    try {
      const tokens = (await api.get("/token")).data || [];
      if (gone) return;
      fill(tokensBody, tokens.length ? tokens.map((t) => el("tr", {dataset: {id: t._id, name: t.name}},
        el("td", {}, t.name),
        el("td", {}, t.read_only ? "read-only" : "your rights"),
        el("td", {}, when(t.created)),
        el("td", {}, when(t.last_used) || "never"),
        el("td", {}, t.expires ? when(t.expires) : "never"),
        el("td", {}, el("button", {type: "button", className: "danger", "aria-label": `Revoke token ${t.name}`,
                                   onclick: (event) => revoke(event.currentTarget, t)}, "Revoke"))))
        : el("tr", {}, el("td", {colSpan: 6, className: "empty"}, "No API tokens yet.")));
    } catch (error) {
      if (gone) return;
      if (error.status === 404) {
        form.hidden = true;
        fill(tokensBody, el("tr", {}, notHere("API tokens", "jobdeck token list")));
      } else notice(tokensMessage, error.message, "error");
    }
  }

  async function revoke(button, token) {
    if (!window.confirm(`Revoke token ${token.name}? Scripts using it are refused at once.`)) return;
    button.disabled = true;
    notice(tokensMessage, "");
    notice(tokensStatus, "");
    try {
      await api.request("DELETE", `/token/${encodeURIComponent(token._id)}`);
      if (gone) return;
      notice(tokensStatus, `token ${token.name} revoked`);
    } catch (error) {
      if (!gone) notice(tokensMessage, error.message, "error");
      button.disabled = false;
    }
    loadTokens();
  }

  loadWho();
  loadSessions();
  loadTokens();
  return () => {
    gone = true;
    hideSecret(); // the secret goes with the view
  };
}
