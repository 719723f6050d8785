import { api, download, explain } from "./api.js";
import {
  ago, campaignLink, copyButton, h, hostName, mode, plural, progressBar, replace, size,
  statusBadge, when,
} from "./dom.js";
import { custodySection } from "./holds.js";
import { triageSection } from "./triage.js";

const POLL_MS = 1000;

function meta(carve) {
  const rows = [
    ["Carve id", h("span", {}, h("span", { class: "mono", id: "carve-id" }, carve.carve_id), " ", copyButton(carve.carve_id))],
    ["Host", h("span", { id: "host" }, hostName(carve))],
    ["Carved", carvedPaths(carve)],
    ["Status", statusBadge(carve.status)],
    ["Progress", h("span", {}, progressBar(carve), ` ${carve.blocks_received} of ${plural(carve.block_count, "block")}`)],
    ["Request id", h("span", {}, campaignLink(carve.request_id), h("span", { class: "muted" }, " (every carve of this request)"))],
    ["Size", `${size(carve.carve_size)} (${carve.carve_size} bytes, blocks of ${size(carve.block_size)})`],
    ["Compression", carve.compression || "-"],
    ["Archive SHA-256", carve.sha256 ? h("span", {}, h("code", { id: "archive-sha256" }, carve.sha256), " ", copyButton(carve.sha256)) : "-"],
    ["Device", carve.device ? h("span", { id: "device" }, carve.device.common_name) : "- (no device certificate recorded)"],
    ["Device subject", carve.device ? carve.device.subject_dn : "-"],
    ["Device certificate", carve.device ? h("code", {}, carve.device.fingerprint_sha256) : "-"],
    ["Created", ago(carve.created_at)],
    ["Completed", ago(carve.completed_at)],
  ];
  if (carve.manifest) {
    rows.push(["Manifest", manifestSummary(carve.manifest)]);
  }
  return h("dl", { class: "meta" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function carvedPaths(carve) {
  const paths = carve.paths || [];
  if (!paths.length) return h("span", { class: "muted", id: "carved" }, carve.status === "receiving" ? "known once complete" : "-");
  const more = (carve.path_count || paths.length) - paths.length;
  return h("ul", { class: "paths", id: "carved" }, paths.map((p) => h("li", {}, h("code", {}, p))),
    more > 0 ? h("li", { class: "muted" }, `+${more} more (see Files)`) : null);
}

function manifestSummary(manifest) {
  const parts = [plural(manifest.members, "member")];
  if (manifest.files !== null && manifest.files !== undefined) parts.push(plural(manifest.files, "file"));
  if (manifest.truncated) parts.push("truncated");
  if (manifest.error) parts.push(`unreadable: ${manifest.error}`);
  return parts.join(", ");
}

function whyNot(carve) {
  if (carve.status === "failed") {
    return h("div", { class: "error", id: "why" }, h("h2", {}, "This carve failed"),
      h("p", {}, carve.failure_reason || "no reason recorded"), h("p", {}, "at ", ago(carve.failed_at)));
  }
  if (carve.status === "expired" || carve.status === "deleted") {
    const at = carve.expired_at || carve.deleted_at;
    const by = carve.deleted_by ? ` by ${carve.deleted_by}` : "";
    return h("div", { class: "error", id: "why" }, h("h2", {}, `This carve was ${carve.status}`),
      h("p", {}, `Its bytes were deleted${by} `, ago(at), "; only this record is kept."));
  }
  if (carve.status === "receiving") {
    return h("div", { class: "info", id: "why" }, "Blocks are still arriving: this page follows them. The files appear once the carve is complete.");
  }
  return null;
}

// Members as a tree: directories first, each level sorted, depth shown by indentation.
function tree(members) {
  const root = { children: new Map(), member: null };
  for (const member of members) {
    const parts = (member.path || member.name || "").split("/").filter(Boolean);
    let node = root;
    for (const part of parts) {
      if (!node.children.has(part)) node.children.set(part, { children: new Map(), member: null });
      node = node.children.get(part);
    }
    node.member = member;
  }
  const rows = [];
  const walk = (node, depth, prefix) => {
    const entries = [...node.children.entries()].sort(([a, x], [b, y]) =>
      (y.children.size > 0) - (x.children.size > 0) || a.localeCompare(b));
    for (const [name, child] of entries) {
      rows.push({ name, depth, path: `${prefix}/${name}`, member: child.member, dir: child.children.size > 0 });
      walk(child, depth + 1, `${prefix}/${name}`);
    }
  };
  walk(root, 0, "");
  return rows;
}

function fileRow(entry, carve, report) {
  const m = entry.member;
  const name = h("td", { class: entry.dir || (m && m.type === "dir") ? "tree-dir" : "" }, entry.name);
  name.style.paddingLeft = `${0.55 + entry.depth * 1.2}rem`;
  if (m && m.unsafe) name.append(h("span", { class: "flag", title: String(m.reason) }, `⚠ ${m.reason}`));
  const cells = [name, h("td", {}, m ? m.type : "dir"), h("td", { class: "num" }, m && m.type === "file" ? size(m.size) : ""),
    h("td", { class: "mono" }, m ? mode(m.mode) : ""), h("td", {}, m ? when(m.mtime) : "")];
  const sha = m && m.sha256;
  cells.push(h("td", {}, sha ? h("span", {}, h("code", { class: "sha256" }, sha), " ", copyButton(sha)) : ""));
  const get = h("td", {});
  // Superseded and unsafe members are not what a download of that path serves.
  if (m && m.type === "file" && !m.superseded && !m.unsafe && carve.status === "complete") {
    const button = h("button", { type: "button", class: "small download-member" }, "Download");
    // A path with a control character (CR, LF: the host chose it) cannot be asked for by
    // path: by its position in the archive instead.
    const which = /[\u0000-\u001f]/.test(m.path) ? { index: m.index } : m.path;
    button.addEventListener("click", () => download(carve.carve_id, which).catch(report));
    get.append(button);
  }
  cells.push(get);
  return h("tr", { "data-path": entry.path }, cells);
}

async function files(carve, report) {
  const section = h("section", { id: "files" }, h("h2", {}, "Files"));
  let listing;
  try {
    listing = await api(`/api/v1/carves/${encodeURIComponent(carve.carve_id)}/files`);
  } catch (error) {
    const { title, detail } = explain(error);
    section.append(h("div", { class: "error" }, h("h2", {}, title), h("p", {}, detail)));
    return section;
  }
  if (listing.error) section.append(h("div", { class: "error" }, `The archive could not be read completely: ${listing.error}`));
  if (listing.truncated) section.append(h("div", { class: "info" }, `Only the first ${listing.members.length} members are listed.`));
  const head = ["Name", "Type", "Size", "Mode", "Modified", "SHA-256", ""].map((t) => h("th", {}, t));
  section.append(h("table", { id: "manifest" }, h("thead", {}, h("tr", {}, head)),
    h("tbody", {}, tree(listing.members).map((entry) => fileRow(entry, carve, report)))));
  return section;
}

function deleteControls(carve, { go, report }) {
  const area = h("div", {});
  const start = h("button", { type: "button", class: "danger", id: "delete" }, "Delete carve…");
  start.addEventListener("click", () => {
    const yes = h("button", { type: "button", class: "danger", id: "confirm-delete" }, "Delete its bytes for good");
    const no = h("button", { type: "button", id: "cancel-delete" }, "Cancel");
    no.addEventListener("click", () => replace(area, start));
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        await api(`/api/v1/carves/${encodeURIComponent(carve.carve_id)}`, { method: "DELETE" });
        go(`#/carves/${encodeURIComponent(carve.carve_id)}`, true);
      } catch (error) {
        report(error);
        yes.disabled = false;
      }
    });
    replace(area, h("div", { class: "confirm", role: "alertdialog" },
      h("p", {}, "Delete carve ", h("code", {}, carve.carve_id), "? Its archive is removed; the record stays, marked deleted."), yes, " ", no));
  });
  area.append(start);
  return area;
}

export function renderCarve(view, carveId, { go, fail, later, report, me }) {
  const load = async () => {
    let carve;
    try {
      carve = await api(`/api/v1/carves/${encodeURIComponent(carveId)}`);
    } catch (error) {
      fail(error);
      return;
    }
    const actions = h("div", { class: "actions" });
    if (carve.status === "complete") {
      const archive = h("button", { type: "button", class: "primary", id: "download-archive" }, "Download archive");
      archive.addEventListener("click", () => download(carve.carve_id).catch(report));
      actions.append(archive);
    }
    if (me && me.is_admin && carve.status !== "expired" && carve.status !== "deleted") {
      actions.append(deleteControls(carve, { go, report }));
    }
    replace(view, h("p", {}, h("a", { href: "#/carves" }, "← All carves")), h("h1", {}, "Carve ", h("span", { class: "mono" }, carve.carve_id.slice(0, 8)), " ", h("span", { class: "muted" }, "from ", hostName(carve))),
      meta(carve), whyNot(carve), actions);
    view.append(custodySection(carve, { me, report, reload: load }));
    if (carve.status === "complete") view.append(triageSection(carve, { me, report, reload: load }));
    if (carve.status === "complete") view.append(await files(carve, report));
    if (carve.status === "receiving") later(load, POLL_MS);
  };
  load();
}
