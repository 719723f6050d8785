// Building the page without HTML parsing: every string becomes a text node.
// Carve ids, member names and device names come from hosts that may be hostile; they are
// only ever passed to h() as children (text) or to encodeURIComponent() for our own links.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "value") node.value = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function size(bytes) {
  if (bytes === null || bytes === undefined) return "-";
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

export function when(iso) {
  if (!iso) return "-";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// "3 min ago", with the exact time in UTC and in the browser's zone on hover (and for
// screen readers: the title). The server writes RFC 3339 UTC with Z.
export function ago(iso, now = Date.now()) {
  if (!iso) return "-";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const seconds = Math.round((now - date.getTime()) / 1000);
  const steps = [[86400, "d"], [3600, "h"], [60, "min"]];
  let text = seconds < 10 ? "just now" : `${seconds} s ago`;
  for (const [size, unit] of steps) {
    if (seconds >= size) {
      text = `${Math.floor(seconds / size)} ${unit} ago`;
      break;
    }
  }
  const local = date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  return h("time", { datetime: iso, title: `${when(iso)} · ${local} (local)`, class: "ago" }, text);
}

export function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}

// What was carved: the first path, and how many more.
export function carved(carve) {
  const paths = carve.paths || [];
  if (!paths.length) return h("span", { class: "muted" }, carve.status === "receiving" ? "arriving…" : "-");
  const more = (carve.path_count || paths.length) - 1;
  return h("span", { class: "carved", title: paths.join("\n") }, paths[0],
    more > 0 ? h("span", { class: "muted" }, ` +${more} more`) : null);
}

export function hostName(carve) {
  return carve.host || (carve.device ? carve.device.common_name : "-");
}

// A carve id on one line: its first 8 characters (the full id on hover), and a copy button.
export function shortId(carveId, link = true) {
  const text = carveId.length > 12 ? `${carveId.slice(0, 8)}…` : carveId;
  const label = link
    ? h("a", { href: `#/carves/${encodeURIComponent(carveId)}`, class: "mono", title: carveId }, text)
    : h("span", { class: "mono", title: carveId }, text);
  return h("span", { class: "short-id" }, label, copyButton(carveId, "copy", `Copy the id ${carveId}`));
}

export function campaignLink(requestId) {
  return h("a", { href: `#/requests/${encodeURIComponent(requestId)}`, class: "mono request", title: `Every carve of request ${requestId}` },
    requestId);
}

export function mode(value) {
  return value === null || value === undefined ? "-" : "0" + value.toString(8).padStart(3, "0");
}

export function statusBadge(status) {
  return h("span", { class: `status status-${status}`, "data-status": status }, status);
}

export function progressBar(carve) {
  const pct = Math.round((carve.progress || 0) * 1000) / 10;
  return h(
    "span",
    { class: "progress" },
    h("progress", { max: "1", value: String(carve.progress || 0), "aria-label": "progress" }),
    ` ${pct}%`,
  );
}

export function deviceName(carve) {
  return carve.device ? carve.device.common_name : "-";
}

export function emptyState(title, ...lines) {
  return h("div", { class: "empty", id: "empty" }, h("h2", {}, title), lines.map((line) => h("p", {}, line)));
}

export function carveLink(carveId) {
  return h("a", { href: `#/carves/${encodeURIComponent(carveId)}`, class: "mono" }, carveId);
}

export function copyButton(text, label = "Copy", title = "Copy to the clipboard") {
  const button = h("button", { type: "button", class: "small copy", title, "aria-label": title }, label);
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}
