// The console: hash routes (#/carves, #/carves/<id>, #/audit, #/webhooks), one view at a time.
import { api, explain, session } from "./api.js";
import { renderAudit } from "./audit.js";
import { renderCampaign } from "./campaign.js";
import { renderCarve } from "./carve.js";
import { renderCarves } from "./carves.js";
import { h, replace } from "./dom.js";
import { renderLogin } from "./login.js";
import { renderWebhooks } from "./webhooks.js";

const main = document.getElementById("view");
const notice = document.getElementById("notice");
let timers = [];

function go(hash, force = false) {
  if (location.hash === hash && force) route();
  else location.hash = hash;
}

function later(fn, ms) {
  timers.push(setTimeout(fn, ms));
}

function errorPage(view, error) {
  const { title, detail } = explain(error);
  const box = h("div", { class: "error", role: "alert", id: "error", "data-status": String(error.status) },
    h("h2", {}, title), h("p", {}, detail));
  if (error.status === 403) {
    box.append(h("p", {}, "Ask your Vault administrator for the responder policy (or the admin policy for deletions and the audit trail), then sign in again."));
  }
  if (error.status === 410 && error.body.code === "failed") {
    box.append(h("p", {}, `Why: ${error.body.reason}`));
  }
  if (error.status === 409 && error.body.block_count) {
    box.append(h("p", {}, `${error.body.blocks_received} of ${error.body.block_count} blocks received so far.`));
  }
  replace(view, box, h("p", {}, h("a", { href: "#/carves" }, "← All carves")));
}

function showHeader() {
  const me = session.me;
  document.getElementById("nav").hidden = !me;
  document.getElementById("nav-audit").hidden = !(me && me.is_admin);
  document.getElementById("nav-webhooks").hidden = !(me && me.is_admin);
  document.getElementById("logout").hidden = !me;
  replace(document.getElementById("who"), me ? `${me.display_name || me.entity_id}${me.is_admin ? " (admin)" : ""}` : "");
  const page = location.hash.split(/[/?]/)[1] || "carves";
  for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === page);
}

async function route() {
  for (const timer of timers) clearTimeout(timer);
  timers = [];
  replace(notice);
  const view = h("div", {});
  main.replaceChildren(view);
  if (!session.token) {
    session.me = null;
    showHeader();
    renderLogin(view, { onLogin: () => go("#/carves", true) });
    return;
  }
  if (!session.me) {
    try {
      session.me = await api("/api/v1/whoami");
    } catch (error) {
      session.clear();
      showHeader();
      renderLogin(view, { onLogin: () => go("#/carves", true), message: explain(error).title });
      return;
    }
  }
  showHeader();
  const fail = (error) => {
    if (error.status === 401) {
      session.clear();
      showHeader();
      renderLogin(view, { onLogin: () => go("#/carves", true), message: `${explain(error).title}. Sign in again.` });
      return;
    }
    errorPage(view, error);
  };
  const report = (error) => {
    const { title, detail } = explain(error);
    replace(notice, h("span", { role: "alert", id: "notice-text" }, `${title}: ${detail}`));
  };
  const [path, search] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean);
  const context = { go, fail, later, report, me: session.me };
  if (parts[0] === "audit") renderAudit(view, params, context);
  else if (parts[0] === "requests" && parts.length === 2) renderCampaign(view, decodeURIComponent(parts[1]), params, context);
  else if (parts[0] === "webhooks") renderWebhooks(view, params, context);
  else if (parts[0] === "carves" && parts.length === 2) renderCarve(view, decodeURIComponent(parts[1]), context);
  else renderCarves(view, params, context);
}

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api("/api/v1/logout", { method: "POST" });
  } catch {
    // Revoked or expired already: signing out here is all that is left to do.
  }
  session.clear();
  go("#/carves", true);
});

// Back from the identity provider (single sign-on): /ui/?code=...&state=... Take the code out
// of the address at once (history, screenshots), then let Vault exchange it for a token.
async function finishSingleSignOn() {
  const query = new URLSearchParams(location.search);
  const code = query.get("code");
  const state = query.get("state");
  if (!code || !state) return null;
  history.replaceState(null, "", location.pathname + "#/carves");
  try {
    const answer = await api("/api/v1/login/oidc/callback", {
      method: "POST",
      auth: false,
      cookies: true,
      body: { code, state },
    });
    session.set(answer.token);
    return null;
  } catch (error) {
    return `Single sign-on failed: ${explain(error).title}`;
  }
}

async function start() {
  const problem = await finishSingleSignOn();
  if (problem) {
    const view = h("div", {});
    main.replaceChildren(view);
    showHeader();
    renderLogin(view, { onLogin: () => go("#/carves", true), message: problem });
  } else {
    route();
  }
  window.addEventListener("hashchange", route);
}

start();
