"""runtime/staticsites.py: sites installed whole, switched by one rename, pruned, links refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import staticsites


def unpacked(run_dir: Path, project: str, files: dict[str, str]) -> Path:
    folder = staticsites.staging_dir(run_dir, project)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_a_site_is_installed_whole_and_the_live_link_switches_between_sites(tmp_path: Path):
    for number in (1, 2):
        site = staticsites.install(unpacked(tmp_path, "shop", {"index.html": f"v{number}"}), tmp_path, "shop", number)
        assert site == tmp_path / "static" / "shop" / str(number)
    staticsites.point_live(tmp_path, "shop", 1)
    assert (tmp_path / "static" / "shop" / "live" / "index.html").read_text() == "v1"
    staticsites.point_live(tmp_path, "shop", 2)
    assert (tmp_path / "static" / "shop" / "live" / "index.html").read_text() == "v2"
    assert staticsites.live_number(tmp_path, "shop") == 2
    assert (tmp_path / "static" / "shop" / "live").readlink() == Path("2")  # relative: right in Caddy's container too
    assert staticsites.live_path("/run/disco", "shop") == "/run/disco/static/shop/live"
    assert (site / "index.html").stat().st_mode & 0o777 == 0o644


def test_prune_keeps_what_is_asked_and_drops_the_link_of_a_site_gone(tmp_path: Path):
    for number in (1, 2, 3, 4):
        staticsites.install(unpacked(tmp_path, "shop", {"i": ""}), tmp_path, "shop", number)
    staticsites.point_live(tmp_path, "shop", 4)
    leftover = staticsites.staging_dir(tmp_path, "shop")
    assert staticsites.prune(tmp_path, "shop", keep={3, 4}) == [1, 2]
    assert sorted(p.name for p in (tmp_path / "static" / "shop").iterdir()) == ["3", "4", "live"]
    assert not leftover.exists()
    assert staticsites.prune(tmp_path, "shop", keep=set()) == [3, 4]  # the app serves no site any more
    assert list((tmp_path / "static" / "shop").iterdir()) == []
    staticsites.remove_project(tmp_path, "shop")
    assert not (tmp_path / "static" / "shop").exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../../etc/passwd", "../.."])
def test_a_link_leading_out_of_the_site_is_refused(tmp_path: Path, target: str):
    folder = unpacked(tmp_path, "shop", {"index.html": "x"})
    (folder / "leak").symlink_to(target)
    with pytest.raises(staticsites.StaticSiteError, match="leak is a link leading outside the site"):
        staticsites.install(folder, tmp_path, "shop", 1)
    assert not (tmp_path / "static" / "shop" / "1").exists()


def test_a_link_loop_a_lone_link_and_an_empty_folder_are_refused(tmp_path: Path):
    folder = unpacked(tmp_path, "shop", {"index.html": "x"})
    (folder / "loop").symlink_to("loop")
    with pytest.raises(staticsites.StaticSiteError, match="loop is a link loop"):
        staticsites.install(folder, tmp_path, "shop", 1)
    link = tmp_path / "static" / "shop" / ".unpacking-link"
    link.symlink_to("/etc")
    with pytest.raises(staticsites.StaticSiteError, match="the site is not a folder"):
        staticsites.install(link, tmp_path, "shop", 2)
    with pytest.raises(staticsites.StaticSiteError, match="no file to serve"):
        staticsites.install(unpacked(tmp_path, "shop", {}), tmp_path, "shop", 3)


def test_a_link_inside_the_site_is_kept(tmp_path: Path):
    folder = unpacked(tmp_path, "shop", {"docs/index.html": "docs"})
    (folder / "latest").symlink_to("docs")
    site = staticsites.install(folder, tmp_path, "shop", 1)
    assert (site / "latest" / "index.html").read_text() == "docs"
