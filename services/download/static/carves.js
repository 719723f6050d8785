import { api, query } from "./api.js";
import {
  ago, campaignLink, carved, emptyState, h, hostName, progressBar, replace, shortId, size,
  statusBadge,
} from "./dom.js";
import { VERDICTS, verdictBadge } from "./triage.js";

const STATUSES = ["", "receiving", "complete", "failed", "expired", "deleted"];
const FILTERS = ["q", "status", "verdict", "since", "device", "request_id", "case", "sort"];
// The summary counts the server gives, in order; "flagged" is a triage verdict, not a status.
const COUNTED = ["receiving", "complete", "failed", "flagged"];
const COUNT_FILTER = { flagged: "verdict" };
const SORTABLE = { Created: "created", Size: "size", Status: "status", Host: "host" };
const PAGE = 50;
const POLL_MS = 1000;
const IDLE_POLL_MS = 3000;

function row(carve) {
  return h(
    "tr",
    { "data-carve": carve.carve_id },
    h("td", { class: "id" }, shortId(carve.carve_id)),
    h("td", { class: "host" }, hostName(carve)),
    h("td", { class: "what" }, carved(carve)),
    h("td", {}, statusBadge(carve.status), (carve.holds || []).length
      ? h("span", { class: "badge held", title: `legal hold: ${carve.holds.map((x) => x.case).join(", ")}` }, " held")
      : null),
    h("td", {}, progressBar(carve)),
    h("td", { class: "num" }, size(carve.carve_size)),
    h("td", { class: "created" }, ago(carve.created_at)),
    h("td", {}, campaignLink(carve.request_id)),
    h("td", { class: "verdict-cell" }, verdictBadge(carve)),
  );
}

function filterForm(params, go) {
  const inputs = {
    q: h("input", {
      name: "q", type: "search", placeholder: "host, path, carve id or request id  ( / )",
      "aria-label": "Search carves", id: "search", class: "search",
    }),
    status: h("select", { name: "status" }, STATUSES.map((s) => h("option", { value: s }, s || "any"))),
    verdict: h("select", { name: "verdict" }, VERDICTS.map((v) => h("option", { value: v }, v || "any"))),
    since: h("input", { name: "since", type: "datetime-local", step: "1" }),
    device: h("input", { name: "device", placeholder: "device CN or fingerprint" }),
    request_id: h("input", { name: "request_id", placeholder: "request id" }),
    case: h("input", { name: "case", placeholder: "case id", maxlength: "64" }),
  };
  inputs.status.value = params.get("status") || "";
  inputs.verdict.value = params.get("verdict") || "";
  const since = params.get("since");
  inputs.since.value = since ? since.replace(/Z$/, "").slice(0, 19) : "";
  for (const name of ["device", "request_id", "q", "case"]) inputs[name].value = params.get(name) || "";
  const form = h(
    "form",
    { class: "filters", id: "filters", role: "search" },
    h("label", { class: "grow" }, "Search", inputs.q),
    h("label", {}, "Status", inputs.status),
    h("label", {}, "Verdict", inputs.verdict),
    h("label", {}, "Created since (UTC)", inputs.since),
    h("label", {}, "Device", inputs.device),
    h("label", {}, "Request id", inputs.request_id),
    h("label", {}, "Case", inputs.case),
    h("button", { type: "submit", class: "primary" }, "Filter"),
    h("button", { type: "reset", id: "clear-filters" }, "Clear"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = { sort: params.get("sort") };
    for (const name of FILTERS.filter((f) => f !== "sort")) next[name] = inputs[name].value.trim();
    if (next.since) next.since = `${next.since.length === 16 ? `${next.since}:00` : next.since}Z`;
    go(`#/carves${query(next)}`);
  });
  form.addEventListener("reset", () => go("#/carves"));
  return { form, search: inputs.q };
}

function header(params, go) {
  const current = params.get("sort") || "-created";
  return Object.entries({ Carve: null, Host: "host", Carved: null, Status: "status", Progress: null, Size: "size", Created: "created", Request: null, Verdict: null })
    .map(([title, key]) => {
      if (!key || !Object.values(SORTABLE).includes(key)) return h("th", { scope: "col" }, title);
      const active = current.replace(/^-/, "") === key;
      const descending = current.startsWith("-");
      const next = active && !descending ? `-${key}` : key;
      const button = h("button", { type: "button", class: "sort", "data-sort": key, title: `Sort by ${title.toLowerCase()}` },
        title, active ? (descending ? " ▼" : " ▲") : "");
      button.addEventListener("click", () => {
        const all = Object.fromEntries(FILTERS.map((f) => [f, params.get(f)]));
        go(`#/carves${query({ ...all, sort: next })}`);
      });
      const sort = active ? (descending ? "descending" : "ascending") : "none";
      return h("th", { scope: "col", "aria-sort": sort }, button);
    });
}

function counts(summary, go) {
  const items = COUNTED.filter((name) => name in summary.counts).map((name) =>
    h("a", { href: `#/carves?${COUNT_FILTER[name] || "status"}=${name}`, class: `count count-${name}`, "data-count": name },
      h("strong", {}, summary.counts[name].toLocaleString()), ` ${name}`));
  return h("div", { class: "counts", id: "counts", "aria-label": "How many carves" }, items);
}

export function renderCarves(view, params, { go, fail, later }) {
  const cursors = [];
  let cursor = params.get("cursor") || null;
  const body = h("tbody", { id: "carve-rows" });
  const shown = h("span", { class: "muted", id: "carve-count" });
  const prev = h("button", { type: "button", id: "prev-page" }, "← Previous");
  const next = h("button", { type: "button", id: "next-page" }, "Next →");
  const summary = h("div", { id: "summary" });
  const { form, search } = filterForm(params, go);
  const filtered = FILTERS.some((f) => f !== "sort" && params.get(f));
  let nextCursor = null;
  const table = h("table", { id: "carves" }, h("thead", {}, h("tr", {}, header(params, go))), body);
  const empty = h("div", { id: "empty-area" });
  replace(view, h("div", { class: "title" }, h("h1", {}, "Carves"), summary), form, table, empty,
    h("div", { class: "pager" }, prev, next, shown));
  const keys = (event) => {
    if (event.key === "/" && document.activeElement !== search && !event.target.closest("input, select, textarea")) {
      event.preventDefault();
      search.focus();
    }
  };
  document.addEventListener("keydown", keys);
  const gone = new MutationObserver(() => {
    if (!view.isConnected) {
      document.removeEventListener("keydown", keys);
      gone.disconnect();
    }
  });
  gone.observe(document.getElementById("view"), { childList: true });

  const load = async () => {
    const filters = {};
    for (const name of FILTERS) filters[name] = params.get(name);
    let page;
    try {
      const [carves, totals] = await Promise.all([
        api(`/api/v1/carves${query({ ...filters, cursor, limit: PAGE })}`),
        api("/api/v1/summary"),
      ]);
      page = carves;
      replace(summary, counts(totals, go));
    } catch (error) {
      fail(error);
      return;
    }
    replace(body, page.carves.map(row));
    table.hidden = page.carves.length === 0;
    if (page.carves.length) replace(empty);
    else if (filtered || cursor) {
      replace(empty, emptyState("No carves match", "Nothing here fits these filters.",
        h("a", { href: "#/carves", id: "clear-link" }, "Clear the filters")));
    } else {
      replace(empty, emptyState("No carves yet",
        "Carves appear here as soon as a host starts uploading one. On a host, run:",
        h("code", {}, "SELECT * FROM carves WHERE path = '/var/log/auth.log' AND carve = 1;"),
        "with osquery's carver flags pointing at this server (see docs/deployment.md)."));
    }
    nextCursor = page.next_cursor;
    next.disabled = !nextCursor;
    prev.disabled = cursors.length === 0;
    replace(shown, page.carves.length ? `${page.carves.length} shown` : "");
    // Live: fast while a carve is arriving; the first page also watches for new ones. A hidden
    // tab asks nothing (the server audits a refreshed view once per window anyway).
    const wait = page.carves.some((c) => c.status === "receiving") ? POLL_MS : IDLE_POLL_MS;
    const tick = () => (document.hidden ? later(tick, wait) : load());
    if (cursor === null || wait === POLL_MS) later(tick, wait);
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
