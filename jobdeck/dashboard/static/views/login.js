// Log in with the existing cookie login: POST /login {username, password, cookie_only: true}.
// The token stays in the HttpOnly cookie; this page never sees it, nor the password afterwards.

import * as api from "../api.js";
import {el, notice} from "../dom.js";

export function render(root, ctx, {onLogin}) {
  const message = el("div", {role: "alert", "aria-live": "assertive"});
  const username = el("input", {id: "login-username", name: "username", autocomplete: "username", required: true});
  const password = el("input", {id: "login-password", name: "password", type: "password",
                                autocomplete: "current-password", required: true});
  const button = el("button", {type: "submit", className: "primary"}, "Log in");
  const form = el("form", {className: "card login", "aria-labelledby": "login-title"},
    el("h1", {id: "login-title"}, "Log in to jobdeck"),
    el("label", {for: "login-username"}, "User name"), username,
    el("label", {for: "login-password"}, "Password"), password,
    button, message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    notice(message, "");
    try {
      await api.post("/login", {username: username.value, password: password.value, cookie_only: true});
      password.value = "";
      const user = (await api.get("/whoami")).data;
      onLogin(user);
    } catch (error) {
      notice(message, error.message, "error");
      password.select();
    } finally {
      button.disabled = false;
    }
  });
  root.append(form);
  username.focus();
  return null;
}
