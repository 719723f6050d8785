// A carve's legal holds, case tags and expiry on its page: shown to every responder; cases
// editable by responders, holds and expiry by admins (the API checks the policies again).
// Case ids and reasons are put in the page as text only (h()).
import { ApiError, api, session } from "./api.js";
import { ago, h, replace } from "./dom.js";

const CASE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

function path(carve, ...parts) {
  return `/api/v1/carves/${[carve.carve_id, ...parts].map(encodeURIComponent).join("/")}`;
}

function holdList(carve, { me, report, reload }) {
  const holds = carve.holds || [];
  if (!holds.length) return h("p", { class: "muted", id: "holds-none" }, "No legal hold: the carve expires with the retention.");
  return h("ul", { id: "holds" }, holds.map((hold) => {
    const item = h("li", { class: "hold", "data-case": hold.case },
      h("strong", {}, hold.case), ": ", hold.reason, h("span", { class: "muted" }, " placed by ", hold.placed_by, " "), ago(hold.placed_at));
    if (me && me.is_admin) {
      const release = h("button", { type: "button", class: "small release-hold" }, "Release");
      release.addEventListener("click", async () => {
        release.disabled = true;
        try {
          await api(path(carve, "hold", hold.case), { method: "DELETE" });
          reload();
        } catch (error) {
          report(error);
          release.disabled = false;
        }
      });
      item.append(" ", release);
    }
    return item;
  }));
}

function holdForm(carve, { report, reload }) {
  const caseInput = h("input", { id: "hold-case", placeholder: "case id (IR-2026-0042)", maxlength: "64", required: true });
  const reason = h("input", { id: "hold-reason", placeholder: "reason", maxlength: "1000", required: true });
  const place = h("button", { type: "submit", id: "place-hold" }, "Place legal hold");
  const form = h("form", { class: "inline", id: "hold-form" }, caseInput, " ", reason, " ", place);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    place.disabled = true;
    try {
      await api(path(carve, "hold"), { method: "PUT", body: { case: caseInput.value.trim(), reason: reason.value.trim() } });
      reload();
    } catch (error) {
      report(error);
      place.disabled = false;
    }
  });
  return form;
}

function caseTags(carve, { report, reload }) {
  const change = async (body) => {
    try {
      await api(path(carve, "cases"), { method: "PATCH", body });
      reload();
    } catch (error) {
      report(error);
    }
  };
  const tags = (carve.cases || []).map((id) => {
    const remove = h("button", { type: "button", class: "small remove-case", title: `Remove ${id}` }, "×");
    remove.addEventListener("click", () => change({ remove: [id] }));
    return h("li", { class: "case", "data-case": id }, id, " ", remove);
  });
  const input = h("input", { id: "case-add", placeholder: "add a case id", maxlength: "64" });
  const form = h("form", { class: "inline", id: "case-form" }, input, " ", h("button", { type: "submit" }, "Tag"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = input.value.trim();
    if (!CASE.test(id)) {
      report(new Error("A case id is 1 to 64 letters, digits, '.', '_', ':' or '-'."));
      return;
    }
    change({ add: [id] });
  });
  return h("div", {}, tags.length ? h("ul", { id: "cases", class: "tags" }, tags) : h("p", { class: "muted" }, "No case ids."), form);
}

function expiry(carve, { me, report, reload }) {
  const shown = h("p", { id: "expiry" }, carve.expires_at ? ["Expires ", ago(carve.expires_at)] : "Expires with the service's retention.");
  if (!me || !me.is_admin) return shown;
  const input = h("input", { type: "datetime-local", id: "expiry-input" });
  const set = h("button", { type: "submit" }, "Set expiry (UTC)");
  const reset = h("button", { type: "button", id: "expiry-reset" }, "Back to retention");
  const send = async (when) => {
    try {
      await api(path(carve, "expiry"), { method: "PUT", body: { expires_at: when } });
      reload();
    } catch (error) {
      report(error);
    }
  };
  const form = h("form", { class: "inline", id: "expiry-form" }, input, " ", set, " ", reset);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value) send(`${input.value}:00Z`);
  });
  reset.addEventListener("click", () => send(null));
  return h("div", {}, shown, form);
}

// The signed custody record, saved as the server wrote it (its bytes are what is signed).
async function saveRecord(carve, report) {
  try {
    const response = await fetch(path(carve, "custody"), {
      headers: { Accept: "application/json", "X-Vault-Token": session.token || "" },
      credentials: "omit",
      cache: "no-store",
    });
    const text = await response.text();
    if (!response.ok) {
      let body = {};
      try { body = JSON.parse(text); } catch { body = { error: text.slice(0, 300) }; }
      throw new ApiError(response.status, body);
    }
    const link = h("a", { download: `custody_${carve.carve_id}.json`, rel: "noopener" });
    link.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  } catch (error) {
    report(error);
  }
}

export function custodySection(carve, context) {
  const section = h("section", { id: "custody" }, h("h2", {}, "Custody"));
  const live = carve.status !== "expired" && carve.status !== "deleted";
  const body = h("div", {});
  replace(body, h("h3", {}, "Legal holds"), holdList(carve, context),
    live && context.me && context.me.is_admin ? holdForm(carve, context) : null,
    h("h3", {}, "Cases"), caseTags(carve, context),
    h("h3", {}, "Expiry"), live ? expiry(carve, context) : h("p", { class: "muted" }, "Its bytes are gone."));
  const record = h("button", { type: "button", id: "custody-record" }, "Download signed custody record");
  record.addEventListener("click", () => saveRecord(carve, context.report));
  section.append(body, h("p", {}, record, " ",
    h("span", { class: "muted" }, "check it offline: carvectl verify RECORD --keys KEYS")));
  return section;
}
