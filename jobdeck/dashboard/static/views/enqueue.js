// Enqueue a job: a form generated from the registry's argument schema (GET /job/list: schema.params
// with name, type, required, default). Types are checked here first, and again by the server,
// whose message is shown when it refuses (400).

import * as api from "../api.js";
import {el, fill, notice} from "../dom.js";

const TYPE_NAMES = {str: "text", int: "integer", float: "number", bool: "true or false", list: "JSON list",
                    dict: "JSON object", any: "JSON or text"};

export function render(root, ctx, {qualName}) {
  let entries = [];
  let gone = false;
  const message = el("div", {role: "alert", "aria-live": "assertive"});
  const select = el("select", {id: "enqueue-class", required: true});
  const doc = el("p", {className: "muted doc"});
  const fields = el("div", {className: "params"});
  const priority = el("input", {id: "enqueue-priority", name: "priority", inputMode: "numeric",
                                placeholder: "class default"});
  const delay = el("input", {id: "enqueue-delay", name: "delay", inputMode: "decimal", placeholder: "0"});
  const submit = el("button", {type: "submit", className: "primary"}, "Enqueue");
  const form = el("form", {className: "card enqueue", "aria-labelledby": "enqueue-title", noValidate: true},
    el("div", {className: "field"}, el("label", {for: "enqueue-class"}, "Job class"), select), doc,
    el("fieldset", {}, el("legend", {}, "Arguments"), fields),
    el("fieldset", {className: "options"}, el("legend", {}, "Options"),
      el("div", {className: "field"}, el("label", {for: "enqueue-priority"}, "Priority (integer)"), priority),
      el("div", {className: "field"}, el("label", {for: "enqueue-delay"}, "Delay (seconds)"), delay)),
    submit, message);
  root.append(el("h1", {id: "enqueue-title"}, "Enqueue a job"), form);

  api.get("/job/list", {per_page: 1000}).then((page) => {
    if (gone) return;
    entries = page.data.filter((entry) => entry.valid !== false);
    if (!entries.length) {
      notice(message, "You may not enqueue any job class (or none is registered).", "info");
      submit.disabled = true;
      return;
    }
    fill(select, entries.map((entry) => el("option", {value: entry.qual_name,
                                                      selected: entry.qual_name === qualName}, entry.qual_name)));
    drawFields();
  }).catch((error) => notice(message, error.message, "error"));
  select.addEventListener("change", drawFields);

  function entry() {
    return entries.find((e) => e.qual_name === select.value);
  }

  function drawFields() {
    const current = entry();
    if (!current) return;
    history.replaceState(null, "", `#/enqueue/${current.qual_name}`);
    doc.textContent = current.doc || "";
    const params = current.schema?.params || [];
    fill(fields, params.length ? params.map(paramField) : el("p", {className: "muted"}, "No arguments."),
         current.schema?.extra ? el("p", {className: "muted"}, "It takes further arguments (**kwargs); not offered here.")
           : null);
  }

  function paramField(param) {
    const id = `arg-${param.name}`;
    const hint = `${TYPE_NAMES[param.type] || param.type}${param.required ? ", required" : ""}` +
      ("default" in param ? `, default ${JSON.stringify(param.default)}` : "");
    let input;
    if (param.type === "bool") {
      input = el("select", {id, name: param.name},
        el("option", {value: ""}, "default" in param ? `default (${param.default})` : "(none)"),
        el("option", {value: "true"}, "true"), el("option", {value: "false"}, "false"));
    } else if (["list", "dict", "any"].includes(param.type)) {
      input = el("textarea", {id, name: param.name, rows: 2,
                              placeholder: "default" in param ? JSON.stringify(param.default) : ""});
    } else {
      input = el("input", {id, name: param.name, inputMode: param.type === "str" ? "text" : "decimal",
                           placeholder: "default" in param && param.default !== null ? String(param.default) : ""});
    }
    input.required = Boolean(param.required);
    input.dataset.type = param.type;
    input.dataset.nullable = param.nullable ? "1" : "";
    const error = el("span", {className: "field-error", id: `${id}-error`, "aria-live": "polite"});
    input.setAttribute("aria-describedby", `${id}-hint ${id}-error`);
    return el("div", {className: "field"},
      el("label", {for: id}, param.name, param.required ? el("abbr", {title: "required"}, " *") : null),
      input, el("span", {className: "hint", id: `${id}-hint`}, hint), error);
  }

  /** The value of one argument's input, or undefined to leave it out; throws Error with the reason. */
  function readValue(input) {
    const text = input.value.trim();
    const type = input.dataset.type;
    if (text === "") {
      if (input.required) throw new Error("required");
      return undefined;
    }
    if (text === "null" && input.dataset.nullable && type !== "str") return null;
    switch (type) {
      case "str": return input.value;
      case "int": {
        if (!/^[-+]?\d+$/.test(text)) throw new Error("must be an integer");
        return Number(text);
      }
      case "float": {
        const number = Number(text);
        if (!Number.isFinite(number)) throw new Error("must be a number");
        return number;
      }
      case "bool": return text === "true";
      case "list": case "dict": {
        let value;
        try { value = JSON.parse(text); } catch { throw new Error(`must be ${TYPE_NAMES[type]}`); }
        if (type === "list" ? !Array.isArray(value) : (typeof value !== "object" || value === null || Array.isArray(value)))
          throw new Error(`must be ${TYPE_NAMES[type]}`);
        return value;
      }
      default:
        try { return JSON.parse(text); } catch { return input.value; }
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    notice(message, "");
    const current = entry();
    if (!current) return;
    const args = {};
    let bad = 0;
    for (const input of fields.querySelectorAll("input, select, textarea")) {
      const error = document.getElementById(`${input.id}-error`);
      try {
        const value = readValue(input);
        if (value !== undefined) args[input.name] = value;
        error.textContent = "";
        input.removeAttribute("aria-invalid");
      } catch (problem) {
        error.textContent = ` ${input.name} ${problem.message}`;
        input.setAttribute("aria-invalid", "true");
        bad += 1;
      }
    }
    const body = {qual_name: current.qual_name, args, follow: false};
    if (priority.value.trim()) {
      if (!/^[-+]?\d+$/.test(priority.value.trim())) {
        notice(message, "Priority must be an integer.", "error");
        return;
      }
      body.priority = Number(priority.value.trim());
    }
    if (delay.value.trim()) {
      const seconds = Number(delay.value.trim());
      if (!Number.isFinite(seconds) || seconds < 0) {
        notice(message, "Delay must be a number of seconds, 0 or more.", "error");
        return;
      }
      body.delay = seconds;
    }
    if (bad) {
      notice(message, `Check the argument${bad > 1 ? "s" : ""} marked above.`, "error");
      return;
    }
    submit.disabled = true;
    try {
      const reply = await api.post("/job", body);
      ctx.navigate(`#/job/${reply.data}`);
    } catch (error) {
      notice(message, `The server refused: ${error.message}`, "error");
    } finally {
      submit.disabled = false;
    }
  });
  return () => { gone = true; };
}
