// Every form with data-api="METHOD /api/v1/path" is sent to the REST API as JSON, with the
// session's CSRF token, instead of as a page form. Fields become the JSON body:
//   name="a"                  -> {"a": "text"} (empty text fields are left out)
//   name="a.b"                -> {"a": {"b": ...}}
//   data-type="int"           -> a number;  type=checkbox -> true/false
//   data-type="pairs"         -> lines of NAME=value -> {"NAME": "value"}
//   data-type="words"         -> whitespace-separated words -> ["w1", "w2"]
// data-confirm asks first; data-after says what then: "reload" (default), "deployment" (go to
// the deployment the answer names), "show" (show the answer's `key` once, in data-show's element).

export const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

export async function callApi(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const message = data?.error?.message ?? `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return data;
}

export function flash(message, kind = "info") {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.className = `flash flash-${kind}`;
  box.hidden = false;
}

function set(body, name, value) {
  const parts = name.split(".");
  let into = body;
  for (const part of parts.slice(0, -1)) into = into[part] ??= {};
  into[parts.at(-1)] = value;
}

function valueOf(field) {
  const kind = field.dataset.type;
  if (field.type === "checkbox") return field.checked;
  const text = field.value.trim();
  if (kind === "int") return text === "" ? undefined : Number.parseInt(text, 10);
  if (kind === "words") return text.split(/\s+/).filter(Boolean);
  if (kind === "pairs") {
    const pairs = {};
    for (const line of field.value.split("\n")) {
      if (!line.trim()) continue;
      const at = line.indexOf("=");
      if (at < 1) throw new Error(`"${line.slice(0, 40)}" is not NAME=value`);
      pairs[line.slice(0, at).trim()] = line.slice(at + 1);
    }
    return pairs;
  }
  return text === "" ? undefined : text;
}

export function bodyOf(form) {
  const body = {};
  for (const field of form.elements) {
    if (!field.name || field.disabled || field.type === "submit") continue;
    const value = valueOf(field);
    if (value !== undefined) set(body, field.name, value);
  }
  return body;
}

async function submit(form) {
  const [method, path] = form.dataset.api.split(" ");
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
  const buttons = [...form.querySelectorAll("button")];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const body = method === "GET" || method === "DELETE" ? undefined : bodyOf(form);
    const answer = await callApi(method, path, body);
    const after = form.dataset.after ?? "reload";
    const number = answer?.number ?? answer?.deployment;  // a deploy's answer, or an env change's redeploy
    if (after === "deployment" && number) {
      const project = path.split("/")[4];
      location.assign(`/projects/${project}/deployments/${number}`);
    } else if (after === "show") {
      const target = document.getElementById(form.dataset.show);
      target.querySelector("code").textContent = answer.key;
      target.hidden = false;
      form.reset();
    } else if (after === "deployment" || after === "reload") {
      location.reload();
    }
  } catch (error) {
    flash(error.message, "error");
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-api]");
  if (!form) return;
  event.preventDefault();
  submit(form);
});
