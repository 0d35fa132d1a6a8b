"""The dashboard's charts (api/web/charts.py), read back as data: well-formed SVG whose bars,
heights, classes and titles say what the records say, and whose every text stays text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from api.web.charts import SHOWN, deploy_chart, usage_bars
from runtime.docker_engine import ServiceUsage
from runtime.store import Deployment, DeploymentStatus

NS = {"svg": "http://www.w3.org/2000/svg"}
NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
HOSTILE = '<script>alert(1)</script>"\' onload="alert(2)" &amp; ]]>'
MIB = 1 << 20


def deployment(number: int, status: str = DeploymentStatus.REPLACED, seconds: float | None = 40.0,
               **fields: object) -> Deployment:
    """Deployment #number, queued an hour before NOW plus a minute per number, taking `seconds`
    (None: still under way)."""
    created = NOW - timedelta(hours=1) + timedelta(minutes=number)
    finished = "" if seconds is None else (created + timedelta(seconds=seconds)).isoformat(timespec="seconds")
    record = Deployment(
        project="shop", number=number, commit_sha=f"{number:07x}" + "a" * 33, branch="main", user="alice",
        source="push", status=status, reason="", image="", rollback_of=None, web_port=8000, timings="{}",
        log_path="", created_at=created.isoformat(timespec="seconds"), finished_at=finished, delivery="",
        web_service="", images="{}", static_site="")
    return replace(record, **fields)  # type: ignore[arg-type]


def parse(svg: str) -> ET.Element:
    """The markup as an XML parser reads it: it must be well-formed, whatever went in."""
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def bars(root: ET.Element) -> list[ET.Element]:
    return [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if "bar" in r.get("class", "").split()]


def title(element: ET.Element) -> str:
    found = element.find("svg:title", NS)
    assert found is not None and found.text is not None
    return found.text


def test_one_bar_per_deployment_oldest_left_heights_by_duration_classes_by_outcome():
    root = parse(deploy_chart([
        deployment(3, DeploymentStatus.LIVE, 41, commit_sha="abc1234" + "0" * 33),
        deployment(1, DeploymentStatus.REPLACED, 82),  # given newest first or not, drawn oldest first
        deployment(2, DeploymentStatus.FAILED, 20.5, reason="build failed: exit 2"),
    ], now=NOW))
    drawn = bars(root)
    assert [b.get("class") for b in drawn] == ["bar bar-replaced", "bar bar-failed", "bar bar-live"]
    xs = [float(b.get("x", "")) for b in drawn]
    assert xs == sorted(xs)
    heights = [float(b.get("height", "")) for b in drawn]
    assert heights[0] == pytest.approx(2 * heights[2], abs=0.2)  # 82 s against 41 s (20.5 s rounds to 20)
    bases = {float(b.get("y", "")) + float(b.get("height", "")) for b in drawn}
    assert len(bases) == 1  # all stand on the axis
    assert title(drawn[2]) == "#3 live, 41 s, abc1234 on main"
    assert title(drawn[1]).endswith("\nbuild failed: exit 2")
    labels = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "1 min 22 s" in labels and "#1" in labels and "#3" in labels  # the scale, first and last


def test_the_svg_is_a_fixed_size_image_with_a_summary_and_no_inline_style():
    svg = deploy_chart([deployment(1, DeploymentStatus.LIVE), deployment(2, DeploymentStatus.FAILED)], now=NOW)
    root = parse(svg)
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    assert root.get("role") == "img"
    assert root.get("aria-label") == ("Durations of the last 2 deployments, oldest first: 1 live, 1 failed; "
                                      "longest 40 s")
    assert "style" not in svg


def test_a_running_deployment_is_drawn_as_running_up_to_now():
    root = parse(deploy_chart([deployment(1, DeploymentStatus.LIVE, 30),
                               deployment(2, DeploymentStatus.BUILDING, None)],
                              now=NOW - timedelta(hours=1) + timedelta(minutes=2, seconds=60)))
    live, building = bars(root)
    assert building.get("class") == "bar bar-running"
    assert float(building.get("height", "")) == pytest.approx(2 * float(live.get("height", "")), abs=0.2)
    assert title(building).startswith("#2 building, 1 min 0 s so far, ")


def test_every_status_has_its_class():
    statuses = list(DeploymentStatus)
    root = parse(deploy_chart([deployment(i + 1, status, None if status in ("queued", "building", "starting")
                                          else 10) for i, status in enumerate(statuses)], now=NOW))
    assert [b.get("class") for b in bars(root)] == [
        "bar bar-running", "bar bar-running", "bar bar-running", "bar bar-live", "bar bar-replaced",
        "bar bar-rolled-back", "bar bar-failed", "bar bar-cancelled", "bar bar-superseded"]
    assert [b.get("class") for b in bars(parse(deploy_chart([deployment(1, "exploded")], now=NOW)))] \
        == ["bar bar-other"]


def test_only_the_newest_thirty_are_drawn():
    root = parse(deploy_chart([deployment(n) for n in range(1, 46)], now=NOW))
    drawn = bars(root)
    assert len(drawn) == SHOWN == 30
    assert title(drawn[0]).startswith("#16 ") and title(drawn[-1]).startswith("#45 ")


def test_a_deployment_that_took_no_time_or_an_unknown_time_still_shows():
    root = parse(deploy_chart([deployment(1, seconds=0), deployment(2, seconds=60),
                               deployment(3, DeploymentStatus.FAILED, created_at="not a time")], now=NOW))
    zero, minute, unknown = bars(root)
    assert 0 < float(zero.get("height", "")) < 5 and 0 < float(unknown.get("height", "")) < 5
    assert ", duration unknown, " in title(unknown)


def test_hostile_text_stays_text():
    """A branch, a commit subject and a failure's reason holding markup, quotes and control
    characters (an ANSI colour from the build's output) come back as the same text."""
    reason = f"\x1b[31mbuild failed\x1b[0m {HOSTILE}\x00"
    d = deployment(7, DeploymentStatus.FAILED, branch=HOSTILE, reason=reason)
    svg = deploy_chart([d], subjects={d.commit_sha: HOSTILE}, link=lambda d: f"/p/shop/{d.number}?a=1&b={HOSTILE}",
                       now=NOW)
    root = parse(svg)
    assert "<script" not in svg
    assert_inert(root)
    (bar,) = bars(root)
    said = title(bar)
    assert f"on {HOSTILE}: {HOSTILE}\n" in said
    assert "\ufffd[31mbuild failed\ufffd[0m " in said and "\x1b" not in said and "\x00" not in said
    (anchor,) = root.iter("{http://www.w3.org/2000/svg}a")
    assert anchor.get("href") == f"/p/shop/7?a=1&b={HOSTILE}"


def assert_inert(root: ET.Element) -> None:
    """Only the elements and attributes the charts draw with: no script, no handler, no style."""
    attributes = {"xmlns", "class", "viewBox", "width", "height", "role", "aria-label", "x", "y", "x1", "y1", "x2",
                  "y2", "text-anchor", "href"}
    for element in root.iter():
        assert element.tag.split("}")[1] in ("svg", "line", "text", "a", "rect", "title")
        assert set(element.attrib) <= attributes


def test_no_deployments_yet():
    root = parse(deploy_chart([], now=NOW))
    assert root.get("aria-label") == "No deployments yet"
    assert bars(root) == []
    assert [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")] == ["No deployments yet"]


# -- usage -----------------------------------------------------------------------------------

def usage(service: str, cpu: float | None = 50.0, used: int = 64 * MIB, limit: int = 256 * MIB,
          containers: int = 1) -> ServiceUsage:
    return ServiceUsage(service, containers=containers, cpu_percent=cpu, cpu_seconds=1.0, cpus=2,
                        memory_used=used, memory_limit=limit)


def test_cpu_and_memory_per_service_as_horizontal_bars():
    root = parse(usage_bars([usage("web", cpu=50.0, used=64 * MIB, limit=256 * MIB, containers=2),
                             usage("worker", cpu=190.0, used=250 * MIB, limit=256 * MIB)]))
    drawn = bars(root)
    assert [b.get("class") for b in drawn] == ["bar bar-cpu", "bar bar-memory", "bar bar-cpu bar-high",
                                               "bar bar-memory bar-high"]
    tracks = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "track"]
    full = float(tracks[0].get("width", ""))
    assert [float(b.get("width", "")) / full for b in drawn] == pytest.approx([0.25, 0.25, 0.95, 250 / 256], abs=0.01)
    assert title(drawn[0]) == "web: CPU 50.0 % of 200 % (2 CPUs), 2 containers, over 1.0 s"
    assert title(drawn[1]) == "web: memory 64.0 MiB of 256 MiB (25 %), 2 containers"
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts == ["CPU", "memory", "web", "50.0 %", "64.0 MiB / 256 MiB", "worker", "190.0 %", "250 MiB / 256 MiB"]
    assert root.get("role") == "img" and root.get("aria-label", "").startswith(
        "CPU and memory now: web CPU 50.0 %, memory 64.0 MiB of 256 MiB; worker ")


def test_a_service_not_running_or_not_measured_says_so():
    root = parse(usage_bars([usage("web", cpu=None), usage("worker", containers=0, cpu=None, used=0, limit=0)]))
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "CPU not measured" in texts and "no container running on this node" in texts
    assert [b.get("class") for b in bars(root)] == ["bar bar-memory"]


def test_usage_text_stays_text():
    svg = usage_bars([usage(HOSTILE + "\x07")])
    root = parse(svg)
    assert "<script" not in svg
    assert_inert(root)
    assert any(t.text == HOSTILE[:17] + "…" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert title(bars(root)[0]).startswith(HOSTILE + "\ufffd: CPU")


def test_no_services_running():
    root = parse(usage_bars([]))
    assert root.get("aria-label") == "No services running" and bars(root) == []
