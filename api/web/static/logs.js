// A project's live logs: the chosen service's lines (the API's text stream, tail then follow)
// in a Terminal with pause and filter. Choosing another service stops the old stream first.
import { Terminal, wireControls } from "./terminal.js";
import { followText } from "./streams.js";

const box = document.getElementById("logs");
if (box) start(box);

function start(box) {
  const terminal = new Terminal(box, {maxLines: Number(box.dataset.window) || 5000});
  const picker = document.getElementById("log-service");
  const filter = document.getElementById("log-filter");
  const pause = document.getElementById("log-pause");
  const state = document.getElementById("log-state");
  const again = document.getElementById("log-again");
  let stream = null;

  function follow(service) {
    stream?.abort();
    terminal.clear();
    box.dataset.service = service;
    box.dataset.state = "following";
    again.hidden = true;
    state.textContent = `Following ${service}`;
    const url = `${box.dataset.url}?service=${encodeURIComponent(service)}&follow=true&tail=${box.dataset.tail}`;
    const mine = followText(url, terminal, (error) => {
      if (stream !== mine) return; // an old stream's end says nothing about the one shown
      box.dataset.state = error ? "failed" : "ended";
      state.textContent = error ? `The stream failed: ${error.message}`
        : `${service} stopped sending lines (replaced by a deploy, or stopped)`;
      again.hidden = false;
    });
    stream = mine;
    // the address says what is shown, so a reload shows it again
    history.replaceState(null, "", `?service=${encodeURIComponent(service)}`);
  }

  picker.addEventListener("change", () => follow(picker.value));
  again.addEventListener("click", () => follow(picker.value));
  wireControls(terminal, filter, pause);
  follow(picker.value);
}
