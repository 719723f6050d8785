import { api, query } from "./api.js";
import { ago, carveLink, h, replace, size } from "./dom.js";

const FIELDS = ["carve_id", "identity", "action", "outcome", "since"];
const OUTCOMES = ["", "allowed", "denied", "refused", "error", "aborted"];
// The audited routes (services/download/audit.py, AUDITED).
const ACTIONS = ["", "list", "summary", "carve", "campaign", "archive", "files", "file", "file_request",
  "delete", "export", "ticket", "export_ticket", "audit", "login", "logout", "login_sso", "login_sso_callback"];

function row(entry) {
  return h(
    "tr",
    { "data-action": entry.action, "data-carve": entry.carve_id || "" },
    h("td", {}, ago(entry.time)),
    h("td", {}, entry.action),
    h("td", {}, entry.outcome),
    h("td", { class: "num" }, entry.status),
    h("td", {}, entry.display_name || entry.entity_id || "-"),
    h("td", {}, entry.carve_id ? carveLink(entry.carve_id) : "-"),
    h("td", { class: "mono" }, entry.client || "-"),
    h("td", { class: "num" }, size(entry.bytes_sent || 0)),
  );
}

export function renderAudit(view, params, { go, fail }) {
  const inputs = {
    carve_id: h("input", { name: "carve_id", placeholder: "carve id" }),
    identity: h("input", { name: "identity", placeholder: "display name or entity id" }),
    action: h("select", { name: "action" }, ACTIONS.map((a) => h("option", { value: a }, a || "any"))),
    outcome: h("select", { name: "outcome" }, OUTCOMES.map((o) => h("option", { value: o }, o || "any"))),
    since: h("input", { name: "since", type: "datetime-local", step: "1" }),
  };
  for (const name of FIELDS) inputs[name].value = (params.get(name) || "").replace(/Z$/, "").slice(0, name === "since" ? 19 : 256);
  const form = h("form", { class: "filters", id: "audit-filters" },
    h("label", {}, "Carve", inputs.carve_id), h("label", {}, "Identity", inputs.identity),
    h("label", {}, "Action", inputs.action), h("label", {}, "Outcome", inputs.outcome),
    h("label", {}, "Since (UTC)", inputs.since), h("button", { type: "submit", class: "primary" }, "Filter"),
    h("button", { type: "reset", id: "audit-clear" }, "Clear"));
  form.addEventListener("reset", () => go("#/audit"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = {};
    for (const name of FIELDS) next[name] = inputs[name].value.trim();
    if (next.since) next.since = `${next.since.length === 16 ? `${next.since}:00` : next.since}Z`;
    go(`#/audit${query(next)}`);
  });
  const body = h("tbody", { id: "audit-rows" });
  const more = h("button", { type: "button", id: "audit-more" }, "Older →");
  const head = ["Time", "Action", "Outcome", "Status", "Identity", "Carve", "Client", "Bytes"].map((t) => h("th", {}, t));
  replace(view, h("h1", {}, "Audit trail"), form, h("table", { id: "audit" }, h("thead", {}, h("tr", {}, head)), body),
    h("div", { class: "pager" }, more));
  let cursor = null;
  const load = async () => {
    const filters = {};
    for (const name of FIELDS) filters[name] = params.get(name);
    let page;
    try {
      page = await api(`/api/v1/audit${query({ ...filters, cursor, limit: 100 })}`);
    } catch (error) {
      fail(error);
      return;
    }
    body.append(...page.entries.map(row));
    if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: "8", class: "muted" }, "No entries match.")));
    cursor = page.next_cursor;
    more.disabled = !cursor;
  };
  more.addEventListener("click", load);
  load();
}
