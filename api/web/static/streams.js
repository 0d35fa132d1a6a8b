/* Feeding a Terminal (terminal.js) from the API's live streams.

     const output = followOutput(url, terminal, (end) => {...});
       A deployment's output, GET /api/v1/projects/{p}/deployments/{n}/output (Server-Sent
       Events: `line` events whose id is the line number, then one `end` event). onEnd gets the
       end event's JSON {status, reason, number}, or null if the stream could not be opened or
       was refused (the browser gives no reason). output.close() stops following.

     const stop = followText(url, terminal, (error) => {...});
       A text/plain stream, e.g. GET /api/v1/projects/{p}/logs?service=web&follow=true&tail=200.
       Returns an AbortController: stop.abort() stops it. onEnd (optional) gets null when the
       stream ended, or an Error when it failed; not called after abort().

   Both are same-origin requests, so the session cookie goes with them; neither needs a CSRF
   token (they only read). */

export function followOutput(url, terminal, onEnd = () => {}) {
  const source = new EventSource(url);
  // EventSource reconnects by itself after a dropped connection and sends Last-Event-ID; a
  // server may still resend lines around that point, so show each line number at most once.
  let last = 0;
  source.addEventListener("line", (event) => {
    const number = Number(event.lastEventId);
    if (Number.isInteger(number) && number > 0) {
      if (number <= last) return;
      last = number;
    }
    terminal.appendLine(event.data);
  });
  source.addEventListener("end", (event) => {
    source.close(); // or it would reconnect when the server closes, and replay nothing forever
    let final = null;
    try {
      final = JSON.parse(event.data);
    } catch {
      // a malformed end still ends the stream
    }
    onEnd(final);
  });
  source.addEventListener("error", () => {
    // CLOSED here means the browser gave up (an HTTP error, a wrong content type), not a drop
    // it will retry by itself.
    if (source.readyState === EventSource.CLOSED) onEnd(null);
  });
  return {close: () => source.close()};
}

export function followText(url, terminal, onEnd = () => {}) {
  const controller = new AbortController();
  read(url, terminal, controller.signal).then(
    () => onEnd(null),
    (error) => {
      if (!controller.signal.aborted) onEnd(error);
    },
  );
  return controller;
}

async function read(url, terminal, signal) {
  const response = await fetch(url, {signal, headers: {Accept: "text/plain"}});
  if (!response.ok) throw new Error(`${response.status} ${(await response.text()).slice(0, 300)}`);
  const reader = response.body.getReader();
  // stream: true keeps a UTF-8 character split across chunks whole; the text after the last
  // "\n" of a chunk waits for the rest of its line
  const decoder = new TextDecoder();
  let partial = "";
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    partial += decoder.decode(value, {stream: true});
    const lines = partial.split("\n");
    partial = lines.pop();
    for (const line of lines) terminal.appendLine(line);
  }
  partial += decoder.decode();
  if (partial) terminal.appendLine(partial); // a last line without its "\n"
}
