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

export function carveLink(carveId) {
  return h("a", { href: `#/carves/${encodeURIComponent(carveId)}`, class: "mono" }, carveId);
}

export function copyButton(text, label = "Copy") {
  const button = h("button", { type: "button", class: "small", title: "Copy to the clipboard" }, label);
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
