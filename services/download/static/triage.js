// Triage (carve-triage's scan on arrival): the verdict badge of the list and the carve page's
// hits. Member names come from hosts and rule metadata from rule authors: both only ever
// reach the page through h() as text.
import { api } from "./api.js";
import { h, size, when } from "./dom.js";

export const VERDICTS = ["", "flagged", "incomplete", "clean"];

export function verdictBadge(carve) {
  const triage = carve.triage;
  if (!triage) return h("span", { class: "muted verdict", "data-verdict": "" }, "-");
  const busy = triage.status === "pending" || triage.status === "running";
  const label = triage.verdict ? (busy ? `${triage.verdict} (rescanning)` : triage.verdict) : triage.status;
  const kind = triage.verdict || triage.status;
  return h("span", { class: `verdict verdict-${kind}`, "data-verdict": triage.verdict || "" }, label);
}

function hitText(hit) {
  if (hit.kind === "hashset") return h("span", {}, "in hash set ", h("strong", {}, hit.set));
  const tags = (hit.tags || []).length ? ` [${hit.tags.join(", ")}]` : "";
  return h("span", {}, "rule ", h("strong", {}, `${hit.namespace}:${hit.rule}`), tags);
}

function metadata(hit) {
  const entries = Object.entries(hit.metadata || {});
  if (!entries.length) return null;
  return h("ul", { class: "meta" }, entries.map(([k, v]) => h("li", {}, `${k} = ${v}`)));
}

function hitsTable(hits) {
  const byMember = new Map();
  for (const hit of hits) {
    const key = hit.member || "(archive)";
    if (!byMember.has(key)) byMember.set(key, []);
    byMember.get(key).push(hit);
  }
  const rows = [...byMember].map(([member, found]) =>
    h("tr", { "data-member": member },
      h("td", { class: "mono member" }, member),
      h("td", {}, found.map((hit) => h("div", { class: "hit" }, hitText(hit), metadata(hit)))),
      h("td", { class: "mono" }, (found.find((x) => x.sha256) || {}).sha256 || "-")));
  return h("table", { id: "triage-hits" },
    h("thead", {}, h("tr", {}, ["Member", "Hits", "SHA-256"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows));
}

function skippedList(triage) {
  if (!triage.skipped || !triage.skipped.length) return null;
  return h("div", { class: "info", id: "triage-skipped" },
    h("p", {}, `Not scanned whole (${triage.skipped_count}):`),
    h("ul", {}, triage.skipped.map((s) =>
      h("li", {}, h("span", { class: "mono" }, s.member || "(archive)"), ` — ${s.reason}`, s.detail ? `: ${s.detail}` : ""))));
}

function rescan(carve, { report, reload }) {
  const button = h("button", { type: "button", id: "triage-rescan" }, "Scan again");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api(`/api/v1/carves/${encodeURIComponent(carve.carve_id)}/triage`, { method: "POST" });
      reload();
    } catch (error) {
      button.disabled = false;
      report(error);
    }
  });
  return button;
}

export function triageSection(carve, { me, report, reload }) {
  const triage = carve.triage;
  const section = h("section", { id: "triage" }, h("h2", {}, "Triage ", verdictBadge(carve)));
  if (!triage) {
    section.append(h("p", { class: "muted" }, "Not scanned (yet)."));
  } else {
    section.append(h("dl", { class: "meta" },
      h("dt", {}, "Rules version"), h("dd", { class: "mono", id: "triage-rules" }, triage.rules_version || "-"),
      h("dt", {}, "Hash sets"), h("dd", {}, Object.entries(triage.hashsets || {}).map(([n, v]) => `${n} (${v})`).join(", ") || "-"),
      h("dt", {}, "Scanned"), h("dd", {}, `${size(triage.scanned_bytes)}, ${triage.members ?? "-"} members, ${when(triage.finished)}`),
      triage.error ? [h("dt", {}, "Error"), h("dd", {}, triage.error)] : null));
    if (triage.hits && triage.hits.length) {
      if (triage.hit_count > triage.hits.length) section.append(h("p", { class: "info" }, `The first ${triage.hits.length} of ${triage.hit_count} hits.`));
      section.append(hitsTable(triage.hits));
    }
    section.append(skippedList(triage));
  }
  if (me && me.is_admin && carve.status === "complete") section.append(rescan(carve, { report, reload }));
  return section;
}
