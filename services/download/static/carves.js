import { api, query } from "./api.js";
import {
  carveLink, deviceName, h, progressBar, replace, size, statusBadge, when,
} from "./dom.js";
import { VERDICTS, verdictBadge } from "./triage.js";

const STATUSES = ["", "receiving", "complete", "failed", "expired", "deleted"];
const FILTERS = ["status", "verdict", "since", "device", "request_id", "q"];
const PAGE = 50;
const POLL_MS = 1000;
const IDLE_POLL_MS = 3000;

function row(carve) {
  return h(
    "tr",
    { "data-carve": carve.carve_id },
    h("td", {}, carveLink(carve.carve_id)),
    h("td", {}, statusBadge(carve.status)),
    h("td", {}, progressBar(carve)),
    h("td", { class: "num" }, size(carve.carve_size)),
    h("td", {}, carve.compression || "-"),
    h("td", { class: "device" }, deviceName(carve)),
    h("td", { class: "mono" }, carve.request_id),
    h("td", {}, when(carve.created_at)),
    h("td", {}, when(carve.completed_at)),
    h("td", { class: "verdict-cell" }, verdictBadge(carve)),
  );
}

function filterForm(params, go) {
  const inputs = {
    status: h("select", { name: "status" }, STATUSES.map((s) => h("option", { value: s }, s || "any"))),
    verdict: h("select", { name: "verdict" }, VERDICTS.map((v) => h("option", { value: v }, v || "any"))),
    since: h("input", { name: "since", type: "datetime-local", step: "1" }),
    device: h("input", { name: "device", placeholder: "device CN or fingerprint" }),
    request_id: h("input", { name: "request_id", placeholder: "request id" }),
    q: h("input", { name: "q", placeholder: "carve id prefix" }),
  };
  inputs.status.value = params.get("status") || "";
  inputs.verdict.value = params.get("verdict") || "";
  const since = params.get("since");
  inputs.since.value = since ? since.replace(/Z$/, "").slice(0, 19) : "";
  for (const name of ["device", "request_id", "q"]) inputs[name].value = params.get(name) || "";
  const form = h(
    "form",
    { class: "filters", id: "filters" },
    h("label", {}, "Status", inputs.status),
    h("label", {}, "Verdict", inputs.verdict),
    h("label", {}, "Created since (UTC)", inputs.since),
    h("label", {}, "Device", inputs.device),
    h("label", {}, "Request id", inputs.request_id),
    h("label", {}, "Search", inputs.q),
    h("button", { type: "submit", class: "primary" }, "Filter"),
    h("button", { type: "reset" }, "Clear"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = {};
    for (const name of FILTERS) next[name] = inputs[name].value.trim();
    if (next.since) next.since = `${next.since.length === 16 ? `${next.since}:00` : next.since}Z`;
    go(`#/carves${query(next)}`);
  });
  form.addEventListener("reset", () => go("#/carves"));
  return form;
}

export function renderCarves(view, params, { go, fail, later }) {
  const cursors = [];
  let cursor = params.get("cursor") || null;
  const body = h("tbody", { id: "carve-rows" });
  const count = h("span", { class: "muted", id: "carve-count" });
  const prev = h("button", { type: "button", id: "prev-page" }, "← Newer");
  const next = h("button", { type: "button", id: "next-page" }, "Older →");
  let nextCursor = null;
  const table = h(
    "table",
    { id: "carves" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Carve", "Status", "Progress", "Size", "Compression", "Device", "Request id", "Created", "Completed", "Verdict"].map(
          (t) => h("th", {}, t),
        ),
      ),
    ),
    body,
  );
  replace(
    view,
    h("h1", {}, "Carves"),
    filterForm(params, go),
    table,
    h("div", { class: "pager" }, prev, next, count),
  );
  const load = async () => {
    const filters = {};
    for (const name of FILTERS) filters[name] = params.get(name);
    let page;
    try {
      page = await api(`/api/v1/carves${query({ ...filters, cursor, limit: PAGE })}`);
    } catch (error) {
      fail(error);
      return;
    }
    replace(body, page.carves.length ? page.carves.map(row) : h("tr", {}, h("td", { colspan: "10", class: "muted" }, "No carves match.")));
    nextCursor = page.next_cursor;
    next.disabled = !nextCursor;
    prev.disabled = cursors.length === 0;
    replace(count, `${page.carves.length} shown`);
    // Live: fast while a carve is arriving; the first page also watches for new ones.
    if (page.carves.some((c) => c.status === "receiving")) later(load, POLL_MS);
    else if (cursor === null) later(load, IDLE_POLL_MS);
  };
  next.addEventListener("click", () => {
    if (!nextCursor) return;
    cursors.push(cursor);
    cursor = nextCursor;
    load();
  });
  prev.addEventListener("click", () => {
    if (!cursors.length) return;
    cursor = cursors.pop();
    load();
  });
  load();
}
