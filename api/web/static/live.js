// Projects' states as they change, from the /api/v1/events stream (no polling): the status
// words of the projects list and of a project's page, its deployments' states, and a note
// with a link when a deployment the page does not list yet starts.

function setStatus(cell, value) {
  const badge = cell?.querySelector(".status");
  if (!badge) return;
  badge.textContent = value;
  badge.className = `status status-${value.replaceAll(" ", "-")}`;
}

function onProject(state) {
  const name = CSS.escape(state.project);
  for (const holder of document.querySelectorAll(`[data-project="${name}"]`)) {
    setStatus(holder.querySelector(".glance"), state.status);
    if (state.newest) setStatus(holder.querySelector(".newest"), state.newest.status);
  }
  const table = document.querySelector("table.deployments");
  if (!state.newest || !document.querySelector(`h1[data-project="${name}"]`)) return;
  const row = table?.querySelector(`tr[data-number="${state.newest.number}"]`);
  if (row) {
    setStatus(row.querySelector(".state"), state.newest.status);
    return;
  }
  const news = document.getElementById("news");
  const link = document.createElement("a");
  link.href = `/projects/${encodeURIComponent(state.project)}/deployments/${state.newest.number}`;
  link.textContent = `Deployment #${state.newest.number} is ${state.newest.status}: watch its output`;
  news.replaceChildren(link);
  news.hidden = false;
}

const events = new EventSource("/api/v1/events");
events.addEventListener("project", (event) => onProject(JSON.parse(event.data)));
events.addEventListener("end", () => events.close());  // signed out elsewhere: nothing more will come
