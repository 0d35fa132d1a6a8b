"""The dashboard's picture of a project, drawn as SVG on the server: deploy durations and
outcomes over the last deployments, and CPU and memory per service now. No script, no chart
library.

Pure functions returning markup to put inline in a page. Built with ElementTree, so every piece
of text (a branch, a commit subject, a failure's reason: anything may hold `<script>`) is escaped
by the serializer and none can be forgotten. Colours come from CSS classes only (static/charts.css):
the page's CSP allows no inline style.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from runtime.docker_engine import ServiceUsage
from runtime.store import ACTIVE_STATUSES, Deployment, DeploymentStatus

SVG_NS = "http://www.w3.org/2000/svg"
SHOWN = 30  # deployments in the chart, the newest ones
MIN_BAR = 2.0  # px: a deployment that took no time still shows
# A finished deployment's bar class by its status; one still under way is "bar-running".
BAR_CLASSES: dict[str, str] = {
    DeploymentStatus.LIVE: "bar-live",
    DeploymentStatus.REPLACED: "bar-replaced",
    DeploymentStatus.ROLLED_BACK: "bar-rolled-back",
    DeploymentStatus.FAILED: "bar-failed",
    DeploymentStatus.CANCELLED: "bar-cancelled",
    DeploymentStatus.SUPERSEDED: "bar-superseded",
}
RUNNING_CLASS = "bar-running"
OTHER_CLASS = "bar-other"  # a status this version does not know (a newer one wrote the store)
HIGH = 0.9  # a usage bar at this share of its scale or more gets "bar-high"
# What XML 1.0 cannot hold at all (ElementTree would write it, and the SVG would not parse):
# control characters such as ESC from a build's coloured output.
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# Deploy chart geometry (px of the viewBox, which is also the SVG's fixed size).
D_WIDTH, D_HEIGHT = 600, 160
D_LEFT, D_RIGHT, D_TOP, D_BOTTOM = 64, 8, 12, 22  # margins: the axis labels on the left, numbers below
# Usage bars geometry.
U_WIDTH, U_ROW, U_HEAD = 640, 24, 20
U_NAME_CHARS = 18
U_CPU_X, U_MEM_X, U_TRACK = 130, 350, 150  # where each track starts, and its length
U_TEXT_GAP = 6


def deploy_chart(deployments: Sequence[Deployment], subjects: Mapping[str, str] | None = None,
                 link: Callable[[Deployment], str] | None = None, now: datetime | None = None) -> str:
    """One bar per deployment, the newest SHOWN of them, oldest on the left: its height is how
    long it took (queued to finished; one still under way, until `now`), its class says how it
    ended, and its <title> (shown on hover) says which it was.

    `subjects`: commit id -> the commit message's first line, put in the titles when given.
    `link`: the address a bar leads to (its deployment's page), when given.
    """
    shown = sorted(deployments, key=lambda d: d.number)[-SHOWN:]
    if not shown:
        return _empty(D_WIDTH, "deploy-chart", "No deployments yet")
    at = now or datetime.now(UTC)
    seconds = [_duration(d, at) for d in shown]
    longest = max((s for s in seconds if s is not None), default=0.0)
    svg = _svg(D_WIDTH, D_HEIGHT, "deploy-chart", _deploy_summary(shown, longest))
    plot_height = D_HEIGHT - D_TOP - D_BOTTOM
    base = D_TOP + plot_height
    _line(svg, D_LEFT, D_TOP, D_WIDTH - D_RIGHT, D_TOP, "grid")
    _line(svg, D_LEFT, base, D_WIDTH - D_RIGHT, base, "axis")
    _text(svg, D_LEFT - 6, D_TOP + 4, _span(longest), "axis-label", anchor="end")
    _text(svg, D_LEFT - 6, base + 4, "0 s", "axis-label", anchor="end")
    slot = (D_WIDTH - D_LEFT - D_RIGHT) / SHOWN
    for index, (d, took) in enumerate(zip(shown, seconds, strict=True)):
        height = max(MIN_BAR, plot_height * (took or 0.0) / longest) if longest else MIN_BAR
        parent = ET.SubElement(svg, "a", {"href": link(d)}) if link else svg
        bar = ET.SubElement(parent, "rect", {
            "class": f"bar {_bar_class(d)}", "x": _n(D_LEFT + slot * index + slot * 0.15), "y": _n(base - height),
            "width": _n(slot * 0.7), "height": _n(height),
        })
        ET.SubElement(bar, "title").text = _clean(_deploy_title(d, took, (subjects or {}).get(d.commit_sha, "")))
    for index in sorted({0, len(shown) - 1}):
        _text(svg, D_LEFT + slot * (index + 0.5), D_HEIGHT - 6, f"#{shown[index].number}", "axis-label",
              anchor="middle")
    return _markup(svg)


def usage_bars(services: Sequence[ServiceUsage]) -> str:
    """Per service, a row: its CPU now (on a scale of this node's CPUs) and its memory used
    (on a scale of its limit), as horizontal bars with the figures beside them."""
    if not services:
        return _empty(U_WIDTH, "usage-bars", "No services running")
    height = U_HEAD + U_ROW * len(services)
    svg = _svg(U_WIDTH, height, "usage-bars", "CPU and memory now: " + "; ".join(_usage_words(s) for s in services))
    _text(svg, U_CPU_X, 14, "CPU", "axis-label")
    _text(svg, U_MEM_X, 14, "memory", "axis-label")
    for index, usage in enumerate(services):
        y = U_HEAD + U_ROW * index
        name = _text(svg, 0, y + 15, _shorten(usage.service, U_NAME_CHARS), "service-name")
        ET.SubElement(name, "title").text = _clean(usage.service)
        if usage.containers == 0:
            _text(svg, U_CPU_X, y + 15, "no container running on this node", "usage-none")
            continue
        containers = f"{usage.containers} container{'s' if usage.containers != 1 else ''}"
        if usage.cpu_percent is None:
            _text(svg, U_CPU_X, y + 15, "CPU not measured", "usage-none")
        else:
            scale = max(usage.cpus, 1) * 100
            _track(svg, U_CPU_X, y, usage.cpu_percent / scale, "bar-cpu",
                   f"{usage.service}: CPU {usage.cpu_percent:.1f} % of {scale} % ({max(usage.cpus, 1)} CPUs), "
                   f"{containers}, over {usage.cpu_seconds:.1f} s")
            _text(svg, U_CPU_X + U_TRACK + U_TEXT_GAP, y + 15, f"{usage.cpu_percent:.1f} %", "usage-value")
        share = usage.memory_used / usage.memory_limit if usage.memory_limit else 0.0
        _track(svg, U_MEM_X, y, share, "bar-memory",
               f"{usage.service}: memory {_bytes(usage.memory_used)} of {_bytes(usage.memory_limit)} "
               f"({share * 100:.0f} %), {containers}")
        _text(svg, U_MEM_X + U_TRACK + U_TEXT_GAP, y + 15,
              f"{_bytes(usage.memory_used)} / {_bytes(usage.memory_limit)}", "usage-value")
    return _markup(svg)


# -- the deploy chart's words ----------------------------------------------------------------

def _duration(d: Deployment, now: datetime) -> float | None:
    """Seconds from queued to finished (to `now` while it runs); None if its times cannot tell."""
    end = d.finished_at or (now.isoformat() if d.status in ACTIVE_STATUSES else "")
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(d.created_at)).total_seconds()
    except (TypeError, ValueError):
        return None
    return max(seconds, 0.0)


def _bar_class(d: Deployment) -> str:
    if d.status in ACTIVE_STATUSES:
        return RUNNING_CLASS
    return BAR_CLASSES.get(d.status, OTHER_CLASS)


def _deploy_title(d: Deployment, took: float | None, subject: str) -> str:
    """Like "#12 live, 41 s, abc1234 on main: Fix the login form", and why it failed."""
    if took is None:
        how_long = "duration unknown"
    else:
        how_long = _span(took) + (" so far" if d.status in ACTIVE_STATUSES else "")
    title = f"#{d.number} {d.status}, {how_long}, {d.commit_sha[:7]}"
    if d.branch:
        title += f" on {_shorten(d.branch, 60)}"
    if subject:
        title += f": {_shorten(subject, 100)}"
    if d.reason:
        title += f"\n{_shorten(d.reason, 300)}"
    return title


def _deploy_summary(shown: Sequence[Deployment], longest: float) -> str:
    """The chart in words, for a screen reader: how many, how they ended, the longest."""
    counts = Counter("running" if d.status in ACTIVE_STATUSES else str(d.status) for d in shown)
    outcomes = ", ".join(f"{count} {status}" for status, count in counts.most_common())
    return (f"Durations of the last {len(shown)} deployment{'s' if len(shown) != 1 else ''}, "
            f"oldest first: {outcomes}; longest {_span(longest)}")


def _span(seconds: float) -> str:
    """A duration as a person reads it: "41 s", "2 min 5 s", "1 h 3 min"."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


# -- the usage bars' words -------------------------------------------------------------------

def _usage_words(usage: ServiceUsage) -> str:
    if usage.containers == 0:
        return f"{usage.service} not running on this node"
    cpu = "CPU not measured" if usage.cpu_percent is None else f"CPU {usage.cpu_percent:.1f} %"
    return f"{usage.service} {cpu}, memory {_bytes(usage.memory_used)} of {_bytes(usage.memory_limit)}"


def _bytes(count: int) -> str:
    """Bytes in binary units, three significant figures or so: "512 B", "12.3 MiB", "1.5 GiB"."""
    size, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.0f} {unit}" if unit == "B" or size >= 100 else f"{size:.1f} {unit}"


def _track(svg: ET.Element, x: float, y: float, share: float, css: str, title: str) -> None:
    """A bar's full length (its scale), and over it the part used, with the figures on hover."""
    ET.SubElement(svg, "rect", {"class": "track", "x": _n(x), "y": _n(y + 4), "width": _n(U_TRACK),
                                "height": "14"})
    filled = min(max(share, 0.0), 1.0)
    bar = ET.SubElement(svg, "rect", {
        "class": f"bar {css}{' bar-high' if filled >= HIGH else ''}", "x": _n(x), "y": _n(y + 4),
        "width": _n(U_TRACK * filled), "height": "14",
    })
    ET.SubElement(bar, "title").text = _clean(title)


# -- SVG -------------------------------------------------------------------------------------

def _svg(width: int, height: int, css: str, label: str) -> ET.Element:
    return ET.Element("svg", {
        "xmlns": SVG_NS, "class": f"chart {css}", "viewBox": f"0 0 {width} {height}",
        "width": str(width), "height": str(height), "role": "img", "aria-label": _clean(label),
    })


def _empty(width: int, css: str, words: str) -> str:
    svg = _svg(width, 40, css, words)
    _text(svg, 0, 24, words, "chart-empty")
    return _markup(svg)


def _line(svg: ET.Element, x1: float, y1: float, x2: float, y2: float, css: str) -> None:
    ET.SubElement(svg, "line", {"class": css, "x1": _n(x1), "y1": _n(y1), "x2": _n(x2), "y2": _n(y2)})


def _text(svg: ET.Element, x: float, y: float, words: str, css: str, anchor: str = "start") -> ET.Element:
    # text-anchor is a presentation attribute, not a style: the CSP's style-src does not cover it.
    attributes = {"class": css, "x": _n(x), "y": _n(y)}
    if anchor != "start":
        attributes["text-anchor"] = anchor
    element = ET.SubElement(svg, "text", attributes)
    element.text = _clean(words)
    return element


def _markup(svg: ET.Element) -> str:
    return ET.tostring(svg, encoding="unicode")


def _n(value: float) -> str:
    """A coordinate, short: "12", "12.5"."""
    return f"{value:.1f}".removesuffix(".0")


def _clean(text: str) -> str:
    """Text that XML can hold: what it cannot (control characters) becomes U+FFFD.
    Escaping is left to ElementTree, which does it on output."""
    return _NOT_XML.sub("\ufffd", text)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"
