// A deployment's output, live while it runs: the terminal follows the output's SSE stream
// (resumed after a dropped connection), and the status above it changes when it ends.
import { Terminal, wireControls } from "./terminal.js";
import { followOutput } from "./streams.js";

const box = document.getElementById("output");
const terminal = new Terminal(box);
const filter = document.getElementById("output-filter");
const pause = document.getElementById("output-pause");

wireControls(terminal, filter, pause);

followOutput(box.dataset.url, terminal, (end) => {
  const status = document.querySelector("#deployment-status .status");
  status.textContent = end.status;
  status.className = `status status-${end.status.replace(" ", "-")}`;
  document.getElementById("deployment-reason").textContent = end.reason ?? "";
  box.dataset.ended = end.status;
});
