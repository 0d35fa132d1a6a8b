"""The dashboard's live text views (api/web/static/terminal.js and streams.js) in real headless
Chromium: colours, carriage returns, inertness, the bounded window, follow, pause and filter,
and the SSE and text streams they are fed from, served by a small local server we control."""

from __future__ import annotations

import json
import queue
import re
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

STATIC = Path(__file__).resolve().parent.parent / "api" / "web" / "static"
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"

# The harness: the modules loaded as files (no inline script, as the dashboard's CSP demands),
# a Terminal on #term whose window size comes from ?max=, and a way to wait for its next frame.
HARNESS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="stylesheet" href="terminal.css"></head>
<body><div id="term"></div><div id="scratch"></div>
<script type="module" src="harness.js"></script></body></html>
"""
HARNESS_JS = """import {Terminal} from "./terminal.js";
import {followOutput, followText} from "./streams.js";
const max = Number(new URLSearchParams(location.search).get("max") || 5000);
window.term = new Terminal(document.getElementById("term"), {maxLines: max});
window.followOutput = followOutput;
window.followText = followText;
// Terminal draws in requestAnimationFrame; a callback asked for after it runs after it.
window.nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
window.shown = () => [...document.querySelectorAll("#term .terminal-line")].map((n) => n.textContent);
window.visible = () => [...document.querySelectorAll("#term .terminal-line:not([hidden])")].map((n) => n.textContent);
document.body.dataset.ready = "yes";
"""


class Harness(ThreadingHTTPServer):
    daemon_threads = True
    text_chunks: queue.Queue[bytes | None]
    last_event_ids: list[str | None]


class Handler(SimpleHTTPRequestHandler):
    """Static files from the served folder, plus /sse (an output stream that drops its first
    connection) and /text (a text stream whose chunks the test hands over one by one)."""

    server: Harness

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def end_headers(self) -> None:
        if "csp=1" in self.path:
            self.send_header("Content-Security-Policy", CSP)
        super().end_headers()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/sse":
            self.sse({key: int(values[0]) for key, values in parse_qs(url.query).items()})
        elif url.path == "/text":
            self.text()
        else:
            super().do_GET()

    def sse(self, params: dict[str, int]) -> None:
        """Lines 1..total as `line` events. The first connection stops after `cut` lines, in the
        middle of the next event; a reconnection resends `overlap` lines before its
        Last-Event-ID (as a careless server might), then the rest and `end`."""
        last = self.headers.get("Last-Event-ID")
        self.server.last_event_ids.append(last)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        total, cut, overlap = params["total"], params["cut"], params["overlap"]

        def event(number: int) -> bytes:
            colour = f"\x1b[3{number % 8}m" if number % 3 == 0 else ""
            return f"id: {number}\nevent: line\ndata: {colour}line {number}<b>\n\n".encode()

        if last is None:
            body = b"retry: 50\n\n" + b"".join(event(n) for n in range(1, cut + 1))
            body += f"id: {cut + 1}\nevent: line\ndata: line {cut + 1}".encode()  # never finished
        else:
            body = b"".join(event(n) for n in range(max(1, int(last) - overlap + 1), total + 1))
            body += f"event: end\ndata: {json.dumps({'status': 'complete', 'reason': None, 'number': 7})}\n\n".encode()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def text(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        while (chunk := self.server.text_chunks.get(timeout=60)) is not None:
            self.wfile.write(chunk)
            self.wfile.flush()
        self.close_connection = True  # HTTP/1.0 without a length: the body ends with the connection


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("web-terminal")
    for name in ("terminal.js", "streams.js", "terminal.css"):
        shutil.copy(STATIC / name, root / name)
    (root / "harness.html").write_text(HARNESS_HTML)
    (root / "harness.js").write_text(HARNESS_JS)

    class Served(Handler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

    httpd = Harness(("127.0.0.1", 0), Served)
    httpd.text_chunks = queue.Queue()
    httpd.last_event_ids = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dialogs() -> list[str]:
    return []


@pytest.fixture
def open_page(browser: Any, server: Harness, dialogs: list[str]) -> Iterator[Any]:
    """Opens the harness (query: e.g. "max=100", "csp=1") in a fresh page; any dialog is recorded."""
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    server.text_chunks = queue.Queue()
    server.last_event_ids = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    def opened(query: str = "") -> Any:
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("dialog", on_dialog)
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/harness.html?{query}")
        page.wait_for_selector("body[data-ready=yes]", state="attached")
        return page

    yield opened
    context.close()


def feed(page: Any, lines: list[str]) -> None:
    """Appends lines and waits for the frame that draws them."""
    page.evaluate("async (lines) => { for (const line of lines) term.appendLine(line); await nextFrame(); }", lines)


def spans(page: Any, index: int) -> list[tuple[str, str]]:
    """(class, text) of each piece of the index-th line shown ("" for plain text)."""
    return [tuple(piece) for piece in page.evaluate(
        """(index) => [...document.querySelectorAll("#term .terminal-line")[index].childNodes]
                      .map((n) => [n.nodeType === 1 ? n.className : "", n.textContent])""", index)]


def test_colours_become_spans_and_other_sequences_are_dropped(open_page: Any) -> None:
    page = open_page()
    feed(page, [
        "\x1b[31mred\x1b[0m plain \x1b[1;92mbold green\x1b[22;39m back",
        "\x1b[44;97mwhite on blue\x1b[49m \x1b[2;3;4mstyled\x1b[m",
        "\x1b[38;5;208morange\x1b[0m \x1b[38;2;0;0;250mtrue blue\x1b[0m \x1b[48;5;1mbg\x1b[0m",
        "\x1b[35mmagenta carries",
        "to the next line",
        "\x1b[0m\x1b[2K\x1b[1G\x1b[?25lno cursor\x1b[?25h \x1b(Bcharset \x1b]0;title\x07titled",
        "\x1b]8;;https://example.com/\x07a link\x1b]8;;\x07 and \x1b[31",
    ])
    assert spans(page, 0) == [("ansi-fg-1", "red"), ("", " plain "), ("ansi-fg-10 ansi-bold", "bold green"),
                              ("", " back")]
    assert spans(page, 1) == [("ansi-fg-15 ansi-bg-4", "white on blue"), ("ansi-fg-15", " "),
                              ("ansi-fg-15 ansi-dim ansi-italic ansi-underline", "styled")]
    # 256-colour 208 (255,135,0) is nearest xterm's yellow; (0,0,250) its blue
    assert spans(page, 2) == [("ansi-fg-3", "orange"), ("", " "), ("ansi-fg-4", "true blue"), ("", " "),
                              ("ansi-bg-1", "bg")]
    assert spans(page, 3) == [("ansi-fg-5", "magenta carries")]
    assert spans(page, 4) == [("ansi-fg-5", "to the next line")]
    assert spans(page, 5) == [("", "no cursor charset titled")]
    assert spans(page, 6) == [("", "a link and ")]
    assert page.evaluate("document.querySelectorAll('#term a').length") == 0


def test_markup_in_lines_and_sequences_stays_text(open_page: Any, dialogs: list[str]) -> None:
    page = open_page()
    hostile = [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(2)>",
        "\x1b[31m<img src=x onerror=alert(3)>\x1b[0m",
        "\x1b[31;<img src=x onerror=alert(4)>m after",
        "\x1b]8;;javascript:alert(5)\x07<a href=javascript:alert(5)>click</a>\x1b]8;;\x07",
        "\x1b]0;<script>alert(6)</script>\x07\x1b[<svg onload=alert(7)>m",
        '"><svg/onload=alert(8)><iframe srcdoc="<script>alert(9)</script>">',
        "\x1bP<img src=x onerror=alert(10)>\x1b\\ &lt;b&gt; &amp;",
    ]
    feed(page, hostile)
    assert page.evaluate("shown()")[:3] == [hostile[0], hostile[1], "<img src=x onerror=alert(3)>"]
    assert page.evaluate("shown()")[7] == " &lt;b&gt; &amp;"
    tags = page.evaluate("[...document.querySelectorAll('#term *')].map((n) => n.tagName)")
    assert set(tags) <= {"DIV", "SPAN"}
    assert page.evaluate("document.querySelectorAll('img, svg, iframe, a, b').length") == 0
    assert page.evaluate("document.scripts.length") == 1  # the harness's own
    # an <img> error would have fired by the time a fetch to the same server has come back
    page.evaluate("fetch('/terminal.css').then((r) => r.text())")
    assert dialogs == []


def test_the_dialog_check_would_see_injected_markup(open_page: Any, dialogs: list[str]) -> None:
    """The previous test's 'no dialog' means something: markup that does run is seen."""
    page = open_page()
    with page.expect_event("dialog"):
        page.evaluate("document.getElementById('scratch').innerHTML = '<img src=x onerror=alert(1)>'")
    assert dialogs == ["1"]


def test_carriage_returns_overwrite_as_on_a_terminal(open_page: Any) -> None:
    page = open_page()
    feed(page, [
        "10%\r20%\r30%",
        "abcdef\rxy",
        "windows line\r",
        "Downloading 50%\r\x1b[2KDone",
        "abc\bd",
        "\x1b[31mred\r\x1b[32mgr",
        "first\r\nsecond",
    ])
    assert page.evaluate("shown()") == ["30%", "xycdef", "windows line", "Done", "abd", "grd", "first", "second"]
    assert spans(page, 5) == [("ansi-fg-2", "gr"), ("ansi-fg-1", "d")]


def test_100000_lines_keep_a_bounded_window_and_a_responsive_page(open_page: Any) -> None:
    page = open_page()
    # all at once, in one task
    took = page.evaluate("""() => {
        const start = performance.now();
        for (let i = 0; i < 100000; i++) term.appendLine(i % 10 ? `line ${i}` : `\\x1b[3${i % 8}mline ${i}\\x1b[0m`);
        return performance.now() - start;
    }""")
    assert took < 5000
    page.wait_for_function("shown().at(-1) === 'line 99999'")
    shown = page.evaluate("shown()")
    assert len(shown) == 5000 and shown[0] == "line 95000"
    notice = page.text_content("#term .terminal-notice") or ""
    assert re.sub(r"\D", "", notice) == "95000" and notice.endswith("earlier lines not shown")

    # then as a stream: 100,000 more, 2,000 a task, with frames drawn in between
    started = time.monotonic()
    page.evaluate("""async () => {
        for (let batch = 0; batch < 50; batch++) {
            for (let i = 0; i < 2000; i++) term.appendLine(`more ${batch * 2000 + i}`);
            await new Promise((resolve) => setTimeout(resolve));
        }
        await nextFrame();
    }""")
    assert time.monotonic() - started < 20
    started = time.monotonic()
    assert page.evaluate("document.querySelectorAll('#term .terminal-line').length") == 5000
    assert time.monotonic() - started < 3
    assert page.evaluate("shown().at(-1)") == "more 99999"
    assert re.sub(r"\D", "", page.text_content("#term .terminal-notice") or "") == "195000"


def test_pause_holds_lines_bounded_and_resume_shows_them(open_page: Any) -> None:
    page = open_page("max=100")
    feed(page, [f"before {i}" for i in range(10)])
    page.evaluate("term.pause()")
    feed(page, [f"paused {i}" for i in range(1000)])
    assert page.evaluate("shown().length") == 10
    assert page.evaluate("term.waiting") <= 200  # bounded while paused too
    page.evaluate("async () => { term.resume(); await nextFrame(); }")
    shown = page.evaluate("shown()")
    assert len(shown) == 100 and shown[0] == "paused 900" and shown[-1] == "paused 999"
    assert re.sub(r"\D", "", page.text_content("#term .terminal-notice") or "") == "910"


def test_follow_sticks_to_the_bottom_until_the_reader_scrolls_up(open_page: Any) -> None:
    page = open_page("max=100")
    at_bottom = "(() => { const t = document.getElementById('term'); return t.scrollHeight - t.scrollTop - t.clientHeight < 4; })()"
    feed(page, [f"line {i}" for i in range(100)])
    assert page.evaluate(at_bottom)

    # the reader scrolls up to line 40: new lines (which drop the oldest) must not move it
    page.evaluate("document.querySelectorAll('#term .terminal-line')[40].scrollIntoView()")
    page.wait_for_function("!term.follow")
    top_line = """(() => { const r = document.getElementById('term').getBoundingClientRect();
                   return document.elementFromPoint(r.left + 20, r.top + 12).closest('.terminal-line').textContent; })()"""
    assert page.evaluate(top_line) == "line 40"
    feed(page, [f"line {i}" for i in range(100, 120)])
    assert page.evaluate("shown()[0]") == "line 20"
    assert page.evaluate(top_line) == "line 40"
    assert not page.evaluate(at_bottom)

    # back at the bottom it follows again
    page.evaluate("const t = document.getElementById('term'); t.scrollTop = t.scrollHeight")
    page.wait_for_function("term.follow")
    feed(page, [f"line {i}" for i in range(120, 150)])
    assert page.evaluate(at_bottom)


def test_filter_shows_only_matching_lines_including_new_ones(open_page: Any) -> None:
    page = open_page()
    feed(page, ["GET /a 200", "\x1b[31mERROR\x1b[0m db down", "get /b 500 error", "a.c literal", "abc", "red 31m"])
    page.evaluate("term.setFilter('error')")
    assert page.evaluate("visible()") == ["ERROR db down", "get /b 500 error"]
    feed(page, ["new Error here", "ok"])
    assert page.evaluate("visible()") == ["ERROR db down", "get /b 500 error", "new Error here"]
    page.evaluate("term.setFilter('a.c')")  # plain text, not a regex
    assert page.evaluate("visible()") == ["a.c literal"]
    page.evaluate("term.setFilter('31m')")  # the text shown, not the escape sequences
    assert page.evaluate("visible()") == ["red 31m"]
    page.evaluate("term.setFilter('')")
    assert len(page.evaluate("visible()")) == 8


def test_output_resumed_after_a_drop_shows_every_line_once_in_order(open_page: Any, server: Harness) -> None:
    page = open_page()
    end = page.evaluate("() => new Promise((resolve) => followOutput('/sse?total=300&cut=120&overlap=5', term, resolve))")
    assert end == {"status": "complete", "reason": None, "number": 7}
    page.evaluate("nextFrame()")
    assert page.evaluate("shown()") == [f"line {n}<b>" for n in range(1, 301)]
    assert server.last_event_ids == [None, "120"]  # the drop happened and the browser resumed
    assert spans(page, 2) == [("ansi-fg-3", "line 3<b>")]


def test_text_stream_split_mid_line_and_mid_character_renders_whole_lines(open_page: Any, server: Harness) -> None:
    page = open_page()
    page.evaluate("window.ended = 'no'; followText('/text', term, (error) => { window.ended = String(error); })")
    cafe = "café".encode()
    chunks = [b"first line\nsecond li", b"ne\n" + cafe[:4], cafe[4:] + b" au lait\r\n\x1b[32mgreen\x1b[0m\n",
              b"no newline at the end"]
    server.text_chunks.put(chunks[0])
    page.wait_for_function("shown().length === 1")
    assert page.evaluate("shown()") == ["first line"]  # "second li" waits for the rest of its line
    server.text_chunks.put(chunks[1])
    page.wait_for_function("shown().length === 2")
    assert page.evaluate("shown()") == ["first line", "second line"]
    server.text_chunks.put(chunks[2])
    page.wait_for_function("shown().length === 4")
    server.text_chunks.put(chunks[3])
    server.text_chunks.put(None)
    page.wait_for_function("window.ended === 'null'")
    page.evaluate("nextFrame()")
    assert page.evaluate("shown()") == ["first line", "second line", "café au lait", "green", "no newline at the end"]
    assert spans(page, 3) == [("ansi-fg-2", "green")]


def test_the_modules_work_under_the_dashboards_content_security_policy(open_page: Any) -> None:
    page = open_page("csp=1")
    feed(page, ["\x1b[32mok\x1b[0m under CSP"])
    assert spans(page, 0) == [("ansi-fg-2", "ok"), ("", " under CSP")]
    assert page.evaluate("getComputedStyle(document.querySelector('#term .ansi-fg-2')).color") == "rgb(152, 195, 121)"
