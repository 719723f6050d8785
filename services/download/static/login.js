import { api, explain, session } from "./api.js";
import { h, replace } from "./dom.js";

function errorBox(error, unauthorized = null) {
  const { title, detail } = explain(error);
  const heading = error.status === 401 && unauthorized ? unauthorized : title;
  return h("div", { class: "error", role: "alert" }, h("h2", {}, heading), h("p", {}, detail));
}

export function renderLogin(view, { onLogin, message }) {
  const out = h("div", { id: "login-result" });
  if (message) out.append(h("div", { class: "info", role: "alert" }, message));
  const finish = async (token) => {
    session.set(token);
    try {
      session.me = await api("/api/v1/whoami");
    } catch (error) {
      session.clear();
      replace(out, errorBox(error, "That token is not valid (401): unknown, expired or revoked"));
      return;
    }
    onLogin();
  };
  const username = h("input", { name: "username", autocomplete: "username", required: true });
  const password = h("input", {
    name: "password", type: "password", autocomplete: "current-password", required: true,
  });
  const userpass = h(
    "form",
    { class: "stack", id: "userpass-form" },
    h("label", {}, "Username", username),
    h("label", {}, "Password", password),
    h("button", { type: "submit", class: "primary" }, "Log in"),
  );
  userpass.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(out);
    try {
      const answer = await api("/api/v1/login", {
        method: "POST",
        auth: false,
        body: { username: username.value, password: password.value },
      });
      password.value = "";
      await finish(answer.token);
    } catch (error) {
      password.value = "";
      replace(out, errorBox(error, "Wrong username or password (401)"));
    }
  });
  const pasted = h("input", { name: "token", type: "password", autocomplete: "off", required: true });
  const tokenForm = h(
    "form",
    { class: "stack", id: "token-form" },
    h("label", {}, "Vault token", pasted),
    h("button", { type: "submit" }, "Use this token"),
  );
  tokenForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = pasted.value.trim();
    pasted.value = "";
    replace(out);
    await finish(token);
  });
  const sso = h("section", { id: "sso", hidden: true });
  const ssoButton = h("button", { type: "button", class: "primary", id: "sso-button" },
    "Sign in with single sign-on");
  ssoButton.addEventListener("click", async () => {
    replace(out);
    try {
      const answer = await api("/api/v1/login/oidc", { method: "POST", auth: false, cookies: true });
      const target = new URL(answer.auth_url);
      if (target.protocol !== "https:" && target.protocol !== "http:") throw new Error("bad auth_url");
      window.location.assign(target.href);
    } catch (error) {
      replace(out, errorBox(error));
    }
  });
  sso.append(h("h2", {}, "Single sign-on"), h("p", { class: "muted" },
    "Your organisation's identity provider, through Vault's OIDC method."), ssoButton);
  api("/api/v1/login/oidc", { auth: false }).then((answer) => {
    sso.hidden = !answer.enabled;
  }, () => {});
  replace(
    view,
    h("h1", {}, "Sign in"),
    sso,
    h(
      "div",
      { class: "login" },
      h("section", {}, h("h2", {}, "Vault username and password"), userpass),
      h(
        "section",
        {},
        h("h2", {}, "Vault token"),
        h("p", { class: "muted" }, "A token from ", h("code", {}, "bao login"), " (any method) works too."),
        tokenForm,
      ),
    ),
    out,
  );
}
