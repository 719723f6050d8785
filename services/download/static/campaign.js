// A campaign: every carve of one request id (one live query, many hosts), host by host, and
// its export as one ZIP (through a single-use ticket: no token in the URL).
import { api, query } from "./api.js";
import { askJustification, withJustification } from "./justify.js";
import {
  ago, carved, emptyState, h, hostName, plural, progressBar, replace, shortId, size, statusBadge,
} from "./dom.js";

const PAGE = 200;
const POLL_MS = 2000;

function row(carve) {
  return h(
    "tr",
    { "data-carve": carve.carve_id, "data-host": hostName(carve) },
    h("td", { class: "host" }, hostName(carve)),
    h("td", {}, statusBadge(carve.status)),
    h("td", {}, progressBar(carve)),
    h("td", { class: "num" }, size(carve.carve_size)),
    h("td", { class: "what" }, carved(carve)),
    h("td", { class: "id" }, shortId(carve.carve_id)),
    h("td", {}, ago(carve.created_at)),
  );
}

function summary(campaign) {
  const counts = Object.entries(campaign.counts).map(([status, n]) => `${n} ${status}`).join(", ");
  const bytes = Object.entries(campaign.bytes).map(([status, n]) => `${size(n)} ${status}`).join(", ");
  const paths = campaign.paths.length
    ? h("ul", { class: "paths" }, campaign.paths.map((p) => h("li", {}, h("code", {}, p.path), ` on ${plural(p.carves, "host")}`)))
    : h("span", { class: "muted" }, "known once carves complete");
  const rows = [
    ["Carved", paths],
    ["Carves", h("span", { id: "campaign-counts" }, `${plural(campaign.carve_count, "carve")} on ${plural(campaign.host_count, "host")}: ${counts}`)],
    ["Bytes", bytes],
    ["Progress", progressBar(campaign)],
    ["First activity", ago(campaign.first_activity)],
    ["Last activity", ago(campaign.last_activity)],
  ];
  return h("dl", { class: "meta", id: "campaign" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

async function exportZip(requestId, report) {
  let reason;
  try {
    reason = await askJustification("this export");
  } catch {
    return; // cancelled
  }
  try {
    const ticket = await api(`/api/v1/requests/${encodeURIComponent(requestId)}/export-ticket`, { method: "POST", body: {} });
    const link = h("a", { href: withJustification(ticket.url, reason), download: "", rel: "noopener" });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (error) {
    report(error);
  }
}

export function renderCampaign(view, requestId, params, { fail, later, report }) {
  const body = h("tbody", { id: "campaign-rows" });
  const more = h("button", { type: "button", id: "campaign-more", hidden: true }, "More hosts →");
  const head = ["Host", "Status", "Progress", "Size", "Carved", "Carve", "Created"].map((t) => h("th", { scope: "col" }, t));
  const top = h("div", {});
  const exportButton = h("button", { type: "button", class: "primary", id: "export" }, "Export ZIP");
  exportButton.addEventListener("click", () => exportZip(requestId, report));
  replace(view, h("p", {}, h("a", { href: "#/carves" }, "← All carves")),
    h("h1", {}, "Campaign ", h("span", { class: "mono", id: "request-id" }, requestId)), top,
    h("div", { class: "actions" }, exportButton,
      h("span", { class: "muted" }, "One ZIP of every complete carve, with manifest.json and manifest.csv (every SHA-256).")),
    h("table", { id: "campaign-carves" }, h("thead", {}, h("tr", {}, head)), body), h("div", { class: "pager" }, more));
  let cursor = null;
  const load = async (append = false) => {
    let campaign;
    try {
      campaign = await api(`/api/v1/requests/${encodeURIComponent(requestId)}${query({ sort: params.get("sort") || "host", limit: PAGE, cursor })}`);
    } catch (error) {
      fail(error);
      return;
    }
    replace(top, summary(campaign));
    exportButton.disabled = !campaign.counts.complete;
    if (append) body.append(...campaign.carves.map(row));
    else replace(body, campaign.carves.map(row));
    if (!body.children.length) replace(top, emptyState("No carves", "No carve has this request id."));
    more.hidden = !campaign.next_cursor;
    more.onclick = () => {
      cursor = campaign.next_cursor;
      load(true);
    };
    if (!append && !cursor && campaign.counts.receiving) later(() => load(), POLL_MS);
  };
  load();
}
