// The API client: every request goes to /api/v1 on this origin with the login cookie.
//
// Requests that change something send a JSON body with Content-Type: application/json;
// the browser adds Origin, which the server checks for cookie-authenticated requests (CSRF).

export const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, message, details) {
    super(message);
    this.status = status;
    this.details = details;
  }
}

const listeners = new Set();

/** Called with the error whenever a request answers 401 (logged out, token expired). */
export function onUnauthorized(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** The reply envelope of method path ({data, total_count, next, ...}); throws ApiError. */
export async function request(method, path, {query, body} = {}) {
  let url = BASE + path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value === undefined || value === null || value === "") continue;
      params.set(key, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    const text = params.toString();
    if (text) url += "?" + text;
  }
  const init = {method, credentials: "same-origin", headers: {Accept: "application/json"}};
  if (method !== "GET" && method !== "HEAD") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    throw new ApiError(0, `the server cannot be reached (${error.message})`);
  }
  let reply = null;
  try {
    reply = await response.json();
  } catch {
    reply = null;
  }
  if (!response.ok) {
    const message = (reply && (reply.error || reply.message)) || `${response.status} ${response.statusText}`;
    const error = new ApiError(response.status, message, reply && reply.details);
    if (response.status === 401 && path !== "/login") for (const fn of listeners) fn(error);
    throw error;
  }
  return reply;
}

export const get = (path, query) => request("GET", path, {query});
export const post = (path, body) => request("POST", path, {body});
export const put = (path, body) => request("PUT", path, {body});
