/* A stream of text lines shown as a terminal would show them, and inert: every character of
   every line ends up as text (createElement + textContent), never as markup.

     const term = new Terminal(container, {maxLines: 5000, onUpdate: (term) => {}});
     term.appendLine(text)  one line of output ("\n" inside starts another); ANSI SGR colours and
                            "\r" are rendered, every other escape sequence is dropped.
     term.pause() / term.resume()  stop showing new lines (they wait, at most maxLines of them),
                            then show what waited.
     term.setFilter(text)   show only the lines containing text (case-insensitive, not a regex);
                            "" shows every line again.
     term.clear()           forget every line.
     term.follow            true while the view sticks to the bottom: scrolling up clears it,
                            scrolling back down sets it again; a caller may set it.
     term.paused, term.waiting (lines waiting to be shown), term.dropped (lines not kept)

   Options: maxLines, the most lines kept in the page (older ones are dropped and counted, so a
   100,000-line log costs no more than this many); onUpdate, called after each batch of lines
   is shown (e.g. to update a "N new lines" label). The container becomes the scrolling box;
   style it with terminal.css. */

// One token of a line: a CSI sequence (SGR when its final byte is "m"), an OSC string (e.g. a
// hyperlink), another ESC string or sequence, or a control character. Unterminated sequences
// are swallowed to the end of the line rather than shown half.
const TOKEN = /\x1b\[([0-?]*)([ -/]*)([@-~]?)|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?|\x1b[ -/]*[0-~]?|[\x00-\x08\x0a-\x1f\x7f-\x9f]/g;

// xterm's default 16 colours, to map 256-colour and true-colour codes to the nearest class.
const PALETTE = [
  [0, 0, 0], [205, 0, 0], [0, 205, 0], [205, 205, 0], [0, 0, 238], [205, 0, 205], [0, 205, 205], [229, 229, 229],
  [127, 127, 127], [255, 0, 0], [0, 255, 0], [255, 255, 0], [92, 92, 255], [255, 0, 255], [0, 255, 255], [255, 255, 255],
];

function nearest(r, g, b) {
  let best = 0, bestDistance = Infinity;
  PALETTE.forEach(([pr, pg, pb], index) => {
    const distance = (r - pr) ** 2 + (g - pg) ** 2 + (b - pb) ** 2;
    if (distance < bestDistance) [best, bestDistance] = [index, distance];
  });
  return best;
}

// A colour of the 256-colour palette as one of the 16: 0-15 are them, 16-231 a 6x6x6 cube,
// 232-255 greys.
function from256(n) {
  if (!(n >= 0 && n <= 255)) return null;
  if (n < 16) return n;
  if (n >= 232) {
    const grey = 8 + 10 * (n - 232);
    return nearest(grey, grey, grey);
  }
  const level = (v) => (v === 0 ? 0 : 55 + 40 * v);
  const cube = n - 16;
  return nearest(level(Math.floor(cube / 36)), level(Math.floor(cube / 6) % 6), level(cube % 6));
}

// The colour of an extended code (38/48) whose arguments are `rest` ([5, n] or [2, r, g, b]);
// returns the colour (null if unknown) and how many arguments it used.
function extended(rest) {
  if (rest[0] === 5) return [from256(rest[1]), 2];
  if (rest[0] === 2) {
    const [r, g, b] = rest.slice(1, 4);
    return [[r, g, b].every((v) => v >= 0 && v <= 255) ? nearest(r, g, b) : null, 4];
  }
  return [null, 1];
}

const PLAIN = {fg: null, bg: null, bold: false, dim: false, italic: false, underline: false};

// The style after the SGR parameters `params` ("31;1", "38;5;208", "" meaning reset).
function applySgr(style, params) {
  style = {...style};
  const list = params.split(";");
  for (let i = 0; i < list.length; i++) {
    const sub = list[i].split(":").map(Number); // "38:2::r:g:b" is the colon form of 38;2;r;g;b
    const code = sub[0] || 0;
    if (code === 38 || code === 48) {
      let colour, used;
      if (sub.length > 1) {
        const rest = sub.slice(1);
        // the colon true-colour form may carry a colour-space id before r:g:b
        [colour] = extended(rest[0] === 2 && rest.length > 4 ? [2, ...rest.slice(-3)] : rest);
      } else {
        [colour, used] = extended(list.slice(i + 1).map(Number));
        i += used;
      }
      if (colour !== null) style[code === 38 ? "fg" : "bg"] = colour;
    } else if (code === 0) style = {...PLAIN};
    else if (code === 1) style.bold = true;
    else if (code === 2) style.dim = true;
    else if (code === 3) style.italic = true;
    else if (code === 4) style.underline = true;
    else if (code === 22) style.bold = style.dim = false;
    else if (code === 23) style.italic = false;
    else if (code === 24) style.underline = false;
    else if (code >= 30 && code <= 37) style.fg = code - 30;
    else if (code === 39) style.fg = null;
    else if (code >= 40 && code <= 47) style.bg = code - 40;
    else if (code === 49) style.bg = null;
    else if (code >= 90 && code <= 97) style.fg = code - 90 + 8;
    else if (code >= 100 && code <= 107) style.bg = code - 100 + 8;
  }
  return style;
}

function classesOf(style) {
  const names = [];
  if (style.fg !== null) names.push(`ansi-fg-${style.fg}`);
  if (style.bg !== null) names.push(`ansi-bg-${style.bg}`);
  for (const flag of ["bold", "dim", "italic", "underline"]) if (style[flag]) names.push(`ansi-${flag}`);
  return names.join(" ");
}

const isSgr = (match) => match[3] === "m" && match[2] === "" && /^[\d;:]*$/.test(match[1]);

export class Terminal {
  #scroller;
  #notice;
  #lines;
  #queue = [];     // raw lines waiting for the next frame (or for resume)
  #kept = [];      // {node, lower} of the lines in the page, oldest first
  #style = PLAIN;  // SGR state carries from line to line, as in a terminal
  #filter = "";
  #frame = 0;

  constructor(container, {maxLines = 5000, onUpdate = null} = {}) {
    this.maxLines = maxLines;
    this.onUpdate = onUpdate;
    this.follow = true;
    this.paused = false;
    this.dropped = 0;
    this.#scroller = container;
    container.classList.add("terminal");
    // a log, but not a live region: a screen reader reading 100,000 lines aloud helps no one
    container.setAttribute("role", "log");
    container.setAttribute("aria-live", "off");
    container.tabIndex = 0; // scrollable by keyboard
    // #flush keeps the view in place itself when old lines go; the browser's scroll anchoring
    // (not in every browser) would move it a second time
    container.style.overflowAnchor = "none";
    this.#notice = document.createElement("div");
    this.#notice.className = "terminal-notice";
    this.#notice.hidden = true;
    this.#lines = document.createElement("div");
    this.#lines.className = "terminal-lines";
    container.replaceChildren(this.#notice, this.#lines);
    container.addEventListener("scroll", () => {
      // follow while the bottom is in view (a few pixels of slack for fractional sizes)
      this.follow = container.scrollHeight - container.scrollTop - container.clientHeight < 4;
    });
  }

  get waiting() {
    return this.#queue.length;
  }

  appendLine(text) {
    for (const line of String(text).split("\n")) this.#queue.push(line);
    // Bounded even while paused: only the newest maxLines could ever be shown, so drop the
    // rest now (in bulk, not one shift per line) and keep only their colour changes.
    if (this.#queue.length > 2 * this.maxLines) this.#drop(this.#queue.length - this.maxLines);
    this.#schedule();
  }

  pause() {
    this.paused = true;
  }

  resume() {
    this.paused = false;
    this.#schedule();
  }

  setFilter(text) {
    this.#filter = String(text).toLowerCase();
    for (const line of this.#kept) line.node.hidden = !this.#matches(line);
    if (this.follow) this.#scroller.scrollTop = this.#scroller.scrollHeight;
  }

  clear() {
    this.#queue = [];
    this.#kept = [];
    this.#style = PLAIN;
    this.dropped = 0;
    this.#lines.replaceChildren();
    this.#showNotice();
  }

  #matches(line) {
    return line.lower.includes(this.#filter);
  }

  #schedule() {
    // one DOM update per frame, however many lines arrived since the last
    if (!this.#frame && !this.paused) this.#frame = requestAnimationFrame(() => this.#flush());
  }

  // Forget the oldest `count` waiting lines, keeping the colours they set.
  #drop(count) {
    for (const line of this.#queue.slice(0, count)) {
      if (line.includes("\x1b")) this.#parse(line, () => {}, () => {});
    }
    this.#queue = this.#queue.slice(count);
    this.dropped += count;
  }

  #flush() {
    this.#frame = 0;
    if (this.paused || this.#queue.length === 0) return;
    if (this.#queue.length > this.maxLines) this.#drop(this.#queue.length - this.maxLines);
    const fresh = this.#queue.map((raw) => this.#render(raw));
    this.#queue = [];

    // Removing lines (and changing the notice) above the view moves what the reader looks at:
    // unless following (then the bottom is the place), scroll back by the height that went.
    const before = this.follow ? 0 : this.#scroller.scrollHeight;
    const excess = this.#kept.length + fresh.length - this.maxLines;
    if (excess > 0) {
      for (const line of this.#kept.splice(0, excess)) line.node.remove();
      this.dropped += excess;
    }
    this.#showNotice();
    if (!this.follow) this.#scroller.scrollTop -= before - this.#scroller.scrollHeight;

    const fragment = document.createDocumentFragment();
    for (const line of fresh) {
      line.node.hidden = !this.#matches(line);
      fragment.append(line.node);
    }
    this.#kept.push(...fresh);
    this.#lines.append(fragment);
    if (this.follow) this.#scroller.scrollTop = this.#scroller.scrollHeight;
    this.onUpdate?.(this);
  }

  #showNotice() {
    const count = this.dropped;
    this.#notice.hidden = count === 0;
    this.#notice.textContent = `${count.toLocaleString()} earlier ${count === 1 ? "line" : "lines"} not shown`;
  }

  // Walk a raw line: its printable text goes to onText(text, classes), "\r", "\b" and
  // erase-in-line ("K0", "K1", "K2") to onControl; SGR updates the style carried from line to
  // line; every other sequence is dropped.
  #parse(raw, onText, onControl) {
    let at = 0;
    TOKEN.lastIndex = 0;
    for (let match; (match = TOKEN.exec(raw)) !== null;) {
      if (match.index > at) onText(raw.slice(at, match.index), classesOf(this.#style));
      at = TOKEN.lastIndex;
      const token = match[0];
      if (token === "\r" || token === "\b") onControl(token);
      else if (match[3] === "K" && match[2] === "") onControl(`K${match[1] || "0"}`);
      else if (isSgr(match)) this.#style = applySgr(this.#style, match[1]);
    }
    if (at < raw.length) onText(raw.slice(at), classesOf(this.#style));
  }

  // A line as a terminal shows it: one cell per character at a cursor column that "\r" sends
  // back to 0 (so later text overwrites), then runs of equal style as spans.
  #render(raw) {
    const chars = [], styles = [];
    let column = 0;
    const write = (text, classes) => {
      for (const ch of text) { // by code point: an emoji is one cell
        while (chars.length < column) { // past the end after an erase: blanks, as on a screen
          chars.push(" ");
          styles.push("");
        }
        chars[column] = ch;
        styles[column] = classes;
        column++;
      }
    };
    const control = (token) => {
      if (token === "\r") column = 0;
      else if (token === "\b") column = Math.max(0, column - 1);
      else if (token === "K0") chars.length = styles.length = Math.min(chars.length, column);
      else if (token === "K2") chars.length = styles.length = 0;
      else if (token === "K1") {
        chars.fill(" ", 0, column + 1);
        styles.fill("", 0, column + 1);
      }
    };
    // "\r\n" is a plain newline: the "\r" left at the end returns to a column nothing follows
    this.#parse(raw, write, control);
    const node = document.createElement("div");
    node.className = "terminal-line";
    for (let start = 0; start < chars.length;) {
      let end = start + 1;
      while (end < chars.length && styles[end] === styles[start]) end++;
      const run = chars.slice(start, end).join("");
      if (styles[start]) {
        const span = document.createElement("span");
        span.className = styles[start];
        span.textContent = run;
        node.append(span);
      } else node.append(run); // a string appended is a text node, never parsed
      start = end;
    }
    return {node, lower: chars.join("").toLowerCase()};
  }
}

// A filter input and a pause button for a terminal: the filter applies as it is typed, the
// button toggles pause and says what a click will do.
export function wireControls(terminal, filter, pause) {
  filter.addEventListener("input", () => terminal.setFilter(filter.value));
  pause.addEventListener("click", () => {
    const paused = pause.getAttribute("aria-pressed") !== "true";
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    if (paused) terminal.pause(); else terminal.resume();
  });
}
