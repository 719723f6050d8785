// The one origin the console talks to: the download service's API, token in a header.
// The token lives in sessionStorage (gone with the tab), never in a URL, cookie or
// localStorage. Downloads go through single-use tickets, so no URL ever carries the token.
// Requests carry no cookies, except the two single sign-on calls (cookies: true): they
// carry the sign-in's nonce cookie, which ties the provider's answer to this browser.

import { askJustification, withJustification } from "./justify.js";

const KEY = "carve-console-token";

export const session = {
  me: null,
  get token() { return sessionStorage.getItem(KEY); },
  set(token) { sessionStorage.setItem(KEY, token); },
  clear() { sessionStorage.removeItem(KEY); this.me = null; },
};

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export async function api(path, { method = "GET", body, auth = true, cookies = false } = {}) {
  const headers = { Accept: "application/json" };
  if (auth && session.token) headers["X-Vault-Token"] = session.token;
  // Every POST says JSON, with a body or without: the API refuses any other (a form on
  // another site could send those).
  if (body !== undefined || method === "POST") headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: cookies ? "same-origin" : "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, { error: "the download service cannot be reached", code: "network" });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text.slice(0, 300) };
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// What a responder should read for each failure: a title, then the server's own message.
export function explain(error) {
  const status = error.status;
  const detail = error.message;
  const titles = {
    0: "The download service cannot be reached",
    400: "The request was refused (400)",
    401: "Not signed in (401): the token is missing, expired or revoked",
    403: "Forbidden (403): your Vault token does not carry the policy this needs",
    404: "Not found (404)",
    409: "Not available yet (409)",
    410: "Gone (410): the carve's bytes were deleted, or it failed",
    416: "Range not satisfiable (416)",
    422: "The archive cannot be read (422)",
    429: "Too many attempts (429): wait a minute",
    503: "A backend is unavailable (503): retry shortly",
  };
  let title = titles[status] || `Error ${status}`;
  if (status === 410 && error.body.code === "failed") title = "Failed (410): this carve will never complete";
  else if (status === 410 && error.body.status) title = `Gone (410): the carve was ${error.body.status}`;
  return { title, detail };
}

// Asks for a ticket, then lets the browser download through it (Content-Disposition).
// member: null (the archive), a path, or { index } (the listing's position: for names a path
// cannot carry, such as those holding CR or LF).
export async function download(carveId, member = null) {
  const body = member === null ? {} : typeof member === "string" ? { path: member } : member;
  let reason;
  try {
    reason = await askJustification(member === null ? "this archive" : "this file");
  } catch {
    return; // cancelled: nothing to download
  }
  const ticket = await api(`/api/v1/carves/${encodeURIComponent(carveId)}/download-ticket`, {
    method: "POST",
    body,
  });
  const link = document.createElement("a");
  link.href = withJustification(ticket.url, reason);
  link.download = "";
  link.rel = "noopener";
  document.body.append(link);
  link.click();
  link.remove();
}
