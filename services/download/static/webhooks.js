import { api, query } from "./api.js";
import { carveLink, h, replace, when } from "./dom.js";

// Webhook deliveries of carve events (admins): which endpoint got what, which keep failing.
const STATES = ["", "pending", "delivered", "dead"];

function row(d) {
  return h(
    "tr",
    { "data-state": d.state, "data-endpoint": d.endpoint },
    h("td", {}, when(d.created_at)),
    h("td", {}, d.event_type),
    h("td", {}, carveLink(d.carve_id)),
    h("td", {}, d.endpoint),
    h("td", { class: `state-${d.state}` }, d.dead ? "dead" : d.state),
    h("td", { class: "num" }, d.attempts),
    h("td", {}, d.last_status === null ? (d.last_error || "-") : `${d.last_status}`),
    h("td", {}, d.next_attempt ? when(d.next_attempt) : d.delivered_at ? `delivered ${when(d.delivered_at)}` : "-"),
  );
}

export function renderWebhooks(view, params, { go, fail }) {
  const endpoint = h("input", { name: "endpoint", placeholder: "endpoint name" });
  const state = h("select", { name: "state" }, STATES.map((s) => h("option", { value: s }, s || "any")));
  endpoint.value = (params.get("endpoint") || "").slice(0, 64);
  state.value = STATES.includes(params.get("state")) ? params.get("state") : "";
  const form = h("form", { class: "filters", id: "webhook-filters" },
    h("label", {}, "Endpoint", endpoint), h("label", {}, "State", state),
    h("button", { type: "submit", class: "primary" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go(`#/webhooks${query({ endpoint: endpoint.value.trim(), state: state.value })}`);
  });
  const body = h("tbody", { id: "webhook-rows" });
  const more = h("button", { type: "button", id: "webhooks-more" }, "Older →");
  const head = ["Recorded", "Event", "Carve", "Endpoint", "State", "Attempts", "Last answer", "Next"].map((t) => h("th", {}, t));
  replace(view, h("h1", {}, "Webhook deliveries"), form,
    h("table", { id: "webhooks" }, h("thead", {}, h("tr", {}, head)), body), h("div", { class: "pager" }, more));
  let cursor = null;
  const load = async () => {
    let page;
    try {
      page = await api(`/api/v1/webhooks/deliveries${query({ endpoint: params.get("endpoint"), state: params.get("state"), cursor, limit: 100 })}`);
    } catch (error) {
      fail(error);
      return;
    }
    body.append(...page.deliveries.map(row));
    if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: "8", class: "muted" }, "No deliveries match.")));
    cursor = page.next_cursor;
    more.disabled = !cursor;
  };
  more.addEventListener("click", load);
  load();
}
