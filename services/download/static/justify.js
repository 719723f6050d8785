// Why a download happens: asked in a small dialog when the service requires it
// (CARVE_DOWNLOAD_JUSTIFICATION=required, told by /api/v1/whoami), sent in the ticket's URL
// as ?justification= and kept in the download's audit row.
import { session } from "./api.js";
import { h } from "./dom.js";

const MAX = 500;

// The reason typed (trimmed), null when none is needed, or throws when the responder cancels.
export function askJustification(what) {
  if (!session.me || session.me.justification !== "required") return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const input = h("textarea", { id: "justification", maxlength: String(MAX), rows: "3", required: true,
      placeholder: "e.g. IR-2026-0042: malware analysis of the dropped binary" });
    const problem = h("p", { class: "error-text", id: "justification-problem", role: "alert" });
    const ok = h("button", { type: "submit", class: "primary", id: "justification-ok" }, "Download");
    const cancel = h("button", { type: "button", id: "justification-cancel" }, "Cancel");
    const form = h("form", { method: "dialog" },
      h("h2", {}, "Why do you download this?"),
      h("p", { class: "muted" }, "Your reason is kept in the audit trail with ", what, "."),
      h("label", { for: "justification" }, "Justification"), input, problem,
      h("div", { class: "actions" }, ok, " ", cancel));
    const dialog = h("dialog", { id: "justification-dialog", "aria-labelledby": "justification" }, form);
    const close = () => { dialog.close(); dialog.remove(); };
    cancel.addEventListener("click", () => { close(); reject(new DOMException("cancelled", "AbortError")); });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = input.value.trim();
      // The server refuses control and format characters too; this catches the common case.
      if (!text || /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069]/.test(text)) {
        problem.textContent = "Give a reason on one line, without control characters.";
        return;
      }
      close();
      resolve(text);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

// ticket.url with the reason (when there is one).
export function withJustification(url, reason) {
  return reason === null ? url : `${url}&justification=${encodeURIComponent(reason)}`;
}
