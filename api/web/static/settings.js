// A project's settings page. The plain forms (data-api) are app.js's; here are the few things
// an answer must be shown from:
//   - Reveal: an env var's value, asked of GET .../env?values=true (the API audits the read),
//     shown as text in its row, and hidden again on a second click;
//   - the names ticked in the env table fill the unset form's names field;
//   - forms with data-call="METHOD /api/v1/path" whose answer is shown: a domain's DNS warning
//     (flashed after the reload that lists the domain), the webhook secret of a link or a new
//     secret and the deploy key's public half (shown once, in #github-shown).
import { bodyOf, callApi, flash } from "./app.js";

const project = document.getElementById("env").dataset.project;
const KEPT_FLASH = "disco-settings-flash"; // a message to show after the reload that follows a change

const kept = sessionStorage.getItem(KEPT_FLASH);
if (kept) {
  sessionStorage.removeItem(KEPT_FLASH);
  flash(kept, "warn");
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.reveal");
  if (!button) return;
  const shown = button.closest("tr").querySelector(".env-value");
  if (!shown.hidden) {
    shown.hidden = true;
    shown.textContent = "";
    button.textContent = "Reveal";
    return;
  }
  button.disabled = true;
  try {
    const answer = await callApi("GET", `/api/v1/projects/${project}/env?values=true`);
    const value = answer.values[button.dataset.name];
    if (value === undefined) throw new Error(`${button.dataset.name} is no longer set: reload the page`);
    shown.textContent = value;
    shown.hidden = false;
    button.textContent = "Hide";
  } catch (error) {
    flash(error.message, "error");
  } finally {
    button.disabled = false;
  }
});

const unsetNames = document.getElementById("unset-names");
document.addEventListener("change", (event) => {
  if (!event.target.matches("input[data-unset]") || !unsetNames) return;
  const ticked = [...document.querySelectorAll("input[data-unset]:checked")].map((box) => box.dataset.unset);
  unsetNames.value = ticked.join(" ");
});

function showOnce(hint, text) {
  const box = document.getElementById("github-shown");
  box.querySelector(".hint").textContent = hint;
  box.querySelector("code").textContent = text;
  box.hidden = false;
}

const after = {
  "domain-add": (answer) => {
    if (answer.warning) sessionStorage.setItem(KEPT_FLASH, answer.warning);
    location.reload();
  },
  "github-link": (answer) => showOnce(
    `Linked. In GitHub (the repo's Settings, Webhooks, Add webhook) set the Payload URL to ${answer.payload_url}, ` +
    `the content type to ${answer.content_type}, "${answer.events}", and this secret, shown only now ` +
    "(reload to see the link):", answer.secret),
  "github-secret": (answer) => showOnce(
    "The new webhook secret, shown only now: paste it into the webhook's form in GitHub.", answer.secret),
  "github-deploy-key": (answer) => showOnce(
    "Add this as a read-only deploy key in GitHub (the repo's Settings, Deploy keys):", answer.public_key),
};

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-call]");
  if (!form) return;
  event.preventDefault();
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
  const [method, path] = form.dataset.call.split(" ");
  const buttons = [...form.querySelectorAll("button")];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    after[form.id](await callApi(method, path, bodyOf(form)));
    form.reset();
  } catch (error) {
    flash(error.message, "error");
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
});
